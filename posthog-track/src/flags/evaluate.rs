//! The evaluation algorithm, a faithful port of PostHog's local evaluation.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use serde_json::Value;
use sha1::{Digest, Sha1};

use super::definitions::{Definitions, FlagDefinition, PropertyFilter};
use super::operators::{Regexes, is_regex_operator, match_property};
use super::value::{FlagError, FlagValue, Inconclusive, Properties, decode_payload};

/// Evaluates flags from their definitions, with no network.
#[derive(Debug, Clone, Default)]
pub struct LocalEvaluator {
    flags: HashMap<String, FlagDefinition>,
    /// Flags whose definition could not be read, with why: only PostHog can evaluate them.
    unreadable: HashMap<String, String>,
    group_type_mapping: HashMap<String, String>,
    /// Cohort property groups by cohort id (`send_cohorts`).
    cohorts: HashMap<String, Value>,
    /// Every `regex`/`not_regex` pattern of the flags and cohorts, compiled once.
    regexes: Regexes,
}

/// How deep cohorts within cohorts and flags depending on flags may nest before evaluation
/// gives up (inconclusive): far deeper than real projects, far shallower than the stack.
const MAX_DEPTH: usize = 32;

#[derive(PartialEq, Eq)]
enum ConditionMatch {
    Match,
    NoMatch,
    OutOfRollout,
}

// 2^60 - 1: the largest value of 15 hex digits.
const LONG_SCALE: f64 = 0xFFF_FFFF_FFFF_FFFF_u64 as f64;

/// PostHog's bucketing: a stable number in [0, 1) for a flag key and a bucketing value (the
/// distinct id, or a group key), from the first 15 hex digits of a SHA-1.
pub(crate) fn bucket(flag_key: &str, bucketing_value: &str, salt: &str) -> f64 {
    let mut hasher = Sha1::new();
    hasher.update(flag_key.as_bytes());
    hasher.update(b".");
    hasher.update(bucketing_value.as_bytes());
    hasher.update(salt.as_bytes());
    let digest = hasher.finalize();
    // 15 hex digits are the top 60 bits of the digest.
    let mut top = [0u8; 8];
    top.copy_from_slice(&digest[..8]);
    let value = u64::from_be_bytes(top) >> 4;
    value as f64 / LONG_SCALE
}

impl LocalEvaluator {
    /// Reads the body of `/flags/definitions` (`{"flags": [...], "group_type_mapping": {...}}`).
    pub fn from_json(definitions: &str) -> Result<Self, FlagError> {
        let value: Value = serde_json::from_str(definitions)?;
        let group_type_mapping = value
            .get("group_type_mapping")
            .and_then(Value::as_object)
            .map(|mapping| {
                mapping
                    .iter()
                    .filter_map(|(index, name)| Some((index.clone(), name.as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default();
        let cohorts: HashMap<String, Value> = value
            .get("cohorts")
            .and_then(Value::as_object)
            .map(|cohorts| {
                cohorts
                    .iter()
                    .map(|(id, group)| (id.clone(), group.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let definitions: Definitions = serde_json::from_value(value)?;
        let mut flags = HashMap::new();
        let mut unreadable = HashMap::new();
        for flag in definitions.flags {
            // A flag without a key cannot be asked for; one with a key but an unexpected
            // shape is left to PostHog.
            let Some(key) = flag.get("key").and_then(Value::as_str).map(str::to_owned) else {
                continue;
            };
            match serde_json::from_value::<FlagDefinition>(flag) {
                Ok(flag) => {
                    flags.insert(key, flag);
                }
                Err(error) => {
                    tracing::warn!(
                        flag = %key,
                        %error,
                        "a feature flag definition could not be read; PostHog evaluates it"
                    );
                    unreadable.insert(key, format!("its definition could not be read: {error}"));
                }
            }
        }
        let mut regexes = Regexes::default();
        for filter in flags
            .values()
            .flat_map(|flag| &flag.filters.groups)
            .flat_map(|condition| &condition.properties)
            .filter(|filter| is_regex_operator(filter.operator.as_deref()))
        {
            regexes.add(&filter.value);
        }
        for group in cohorts.values() {
            collect_cohort_regexes(group, &mut regexes);
        }
        Ok(LocalEvaluator {
            flags,
            unreadable,
            group_type_mapping,
            cohorts,
            regexes,
        })
    }

    /// The keys of every flag in the definitions (those it could not read included: they
    /// evaluate as undecided, for PostHog to decide).
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.flags
            .keys()
            .chain(self.unreadable.keys())
            .map(String::as_str)
    }

    /// The definition of a flag.
    pub fn flag(&self, key: &str) -> Option<&FlagDefinition> {
        self.flags.get(key)
    }

    /// The flag's value for `distinct_id`, with no person properties.
    pub fn evaluate(&self, flag_key: &str, distinct_id: &str) -> Result<FlagValue, FlagError> {
        self.evaluate_with(
            flag_key,
            distinct_id,
            &Properties::new(),
            &HashMap::new(),
            &HashMap::new(),
        )
    }

    /// The flag's value for `distinct_id`, given person properties, the groups the user
    /// belongs to (group type to group key) and those groups' properties.
    pub fn evaluate_with(
        &self,
        flag_key: &str,
        distinct_id: &str,
        person_properties: &Properties,
        groups: &HashMap<String, String>,
        group_properties: &HashMap<String, Properties>,
    ) -> Result<FlagValue, FlagError> {
        let inconclusive = |Inconclusive(reason)| FlagError::Inconclusive {
            flag: flag_key.to_owned(),
            reason,
        };
        if let Some(reason) = self.unreadable.get(flag_key) {
            return Err(inconclusive(Inconclusive(reason.clone())));
        }
        let flag = self
            .flags
            .get(flag_key)
            .ok_or_else(|| FlagError::UnknownFlag(flag_key.to_owned()))?;
        // Checked before `active`, as PostHog's SDKs do.
        if flag.ensure_experience_continuity {
            return Err(inconclusive(Inconclusive(
                "the flag has experience continuity enabled".to_owned(),
            )));
        }
        if !flag.active {
            return Ok(FlagValue::Enabled(false));
        }
        let context = |bucketing_value| Context {
            evaluator: self,
            bucketing_value,
            groups,
            group_properties,
            cache: RefCell::new(HashMap::new()),
            cohorts_in_progress: RefCell::new(Vec::new()),
            cohort_results: RefCell::new(HashMap::new()),
            depth: Cell::new(0),
        };
        match flag.filters.aggregation_group_type_index {
            None => {
                if flag.buckets_by_device() {
                    return Err(inconclusive(Inconclusive(
                        "the flag buckets by device id, which only PostHog knows".to_owned(),
                    )));
                }
                context(distinct_id)
                    .match_flag(flag, distinct_id, person_properties)
                    .map_err(inconclusive)
            }
            Some(index) => {
                let Some(group_type) = self.group_type_mapping.get(&index.to_string()) else {
                    return Err(inconclusive(Inconclusive(format!(
                        "unknown group type index {index}"
                    ))));
                };
                // A group flag for someone outside any such group is off.
                let Some(group_key) = groups.get(group_type) else {
                    return Ok(FlagValue::Enabled(false));
                };
                let empty = Properties::new();
                let properties = group_properties.get(group_type).unwrap_or(&empty);
                // The flags it depends on bucket by the group key too.
                context(group_key)
                    .match_flag(flag, group_key, properties)
                    .map_err(inconclusive)
            }
        }
    }

    /// The payload configured for the flag's `value`, if any.
    pub fn payload(&self, flag_key: &str, value: &FlagValue) -> Option<Value> {
        let flag = self.flags.get(flag_key)?;
        let key = match value {
            FlagValue::Enabled(false) => return None,
            FlagValue::Enabled(true) => "true",
            FlagValue::Variant(variant) => variant,
        };
        flag.filters.payloads.get(key).map(decode_payload)
    }
}

/// The regex patterns of a cohort's property groups, however they nest (iteratively: cohort
/// data is remote input).
fn collect_cohort_regexes(group: &Value, regexes: &mut Regexes) {
    let mut pending = vec![group];
    while let Some(value) = pending.pop() {
        match value {
            Value::Array(items) => pending.extend(items),
            Value::Object(object) => {
                if is_regex_operator(object.get("operator").and_then(Value::as_str))
                    && let Some(pattern) = object.get("value")
                {
                    regexes.add(pattern);
                }
                if let Some(values) = object.get("values") {
                    pending.push(values);
                }
            }
            _ => {}
        }
    }
}

/// A flag dependency within one evaluation.
#[derive(Clone)]
enum Dependency {
    /// Being evaluated: meeting it again is a cycle.
    InProgress,
    Decided(FlagValue),
    Undecided,
}

/// One evaluation: what flag dependencies need (the other flags, and the values computed so
/// far, so each flag of a chain is evaluated once), and what bounds the recursion of cohorts
/// and dependencies (cycles and depth).
struct Context<'a> {
    evaluator: &'a LocalEvaluator,
    /// What the evaluated flag buckets by (the distinct id, or the group key of a group
    /// flag), and so what the flags it depends on bucket by.
    bucketing_value: &'a str,
    /// The request's groups and their properties, for conditions about a group in a flag
    /// about persons (mixed targeting).
    groups: &'a HashMap<String, String>,
    group_properties: &'a HashMap<String, Properties>,
    cache: RefCell<HashMap<String, Dependency>>,
    cohorts_in_progress: RefCell<Vec<String>>,
    /// Each cohort is matched once per evaluation, however many conditions refer to it:
    /// evaluation stays linear in the size of the definitions.
    cohort_results: RefCell<HashMap<String, Result<bool, Undecided>>>,
    depth: Cell<usize>,
}

impl Context<'_> {
    /// Runs `nested` one level deeper, or fails when evaluation is nested too deeply.
    fn nested<T>(&self, nested: impl FnOnce() -> Result<T, Undecided>) -> Result<T, Undecided> {
        let depth = self.depth.get();
        if depth >= MAX_DEPTH {
            return Err(Undecided::RequiresServer(format!(
                "cohorts and flag dependencies nest more than {MAX_DEPTH} levels deep"
            )));
        }
        self.depth.set(depth + 1);
        let result = nested();
        self.depth.set(depth);
        result
    }

    fn match_flag(
        &self,
        flag: &FlagDefinition,
        bucketing_value: &str,
        properties: &Properties,
    ) -> Result<FlagValue, Inconclusive> {
        let variants = flag
            .filters
            .multivariate
            .as_ref()
            .map(|m| m.variants.as_slice())
            .unwrap_or_default();
        let mut inconclusive = None;
        for condition in &flag.filters.groups {
            // Mixed targeting: a condition about another aggregation than the flag's matches
            // that group's properties and buckets by its key (or the person's, for a person
            // condition in a group flag).
            let flag_aggregation = flag.filters.aggregation_group_type_index;
            let aggregation = condition
                .aggregation_group_type_index
                .unwrap_or(flag_aggregation);
            let (properties, bucketing_value) = match aggregation {
                Some(index) if aggregation != flag_aggregation => {
                    let group = self.evaluator.group_type_mapping.get(&index.to_string());
                    // Someone outside the group: the condition does not apply to them.
                    let Some((group, key)) = group
                        .and_then(|group| self.groups.get(group).map(|key| (group, key.as_str())))
                    else {
                        continue;
                    };
                    match self.group_properties.get(group) {
                        Some(properties) => (properties, key),
                        None => {
                            inconclusive = Some(Inconclusive(format!(
                                "no properties were given for group `{group}`"
                            )));
                            continue;
                        }
                    }
                }
                _ => (properties, bucketing_value),
            };
            match self.condition_match(flag, condition, bucketing_value, properties) {
                Ok(ConditionMatch::Match) => {
                    let variant = condition
                        .variant
                        .as_ref()
                        .filter(|forced| variants.iter().any(|variant| &variant.key == *forced))
                        .cloned()
                        .or_else(|| matching_variant(flag, bucketing_value));
                    return Ok(variant.map_or(FlagValue::Enabled(true), FlagValue::Variant));
                }
                Ok(ConditionMatch::OutOfRollout) if flag.filters.early_exit => {
                    return Ok(FlagValue::Enabled(false));
                }
                Ok(_) => {}
                // Only PostHog can decide (a static cohort): no other condition can help.
                Err(Undecided::RequiresServer(reason)) => return Err(Inconclusive(reason)),
                // Another condition may still decide; remember that this one could not.
                Err(Undecided::Inconclusive(reason)) => inconclusive = Some(Inconclusive(reason)),
            }
        }
        match inconclusive {
            Some(reason) => Err(reason),
            None => Ok(FlagValue::Enabled(false)),
        }
    }

    fn condition_match(
        &self,
        flag: &FlagDefinition,
        condition: &super::definitions::Condition,
        bucketing_value: &str,
        properties: &Properties,
    ) -> Result<ConditionMatch, Undecided> {
        for filter in &condition.properties {
            let matches = match filter.kind.as_deref() {
                Some("cohort") => self.match_cohort(filter, properties)?,
                Some("flag") => self.match_dependency(filter, properties)?,
                _ => match_property(filter, properties, &self.evaluator.regexes)?,
            };
            if !matches {
                return Ok(ConditionMatch::NoMatch);
            }
        }
        if let Some(rollout) = condition.rollout_percentage
            && bucket(&flag.key, bucketing_value, "") > rollout / 100.0
        {
            return Ok(ConditionMatch::OutOfRollout);
        }
        Ok(ConditionMatch::Match)
    }

    fn match_cohort(
        &self,
        filter: &PropertyFilter,
        properties: &Properties,
    ) -> Result<bool, Undecided> {
        let id = match &filter.value {
            Value::String(id) => id.clone(),
            other => other.to_string(),
        };
        let Some(group) = self.evaluator.cohorts.get(&id) else {
            return Err(Undecided::RequiresServer(format!(
                "cohort {id} is not in the local definitions (a static cohort?)"
            )));
        };
        let known = self.cohort_results.borrow().get(&id).cloned();
        let matches = match known {
            Some(known) => known?,
            None => {
                if self.cohorts_in_progress.borrow().contains(&id) {
                    return Err(Undecided::RequiresServer(format!(
                        "cohort {id} refers to itself"
                    )));
                }
                self.cohorts_in_progress.borrow_mut().push(id.clone());
                let matches = self.nested(|| self.match_property_group(group, properties));
                self.cohorts_in_progress.borrow_mut().pop();
                self.cohort_results.borrow_mut().insert(id, matches.clone());
                matches?
            }
        };
        match filter.operator.as_deref().unwrap_or("exact") {
            "exact" | "in" => Ok(matches),
            "not_in" => Ok(!matches),
            other => Err(Undecided::Inconclusive(format!(
                "unsupported cohort operator `{other}`"
            ))),
        }
    }

    /// An AND/OR tree of property filters, cohorts and flag dependencies.
    fn match_property_group(
        &self,
        group: &Value,
        properties: &Properties,
    ) -> Result<bool, Undecided> {
        let Some(group) = group.as_object() else {
            return Err(Undecided::RequiresServer(
                "a cohort property group must be an object".to_owned(),
            ));
        };
        if group.is_empty() {
            return Ok(true);
        }
        let is_and = match group.get("type").and_then(Value::as_str) {
            Some("AND") => true,
            Some("OR") => false,
            _ => {
                return Err(Undecided::RequiresServer(
                    "a cohort property group type must be AND or OR".to_owned(),
                ));
            }
        };
        let Some(entries) = group.get("values").and_then(Value::as_array) else {
            return Err(Undecided::RequiresServer(
                "cohort property group values must be a list".to_owned(),
            ));
        };
        // An empty group matches, AND and OR alike.
        if entries.is_empty() {
            return Ok(true);
        }
        let (mut decided, mut inconclusive) = (None, false);
        for entry in entries {
            let Some(object) = entry.as_object() else {
                return Err(Undecided::RequiresServer(
                    "a cohort property group entry must be an object".to_owned(),
                ));
            };
            let nested = object.is_empty()
                || object.contains_key("values")
                || matches!(
                    object.get("type").and_then(Value::as_str),
                    Some("AND" | "OR")
                );
            let outcome = if nested {
                self.nested(|| self.match_property_group(entry, properties))
            } else {
                let filter: PropertyFilter =
                    serde_json::from_value(entry.clone()).map_err(|error| {
                        Undecided::RequiresServer(format!("malformed cohort filter: {error}"))
                    })?;
                let matches = match filter.kind.as_deref() {
                    Some("cohort") => self.match_cohort(&filter, properties),
                    Some("flag") => self.match_dependency(&filter, properties),
                    _ => match_property(&filter, properties, &self.evaluator.regexes)
                        .map_err(Undecided::from),
                };
                matches.map(|matches| matches != filter.negation)
            };
            match outcome {
                Ok(matches) if is_and && !matches => decided = Some(false),
                Ok(matches) if !is_and && matches => decided = Some(true),
                Ok(_) => {}
                Err(Undecided::RequiresServer(reason)) => {
                    return Err(Undecided::RequiresServer(reason));
                }
                Err(Undecided::Inconclusive(_)) => inconclusive = true,
            }
        }
        match (decided, inconclusive) {
            (Some(result), _) => Ok(result),
            (None, true) => Err(Undecided::Inconclusive(
                "a cohort property was not supplied".to_owned(),
            )),
            // AND: every entry matched; OR: none did.
            (None, false) => Ok(is_and),
        }
    }

    /// `flag_evaluates_to`: another flag's value, evaluated first along its dependency chain.
    fn match_dependency(
        &self,
        filter: &PropertyFilter,
        properties: &Properties,
    ) -> Result<bool, Undecided> {
        // A malformed condition is a definite no-match, as on PostHog's servers.
        if filter.operator.as_deref() != Some("flag_evaluates_to")
            || filter.key.is_empty()
            || filter.value.is_null()
        {
            return Ok(false);
        }
        let Some(chain) = &filter.dependency_chain else {
            return Err(Undecided::Inconclusive(format!(
                "dependency on `{}` has no dependency_chain",
                filter.key
            )));
        };
        if chain.is_empty() {
            return Err(Undecided::Inconclusive(format!(
                "circular dependency on `{}`",
                filter.key
            )));
        }
        for key in chain {
            let known = self.cache.borrow().get(key).cloned();
            match known {
                Some(Dependency::InProgress) => {
                    return Err(Undecided::Inconclusive(format!(
                        "circular dependency on `{key}`"
                    )));
                }
                Some(_) => continue,
                None => {}
            }
            let Some(flag) = self.evaluator.flags.get(key) else {
                self.cache
                    .borrow_mut()
                    .insert(key.clone(), Dependency::Undecided);
                return Err(Undecided::Inconclusive(format!(
                    "dependency `{key}` is not in the local definitions"
                )));
            };
            if !flag.active {
                self.cache
                    .borrow_mut()
                    .insert(key.clone(), Dependency::Decided(FlagValue::Enabled(false)));
                continue;
            }
            self.cache
                .borrow_mut()
                .insert(key.clone(), Dependency::InProgress);
            // A group flag keeps bucketing by the group key of this evaluation; a person flag
            // bucketing by device id cannot be decided here.
            if flag.filters.aggregation_group_type_index.is_none() && flag.buckets_by_device() {
                self.cache
                    .borrow_mut()
                    .insert(key.clone(), Dependency::Undecided);
                return Err(Undecided::Inconclusive(format!(
                    "dependency `{key}` buckets by device id, which only PostHog knows"
                )));
            }
            let outcome = self.nested(|| {
                self.match_flag(flag, self.bucketing_value, properties)
                    .map_err(Undecided::from)
            });
            match outcome {
                Ok(value) => {
                    self.cache
                        .borrow_mut()
                        .insert(key.clone(), Dependency::Decided(value));
                }
                Err(Undecided::Inconclusive(reason) | Undecided::RequiresServer(reason)) => {
                    self.cache
                        .borrow_mut()
                        .insert(key.clone(), Dependency::Undecided);
                    return Err(Undecided::Inconclusive(format!(
                        "dependency `{key}`: {reason}"
                    )));
                }
            }
        }
        let actual = match self.cache.borrow().get(&filter.key) {
            Some(Dependency::Decided(value)) => Some(value.clone()),
            _ => None,
        };
        let Some(actual) = actual else {
            return Err(Undecided::Inconclusive(format!(
                "dependency `{}` was not evaluated",
                filter.key
            )));
        };
        Ok(match (&actual, &filter.value) {
            (FlagValue::Variant(_), Value::Bool(expected)) => *expected,
            (FlagValue::Variant(variant), Value::String(expected)) => variant == expected,
            (FlagValue::Enabled(enabled), Value::Bool(expected)) => enabled == expected,
            _ => false,
        })
    }
}

/// Why a condition could not be decided locally.
#[derive(Clone)]
enum Undecided {
    /// Missing data; another condition may still decide.
    Inconclusive(String),
    /// Only PostHog can decide (a static cohort, malformed cohort data).
    RequiresServer(String),
}

impl From<Inconclusive> for Undecided {
    fn from(Inconclusive(reason): Inconclusive) -> Self {
        Undecided::Inconclusive(reason)
    }
}

fn matching_variant(flag: &FlagDefinition, bucketing_value: &str) -> Option<String> {
    let variants = &flag.filters.multivariate.as_ref()?.variants;
    let hash = bucket(&flag.key, bucketing_value, "variant");
    let mut low = 0.0;
    for variant in variants {
        let high = low + variant.rollout_percentage / 100.0;
        if hash >= low && hash < high {
            return Some(variant.key.clone());
        }
        low = high;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn eval(
        definitions: Value,
        key: &str,
        distinct_id: &str,
        person: Value,
        groups: &[(&str, &str)],
        group_props: Value,
    ) -> Result<FlagValue, String> {
        let evaluator = LocalEvaluator::from_json(&definitions.to_string()).unwrap();
        let person: Properties = serde_json::from_value(person).unwrap();
        let groups: HashMap<String, String> = groups
            .iter()
            .map(|(t, k)| (t.to_string(), k.to_string()))
            .collect();
        let group_props: HashMap<String, Properties> = serde_json::from_value(group_props).unwrap();
        evaluator
            .evaluate_with(key, distinct_id, &person, &groups, &group_props)
            .map_err(|e| e.to_string())
    }

    /// posthog-python's `_compute_flag_locally`: `ensure_experience_continuity` is inconclusive
    /// (only the server, with its hash-key overrides, can decide), even for an inactive flag.
    #[test]
    fn experience_continuity_flag_is_inconclusive() {
        let defs = json!({"flags": [{"key": "onboarding", "active": true,
            "ensure_experience_continuity": true,
            "filters": {"groups": [{"properties": [], "rollout_percentage": 100}]}}]});
        let got = eval(defs, "onboarding", "user-1", json!({}), &[], json!({}));
        assert!(got.is_err(), "expected inconclusive, got {got:?}");
        let inactive = json!({"flags": [{"key": "onboarding", "active": false,
            "ensure_experience_continuity": true}]});
        let got = eval(inactive, "onboarding", "user-1", json!({}), &[], json!({}));
        assert!(got.is_err(), "expected inconclusive, got {got:?}");
    }

    /// posthog-python resolve_bucketing_value: `bucketing_identifier: "device_id"` without a
    /// device id -> InconclusiveMatchError; never bucket such a flag by the distinct id.
    #[test]
    fn device_id_bucketed_flag_is_inconclusive_without_device_id() {
        let defs = json!({"flags": [{"key": "device-flag", "active": true,
            "filters": {"bucketing_identifier": "device_id",
                "groups": [{"properties": [], "rollout_percentage": 50}]}}]});
        let got = eval(defs, "device-flag", "user-1", json!({}), &[], json!({}));
        assert!(got.is_err(), "expected inconclusive, got {got:?}");
        // On the flag itself too, and for a flag that depends on it.
        let defs = json!({"flags": [
            {"key": "device-flag", "active": true, "bucketing_identifier": "device_id",
             "filters": {"groups": [{"properties": [], "rollout_percentage": 50}]}},
            {"key": "parent", "active": true, "filters": {"groups": [{"properties": [{
                "key": "device-flag", "operator": "flag_evaluates_to", "value": true,
                "type": "flag", "dependency_chain": ["device-flag"]}]}]}}]});
        for key in ["device-flag", "parent"] {
            let got = eval(defs.clone(), key, "user-1", json!({}), &[], json!({}));
            assert!(got.is_err(), "{key}: expected inconclusive, got {got:?}");
        }
    }

    /// posthog-python match_feature_flag_properties (mixed targeting): a condition with its own
    /// `aggregation_group_type_index` is matched against that group's properties and key, and
    /// skipped when the group is not passed. test_mixed_targeting "no_match" variant.
    #[test]
    fn mixed_targeting_group_condition_is_not_matched_against_person_properties() {
        let defs = json!({"group_type_mapping": {"0": "company"}, "flags": [{
        "key": "mixed-flag", "active": true,
        "filters": {"aggregation_group_type_index": null, "groups": [
            {"aggregation_group_type_index": 0, "rollout_percentage": 100,
             "properties": [{"key": "plan", "value": "enterprise", "operator": "exact",
                             "type": "group", "group_type_index": 0}]},
            {"aggregation_group_type_index": null, "rollout_percentage": 100,
             "properties": [{"key": "email", "value": "test@example.com",
                             "operator": "exact", "type": "person"}]}
        ]}}]});
        // The person has a `plan` person property, but is in no company group.
        let got = eval(
            defs.clone(),
            "mixed-flag",
            "user-123",
            json!({"email": "wrong@example.com", "plan": "enterprise"}),
            &[],
            json!({}),
        );
        assert_eq!(got, Ok(FlagValue::Enabled(false)));
        // In the company, with its properties: the group condition decides.
        let group = |plan: &str| {
            eval(
                defs.clone(),
                "mixed-flag",
                "user-123",
                json!({"email": "wrong@example.com"}),
                &[("company", "acme")],
                json!({"company": {"plan": plan}}),
            )
        };
        assert_eq!(group("enterprise"), Ok(FlagValue::Enabled(true)));
        assert_eq!(group("free"), Ok(FlagValue::Enabled(false)));
        // In the company without its properties: undecided here, as in the SDKs.
        let got = eval(
            defs.clone(),
            "mixed-flag",
            "user-123",
            json!({"email": "wrong@example.com"}),
            &[("company", "acme")],
            json!({}),
        );
        assert!(got.is_err(), "{got:?}");
        // The person condition still matches on its own.
        let got = eval(
            defs,
            "mixed-flag",
            "user-123",
            json!({"email": "test@example.com"}),
            &[],
            json!({}),
        );
        assert_eq!(got, Ok(FlagValue::Enabled(true)));
    }

    /// One flag PostHog describes in a shape this version cannot read is left to PostHog
    /// (undecided, still listed); the others are evaluated as before. A flag that does not
    /// say whether it is active is not, as in PostHog's SDKs.
    #[test]
    fn an_unreadable_flag_does_not_take_the_others_down() {
        let defs = json!({"flags": [
            {"key": "odd", "active": true, "filters": {"groups": "not a list"}},
            {"key": "nulls", "active": true, "filters": {"early_exit": null,
                "groups": [{"properties": [{"key": "plan", "value": "pro", "negation": null}],
                            "rollout_percentage": null}]}},
            {"key": "silent", "filters": {"groups": [{"properties": []}]}},
            {"key": "inactive", "active": null},
            {"active": true},
            {"key": "on", "active": true, "filters": {"groups": [{"properties": []}]}}
        ]});
        let evaluator = LocalEvaluator::from_json(&defs.to_string()).unwrap();
        let mut keys: Vec<&str> = evaluator.keys().collect();
        keys.sort_unstable();
        assert_eq!(keys, ["inactive", "nulls", "odd", "on", "silent"]);
        let person = json!({"plan": "pro"});
        let got = eval(defs.clone(), "odd", "u1", person.clone(), &[], json!({}));
        assert!(
            got.as_ref()
                .is_err_and(|reason| reason.contains("could not be read")),
            "{got:?}"
        );
        for (key, expected) in [
            ("on", true),
            ("nulls", true),
            ("silent", false),
            ("inactive", false),
        ] {
            let got = eval(defs.clone(), key, "u1", person.clone(), &[], json!({}));
            assert_eq!(got, Ok(FlagValue::Enabled(expected)), "{key}");
        }
    }

    /// posthog-python match_property_group: `if not properties: return True` (an empty group is
    /// a no-op that matches), for OR groups as well as AND groups.
    #[test]
    fn cohort_with_empty_or_group_matches() {
        let defs = json!({"cohorts": {"7": {"type": "OR", "values": []}}, "flags": [{
            "key": "cohort-flag", "active": true,
            "filters": {"groups": [{"rollout_percentage": 100,
                "properties": [{"key": "id", "type": "cohort", "value": 7}]}]}}]});
        let got = eval(defs, "cohort-flag", "user-1", json!({}), &[], json!({}));
        assert_eq!(got, Ok(FlagValue::Enabled(true)));
    }

    /// posthog-python evaluate_flag_dependency: inside a group flag's evaluation the
    /// "distinct id" is the group key, and a group dependency buckets by it
    /// (test_group_flag_dependency_ignores_device_id_bucketing_identifier).
    /// bucket("child", "acme-inc") = 0.4526 (in a 50 % rollout);
    /// bucket("child", "user-123") = 0.9453 (out).
    #[test]
    fn group_flag_dependency_buckets_by_group_key() {
        let defs = json!({"group_type_mapping": {"0": "company"}, "flags": [
            {"key": "child", "active": true, "filters": {"aggregation_group_type_index": 0,
                "groups": [{"properties": [], "rollout_percentage": 50}]}},
            {"key": "parent", "active": true, "filters": {"aggregation_group_type_index": 0,
                "groups": [{"rollout_percentage": 100, "properties": [{
                    "key": "child", "operator": "flag_evaluates_to", "value": true,
                    "type": "flag", "dependency_chain": ["child"]}]}]}}
        ]});
        let child = eval(
            defs.clone(),
            "child",
            "user-123",
            json!({}),
            &[("company", "acme-inc")],
            json!({"company": {}}),
        );
        assert_eq!(
            child,
            Ok(FlagValue::Enabled(true)),
            "the child alone is on for acme-inc"
        );
        let parent = eval(
            defs,
            "parent",
            "user-123",
            json!({}),
            &[("company", "acme-inc")],
            json!({"company": {}}),
        );
        assert_eq!(parent, Ok(FlagValue::Enabled(true)));
    }
}
