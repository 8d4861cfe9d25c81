//! The `[hedging]` section of a settings file: [`HedgeSettings`].

use std::fmt;

use foreman_core::{HedgeDelay, HedgePolicy};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The `[hedging]` section: whether a running request gets a second
/// attempt on another, idle worker, and its [`HedgePolicy`].
///
/// Off by default (`enabled = false`); the other keys then keep their
/// defaults and mean nothing. `delay` is a duration (`"300ms"`: a fixed
/// delay) or a percentile of the worker's recent run times (`"p95"`,
/// `"p99.9"`: one decimal at most).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct HedgeSettings {
    /// Whether the pool hedges at all ([`PoolConfig::hedging`](foreman_core::PoolConfig::hedging)
    /// is `None` when not).
    pub enabled: bool,
    /// How long an attempt runs before the request is hedged.
    #[serde(serialize_with = "write_delay", deserialize_with = "read_delay")]
    pub delay: HedgeDelay,
    /// The most hedges one request gets (at least 1).
    pub max_hedges: u32,
    /// Whether LLM calls are hedged.
    pub llm: bool,
    /// Whether tool calls are hedged.
    pub tools: bool,
}

impl Default for HedgeSettings {
    fn default() -> Self {
        Self::from_policy(None)
    }
}

impl HedgeSettings {
    /// The settings of `policy` (`None`: disabled, the defaults kept).
    pub(super) fn from_policy(policy: Option<HedgePolicy>) -> Self {
        let enabled = policy.is_some();
        let policy = policy.unwrap_or_default();
        HedgeSettings {
            enabled,
            delay: policy.delay,
            max_hedges: policy.max_hedges,
            llm: policy.llm,
            tools: policy.tools,
        }
    }

    /// The policy these settings stand for (`None` when disabled).
    pub(super) fn to_policy(&self) -> Option<HedgePolicy> {
        self.enabled.then(|| {
            HedgePolicy::default()
                .with_delay(self.delay)
                .with_max_hedges(self.max_hedges)
                .with_llm(self.llm)
                .with_tools(self.tools)
        })
    }

    /// The key and the value as written of the field a
    /// `ConfigError::InvalidHedging` names.
    pub(super) fn key_of(&self, field: &str) -> Option<(&'static str, String)> {
        match field {
            "delay" => Some(("hedging.delay", format!("\"{}\"", delay_text(self.delay)))),
            "max_hedges" => Some(("hedging.max_hedges", self.max_hedges.to_string())),
            _ => None,
        }
    }
}

/// A delay as a settings file writes it: a duration, or `p` and a
/// percentile.
fn delay_text(delay: HedgeDelay) -> String {
    match delay {
        HedgeDelay::Fixed(duration) => humantime::format_duration(duration).to_string(),
        HedgeDelay::RunTimePercentile(permille) if permille % 10 == 0 => {
            format!("p{}", permille / 10)
        }
        HedgeDelay::RunTimePercentile(permille) => {
            format!("p{}.{}", permille / 10, permille % 10)
        }
        // `HedgeDelay` is `#[non_exhaustive]`, but the workspace pins
        // foreman-core at its exact version: these are its variants.
        _ => String::new(),
    }
}

/// Reads `"p95"` or `"p99.9"` as thousandths; `None` for anything else.
fn percentile(text: &str) -> Option<u32> {
    let number = text.strip_prefix('p')?;
    let (whole, tenth) = match number.split_once('.') {
        Some((whole, tenth)) if tenth.len() == 1 => (whole, tenth),
        Some(_) => return None,
        None => (number, "0"),
    };
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) || whole.len() > 3 {
        return None;
    }
    let whole: u32 = whole.parse().ok()?;
    let tenth: u32 = tenth.parse().ok()?;
    Some(whole * 10 + tenth)
}

fn write_delay<S: Serializer>(delay: &HedgeDelay, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&delay_text(*delay))
}

fn read_delay<'de, D: Deserializer<'de>>(d: D) -> Result<HedgeDelay, D::Error> {
    d.deserialize_str(DelayVisitor)
}

/// Reads a hedging delay.
struct DelayVisitor;

impl Visitor<'_> for DelayVisitor {
    type Value = HedgeDelay;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(
            "a duration such as \"300ms\", or a percentile of run times such as \"p95\" or \"p99.9\"",
        )
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<HedgeDelay, E> {
        if text.starts_with('p') {
            return percentile(text)
                .map(HedgeDelay::RunTimePercentile)
                .ok_or_else(|| E::invalid_value(de::Unexpected::Str(text), &self));
        }
        humantime::parse_duration(text)
            .map(HedgeDelay::Fixed)
            .map_err(|error| {
                E::custom(format_args!(
                    "invalid delay {text:?}: {error}; expected a duration such as \"300ms\", \
                     or a percentile such as \"p95\""
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::{delay_text, percentile};
    use foreman_core::HedgeDelay;
    use std::time::Duration;

    #[test]
    fn percentiles_read_and_write_in_thousandths() {
        assert_eq!(percentile("p95"), Some(950));
        assert_eq!(percentile("p99.9"), Some(999));
        assert_eq!(percentile("p0.1"), Some(1));
        for bad in ["p", "p.5", "p99.99", "p-1", "p1000", "q95", "p9x"] {
            assert_eq!(percentile(bad), None, "{bad}");
        }
        assert_eq!(delay_text(HedgeDelay::RunTimePercentile(950)), "p95");
        assert_eq!(delay_text(HedgeDelay::RunTimePercentile(999)), "p99.9");
        assert_eq!(
            delay_text(HedgeDelay::Fixed(Duration::from_millis(300))),
            "300ms"
        );
    }
}
