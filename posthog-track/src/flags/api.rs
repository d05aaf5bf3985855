//! The flag API of [`Tracker`]: evaluation (local, then remote for what local definitions
//! cannot decide), exposures, and the definitions poller.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::evaluate::LocalEvaluator;
use super::exposure::{Exposure, exposure_event};
use super::poller::{DefinitionsClient, run as poll_definitions};
use super::request::{FlagsRequest, FlagsSnapshot};
use super::value::{FlagError, FlagValue};
use crate::error::{Error, Result};
use crate::sync::lock;
use crate::tracker::Tracker;

impl Tracker {
    /// Every flag's value for one user (or only the request's [`only`](FlagsRequest::only)
    /// flags), as one snapshot. Takes a distinct id (`"user-1"`) or a [`FlagsRequest`] with
    /// person properties, groups and group properties.
    ///
    /// Each flag stands alone: flags the loaded definitions can decide are decided locally;
    /// PostHog (`/flags`) is asked, in one request, for the others only. With
    /// [`local_evaluation_only`](crate::TrackerBuilder::local_evaluation_only) PostHog is never
    /// asked and those flags are reported by [`FlagsSnapshot::undecided`]. `force_remote` asks
    /// PostHog for every flag. Fails when PostHog had to be asked and could not answer.
    pub async fn evaluate_flags(&self, request: impl Into<FlagsRequest>) -> Result<FlagsSnapshot> {
        let request = request.into();
        if request.force_remote {
            return self.evaluate_remotely(&request).await;
        }
        let Some(evaluator) = self.inner.definitions.evaluator() else {
            if self.inner.local_evaluation_only {
                let undecided = request
                    .flag_keys
                    .iter()
                    .map(|key| (key.clone(), "no flag definitions are loaded".to_owned()))
                    .collect();
                return Ok(FlagsSnapshot::local(
                    HashMap::new(),
                    HashMap::new(),
                    undecided,
                ));
            }
            return self.evaluate_remotely(&request).await;
        };
        let mut local = evaluate_locally(&evaluator, &request);
        crate::metrics::flag_evaluations(true, local.values.len());
        if local.undecided.is_empty() || self.inner.local_evaluation_only {
            return Ok(local);
        }
        let keys: Vec<String> = local.undecided.keys().cloned().collect();
        let remote = self.evaluate_remotely(&request.clone().only(keys)).await?;
        local.merge_remote(remote);
        Ok(local)
    }

    async fn evaluate_remotely(&self, request: &FlagsRequest) -> Result<FlagsSnapshot> {
        let Some(flags) = &self.inner.flags else {
            return Err(self.remote_unavailable());
        };
        let snapshot = flags.evaluate(request).await?;
        crate::metrics::flag_evaluations(false, snapshot.values.len());
        Ok(snapshot)
    }

    /// Why PostHog cannot be asked: the tracker is disabled, or has no project key.
    fn remote_unavailable(&self) -> Error {
        if self.config().disabled {
            Error::Disabled {
                operation: "remote feature flag evaluation",
            }
        } else {
            Error::MissingKey {
                key: "POSTHOG_API_KEY",
                purpose: "remote feature flag evaluation needs the project API key",
            }
        }
    }

    /// One flag's value for the request's user (a distinct id or a [`FlagsRequest`]), and its
    /// exposure: a `$feature_flag_called` event, sent once per user, flag and value. Evaluated
    /// locally when definitions are loaded and can decide (unless `force_remote`), by PostHog
    /// otherwise. `None` when the flag is unknown, or undecidable locally with
    /// `local_evaluation_only`.
    ///
    /// An exposure decided by PostHog carries the answer's `$feature_flag_request_id` and,
    /// when the answer was partial, `$feature_flag_error` (`errors_while_computing_flags`,
    /// `quota_limited`, `flag_missing`); a flag PostHog returned no value for is recorded too,
    /// with a null response, as PostHog's own SDKs do. A request that fails records nothing.
    pub async fn get_feature_flag(
        &self,
        key: &str,
        request: impl Into<FlagsRequest>,
    ) -> Result<Option<FlagValue>> {
        let request = request.into();
        // The common case, decided locally, builds no snapshot: this runs on request paths.
        if !request.force_remote {
            let evaluator = self.inner.definitions.evaluator();
            if let Some(value) =
                evaluator.and_then(|evaluator| local_value(&evaluator, key, &request).ok())
            {
                crate::metrics::flag_evaluations(true, 1);
                self.record_exposure(Exposure {
                    distinct_id: &request.distinct_id,
                    groups: &request.groups,
                    flag: key,
                    value: Some(&value),
                    answer: None,
                })
                .await?;
                return Ok(Some(value));
            }
            if self.inner.local_evaluation_only {
                return Ok(None);
            }
        }
        let request = request.only([key]);
        let snapshot = self.evaluate_remotely(&request).await?;
        // Recorded even when PostHog returned no value (`flag_missing`), as PostHog's SDKs
        // do: a misspelt or deleted key then shows in PostHog instead of reading as off.
        let value = snapshot.value(key);
        self.record_exposure(Exposure {
            distinct_id: &request.distinct_id,
            groups: &request.groups,
            flag: key,
            value,
            answer: Some(&snapshot),
        })
        .await?;
        Ok(value.cloned())
    }

    /// Whether the flag is on (`true` or any variant) for the request's user, recording the
    /// exposure like [`get_feature_flag`](Tracker::get_feature_flag). An unknown flag, or one
    /// undecidable with `local_evaluation_only`, is off.
    pub async fn is_feature_enabled(
        &self,
        key: &str,
        request: impl Into<FlagsRequest>,
    ) -> Result<bool> {
        Ok(self
            .get_feature_flag(key, request)
            .await?
            .is_some_and(|value| value.is_enabled()))
    }

    /// Fetches the flag definitions once (needs `POSTHOG_PERSONAL_API_KEY`).
    pub async fn load_flag_definitions(&self) -> Result<()> {
        self.definitions_client()?
            .poll(&self.inner.definitions)
            .await
            .map(|_| ())
    }

    fn definitions_client(&self) -> Result<&DefinitionsClient> {
        if let Some(client) = &self.inner.definitions_client {
            return Ok(client);
        }
        Err(if self.config().disabled {
            Error::Disabled {
                operation: "local feature flag evaluation",
            }
        } else if self.config().api_key.is_none() {
            Error::MissingKey {
                key: "POSTHOG_API_KEY",
                purpose: "local feature flag evaluation needs the project API key",
            }
        } else {
            Error::MissingKey {
                key: "POSTHOG_PERSONAL_API_KEY",
                purpose: "local feature flag evaluation needs a personal (or project secret) API key",
            }
        })
    }

    /// Keeps the flag definitions fresh in the background (every `interval`; longer after
    /// PostHog refuses). Stopped by [`shutdown`](Tracker::shutdown).
    ///
    /// It returns at once and fetches in the background: evaluations made before its first
    /// fetch completes find no definitions and go to PostHog. At start-up, call
    /// [`load_flag_definitions`](Tracker::load_flag_definitions) first, before serving.
    pub fn start_flag_poller(&self, interval: Duration) -> Result<()> {
        let client = self.definitions_client()?.clone();
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(poll_definitions(
            client,
            self.inner.definitions.clone(),
            interval,
            stopped,
        ));
        if let Some(previous) = lock(&self.inner.poller).replace(stop) {
            let _ = previous.send(true);
        }
        Ok(())
    }

    /// The definitions local evaluation uses now, if any are loaded.
    pub fn flag_definitions(&self) -> Option<Arc<LocalEvaluator>> {
        self.inner.definitions.evaluator()
    }

    /// How many flag-routed writes and reads went to the default table because their flag
    /// could not be decided (see [`routed_table`](crate::routed_table)); each is also logged
    /// as a warning with its reason.
    pub fn flag_routing_fallbacks(&self) -> u64 {
        self.inner.routing.fallbacks()
    }

    /// Sends the `$feature_flag_called` exposure, unless the same user, flag and value was
    /// sent before.
    pub(crate) async fn record_exposure(&self, exposure: Exposure<'_>) -> Result<()> {
        let first_time = lock(&self.inner.exposures).first_time(
            exposure.distinct_id,
            exposure.flag,
            exposure.value,
        );
        if first_time {
            self.capture(exposure_event(&exposure)).await?;
            crate::metrics::exposure_sent();
        }
        Ok(())
    }
}

/// Every requested flag the definitions can decide; the others in `undecided` with the reason.
fn evaluate_locally(evaluator: &LocalEvaluator, request: &FlagsRequest) -> FlagsSnapshot {
    let keys: Vec<&str> = if request.flag_keys.is_empty() {
        evaluator.keys().collect()
    } else {
        request.flag_keys.iter().map(String::as_str).collect()
    };
    let mut values = HashMap::new();
    let mut payloads = HashMap::new();
    let mut undecided = BTreeMap::new();
    for key in keys {
        match local_value(evaluator, key, request) {
            Ok(value) => {
                if let Some(payload) = evaluator.payload(key, &value) {
                    payloads.insert(key.to_owned(), payload);
                }
                values.insert(key.to_owned(), value);
            }
            Err(error) => {
                undecided.insert(key.to_owned(), error.to_string());
            }
        }
    }
    FlagsSnapshot::local(values, payloads, undecided)
}

/// `key` decided from local definitions, or why they cannot decide (PostHog must).
pub(crate) fn local_value(
    evaluator: &LocalEvaluator,
    key: &str,
    request: &FlagsRequest,
) -> Result<FlagValue, FlagError> {
    evaluator.evaluate_with(
        key,
        &request.distinct_id,
        &request.person_properties,
        &request.groups,
        &request.group_properties,
    )
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use serde_json::{Value, json};

    use super::*;

    /// posthog-python `_capture_feature_flag_called`: `self.capture("$feature_flag_called",
    /// distinct_id=..., properties=..., groups=groups or {})`, and `$groups` is in its
    /// "Correctness-required" allowlist: a group flag's exposure must carry the groups, or
    /// group-aggregated experiments cannot count it.
    #[tokio::test]
    async fn group_flag_exposure_carries_groups() {
        let definitions = json!({"group_type_mapping": {"0": "company"}, "flags": [{
            "key": "company-beta", "active": true,
            "filters": {"aggregation_group_type_index": 0,
                "groups": [{"properties": [], "rollout_percentage": 100}]}}]});
        let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
        let sink = seen.clone();
        let tracker = Tracker::builder()
            .flag_definitions(LocalEvaluator::from_json(&definitions.to_string()).unwrap())
            .before_send(move |event| {
                sink.lock().unwrap().push(event.clone());
                Some(event)
            })
            .build();
        let request = FlagsRequest::new("user-1").group("company", "acme");
        let value = tracker
            .get_feature_flag("company-beta", request)
            .await
            .unwrap();
        assert_eq!(value, Some(FlagValue::Enabled(true)));
        let events = seen.lock().unwrap().clone();
        let exposure = events
            .iter()
            .find(|event| event["event"] == "$feature_flag_called")
            .expect("an exposure");
        assert_eq!(
            exposure["properties"]["$groups"],
            json!({"company": "acme"}),
            "{exposure}"
        );
    }
}
