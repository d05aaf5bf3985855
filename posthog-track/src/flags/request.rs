//! What to evaluate ([`FlagsRequest`]) and what came out ([`FlagsSnapshot`]), whoever decided
//! it: local definitions or PostHog.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use super::value::{FlagValue, Properties, json_value};

/// What to evaluate, for whom.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct FlagsRequest {
    /// The user.
    pub distinct_id: String,
    /// Person properties PostHog should use (overriding what it stored).
    pub person_properties: Properties,
    /// The user's groups: group type to group key.
    pub groups: HashMap<String, String>,
    /// Properties of those groups, by group type.
    pub group_properties: HashMap<String, Properties>,
    /// Only these flags (all when empty).
    pub flag_keys: Vec<String>,
    /// Ask PostHog not to use the request's IP for properties (the server's IP is meaningless).
    pub disable_geoip: bool,
    /// Skip local evaluation even when definitions are loaded.
    pub force_remote: bool,
}

impl FlagsRequest {
    /// Every flag for `distinct_id`.
    pub fn new(distinct_id: impl Into<String>) -> Self {
        FlagsRequest {
            distinct_id: distinct_id.into(),
            disable_geoip: true,
            ..FlagsRequest::default()
        }
    }

    /// Adds a person property.
    pub fn person_property(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.person_properties.insert(key.into(), value.into());
        self
    }

    /// Adds a group membership, e.g. `("company", "acme")`.
    pub fn group(mut self, group_type: impl Into<String>, group_key: impl Into<String>) -> Self {
        self.groups.insert(group_type.into(), group_key.into());
        self
    }

    /// Adds a property of one of the user's groups.
    pub fn group_property(
        mut self,
        group_type: impl Into<String>,
        key: impl Into<String>,
        value: impl Into<Value>,
    ) -> Self {
        self.group_properties
            .entry(group_type.into())
            .or_default()
            .insert(key.into(), value.into());
        self
    }

    /// Evaluates only these flags.
    pub fn only(mut self, keys: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.flag_keys = keys.into_iter().map(Into::into).collect();
        self
    }
}

impl From<&str> for FlagsRequest {
    /// Every flag for this distinct id.
    fn from(distinct_id: &str) -> Self {
        FlagsRequest::new(distinct_id)
    }
}

impl From<String> for FlagsRequest {
    /// Every flag for this distinct id.
    fn from(distinct_id: String) -> Self {
        FlagsRequest::new(distinct_id)
    }
}

impl From<&String> for FlagsRequest {
    /// Every flag for this distinct id.
    fn from(distinct_id: &String) -> Self {
        FlagsRequest::new(distinct_id.as_str())
    }
}

/// Every flag's value for one user, as evaluated at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FlagsSnapshot {
    pub(super) values: HashMap<String, FlagValue>,
    pub(super) payloads: HashMap<String, Value>,
    pub(super) quota_limited: Vec<String>,
    /// PostHog said it failed to compute some of the flags (`errorsWhileComputingFlags`).
    pub(super) errors_while_computing: bool,
    /// The id PostHog gave its answer (`requestId`).
    pub(super) request_id: Option<String>,
    /// Flags nobody decided, with the reason.
    pub(super) undecided: BTreeMap<String, String>,
}

impl FlagsSnapshot {
    /// A snapshot of values decided locally, and of the flags local definitions could not
    /// decide.
    pub(super) fn local(
        values: HashMap<String, FlagValue>,
        payloads: HashMap<String, Value>,
        undecided: BTreeMap<String, String>,
    ) -> Self {
        FlagsSnapshot {
            values,
            payloads,
            quota_limited: Vec::new(),
            errors_while_computing: false,
            request_id: None,
            undecided,
        }
    }

    /// Adds what PostHog decided for the flags this snapshot left undecided; those PostHog
    /// did not answer for stay undecided.
    pub(super) fn merge_remote(&mut self, remote: FlagsSnapshot) {
        for key in remote.values.keys() {
            self.undecided.remove(key);
        }
        for reason in self.undecided.values_mut() {
            *reason = format!("{reason}; PostHog returned no value for it either");
        }
        self.values.extend(remote.values);
        self.payloads.extend(remote.payloads);
        self.quota_limited = remote.quota_limited;
        self.errors_while_computing = remote.errors_while_computing;
        self.request_id = remote.request_id;
    }

    /// Flags that could not be decided, each with the reason: with
    /// `local_evaluation_only`, those the local definitions cannot decide (a person property
    /// the request did not supply, a static cohort, ...). They read as off and have no value.
    pub fn undecided(&self) -> impl Iterator<Item = (&str, &str)> {
        self.undecided
            .iter()
            .map(|(key, reason)| (key.as_str(), reason.as_str()))
    }

    /// Whether the flag is on (`true` or any variant); unknown flags are off.
    pub fn is_enabled(&self, key: &str) -> bool {
        self.values.get(key).is_some_and(FlagValue::is_enabled)
    }

    /// The flag's variant, for multivariate flags.
    pub fn variant(&self, key: &str) -> Option<&str> {
        self.values.get(key).and_then(FlagValue::variant)
    }

    /// The flag's value, if PostHog returned one.
    pub fn value(&self, key: &str) -> Option<&FlagValue> {
        self.values.get(key)
    }

    /// The payload configured for the flag's value.
    pub fn payload(&self, key: &str) -> Option<&Value> {
        self.payloads.get(key)
    }

    /// Every flag and its value.
    pub fn values(&self) -> &HashMap<String, FlagValue> {
        &self.values
    }

    /// `$feature/<key>` and each flag's value, sorted by key: what events carry to be split
    /// by variant.
    pub(crate) fn feature_properties(&self) -> Vec<(String, Value)> {
        let mut properties: Vec<(String, Value)> = self
            .values
            .iter()
            .map(|(key, value)| (format!("$feature/{key}"), json_value(value)))
            .collect();
        properties.sort_by(|a, b| a.0.cmp(&b.0));
        properties
    }

    /// Products PostHog is not evaluating because the project is over its quota.
    pub fn quota_limited(&self) -> &[String] {
        &self.quota_limited
    }

    /// Whether PostHog said it failed to compute some of the flags it was asked for
    /// (`errorsWhileComputingFlags`): those it left out, or answered as off, may not be what
    /// their conditions say. Exposures recorded from such an answer carry
    /// `$feature_flag_error`.
    pub fn errors_while_computing(&self) -> bool {
        self.errors_while_computing
    }

    /// The id PostHog gave the answer these values came from (`requestId`), when PostHog
    /// was asked and said; exposures carry it as `$feature_flag_request_id`.
    pub fn request_id(&self) -> Option<&str> {
        self.request_id.as_deref()
    }

    /// What went wrong for `key` in PostHog's answer, as PostHog's SDKs write it in
    /// `$feature_flag_error`: `errors_while_computing_flags`, `quota_limited` and
    /// `flag_missing`, comma-joined in that order; `None` when nothing did.
    pub(crate) fn error_of(&self, key: &str) -> Option<String> {
        let mut errors = Vec::new();
        if self.errors_while_computing {
            errors.push("errors_while_computing_flags");
        }
        if self
            .quota_limited
            .iter()
            .any(|product| product == "feature_flags")
        {
            errors.push("quota_limited");
        }
        if !self.values.contains_key(key) {
            errors.push("flag_missing");
        }
        (!errors.is_empty()).then(|| errors.join(","))
    }
}
