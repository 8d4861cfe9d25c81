//! The `[driver]` section of a settings file: [`DriverSettings`].

use std::num::NonZeroUsize;

use serde::{Deserialize, Serialize};

use super::text;
use crate::types::DriverOptions;
use crate::worker::ExecutionMode;

/// The `[driver]` section: [`DriverOptions`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct DriverSettings {
    /// Where handler futures run.
    #[serde(with = "text::named")]
    pub execution: ExecutionMode,
    /// How many lanes (cores with their own lock) the workers are spread
    /// over (at least 1).
    pub lanes: NonZeroUsize,
}

impl Default for DriverSettings {
    fn default() -> Self {
        let options = DriverOptions::default();
        DriverSettings {
            execution: options.execution,
            lanes: options.lanes,
        }
    }
}
