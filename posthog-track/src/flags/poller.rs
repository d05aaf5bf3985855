//! Keeps local flag definitions fresh: polls `/flags/definitions` with the personal (or
//! project secret) key, using ETags so an unchanged set costs PostHog nothing.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, ETAG, IF_NONE_MATCH, USER_AGENT};

use super::evaluate::LocalEvaluator;
use super::http::{HttpClient, read_bounded};
use crate::client::USER_AGENT_VALUE;
use crate::config::ApiKey;
use crate::error::{Error, Result};

/// Largest `/flags/definitions` answer read; a larger one is an error.
const MAX_DEFINITIONS_BYTES: usize = 64 << 20;

/// The definitions in force, shared between the poller and evaluations.
#[derive(Debug, Default)]
pub(crate) struct DefinitionsCache {
    loaded: RwLock<Loaded>,
    etag: RwLock<Option<String>>,
}

/// The definitions and their generation, which changes each time they are replaced (what
/// decisions made from them, such as flag routes, are kept for).
#[derive(Debug, Default)]
struct Loaded {
    generation: u64,
    evaluator: Option<Arc<LocalEvaluator>>,
}

impl DefinitionsCache {
    pub(crate) fn evaluator(&self) -> Option<Arc<LocalEvaluator>> {
        self.loaded().1
    }

    /// The generation of the definitions in force, and the definitions.
    pub(crate) fn loaded(&self) -> (u64, Option<Arc<LocalEvaluator>>) {
        let loaded = self
            .loaded
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (loaded.generation, loaded.evaluator.clone())
    }

    pub(crate) fn preload(&self, evaluator: LocalEvaluator) {
        self.set(Some(evaluator), None);
    }

    fn set(&self, evaluator: Option<LocalEvaluator>, etag: Option<String>) {
        {
            let mut loaded = self
                .loaded
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            loaded.generation += 1;
            loaded.evaluator = evaluator.map(Arc::new);
        }
        *self
            .etag
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = etag;
    }

    fn etag(&self) -> Option<String> {
        self.etag
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// What one poll did, and how long to wait before the next.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Polled {
    Updated,
    Unchanged,
    /// 401/403/429: keep what we have, wait longer.
    BackOff,
    /// 402: the project is over its quota; flags are cleared until it is not.
    Cleared,
}

#[derive(Clone)]
pub(crate) struct DefinitionsClient {
    http: HttpClient,
    /// Carries the project key (`?token=`, as PostHog's API wants it): never printed.
    url: String,
    secret: ApiKey,
    /// The host carries credentials, which cannot travel beside the Bearer key.
    credentialed_host: bool,
}

impl std::fmt::Debug for DefinitionsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let without_query = self.url.split('?').next().unwrap_or_default();
        f.debug_struct("DefinitionsClient")
            .field("url", &crate::config::redact_host(without_query))
            .field("secret", &self.secret)
            .finish_non_exhaustive()
    }
}

impl DefinitionsClient {
    pub(crate) fn new(host: &str, project_key: &ApiKey, secret: ApiKey, timeout: Duration) -> Self {
        let http = HttpClient::new(timeout);
        let url = format!(
            "{host}/flags/definitions?token={}&send_cohorts",
            project_key.expose()
        );
        DefinitionsClient {
            http,
            url,
            secret,
            credentialed_host: crate::config::host_has_credentials(host),
        }
    }

    pub(crate) async fn poll(&self, cache: &DefinitionsCache) -> Result<Polled> {
        if self.credentialed_host {
            return Err(Error::flags(
                crate::config::bearer_with_credentials(
                    "loading flag definitions (with the personal API key)",
                    "evaluate flags remotely (no personal key)",
                ),
                None,
            ));
        }
        let mut request = self
            .http
            .get()?
            .get(&self.url)
            .header(USER_AGENT, USER_AGENT_VALUE)
            .header(AUTHORIZATION, format!("Bearer {}", self.secret.expose()));
        if let Some(etag) = cache.etag() {
            request = request.header(IF_NONE_MATCH, etag);
        }
        // The URL carries the project key: report the failure without it.
        let response = request.send().await.map_err(|error| {
            Error::flags(
                "fetching flag definitions failed",
                Some(Box::new(error.without_url())),
            )
        })?;
        match response.status() {
            StatusCode::NOT_MODIFIED => Ok(Polled::Unchanged),
            StatusCode::PAYMENT_REQUIRED => {
                tracing::warn!("PostHog: feature flags quota exceeded; local flags are cleared");
                cache.set(None, None);
                Ok(Polled::Cleared)
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::TOO_MANY_REQUESTS => {
                tracing::warn!(status = %response.status(), "PostHog refused the flag definitions request; backing off");
                Ok(Polled::BackOff)
            }
            status if status.is_success() => {
                let etag = response
                    .headers()
                    .get(ETAG)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let (body, more) = read_bounded(response, MAX_DEFINITIONS_BYTES)
                    .await
                    .map_err(|error| {
                        Error::flags(
                            "reading flag definitions failed",
                            Some(Box::new(error.without_url())),
                        )
                    })?;
                if more {
                    return Err(Error::flags(
                        format!(
                            "the flag definitions are larger than {MAX_DEFINITIONS_BYTES} bytes"
                        ),
                        None,
                    ));
                }
                let body = String::from_utf8_lossy(&body);
                let evaluator = LocalEvaluator::from_json(&body).map_err(|error| {
                    Error::flags("loading flag definitions failed", Some(Box::new(error)))
                })?;
                cache.set(Some(evaluator), etag);
                Ok(Polled::Updated)
            }
            // The body is not read: a proxy echoing the request would echo the project key.
            status => Err(Error::flags(
                format!(
                    "flag definitions request answered {status}{}",
                    super::http::host_hint(status)
                ),
                None,
            )),
        }
    }
}

/// Polls until the tracker shuts down or is dropped: every `interval`, four times that after a refusal.
pub(crate) async fn run(
    client: DefinitionsClient,
    cache: Arc<DefinitionsCache>,
    interval: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    while !*stop.borrow() {
        let polled = client.poll(&cache).await;
        if let Err(error) = &polled {
            tracing::warn!(%error, "flag definitions poll failed");
        }
        let wait = wait_after(&polled, interval);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            changed = stop.changed() => {
                if changed.is_err() {
                    return; // the tracker that owned this poller is gone
                }
            }
        }
    }
}

/// How long the poller waits after a poll that ended as `polled`: `interval`, four times that
/// after PostHog refused (401, 403, 429).
fn wait_after(polled: &Result<Polled>, interval: Duration) -> Duration {
    match polled {
        Ok(Polled::BackOff) => interval.saturating_mul(4),
        _ => interval,
    }
}

#[cfg(test)]
mod debug_tests {
    use super::*;

    #[test]
    fn debug_shows_neither_key() {
        let client = DefinitionsClient::new(
            "https://user:pw@eu.i.posthog.com",
            &ApiKey::new("phc_projectsecret123"),
            ApiKey::new("phx_personalsecret123"),
            Duration::from_secs(1),
        );
        let shown = format!("{client:?}");
        for secret in ["projectsecret123", "personalsecret123", "user:pw"] {
            assert!(!shown.contains(secret), "{shown}");
        }
    }

    /// A refusal (401, 403, 429: PostHog's answer) after `start_flag_poller` was given a very
    /// long interval (`Duration::MAX` for "practically never") multiplied the interval by four
    /// and overflowed: the poller task panicked.
    #[test]
    fn a_refusal_after_a_very_long_interval_waits_without_overflow() {
        for interval in [
            Duration::MAX,
            Duration::MAX / 3,
            Duration::from_secs(u64::MAX),
        ] {
            let wait = wait_after(&Ok(Polled::BackOff), interval);
            assert!(wait >= interval, "{wait:?} < {interval:?}");
        }
        let interval = Duration::from_secs(30);
        assert_eq!(wait_after(&Ok(Polled::BackOff), interval), interval * 4);
        assert_eq!(wait_after(&Ok(Polled::Unchanged), interval), interval);
    }
}
