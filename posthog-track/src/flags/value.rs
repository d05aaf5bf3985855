//! The value types every other flags module shares: a flag's value and its JSON form,
//! properties, why evaluation could not decide, and payload decoding. A leaf: it imports no
//! other flags module.

use std::fmt;

use serde_json::Value;

/// Longest distinct id the flag caches (exposures, routing decisions) remember, in bytes.
/// Distinct ids can come from request headers: longer ones are never kept.
pub(crate) const MAX_CACHED_ID_BYTES: usize = 512;

/// Person or group properties: name to value.
pub type Properties = serde_json::Map<String, Value>;

/// The value of a flag for one user.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FlagValue {
    /// A boolean flag (or a multivariate flag without variants): on or off.
    Enabled(bool),
    /// The variant of a multivariate flag.
    Variant(String),
}

impl FlagValue {
    /// On: `true`, or any variant.
    pub fn is_enabled(&self) -> bool {
        !matches!(self, FlagValue::Enabled(false))
    }

    /// The variant, for multivariate flags.
    pub fn variant(&self) -> Option<&str> {
        match self {
            FlagValue::Variant(variant) => Some(variant),
            FlagValue::Enabled(_) => None,
        }
    }
}

impl fmt::Display for FlagValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlagValue::Enabled(enabled) => write!(f, "{enabled}"),
            FlagValue::Variant(variant) => f.write_str(variant),
        }
    }
}

/// Why a flag could not be evaluated locally.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FlagError {
    /// The definitions are not the JSON PostHog serves at `/flags/definitions`.
    #[error("flag definitions are not valid: {0}")]
    InvalidDefinitions(#[from] serde_json::Error),
    /// No flag has this key (keys are case-sensitive).
    #[error("no flag `{0}` in the definitions")]
    UnknownFlag(String),
    /// Local data cannot decide (a missing property, a cohort, a flag dependency, an invalid
    /// date): ask PostHog instead.
    #[error("flag `{flag}` cannot be evaluated locally: {reason}")]
    Inconclusive {
        /// The flag.
        flag: String,
        /// What was missing.
        reason: String,
    },
}

/// Why a single condition could not be decided.
pub(crate) struct Inconclusive(pub String);

/// JSON of a flag value as PostHog's events carry it: `true`/`false` or the variant.
pub(crate) fn json_value(value: &FlagValue) -> serde_json::Value {
    match value {
        FlagValue::Enabled(enabled) => serde_json::Value::Bool(*enabled),
        FlagValue::Variant(variant) => serde_json::Value::String(variant.clone()),
    }
}

/// Payloads arrive as JSON text; a value that is not JSON text is kept as it is.
pub(crate) fn decode_payload(payload: &Value) -> Value {
    match payload {
        Value::String(text) => serde_json::from_str(text).unwrap_or_else(|_| payload.clone()),
        other => other.clone(),
    }
}
