//! Endpoints, and the endpoint list a watched file holds.

use std::collections::BTreeMap;

use http::Uri;
use thiserror::Error;

/// One worker endpoint: its URL, which is also the worker's id in the
/// pool, and optionally its own run limit (how many requests it may run
/// at once; `None` takes the pool's `max_concurrency_per_worker`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    /// The URL, as written (`http://10.0.0.5:8080`).
    pub url: String,
    /// Its own run limit, at least 1.
    pub capacity: Option<u32>,
}

impl Endpoint {
    /// An endpoint with the pool's run limit.
    pub fn new(url: impl Into<String>) -> Self {
        Endpoint {
            url: url.into(),
            capacity: None,
        }
    }

    /// Sets its own run limit.
    #[must_use]
    pub fn with_capacity(mut self, capacity: u32) -> Self {
        self.capacity = Some(capacity);
        self
    }
}

/// Why an endpoint list was refused; the line numbers count from 1.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ParseError {
    /// The line's first word is not an `http://` or `https://` URL with a
    /// host.
    #[error("line {line}: {url:?} is not an http:// or https:// URL with a host")]
    InvalidUrl {
        /// Where.
        line: usize,
        /// The word found.
        url: String,
    },
    /// A word after the URL is not `capacity=N`.
    #[error("line {line}: unknown option {option:?} (expected capacity=N)")]
    UnknownOption {
        /// Where.
        line: usize,
        /// The word found.
        option: String,
    },
    /// `capacity=` does not hold a whole number from 1 to 2^32 - 1.
    #[error("line {line}: capacity must be a whole number from 1 to 4294967295, got {value:?}")]
    InvalidCapacity {
        /// Where.
        line: usize,
        /// What followed `capacity=`.
        value: String,
    },
    /// The URL was already listed.
    #[error("line {line}: {url} is listed twice (first on line {first})")]
    Duplicate {
        /// Where it is listed again.
        line: usize,
        /// Where it was listed first.
        first: usize,
        /// The URL.
        url: String,
    },
}

/// Whether `url` is an `http://` or `https://` URL with a host.
pub(crate) fn is_endpoint_url(url: &str) -> bool {
    url.parse::<Uri>().is_ok_and(|uri| {
        matches!(uri.scheme_str(), Some("http" | "https")) && uri.authority().is_some()
    })
}

/// Parses an endpoint list: one endpoint a line, its URL then optionally
/// `capacity=N`; `#` starts a comment, blank lines are skipped.
///
/// ```
/// use foreman_remote::discovery::{parse_endpoints, Endpoint};
///
/// let text = "# the GPU box runs four at once\n\
///             http://10.0.0.5:8080 capacity=4\n\
///             http://10.0.0.6:8080  # the pool's limit\n";
/// assert_eq!(
///     parse_endpoints(text).unwrap(),
///     vec![
///         Endpoint::new("http://10.0.0.5:8080").with_capacity(4),
///         Endpoint::new("http://10.0.0.6:8080"),
///     ],
/// );
/// assert!(parse_endpoints("10.0.0.5:8080\n").is_err()); // no scheme
/// ```
///
/// # Errors
/// The first [`ParseError`] of the list, naming its line.
pub fn parse_endpoints(text: &str) -> Result<Vec<Endpoint>, ParseError> {
    let mut endpoints = Vec::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let content = raw.split('#').next().unwrap_or_default();
        let mut words = content.split_whitespace();
        let Some(url) = words.next() else {
            continue;
        };
        if !is_endpoint_url(url) {
            return Err(ParseError::InvalidUrl {
                line,
                url: url.to_string(),
            });
        }
        let mut endpoint = Endpoint::new(url);
        for word in words {
            let Some(value) = word.strip_prefix("capacity=") else {
                return Err(ParseError::UnknownOption {
                    line,
                    option: word.to_string(),
                });
            };
            match value.parse::<u32>() {
                Ok(capacity) if capacity >= 1 => endpoint.capacity = Some(capacity),
                _ => {
                    return Err(ParseError::InvalidCapacity {
                        line,
                        value: value.to_string(),
                    })
                }
            }
        }
        if let Some(&first) = seen.get(url) {
            return Err(ParseError::Duplicate {
                line,
                first,
                url: url.to_string(),
            });
        }
        seen.insert(url.to_string(), line);
        endpoints.push(endpoint);
    }
    Ok(endpoints)
}

#[cfg(test)]
mod tests {
    use super::{parse_endpoints, Endpoint, ParseError};

    #[test]
    fn comments_blank_lines_and_capacities_are_read() {
        let text = "\n  # fleet\nhttp://a:1\thttps://ignored-no\n";
        assert_eq!(
            parse_endpoints(text),
            Err(ParseError::UnknownOption {
                line: 3,
                option: "https://ignored-no".into()
            })
        );
        let text = "  http://a:1   capacity=2 # two\n\nhttp://[::1]:9000/pool-a\n";
        assert_eq!(
            parse_endpoints(text).unwrap(),
            vec![
                Endpoint::new("http://a:1").with_capacity(2),
                Endpoint::new("http://[::1]:9000/pool-a"),
            ]
        );
        assert_eq!(parse_endpoints("# nothing\n\n").unwrap(), vec![]);
    }

    #[test]
    fn bad_lines_are_refused_naming_the_line() {
        let cases = [
            (
                "http://a:1\nftp://b:2\n",
                ParseError::InvalidUrl {
                    line: 2,
                    url: "ftp://b:2".into(),
                },
            ),
            (
                "http://a:1 capacity=0\n",
                ParseError::InvalidCapacity {
                    line: 1,
                    value: "0".into(),
                },
            ),
            (
                "http://a:1 capacity=x\n",
                ParseError::InvalidCapacity {
                    line: 1,
                    value: "x".into(),
                },
            ),
            (
                "http://a:1\n# c\nhttp://a:1 capacity=2\n",
                ParseError::Duplicate {
                    line: 3,
                    first: 1,
                    url: "http://a:1".into(),
                },
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_endpoints(text), Err(expected), "{text:?}");
        }
        let message = parse_endpoints("http://a:1 weight=3")
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("line 1") && message.contains("weight=3"),
            "{message}"
        );
    }
}
