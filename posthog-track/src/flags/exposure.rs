//! `$feature_flag_called`: the exposure event PostHog's experiments count, sent once per
//! user, flag and value (no value: a flag PostHog returned none for).

use std::collections::{HashMap, HashSet};

use super::request::FlagsSnapshot;
use super::value::{FlagValue, MAX_CACHED_ID_BYTES, json_value};
use crate::event::Event;

/// Most bytes of distinct ids, flag keys and values the cache holds.
const MAX_BYTES: usize = 4 << 20;

/// Remembers which (distinct id, flag, value) exposures were sent. Bounded in entries and in
/// bytes: when full it starts over, which at worst resends an exposure PostHog already has.
/// Distinct ids come from request headers: one longer than any real id is never remembered
/// (its exposures are sent each time) so it cannot fill the cache.
#[derive(Debug)]
pub(crate) struct ExposureCache {
    seen: HashSet<(String, String, Option<FlagValue>)>,
    capacity: usize,
    bytes: usize,
}

impl ExposureCache {
    pub(crate) fn new(capacity: usize) -> Self {
        ExposureCache {
            seen: HashSet::new(),
            capacity: capacity.max(1),
            bytes: 0,
        }
    }

    /// Whether this exposure is new (and now remembered).
    pub(crate) fn first_time(
        &mut self,
        distinct_id: &str,
        flag: &str,
        value: Option<&FlagValue>,
    ) -> bool {
        let bytes = distinct_id.len() + flag.len() + value.map_or(0, value_bytes);
        if distinct_id.len() > MAX_CACHED_ID_BYTES || bytes > MAX_BYTES {
            return true;
        }
        // The value itself, not its text: a variant named "true" is not the boolean `true`.
        let entry = (distinct_id.to_owned(), flag.to_owned(), value.cloned());
        if self.seen.contains(&entry) {
            return false;
        }
        if self.seen.len() >= self.capacity || self.bytes + bytes > MAX_BYTES {
            self.seen.clear();
            self.bytes = 0;
        }
        self.bytes += bytes;
        self.seen.insert(entry)
    }
}

/// What a value adds to the cache, in bytes.
fn value_bytes(value: &FlagValue) -> usize {
    match value {
        FlagValue::Enabled(_) => 1,
        FlagValue::Variant(variant) => variant.len(),
    }
}

/// One exposure to record: `flag` read as `value` for `distinct_id` (in `groups`).
pub(crate) struct Exposure<'a> {
    pub distinct_id: &'a str,
    pub groups: &'a HashMap<String, String>,
    pub flag: &'a str,
    /// `None`: PostHog returned no value for the flag.
    pub value: Option<&'a FlagValue>,
    /// PostHog's answer the value came from; `None` when decided locally.
    pub answer: Option<&'a FlagsSnapshot>,
}

/// The exposure event, with the request's groups as `$groups` so that an experiment
/// aggregated by a group counts the exposure for it. A value PostHog decided carries the
/// answer's `requestId` and, as PostHog's SDKs write it, what went wrong in the answer
/// (`$feature_flag_error`), so that users PostHog failed to evaluate can be told apart from
/// those it put in the control group.
pub(crate) fn exposure_event(exposure: &Exposure<'_>) -> Event {
    let Exposure {
        distinct_id,
        groups,
        flag,
        value,
        answer,
    } = *exposure;
    let response = value.map_or(serde_json::Value::Null, json_value);
    let mut event = Event::new("$feature_flag_called")
        .distinct_id(distinct_id)
        .property("$feature_flag", flag)
        .property("$feature_flag_response", response.clone())
        .property(format!("$feature/{flag}"), response)
        .property("locally_evaluated", answer.is_none());
    if let Some(answer) = answer {
        if let Some(id) = answer.request_id() {
            event = event.property("$feature_flag_request_id", id);
        }
        if let Some(error) = answer.error_of(flag) {
            event = event.property("$feature_flag_error", error);
        }
    }
    if groups.is_empty() {
        return event;
    }
    let groups: serde_json::Map<String, serde_json::Value> = groups
        .iter()
        .map(|(kind, key)| (kind.clone(), key.clone().into()))
        .collect();
    event.property("$groups", groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_exposure_once_within_the_bound() {
        let mut cache = ExposureCache::new(2);
        let on = FlagValue::Enabled(true);
        assert!(cache.first_time("u1", "beta", Some(&on)));
        assert!(!cache.first_time("u1", "beta", Some(&on)));
        assert!(
            cache.first_time("u1", "beta", Some(&FlagValue::Variant("test".into()))),
            "a new value is a new exposure"
        );
        // Full: it starts over rather than grow.
        assert!(cache.first_time("u2", "beta", Some(&on)));
        assert!(cache.seen.len() <= 2);
    }

    /// The cache kept values as text, so after `true` a variant named "true" was taken as
    /// already exposed.
    #[test]
    fn a_variant_named_true_is_not_the_boolean() {
        let mut cache = ExposureCache::new(10);
        assert!(cache.first_time("u1", "beta", Some(&FlagValue::Enabled(true))));
        assert!(cache.first_time("u1", "beta", Some(&FlagValue::Variant("true".into()))));
        assert!(!cache.first_time("u1", "beta", Some(&FlagValue::Variant("true".into()))));
    }

    #[test]
    fn bounded_in_bytes_and_long_ids_are_not_kept() {
        let mut cache = ExposureCache::new(50_000);
        let on = FlagValue::Enabled(true);
        let kept = |cache: &ExposureCache| -> usize {
            cache
                .seen
                .iter()
                .map(|(id, flag, value)| {
                    id.len() + flag.len() + value.as_ref().map_or(0, value_bytes)
                })
                .sum()
        };
        // Header-supplied ids of any length: not remembered, so never a memory sink.
        let long = "x".repeat(1 << 20);
        for _ in 0..3 {
            assert!(cache.first_time(&long, "beta", Some(&on)));
        }
        assert_eq!(kept(&cache), 0);
        // Many ids of the longest kept length stay within the byte bound.
        for n in 0..40_000 {
            let id = format!("{n:0>200}");
            cache.first_time(&id, "beta", Some(&on));
            if n % 1_000 == 0 {
                assert!(kept(&cache) <= 4 << 20, "{} bytes after {n}", kept(&cache));
            }
        }
    }
}
