//! The shape of `/flags/definitions`, as far as local evaluation reads it.

use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Deserialize)]
pub(crate) struct Definitions {
    #[serde(default)]
    pub flags: Vec<FlagDefinition>,
}

/// One flag.
#[derive(Debug, Clone, Deserialize)]
#[non_exhaustive]
pub struct FlagDefinition {
    /// The flag's key.
    pub key: String,
    /// Inactive flags evaluate to `false`.
    #[serde(default = "active_by_default")]
    pub active: bool,
    /// Targeting.
    #[serde(default)]
    pub filters: Filters,
}

fn active_by_default() -> bool {
    true
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
    #[serde(default)]
    pub early_exit: bool,
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
    #[serde(default)]
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
