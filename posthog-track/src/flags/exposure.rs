//! `$feature_flag_called`: the exposure event PostHog's experiments count, sent once per
//! user, flag and value.

use std::collections::{HashMap, HashSet};

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
    seen: HashSet<(String, String, FlagValue)>,
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
    pub(crate) fn first_time(&mut self, distinct_id: &str, flag: &str, value: &FlagValue) -> bool {
        let bytes = distinct_id.len() + flag.len() + value_bytes(value);
        if distinct_id.len() > MAX_CACHED_ID_BYTES || bytes > MAX_BYTES {
            return true;
        }
        // The value itself, not its text: a variant named "true" is not the boolean `true`.
        let entry = (distinct_id.to_owned(), flag.to_owned(), value.clone());
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

/// The exposure event, with the request's groups as `$groups` so that an experiment
/// aggregated by a group counts the exposure for it.
pub(crate) fn exposure_event(
    distinct_id: &str,
    groups: &HashMap<String, String>,
    flag: &str,
    value: &FlagValue,
    locally_evaluated: bool,
) -> Event {
    let event = Event::new("$feature_flag_called")
        .distinct_id(distinct_id)
        .property("$feature_flag", flag)
        .property("$feature_flag_response", json_value(value))
        .property(format!("$feature/{flag}"), json_value(value))
        .property("locally_evaluated", locally_evaluated);
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
        assert!(cache.first_time("u1", "beta", &on));
        assert!(!cache.first_time("u1", "beta", &on));
        assert!(
            cache.first_time("u1", "beta", &FlagValue::Variant("test".into())),
            "a new value is a new exposure"
        );
        // Full: it starts over rather than grow.
        assert!(cache.first_time("u2", "beta", &on));
        assert!(cache.seen.len() <= 2);
    }

    /// The cache kept values as text, so after `true` a variant named "true" was taken as
    /// already exposed.
    #[test]
    fn a_variant_named_true_is_not_the_boolean() {
        let mut cache = ExposureCache::new(10);
        assert!(cache.first_time("u1", "beta", &FlagValue::Enabled(true)));
        assert!(cache.first_time("u1", "beta", &FlagValue::Variant("true".into())));
        assert!(!cache.first_time("u1", "beta", &FlagValue::Variant("true".into())));
    }

    #[test]
    fn bounded_in_bytes_and_long_ids_are_not_kept() {
        let mut cache = ExposureCache::new(50_000);
        let on = FlagValue::Enabled(true);
        let kept = |cache: &ExposureCache| -> usize {
            cache
                .seen
                .iter()
                .map(|(id, flag, value)| id.len() + flag.len() + value_bytes(value))
                .sum()
        };
        // Header-supplied ids of any length: not remembered, so never a memory sink.
        let long = "x".repeat(1 << 20);
        for _ in 0..3 {
            assert!(cache.first_time(&long, "beta", &on));
        }
        assert_eq!(kept(&cache), 0);
        // Many ids of the longest kept length stay within the byte bound.
        for n in 0..40_000 {
            let id = format!("{n:0>200}");
            cache.first_time(&id, "beta", &on);
            if n % 1_000 == 0 {
                assert!(kept(&cache) <= 4 << 20, "{} bytes after {n}", kept(&cache));
            }
        }
    }
}
