//! Where discovery reads the endpoints from: a static list, a watched
//! file, or a DNS name re-resolved at every round.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use foreman_tokio::async_trait;

use super::endpoint::{is_endpoint_url, parse_endpoints, Endpoint};

/// Where discovery reads the set of endpoints from, at every round.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Source {
    /// A fixed list (added once; a list with a bad or repeated URL is an
    /// error every round and adds nothing).
    Static(Vec<Endpoint>),
    /// A file in the format of [`parse_endpoints`](super::parse_endpoints),
    /// read at every round and parsed when its content changed. A file
    /// that cannot be read or parsed keeps the last good set.
    File(PathBuf),
    /// A DNS name whose addresses are the endpoints.
    Dns(DnsName),
}

/// A DNS name re-resolved at every round: each address becomes the
/// endpoint `scheme://ip:port` (`http://[ip]:port` for IPv6). A failed
/// lookup, or one with no address, keeps the last good set.
#[derive(Debug, Clone)]
pub struct DnsName {
    /// The name to resolve (`workers.default.svc.cluster.local`).
    pub host: String,
    /// The port every address serves on.
    pub port: u16,
    /// `http` (the default) or `https`.
    pub scheme: String,
    /// The run limit of every endpoint found (`None`: the pool's).
    pub capacity: Option<u32>,
    /// What resolves it: the system's resolver unless set.
    pub resolver: Arc<dyn Resolver>,
}

impl DnsName {
    /// `host`, resolved by the system's resolver ([`SystemResolver`]), its
    /// endpoints `http://ip:port` with the pool's run limit.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        DnsName {
            host: host.into(),
            port,
            scheme: "http".to_string(),
            capacity: None,
            resolver: Arc::new(SystemResolver),
        }
    }

    /// Resolves with `resolver` instead (tests, or another resolver).
    #[must_use]
    pub fn with_resolver(mut self, resolver: Arc<dyn Resolver>) -> Self {
        self.resolver = resolver;
        self
    }

    /// Gives every endpoint found this run limit.
    #[must_use]
    pub fn with_capacity(mut self, capacity: u32) -> Self {
        self.capacity = Some(capacity);
        self
    }

    /// Uses `https` (with the `tls` feature) or `http`.
    #[must_use]
    pub fn with_scheme(mut self, scheme: impl Into<String>) -> Self {
        self.scheme = scheme.into();
        self
    }

    /// The endpoint of one resolved address.
    fn endpoint(&self, address: SocketAddr) -> Endpoint {
        // `SocketAddr`'s display puts an IPv6 address in brackets.
        let url = format!("{}://{}:{}", self.scheme, address.ip_bracketed(), self.port);
        Endpoint {
            url,
            capacity: self.capacity,
        }
    }
}

/// Brackets an IPv6 address, as a URL's host needs.
trait Bracketed {
    fn ip_bracketed(&self) -> String;
}

impl Bracketed for SocketAddr {
    fn ip_bracketed(&self) -> String {
        match self {
            SocketAddr::V4(v4) => v4.ip().to_string(),
            SocketAddr::V6(v6) => format!("[{}]", v6.ip()),
        }
    }
}

/// Resolves a host name to its addresses (A and AAAA records).
#[async_trait]
pub trait Resolver: Send + Sync + fmt::Debug {
    /// The addresses of `host`, each with `port`.
    ///
    /// # Errors
    /// The lookup's failure.
    async fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>>;
}

/// The operating system's resolver, through tokio's
/// [`lookup_host`](tokio::net::lookup_host) (`getaddrinfo` on tokio's
/// blocking pool): each call asks again, so `/etc/hosts`, the search
/// domains and any caching resolver the host runs apply.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

#[async_trait]
impl Resolver for SystemResolver {
    async fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        Ok(tokio::net::lookup_host((host, port)).await?.collect())
    }
}

/// A source and what it last read.
pub(crate) struct Reader {
    source: Source,
    /// The file's content when last read.
    last_text: Option<String>,
}

/// What one round read.
pub(crate) enum Read {
    /// The set of endpoints now.
    Set(Vec<Endpoint>),
    /// Unchanged since the last read (a file with the same content).
    Unchanged,
    /// The source failed; the last good set stands.
    Failed(String),
}

impl Reader {
    pub(crate) fn new(source: Source) -> Self {
        Reader {
            source,
            last_text: None,
        }
    }

    /// Reads the source once.
    pub(crate) async fn read(&mut self) -> Read {
        match &self.source {
            Source::Static(list) => static_set(list),
            Source::File(path) => {
                let path = path.clone();
                let text = match tokio::task::spawn_blocking(move || std::fs::read_to_string(&path))
                    .await
                {
                    Ok(Ok(text)) => text,
                    Ok(Err(error)) => {
                        self.last_text = None;
                        let path = self.file_name();
                        return Read::Failed(format!("cannot read {path}: {error}"));
                    }
                    Err(error) => return Read::Failed(format!("the file reader failed: {error}")),
                };
                if self.last_text.as_deref() == Some(text.as_str()) {
                    return Read::Unchanged;
                }
                let parsed = parse_endpoints(&text);
                self.last_text = Some(text);
                match parsed {
                    Ok(set) => Read::Set(set),
                    Err(error) => Read::Failed(format!("{}: {error}", self.file_name())),
                }
            }
            Source::Dns(name) => match name.resolver.resolve(&name.host, name.port).await {
                Ok(addresses) if addresses.is_empty() => {
                    Read::Failed(format!("{} resolved to no address", name.host))
                }
                Ok(mut addresses) => {
                    addresses.sort_unstable();
                    addresses.dedup();
                    Read::Set(addresses.into_iter().map(|a| name.endpoint(a)).collect())
                }
                Err(error) => Read::Failed(format!("cannot resolve {}: {error}", name.host)),
            },
        }
    }

    fn file_name(&self) -> String {
        match &self.source {
            Source::File(path) => path.display().to_string(),
            _ => String::new(),
        }
    }
}

/// A static list, checked as a file's would be.
fn static_set(list: &[Endpoint]) -> Read {
    let mut seen = std::collections::BTreeSet::new();
    for endpoint in list {
        if !is_endpoint_url(&endpoint.url) {
            return Read::Failed(format!(
                "{:?} is not an http:// or https:// URL with a host",
                endpoint.url
            ));
        }
        if endpoint.capacity == Some(0) {
            return Read::Failed(format!("{}: capacity must be at least 1", endpoint.url));
        }
        if !seen.insert(endpoint.url.as_str()) {
            return Read::Failed(format!("{} is listed twice", endpoint.url));
        }
    }
    Read::Set(list.to_vec())
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv6Addr, SocketAddr};

    use super::DnsName;

    #[test]
    fn an_ipv6_address_is_bracketed_in_its_url() {
        let name = DnsName::new("workers", 8080).with_capacity(2);
        let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, 1));
        let v4 = SocketAddr::from(([10, 0, 0, 5], 1));
        assert_eq!(name.endpoint(v6).url, "http://[::1]:8080");
        assert_eq!(name.endpoint(v4).url, "http://10.0.0.5:8080");
        assert_eq!(name.endpoint(v4).capacity, Some(2));
    }
}
