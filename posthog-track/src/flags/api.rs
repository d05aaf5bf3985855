//! The flag API of [`Tracker`]: evaluation (local, then remote), exposures, and the
//! definitions poller.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::evaluate::LocalEvaluator;
use super::exposure::exposure_event;
use super::poller::{DefinitionsClient, run as poll_definitions};
use super::request::{FlagsRequest, FlagsSnapshot};
use super::value::FlagValue;
use crate::error::{Error, Result};
use crate::tracker::{Tracker, lock};

impl Tracker {
    /// Every feature flag's value for `distinct_id`, evaluated by PostHog (`/flags`).
    pub async fn evaluate_flags(&self, distinct_id: impl Into<String>) -> Result<FlagsSnapshot> {
        self.evaluate_flags_with(FlagsRequest::new(distinct_id))
            .await
    }

    /// Flag values for a request with person properties, groups and group properties.
    /// Decided locally when definitions are loaded and every requested flag can be decided
    /// from them (unless `force_remote`); otherwise PostHog decides them all in one request.
    pub async fn evaluate_flags_with(&self, request: FlagsRequest) -> Result<FlagsSnapshot> {
        if !request.force_remote {
            if let Some(snapshot) = self.evaluate_locally(&request) {
                return Ok(snapshot);
            }
            if self.inner.local_evaluation_only {
                return Ok(FlagsSnapshot::default());
            }
        }
        self.evaluate_remotely(&request).await
    }

    async fn evaluate_remotely(&self, request: &FlagsRequest) -> Result<FlagsSnapshot> {
        let Some(flags) = &self.inner.flags else {
            return Err(Error::Flags {
                reason:
                    "no POSTHOG_API_KEY (or the tracker is disabled): flags cannot be evaluated"
                        .to_owned(),
            });
        };
        flags.evaluate(request).await
    }

    /// Every requested flag decided from local definitions, or `None` if any cannot be.
    fn evaluate_locally(&self, request: &FlagsRequest) -> Option<FlagsSnapshot> {
        let evaluator = self.inner.definitions.evaluator()?;
        let keys: Vec<&str> = if request.flag_keys.is_empty() {
            evaluator.keys().collect()
        } else {
            request.flag_keys.iter().map(String::as_str).collect()
        };
        let mut values = HashMap::new();
        let mut payloads = HashMap::new();
        for key in keys {
            let value = local_value(&evaluator, key, request)?;
            if let Some(payload) = evaluator.payload(key, &value) {
                payloads.insert(key.to_owned(), payload);
            }
            values.insert(key.to_owned(), value);
        }
        Some(FlagsSnapshot::from_values(values, payloads))
    }

    /// The variant of `flag` for `distinct_id`, recording the exposure: the helper for
    /// routing between code paths (or model types) by experiment. Never fails: a flag that
    /// cannot be evaluated reads as `None`, like a user outside the experiment.
    pub async fn variant(&self, flag: &str, distinct_id: &str) -> Option<String> {
        match self
            .get_feature_flag(flag, FlagsRequest::new(distinct_id))
            .await
        {
            Ok(value) => value.and_then(|value| value.variant().map(str::to_owned)),
            Err(error) => {
                tracing::warn!(flag, %error, "flag unavailable; taking the default path");
                None
            }
        }
    }

    /// One flag's value for the request's user, and its exposure: a `$feature_flag_called`
    /// event, sent once per user, flag and value. Evaluated locally when definitions are
    /// loaded and can decide (unless `force_remote`), by PostHog otherwise. `None` when the
    /// flag is unknown, or undecidable locally with `local_evaluation_only`.
    pub async fn get_feature_flag(
        &self,
        key: &str,
        request: FlagsRequest,
    ) -> Result<Option<FlagValue>> {
        // The common case, decided locally, builds no snapshot: this runs on request paths.
        if !request.force_remote {
            let evaluator = self.inner.definitions.evaluator();
            if let Some(value) =
                evaluator.and_then(|evaluator| local_value(&evaluator, key, &request))
            {
                self.record_exposure(&request.distinct_id, key, &value, true)
                    .await?;
                return Ok(Some(value));
            }
            if self.inner.local_evaluation_only {
                return Ok(None);
            }
        }
        let request = request.only([key]);
        let snapshot = self.evaluate_remotely(&request).await?;
        let Some(value) = snapshot.value(key) else {
            return Ok(None);
        };
        self.record_exposure(&request.distinct_id, key, value, false)
            .await?;
        Ok(Some(value.clone()))
    }

    /// Fetches the flag definitions once (needs `POSTHOG_PERSONAL_API_KEY`).
    pub async fn load_flag_definitions(&self) -> Result<()> {
        self.definitions_client()?
            .poll(&self.inner.definitions)
            .await
            .map(|_| ())
    }

    fn definitions_client(&self) -> Result<&DefinitionsClient> {
        self.inner
            .definitions_client
            .as_ref()
            .ok_or_else(|| Error::Flags {
                reason: "local evaluation needs POSTHOG_API_KEY and POSTHOG_PERSONAL_API_KEY"
                    .to_owned(),
            })
    }

    /// Keeps the flag definitions fresh in the background (every `interval`; longer after
    /// PostHog refuses). Stopped by [`shutdown`](Tracker::shutdown).
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

    /// Sends the `$feature_flag_called` exposure of `key` = `value` for `distinct_id`, unless
    /// it was sent before.
    pub(crate) async fn record_exposure(
        &self,
        distinct_id: &str,
        key: &str,
        value: &FlagValue,
        locally_evaluated: bool,
    ) -> Result<()> {
        let first_time = lock(&self.inner.exposures).first_time(distinct_id, key, value);
        if first_time {
            self.capture(exposure_event(distinct_id, key, value, locally_evaluated))
                .await?;
        }
        Ok(())
    }
}

/// `key` decided from local definitions, or `None` when they cannot decide (PostHog must).
fn local_value(evaluator: &LocalEvaluator, key: &str, request: &FlagsRequest) -> Option<FlagValue> {
    evaluator
        .evaluate_with(
            key,
            &request.distinct_id,
            &request.person_properties,
            &request.groups,
            &request.group_properties,
        )
        .ok()
}
