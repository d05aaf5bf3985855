//! The shape of `/flags/definitions`, as far as local evaluation reads it.

use serde::Deserialize;
use serde_json::Value;

/// The flags as sent, each read on its own: one flag PostHog describes in a way this version
/// does not read must not take the others' local evaluation down with it.
#[derive(Debug, Deserialize)]
pub(crate) struct Definitions {
    #[serde(default, deserialize_with = "null_as_default")]
    pub flags: Vec<Value>,
}

/// One flag.
#[derive(Debug, Clone, Deserialize)]
#[non_exhaustive]
pub struct FlagDefinition {
    /// The flag's key.
    pub key: String,
    /// Inactive flags evaluate to `false`; a flag that does not say (or says `null`) is
    /// inactive, as in PostHog's SDKs.
    #[serde(default, deserialize_with = "null_as_default")]
    pub active: bool,
    /// Only PostHog holds the overrides that keep a user's value from changing when they are
    /// identified: such a flag is never evaluated locally.
    #[serde(default, deserialize_with = "null_as_default")]
    pub ensure_experience_continuity: bool,
    /// `device_id` when the flag buckets by the device rather than the distinct id (PostHog
    /// puts it on the flag or in its filters).
    #[serde(default, deserialize_with = "null_as_default")]
    pub bucketing_identifier: Option<String>,
    /// Targeting.
    #[serde(default, deserialize_with = "null_as_default")]
    pub filters: Filters,
}

impl FlagDefinition {
    /// Whether the flag buckets users by their device id, which a server-side evaluation
    /// does not know.
    pub(crate) fn buckets_by_device(&self) -> bool {
        self.bucketing_identifier
            .as_deref()
            .or(self.filters.bucketing_identifier.as_deref())
            == Some("device_id")
    }
}

/// A flag's targeting rules.
#[derive(Debug, Clone, Default, Deserialize)]
#[non_exhaustive]
pub struct Filters {
    /// Conditions, evaluated in stored order; the first that matches decides.
    #[serde(default, deserialize_with = "null_as_default")]
    pub groups: Vec<Condition>,
    /// Variants of a multivariate flag.
    #[serde(default, deserialize_with = "null_as_default")]
    pub multivariate: Option<Multivariate>,
    /// Payloads by flag value (`"true"` or a variant key), as JSON strings or values.
    #[serde(default, deserialize_with = "null_as_default")]
    pub payloads: serde_json::Map<String, Value>,
    /// Group-based flags bucket by a group key instead of the distinct id.
    #[serde(default)]
    pub aggregation_group_type_index: Option<i64>,
    /// A condition whose properties matched but whose rollout excluded the user ends
    /// evaluation with `false`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub early_exit: bool,
    /// See [`FlagDefinition::bucketing_identifier`].
    #[serde(default, deserialize_with = "null_as_default")]
    pub bucketing_identifier: Option<String>,
}

/// The variants of a multivariate flag.
#[derive(Debug, Clone, Default, Deserialize)]
#[non_exhaustive]
pub struct Multivariate {
    /// Variants, each with its share of the rollout.
    #[serde(default, deserialize_with = "null_as_default")]
    pub variants: Vec<Variant>,
}

/// One variant.
#[derive(Debug, Clone, Deserialize)]
#[non_exhaustive]
pub struct Variant {
    /// The variant's key, the flag's value for users in it.
    pub key: String,
    /// Share of users, in percent.
    pub rollout_percentage: f64,
}

/// One condition (a "release condition" in PostHog's UI).
#[derive(Debug, Clone, Default, Deserialize)]
#[non_exhaustive]
pub struct Condition {
    /// All must match.
    #[serde(default, deserialize_with = "null_as_default")]
    pub properties: Vec<PropertyFilter>,
    /// Share of matching users, in percent; `None` means all of them.
    #[serde(default)]
    pub rollout_percentage: Option<f64>,
    /// Forces this variant for users who match.
    #[serde(default)]
    pub variant: Option<String>,
    /// Mixed targeting: a condition about a group (`Some(Some(index))`) or about the person
    /// (`Some(None)`) in a flag aggregated otherwise. `None` when the condition does not say,
    /// so it follows the flag.
    #[serde(default, deserialize_with = "present")]
    pub aggregation_group_type_index: Option<Option<i64>>,
}

/// One property filter of a condition.
#[derive(Debug, Clone, Deserialize)]
#[non_exhaustive]
pub struct PropertyFilter {
    /// The property's name.
    pub key: String,
    /// The value(s) to compare with.
    #[serde(default)]
    pub value: Value,
    /// `exact` when absent.
    #[serde(default)]
    pub operator: Option<String>,
    /// `person`, `group`, `cohort` or `flag`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// Inside cohorts: the filter matches when the property does *not*.
    #[serde(default, deserialize_with = "null_as_default")]
    pub negation: bool,
    /// For `flag` filters: the flags to evaluate first, the referenced one last (empty means
    /// a circular dependency).
    #[serde(default)]
    pub dependency_chain: Option<Vec<String>>,
}

fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// A field that is present, `null` included (`Some(None)`), as opposed to absent (`None`, the
/// `default`).
fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}
