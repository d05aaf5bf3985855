//! Flag-routed tables: which table a model's write goes to when a feature flag puts the row's
//! user in a variant (`#[tracked(table_variant(flag = ..., variant = ..., table = ...))]`).
//!
//! A user's route must not change under them: a row inserted into `documents_v2` has to be
//! updated there too. So each decision (distinct id and flag) is kept for the lifetime of the
//! definitions it came from (a decision PostHog made: until definitions are loaded or change),
//! and a route that cannot be decided goes to the default table loudly: a warning with the
//! reason, counted by [`Tracker::flag_routing_fallbacks`].

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::api::local_value;
use super::exposure::Exposure;
use super::request::FlagsRequest;
use super::value::{FlagValue, json_value};
use crate::event::Stamp;
use crate::shared::Shared;
use crate::tracker::Tracker;

/// What flag routing knows of a model: its default table and the tables its flag variants
/// route rows to. Every [`TrackedModel`](crate::TrackedModel) implements it; nothing else
/// needs to.
pub trait FlagRouted {
    /// What a variant carries besides its flag and table (the model's SQL for that table).
    #[doc(hidden)]
    type Sql: 'static;
    /// The table rows go to when no variant applies.
    const DEFAULT_TABLE: &'static str;
    /// The model's routed variants, in declaration order.
    #[doc(hidden)]
    const VARIANTS: &'static [TableVariant<Self::Sql>];

    /// Every table the model's rows can be in: the default table first, then each variant's,
    /// once each. A row stays in the table it was written to when its user's route changes
    /// later, so a read that must find every row looks in all of them (for a user's current
    /// route, see [`routed_table`]).
    fn tables() -> Vec<&'static str> {
        let mut tables = vec![Self::DEFAULT_TABLE];
        for variant in Self::VARIANTS {
            if !tables.contains(&variant.table) {
                tables.push(variant.table);
            }
        }
        tables
    }
}

/// The table `distinct_id`'s writes of a model go to now: where an `insert` puts a new row,
/// for reads that must follow the same flag routing as the writes. Records the flag's
/// exposure like a write does.
///
/// A row written before its user's route changed (new flag definitions, a route that fell
/// back, a new owner) stays in the table it was written to, which may not be this one:
/// `update`, `delete`, `upsert` and `load_for_update` find it wherever it is, and a read of
/// your own finds it by looking in every table of [`FlagRouted::tables`].
///
/// Called before [`begin`](Tracker::begin), it also decides the user's route outside the
/// transaction: without local definitions that takes a `/flags` request, which the writes
/// that follow then need not make while their transaction holds locks.
pub async fn routed_table<M: FlagRouted>(tracker: &Tracker, distinct_id: &str) -> &'static str {
    choose_variant::<M>(&tracker.inner, distinct_id, false)
        .await
        .0
        .map_or(M::DEFAULT_TABLE, |variant| variant.table)
}

/// The first of `M`'s routed variants whose flag puts `distinct_id` in it, and a
/// `$feature/<flag>` stamp per flag evaluated. Each flag is decided once per user for the
/// lifetime of the definitions (locally when definitions are loaded) and its exposure
/// recorded. A flag that cannot be decided (no key, PostHog unreachable, no value) routes to
/// the default table, with a warning and a count: a write never fails because flags are
/// unavailable. `in_transaction` says whether the caller holds an open transaction (a remote
/// evaluation there is warned about once).
pub(crate) async fn choose_variant<M: FlagRouted>(
    shared: &Arc<Shared>,
    distinct_id: &str,
    in_transaction: bool,
) -> (Option<&'static TableVariant<M::Sql>>, Vec<Stamp>) {
    let tracker = Tracker {
        inner: shared.clone(),
    };
    let tracker = &tracker;
    let mut stamps = Vec::new();
    let mut evaluated: Vec<(&str, Option<FlagValue>)> = Vec::new();
    for variant in M::VARIANTS {
        let value = match evaluated.iter().find(|(flag, _)| *flag == variant.flag) {
            Some((_, value)) => value.clone(),
            None => {
                let value = match decide(tracker, variant.flag, distinct_id, in_transaction).await {
                    Ok(value) => Some(value),
                    Err(reason) => {
                        tracker
                            .inner
                            .routing
                            .fell_back(variant.flag, distinct_id, &reason);
                        None
                    }
                };
                if let Some(value) = &value {
                    stamps.push(Stamp::new(
                        format!("$feature/{}", variant.flag),
                        &json_value(value),
                    ));
                }
                evaluated.push((variant.flag, value.clone()));
                value
            }
        };
        if value.as_ref().and_then(FlagValue::variant) == Some(variant.variant) {
            return (Some(variant), stamps);
        }
    }
    (None, stamps)
}

/// The flag's value for `distinct_id`: the decision kept for these definitions, else decided
/// now (locally, else by PostHog) and kept; `Err` with the reason when nobody can decide.
async fn decide(
    tracker: &Tracker,
    flag: &str,
    distinct_id: &str,
    in_transaction: bool,
) -> Result<FlagValue, String> {
    let routing = &tracker.inner.routing;
    let (generation, evaluator) = tracker.inner.definitions.loaded();
    if let Some(value) = routing.cached(generation, distinct_id, flag) {
        return Ok(value);
    }
    let request = FlagsRequest::new(distinct_id);
    let local = match &evaluator {
        Some(evaluator) => {
            local_value(evaluator, flag, &request).map_err(|error| error.to_string())
        }
        None => Err("no flag definitions are loaded".to_owned()),
    };
    let (value, answer) = match local {
        Ok(value) => (value, None),
        Err(reason) if tracker.inner.local_evaluation_only => {
            return Err(format!("{reason}, and local_evaluation_only is set"));
        }
        Err(_) => {
            // Only a tracker that can ask PostHog warns that it does (a dry run or a disabled
            // tracker falls back at once, with its own warning).
            if in_transaction
                && tracker.inner.flags.is_some()
                && !routing
                    .warned_remote_in_transaction
                    .swap(true, Ordering::Relaxed)
            {
                tracing::warn!(
                    flag,
                    "flag routing asks PostHog inside an open transaction; load flag definitions \
                     (POSTHOG_PERSONAL_API_KEY) or call routed_table before begin"
                );
            }
            let mut request = request.only([flag]);
            request.force_remote = true;
            let snapshot = tracker
                .evaluate_flags(request)
                .await
                .map_err(|error| error.to_string())?;
            match snapshot.value(flag) {
                Some(value) => (value.clone(), Some(snapshot)),
                None => return Err("PostHog returned no value for the flag".to_owned()),
            }
        }
    };
    routing.remember(generation, distinct_id, flag, &value);
    // The route stands even when its exposure cannot be recorded (a full or closed queue).
    if let Err(error) = tracker
        .record_exposure(Exposure {
            distinct_id,
            groups: &HashMap::new(),
            flag,
            value: Some(&value),
            answer: answer.as_ref(),
        })
        .await
    {
        tracing::warn!(flag, %error, "flag routing: the exposure could not be recorded");
    }
    Ok(value)
}

/// A table a flag variant routes rows to.
#[doc(hidden)]
#[derive(Debug)]
pub struct TableVariant<Sql: 'static> {
    pub flag: &'static str,
    pub variant: &'static str,
    pub table: &'static str,
    pub sql: &'static Sql,
}
