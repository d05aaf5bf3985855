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
        let mut regexes = Regexes::default();
        for filter in definitions
            .flags
            .iter()
            .flat_map(|flag| &flag.filters.groups)
            .flat_map(|condition| &condition.properties)
            .filter(|filter| is_regex_operator(filter.operator.as_deref()))
        {
            regexes.add(&filter.value);
        }
        for group in cohorts.values() {
            collect_cohort_regexes(group, &mut regexes);
        }
        let flags = definitions
            .flags
            .into_iter()
            .map(|flag| (flag.key.clone(), flag))
            .collect();
        Ok(LocalEvaluator {
            flags,
            group_type_mapping,
            cohorts,
            regexes,
        })
    }

    /// The keys of every flag in the definitions.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.flags.keys().map(String::as_str)
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
        let flag = self
            .flags
            .get(flag_key)
            .ok_or_else(|| FlagError::UnknownFlag(flag_key.to_owned()))?;
        if !flag.active {
            return Ok(FlagValue::Enabled(false));
        }
        let inconclusive = |Inconclusive(reason)| FlagError::Inconclusive {
            flag: flag_key.to_owned(),
            reason,
        };
        let context = Context {
            evaluator: self,
            distinct_id,
            cache: RefCell::new(HashMap::new()),
            cohorts_in_progress: RefCell::new(Vec::new()),
            cohort_results: RefCell::new(HashMap::new()),
            depth: Cell::new(0),
        };
        match flag.filters.aggregation_group_type_index {
            None => context
                .match_flag(flag, distinct_id, person_properties)
                .map_err(inconclusive),
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
                context
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
    distinct_id: &'a str,
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
            let outcome = self.nested(|| {
                self.match_flag(flag, self.distinct_id, properties)
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
