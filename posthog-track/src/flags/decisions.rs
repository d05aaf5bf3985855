//! The routing decisions of one tracker: which variant each user's writes go to, kept for the
//! lifetime of the definitions they came from, and the fallbacks counted. The tracker owns
//! this state; `routing` decides with it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::value::{FlagValue, MAX_CACHED_ID_BYTES};
use crate::sync::lock;

/// Most routing decisions kept, and most bytes of distinct ids, flag keys and values.
const MAX_ROUTES: usize = 100_000;
const MAX_ROUTE_BYTES: usize = 16 << 20;

/// The routing decisions of one tracker, and its fallbacks.
#[derive(Debug, Default)]
pub(crate) struct RoutingState {
    decisions: Mutex<Decisions>,
    fallbacks: AtomicU64,
    pub(super) warned_remote_in_transaction: AtomicBool,
}

#[derive(Debug, Default)]
struct Decisions {
    /// The definitions generation these decisions were made under.
    generation: u64,
    values: HashMap<(String, String), FlagValue>,
    bytes: usize,
}

impl RoutingState {
    pub(crate) fn fallbacks(&self) -> u64 {
        self.fallbacks.load(Ordering::Relaxed)
    }

    pub(super) fn cached(
        &self,
        generation: u64,
        distinct_id: &str,
        flag: &str,
    ) -> Option<FlagValue> {
        let decisions = lock(&self.decisions);
        if decisions.generation != generation {
            return None;
        }
        decisions
            .values
            .get(&(distinct_id.to_owned(), flag.to_owned()))
            .cloned()
    }

    pub(super) fn remember(
        &self,
        generation: u64,
        distinct_id: &str,
        flag: &str,
        value: &FlagValue,
    ) {
        if distinct_id.len() > MAX_CACHED_ID_BYTES {
            return;
        }
        let mut decisions = lock(&self.decisions);
        let bytes = distinct_id.len() + flag.len() + value.to_string().len();
        if decisions.generation != generation
            || decisions.values.len() >= MAX_ROUTES
            || decisions.bytes + bytes > MAX_ROUTE_BYTES
        {
            // New definitions, or full: start over (a full cache re-decides, from the same
            // definitions, so routes stay the same unless the flag is remote and changed).
            *decisions = Decisions {
                generation,
                ..Decisions::default()
            };
        }
        if decisions
            .values
            .insert((distinct_id.to_owned(), flag.to_owned()), value.clone())
            .is_none()
        {
            decisions.bytes += bytes;
        }
    }

    pub(super) fn fell_back(&self, flag: &str, distinct_id: &str, reason: &str) {
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            flag,
            distinct_id,
            reason,
            "flag routing: the flag could not be decided; using the default table"
        );
    }
}
