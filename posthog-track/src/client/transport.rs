//! One `/batch/` request and what PostHog's answer means for the events in it.

use std::fmt;
use std::time::Duration;

use reqwest::header::{CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};

use super::backoff::parse_retry_after;
use super::wire;
use crate::config::ApiKey;
use crate::event::format_timestamp;

/// Sent with every request. PostHog decides from the User-Agent that this is a server SDK
/// (which, among other things, changes how flags are evaluated).
pub const USER_AGENT_VALUE: &str = concat!(
    "posthog-track/",
    env!("CARGO_PKG_VERSION"),
    " (rust; server)"
);

/// What one request achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx: PostHog has the events.
    Delivered,
    /// Transport error, 408, 429 or 5xx: send the same events again later.
    Retry {
        retry_after: Option<Duration>,
        reason: String,
    },
    /// 413: the request was too large; smaller requests may pass.
    TooLarge,
    /// 400 and other 4xx: PostHog will never accept this request as it is.
    Rejected { status: u16, reason: String },
    /// 401/403: the project key is wrong. Nothing is wrong with the events: keep them.
    Unauthorized { status: u16, reason: String },
}

/// Sends batches to one PostHog project.
#[derive(Clone)]
pub struct Transport {
    http: reqwest::Client,
    batch_url: String,
    api_key: ApiKey,
    gzip: bool,
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transport")
            .field("batch_url", &self.batch_url)
            .field("api_key", &self.api_key)
            .field("gzip", &self.gzip)
            .finish()
    }
}

impl Transport {
    pub fn new(host: &str, api_key: ApiKey, gzip: bool, timeout: Duration) -> Transport {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .pool_max_idle_per_host(8)
            .build()
            // Building fails only when TLS cannot initialise; fall back to defaults (which
            // would fail the same way on the first request, with a clear error there).
            .unwrap_or_default();
        Transport {
            http,
            batch_url: format!("{host}/batch/"),
            api_key,
            gzip,
        }
    }

    /// Sends `payloads` (complete event objects) in one request.
    pub async fn send(&self, payloads: &[&str], historical_migration: bool) -> Outcome {
        let sent_at = format_timestamp(chrono::Utc::now());
        let body = wire::batch_body(
            self.api_key.expose(),
            payloads,
            historical_migration,
            &sent_at,
        );
        let mut request = self
            .http
            .post(&self.batch_url)
            .header(USER_AGENT, USER_AGENT_VALUE)
            .header(CONTENT_TYPE, "application/json");
        if self.gzip {
            match wire::gzip(&body) {
                Ok(compressed) => {
                    request = request.header(CONTENT_ENCODING, "gzip").body(compressed)
                }
                Err(_) => request = request.body(body),
            }
        } else {
            request = request.body(body);
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(error) => {
                return Outcome::Retry {
                    retry_after: None,
                    reason: transport_reason(&error),
                };
            }
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| parse_retry_after(value, chrono::Utc::now()));
        if (200..300).contains(&status) {
            return Outcome::Delivered;
        }
        let reason = describe(status, response.text().await.unwrap_or_default());
        match status {
            408 | 429 | 500..=599 => Outcome::Retry {
                retry_after,
                reason,
            },
            413 => Outcome::TooLarge,
            401 | 403 => Outcome::Unauthorized { status, reason },
            _ => Outcome::Rejected { status, reason },
        }
    }
}

/// "503 Service Unavailable: <body>", with the body cut short: it ends up in logs and in the
/// outbox's `last_error`, and an HTML error page is no use there.
fn describe(status: u16, body: String) -> String {
    let reason = reqwest::StatusCode::from_u16(status)
        .ok()
        .and_then(|code| code.canonical_reason())
        .unwrap_or("");
    let mut body: String = body.trim().chars().take(300).collect();
    if body.is_empty() {
        body = "(no body)".to_owned();
    }
    format!("{status} {reason}: {body}")
}

/// Never includes the URL's query or the body, which could carry the key.
pub(crate) fn transport_reason(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(error);
    let mut detail = String::new();
    while let Some(cause) = source {
        detail = cause.to_string();
        source = cause.source();
    }
    if detail.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}: {detail}")
    }
}

/// Events too large for PostHog, found before they are ever sent.
pub fn oversized(payload: &str) -> bool {
    payload.len() > wire::MAX_EVENT_BYTES
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_are_bounded() {
        let long = "x".repeat(10_000);
        assert!(describe(503, long).len() < 400);
        assert_eq!(describe(400, String::new()), "400 Bad Request: (no body)");
    }

    #[test]
    fn debug_hides_the_key() {
        let transport = Transport::new(
            "http://127.0.0.1:1",
            ApiKey::new("phc_secret123456"),
            true,
            Duration::from_secs(1),
        );
        assert!(!format!("{transport:?}").contains("secret123456"));
    }
}
