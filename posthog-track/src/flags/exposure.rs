//! `$feature_flag_called`: the exposure event PostHog's experiments count, sent once per
//! user, flag and value.

use std::collections::HashSet;

use super::value::{FlagValue, json_value};
use crate::event::Event;

/// Remembers which (distinct id, flag, value) exposures were sent. Bounded: when full it
/// starts over, which at worst resends an exposure PostHog already has.
#[derive(Debug)]
pub(crate) struct ExposureCache {
    seen: HashSet<(String, String, String)>,
    capacity: usize,
}

impl ExposureCache {
    pub(crate) fn new(capacity: usize) -> Self {
        ExposureCache {
            seen: HashSet::new(),
            capacity: capacity.max(1),
        }
    }

    /// Whether this exposure is new (and now remembered).
    pub(crate) fn first_time(&mut self, distinct_id: &str, flag: &str, value: &FlagValue) -> bool {
        if self.seen.len() >= self.capacity {
            self.seen.clear();
        }
        self.seen
            .insert((distinct_id.to_owned(), flag.to_owned(), value.to_string()))
    }
}

/// The exposure event.
pub(crate) fn exposure_event(
    distinct_id: &str,
    flag: &str,
    value: &FlagValue,
    locally_evaluated: bool,
) -> Event {
    Event::new("$feature_flag_called")
        .distinct_id(distinct_id)
        .property("$feature_flag", flag)
        .property("$feature_flag_response", json_value(value))
        .property(format!("$feature/{flag}"), json_value(value))
        .property("locally_evaluated", locally_evaluated)
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
}
