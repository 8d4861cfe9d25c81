//! How settings are written in a file: durations as text (`"250ms"`,
//! `"30s"`, `"2m"`, parsed and printed by `humantime`), with the words
//! that stand for no duration where a field allows none (`"auto"`,
//! `false`), and enums by name (`"idle_first"`).
//!
//! The functions here are the fields' `#[serde(serialize_with = …,
//! deserialize_with = …)]`, or, for enums, the `#[serde(with = …)]` module
//! [`named`].

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use foreman_core::{PanicMode, RoutingPolicy};
use serde::de::{self, Deserializer, Unexpected, Visitor};
use serde::ser::{Error as _, Serializer};

use super::RecoveryName;
use crate::worker::ExecutionMode;

/// What stands for "no duration" in a field that allows it.
#[derive(Clone, Copy)]
enum Absent {
    /// A word: `"auto"`.
    Word(&'static str),
    /// `false` (JSON's `null` is read as `false` too).
    False,
}

/// How one kind of field reads a duration written as text.
struct DurationVisitor<T> {
    /// What the field takes, for error messages.
    expecting: &'static str,
    /// What a duration becomes (refusing what the field cannot hold).
    wrap: fn(Duration) -> Result<T, String>,
    /// What stands for no duration, if the field allows none, and the
    /// value it gives.
    absent: Option<(Absent, T)>,
}

/// Any duration: `"5s"`.
const ANY: DurationVisitor<Duration> = DurationVisitor {
    expecting: "a duration such as \"250ms\", \"30s\" or \"2m\"",
    wrap: Ok,
    absent: None,
};

/// A whole number of milliseconds: `"2m"`, not `"1500us"`.
const MILLIS: DurationVisitor<Duration> = DurationVisitor {
    expecting: "a whole number of milliseconds written as a duration, such as \"2m\"",
    wrap: whole_millis,
    absent: None,
};

/// A duration or `false`: `"30s"`, `false`.
const OR_FALSE: DurationVisitor<Option<Duration>> = DurationVisitor {
    expecting: "a duration such as \"30s\", or false for none",
    wrap: some,
    absent: Some((Absent::False, None)),
};

/// A duration or `"auto"`: `"2s"`, `"auto"`.
const OR_AUTO: DurationVisitor<Option<Duration>> = DurationVisitor {
    expecting: "a duration such as \"2s\", or \"auto\"",
    wrap: some,
    absent: Some((Absent::Word("auto"), None)),
};

fn some(duration: Duration) -> Result<Option<Duration>, String> {
    Ok(Some(duration))
}

fn whole_millis(duration: Duration) -> Result<Duration, String> {
    if duration.subsec_nanos() % 1_000_000 != 0 {
        Err("finer than a millisecond".to_string())
    } else if u64::try_from(duration.as_millis()).is_err() {
        Err(format!("more than {} milliseconds", u64::MAX))
    } else {
        Ok(duration)
    }
}

impl<T: Copy> DurationVisitor<T> {
    /// The value `text` gives if it is this field's word for no duration.
    fn word_value(&self, text: &str) -> Option<T> {
        match self.absent {
            Some((Absent::Word(word), value)) if word == text => Some(value),
            _ => None,
        }
    }

    /// The value `false` gives if this field takes it for no duration.
    fn false_value(&self) -> Option<T> {
        match self.absent {
            Some((Absent::False, value)) => Some(value),
            _ => None,
        }
    }
}

impl<T: Copy> Visitor<'_> for DurationVisitor<T> {
    type Value = T;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.expecting)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<T, E> {
        if let Some(value) = self.word_value(text) {
            return Ok(value);
        }
        humantime::parse_duration(text)
            .map_err(|error| error.to_string())
            .and_then(self.wrap)
            .map_err(|reason| {
                E::custom(format_args!(
                    "invalid duration {text:?}: {reason}; expected {}",
                    self.expecting
                ))
            })
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<T, E> {
        let absent = if value { None } else { self.false_value() };
        absent.ok_or_else(|| E::invalid_value(Unexpected::Bool(value), &self))
    }

    fn visit_unit<E: de::Error>(self) -> Result<T, E> {
        self.false_value()
            .ok_or_else(|| E::invalid_type(Unexpected::Unit, &self))
    }

    fn visit_none<E: de::Error>(self) -> Result<T, E> {
        self.visit_unit()
    }
}

/// Writes a duration as `humantime` prints it (`"2m"`, `"1s 500ms"`):
/// exact to the nanosecond, so it reads back as the same value.
pub(super) fn write_duration<S: Serializer>(
    duration: &Duration,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&humantime::format_duration(*duration))
}

impl DurationVisitor<Option<Duration>> {
    /// Writes `duration`, or what stands for none in this field.
    fn write<S: Serializer>(
        &self,
        duration: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match (duration, self.absent) {
            (Some(duration), _) => write_duration(duration, serializer),
            (None, Some((Absent::Word(word), _))) => serializer.serialize_str(word),
            (None, Some((Absent::False, _))) => serializer.serialize_bool(false),
            (None, None) => Err(S::Error::custom(format_args!(
                "no duration, where {} is expected",
                self.expecting
            ))),
        }
    }
}

/// Writes a duration, or `false` for none.
pub(super) fn write_duration_or_false<S: Serializer>(
    duration: &Option<Duration>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    OR_FALSE.write(duration, serializer)
}

/// Writes a duration, or `"auto"` for none.
pub(super) fn write_duration_or_auto<S: Serializer>(
    duration: &Option<Duration>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    OR_AUTO.write(duration, serializer)
}

/// Reads any duration.
pub(super) fn read_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    d.deserialize_any(ANY)
}

/// Reads a whole number of milliseconds written as a duration.
pub(super) fn read_millis<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    d.deserialize_any(MILLIS)
}

/// Reads a duration, or `false` (JSON's `null`) for none.
pub(super) fn read_duration_or_false<'de, D>(d: D) -> Result<Option<Duration>, D::Error>
where
    D: Deserializer<'de>,
{
    d.deserialize_any(OR_FALSE)
}

/// Reads a duration, or `"auto"` for none.
pub(super) fn read_duration_or_auto<'de, D>(d: D) -> Result<Option<Duration>, D::Error>
where
    D: Deserializer<'de>,
{
    d.deserialize_any(OR_AUTO)
}

/// A duration as a file writes it, for error messages (`"0s"`).
pub(super) fn quoted(duration: Duration) -> String {
    format!("\"{}\"", humantime::format_duration(duration))
}

/// An enum whose values a file writes by name.
pub(super) trait Named: Copy + PartialEq + fmt::Debug + 'static {
    /// What a field of this type takes, for error messages.
    const WHAT: &'static str;
    /// Each value with its name.
    const NAMES: &'static [(&'static str, Self)];
}

impl Named for RoutingPolicy {
    const WHAT: &'static str = "a routing policy";
    const NAMES: &'static [(&'static str, Self)] = &[
        ("idle_first", RoutingPolicy::IdleFirst),
        ("round_robin", RoutingPolicy::RoundRobin),
        ("least_loaded", RoutingPolicy::LeastLoaded),
        ("peak_ewma", RoutingPolicy::PeakEwma),
    ];
}

impl Named for RecoveryName {
    const WHAT: &'static str = "a recovery policy";
    const NAMES: &'static [(&'static str, Self)] = &[
        ("reference", RecoveryName::Reference),
        ("outlier_detection", RecoveryName::OutlierDetection),
    ];
}

impl Named for PanicMode {
    const WHAT: &'static str = "a panic mode";
    const NAMES: &'static [(&'static str, Self)] = &[
        ("route_to_all", PanicMode::RouteToAll),
        ("fail_fast", PanicMode::FailFast),
    ];
}

impl Named for ExecutionMode {
    const WHAT: &'static str = "an execution mode";
    const NAMES: &'static [(&'static str, Self)] = &[
        ("pool_tasks", ExecutionMode::PoolTasks),
        ("caller_task", ExecutionMode::CallerTask),
    ];
}

/// Reads a [`Named`] value from its name.
struct NameVisitor<T>(PhantomData<T>);

impl<T: Named> Visitor<'_> for NameVisitor<T> {
    type Value = T;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}: ", T::WHAT)?;
        for (index, (name, _)) in T::NAMES.iter().enumerate() {
            let separator = if index == 0 { "" } else { " or " };
            write!(formatter, "{separator}\"{name}\"")?;
        }
        Ok(())
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<T, E> {
        T::NAMES
            .iter()
            .find(|(name, _)| *name == text)
            .map(|(_, value)| *value)
            .ok_or_else(|| E::invalid_value(Unexpected::Str(text), &self))
    }
}

/// A [`Named`] enum by name: `routing = "idle_first"`.
pub(super) mod named {
    use super::*;

    pub(crate) fn serialize<T: Named, S: Serializer>(
        value: &T,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match T::NAMES.iter().find(|(_, named)| named == value) {
            Some((name, _)) => serializer.serialize_str(name),
            None => Err(S::Error::custom(format_args!(
                "{value:?} has no name in a settings file"
            ))),
        }
    }

    pub(crate) fn deserialize<'de, T: Named, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<T, D::Error> {
        deserializer.deserialize_str(NameVisitor(PhantomData))
    }
}
