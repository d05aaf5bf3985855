//! One capture request (v0 `/batch/` or v1 `/i/v1/analytics/events`) and what PostHog's
//! answer means for the events in it.

use std::fmt;
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};

use super::backoff::parse_retry_after;
use super::v1::{self, RequestMeta, Verdict};
use super::wire;
use crate::config::{ApiKey, CaptureMode, Compression};
use crate::event::format_timestamp;

/// v1's `PostHog-Sdk-Info`: `name/version`.
const SDK_INFO: &str = concat!("posthog-track/", env!("CARGO_PKG_VERSION"));

/// The most of a v1 200 answer read for its verdicts (an answer for a 4 MB request of small
/// events is well under this).
const MAX_RESULTS_BODY: usize = 8 * 1024 * 1024;

/// Sent with every request. PostHog decides from the User-Agent that this is a server SDK
/// (which, among other things, changes how flags are evaluated).
pub(crate) const USER_AGENT_VALUE: &str = concat!(
    "posthog-track/",
    env!("CARGO_PKG_VERSION"),
    " (rust; server)"
);

/// What one request achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx: PostHog has the events.
    Delivered,
    /// v1's 200 with a verdict per event, in the order of the request's events, and the
    /// answer's `Retry-After` (for the events to retry).
    PerEvent {
        verdicts: Vec<Verdict>,
        retry_after: Option<Duration>,
    },
    /// Transport error, 408, 429 or 5xx: send the same events again later.
    Retry {
        retry_after: Option<Duration>,
        reason: String,
    },
    /// 413: the request was too large; smaller requests may pass.
    TooLarge,
    /// 400: PostHog will never accept this request as it is (one of its events is bad).
    Rejected { reason: String },
    /// 401, 403, 404, 405, a redirect, or another answer that says the set-up is wrong (the
    /// key, the host, a proxy in between), not the events: keep them and wait for a fix.
    Misconfigured { reason: String },
}

/// Sends batches to one PostHog project.
#[derive(Clone)]
pub struct Transport {
    /// `Err` when no HTTP client could be built (TLS could not initialise): every send then
    /// reports it as a configuration failure instead of panicking.
    http: Result<reqwest::Client, String>,
    url: String,
    api_key: ApiKey,
    mode: CaptureMode,
    compression: Compression,
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transport")
            .field("url", &crate::config::redact_host(&self.url))
            .field("api_key", &self.api_key)
            .field("mode", &self.mode)
            .field("compression", &self.compression)
            .finish()
    }
}

impl Transport {
    /// A transport to `host` speaking `mode`, compressing with `compression` (gzip at most on
    /// v0, the only encoding its endpoint understands).
    pub fn new(
        host: &str,
        api_key: ApiKey,
        mode: CaptureMode,
        compression: Compression,
        timeout: Duration,
    ) -> Transport {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .pool_max_idle_per_host(8)
            // A redirect means a wrong host or a proxy: following it would resend the events
            // (and the key) somewhere else, or turn the POST into a GET.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|error| format!("the HTTP client could not be built: {error}"))
            .and_then(|http| match mode {
                CaptureMode::V1 if crate::config::host_has_credentials(host) => {
                    Err(crate::config::bearer_with_credentials(
                        "capture v1",
                        "use capture v0 (POSTHOG_CAPTURE_MODE=v0), which sends the project key \
                         in the body",
                    ))
                }
                _ => Ok(http),
            });
        let compression = match (mode, compression) {
            (CaptureMode::V0, Compression::None) => Compression::None,
            (CaptureMode::V0, _) => Compression::Gzip,
            (_, compression) => compression,
        };
        let url = match mode {
            CaptureMode::V0 => format!("{host}/batch/"),
            CaptureMode::V1 => format!("{host}/i/v1/analytics/events"),
        };
        Transport {
            http,
            url,
            api_key,
            mode,
            compression,
        }
    }

    /// The protocol this transport speaks.
    pub fn mode(&self) -> CaptureMode {
        self.mode
    }

    /// Sends `payloads` (complete event objects) in one request; `meta` is the request's
    /// identity (id, attempt, creation time), which v1 sends in its headers and body.
    pub async fn send(
        &self,
        payloads: &[&str],
        historical_migration: bool,
        meta: &RequestMeta,
    ) -> Outcome {
        let now = format_timestamp(meta.now());
        let body = match self.mode {
            CaptureMode::V0 => {
                wire::batch_body(self.api_key.expose(), payloads, historical_migration, &now)
            }
            CaptureMode::V1 => wire::v1_body(payloads, historical_migration, &meta.created_at),
        };
        let http = match &self.http {
            Ok(http) => http,
            Err(reason) => {
                return Outcome::Misconfigured {
                    reason: reason.clone(),
                };
            }
        };
        let mut request = http
            .post(&self.url)
            .header(USER_AGENT, USER_AGENT_VALUE)
            .header(CONTENT_TYPE, "application/json");
        if self.mode == CaptureMode::V1 {
            request = request
                .header(AUTHORIZATION, format!("Bearer {}", self.api_key.expose()))
                .header("PostHog-Sdk-Info", SDK_INFO)
                .header("PostHog-Attempt", meta.attempt.to_string())
                .header("PostHog-Request-Id", meta.id.to_string())
                .header("PostHog-Request-Timestamp", now);
        }
        // A codec that fails (it cannot, on a Vec) degrades to a plain body, not a lost batch.
        match (
            wire::compress(&body, self.compression),
            self.compression.content_encoding(),
        ) {
            (Ok(Some(packed)), Some(encoding)) => {
                request = request.header(CONTENT_ENCODING, encoding).body(packed);
            }
            _ => request = request.body(body),
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
            if answers_with_a_web_page(&response) {
                // PostHog answers its capture endpoints with JSON (or nothing). A web page is a
                // wrong host's catch-all route (a site, a parked domain, a captive portal): the
                // events did not arrive, and taking them as delivered would delete them.
                return Outcome::Misconfigured {
                    reason: format!(
                        "{}: a web page (text/html), not PostHog's answer{}",
                        describe(status, "").trim_end_matches(": (no body)"),
                        fix_for(404)
                    ),
                };
            }
            if self.mode == CaptureMode::V1 {
                let (body, end) = read_limited(response, MAX_RESULTS_BODY).await;
                if let BodyEnd::Cut(error) = end {
                    // The verdicts may be in what did not arrive (a `retry` among them): send
                    // again rather than take the batch as accepted; PostHog deduplicates.
                    return Outcome::Retry {
                        retry_after,
                        reason: format!(
                            "PostHog's answer was cut short after {} bytes, before its \
                             verdicts were read: {error}",
                            body.len()
                        ),
                    };
                }
                if let Some(verdicts) = v1::verdicts(&body, payloads) {
                    return Outcome::PerEvent {
                        verdicts,
                        retry_after,
                    };
                }
            }
            return Outcome::Delivered;
        }
        let web_page = answers_with_a_web_page(&response);
        let body = read_bounded(response).await;
        let reason = describe(status, &redact(&body, self.api_key.expose()));
        if status == 400 && web_page {
            // PostHog refuses a bad event with JSON. A page is what stands in front of it
            // answering every request so (nginx, to plain HTTP sent to its HTTPS port): a
            // set-up to fix. Taken as a refusal, it had the batch split until every event was
            // sent alone, 2n - 1 requests a round, before anything was said.
            return Outcome::Misconfigured {
                reason: format!(
                    "{reason}: a web page (text/html), not PostHog's answer to a bad event \
                     (check POSTHOG_HOST: a proxy or web server answers instead of PostHog; \
                     nginx answers so when plain http:// is sent to its HTTPS port)"
                ),
            };
        }
        classify(status, retry_after, reason)
    }
}

/// Whether `response` says it is an HTML page, which PostHog's capture endpoints never send.
pub(crate) fn answers_with_a_web_page(response: &reqwest::Response) -> bool {
    response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| {
            let media = value.split(';').next().unwrap_or_default().trim();
            media.eq_ignore_ascii_case("text/html")
                || media.eq_ignore_ascii_case("application/xhtml+xml")
        })
}

/// What an answer other than 2xx means for the events in the request.
pub(crate) fn classify(status: u16, retry_after: Option<Duration>, reason: String) -> Outcome {
    match status {
        408 | 429 | 500..=599 => Outcome::Retry {
            retry_after,
            reason,
        },
        413 => Outcome::TooLarge,
        400 => Outcome::Rejected { reason },
        _ => Outcome::Misconfigured {
            reason: format!("{reason}{}", fix_for(status)),
        },
    }
}

/// What an operator should check, by status.
fn fix_for(status: u16) -> &'static str {
    match status {
        401 => " (check POSTHOG_API_KEY: it must be the project API key, phc_...)",
        403 => {
            " (check POSTHOG_API_KEY and any proxy or firewall between this process and \
             PostHog)"
        }
        404 | 405 => {
            " (check POSTHOG_HOST: it must be the PostHog ingestion host, e.g. \
             https://us.i.posthog.com, or a proxy that forwards /batch/)"
        }
        300..=399 => " (check POSTHOG_HOST: PostHog answered with a redirect; use the final URL)",
        _ => " (PostHog refused the request; check POSTHOG_HOST and POSTHOG_API_KEY)",
    }
}

/// At most `MAX_ERROR_BODY` bytes of an error answer: a proxy can answer with anything, of
/// any size.
pub(crate) async fn read_bounded(response: reqwest::Response) -> String {
    const MAX_ERROR_BODY: usize = 4096;
    String::from_utf8_lossy(&read_limited(response, MAX_ERROR_BODY).await.0).into_owned()
}

/// How the reading of an answer's body ended.
enum BodyEnd {
    /// The whole body was read.
    Complete,
    /// The body was longer than the limit; the rest was not read.
    Capped,
    /// The connection failed before the body ended (reason given).
    Cut(String),
}

/// At most `limit` bytes of an answer's body, and how the reading ended: what arrived before
/// an error, if one cut it.
async fn read_limited(mut response: reqwest::Response, limit: usize) -> (Vec<u8>, BodyEnd) {
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(None) => return (body, BodyEnd::Complete),
            Err(error) => return (body, BodyEnd::Cut(transport_reason(&error))),
            Ok(Some(chunk)) => {
                let room = limit - body.len();
                if chunk.len() > room {
                    body.extend_from_slice(&chunk[..room]);
                    return (body, BodyEnd::Capped);
                }
                body.extend_from_slice(&chunk);
            }
        }
    }
}

/// `body` without `secret`: a proxy that echoes the request would echo the key, and error
/// bodies end up in logs and in the outbox's history.
pub(crate) fn redact(body: &str, secret: &str) -> String {
    if secret.is_empty() {
        body.to_owned()
    } else {
        body.replace(secret, "(redacted)")
    }
}

/// "503 Service Unavailable: <body>", with the body cut short: it ends up in logs and in the
/// outbox's `last_error`, and an HTML error page is no use there.
fn describe(status: u16, body: &str) -> String {
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

/// Names the host and port (so that a wrong `POSTHOG_HOST` shows), never the URL's
/// credentials, query or the body, which could carry the key.
pub(crate) fn transport_reason(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    let kind = match error
        .url()
        .and_then(|url| Some((url.host_str()?, url.port())))
    {
        Some((host, Some(port))) => format!("{kind} ({host}:{port})"),
        Some((host, None)) => format!("{kind} ({host})"),
        None => kind.to_owned(),
    };
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(error);
    let mut detail = String::new();
    while let Some(cause) = source {
        detail = cause.to_string();
        source = cause.source();
    }
    if detail.is_empty() {
        kind
    } else {
        format!(
            "{kind}: {detail}{}",
            tls_advice(&detail).unwrap_or_default()
        )
    }
}

/// What to check when the TLS handshake failed: rustls's words ("received corrupt message of
/// type InvalidContentType", "invalid peer certificate: UnknownIssuer") name neither the
/// setting nor the likely mistake.
pub(crate) fn tls_advice(detail: &str) -> Option<&'static str> {
    if detail.contains("InvalidContentType") {
        // The first bytes back were not a TLS record: the port speaks plain HTTP.
        Some(
            " (the host does not speak TLS on this port: check POSTHOG_HOST, whose https:// is \
             aimed at a port that speaks plain HTTP; use http:// there, or the HTTPS port)",
        )
    } else if detail.contains("invalid peer certificate") {
        Some(
            " (the host's TLS certificate is not trusted: check that POSTHOG_HOST names the \
             host the certificate is for, and the certificate chain of what answers there)",
        )
    } else {
        None
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
        assert!(describe(503, &long).len() < 400);
        assert_eq!(describe(400, ""), "400 Bad Request: (no body)");
    }

    #[test]
    fn configuration_failures_are_told_apart_from_bad_events() {
        for status in [301, 302, 307, 401, 403, 404, 405, 402, 410] {
            assert!(
                matches!(
                    classify(status, None, String::new()),
                    Outcome::Misconfigured { .. }
                ),
                "{status}"
            );
        }
        for status in [408, 429, 500, 502, 503, 504] {
            assert!(
                matches!(classify(status, None, String::new()), Outcome::Retry { .. }),
                "{status}"
            );
        }
        assert_eq!(classify(413, None, String::new()), Outcome::TooLarge);
        assert!(matches!(
            classify(400, None, String::new()),
            Outcome::Rejected { .. }
        ));
    }

    #[test]
    fn echoed_keys_are_redacted_before_truncation() {
        let body = format!("{}{}", "x".repeat(290), "phc_secret123456");
        let reason = describe(400, &redact(&body, "phc_secret123456"));
        assert!(!reason.contains("phc_secret"), "{reason}");
        assert!(
            !reason.contains("phc_sec"),
            "not even a truncated prefix: {reason}"
        );
    }

    #[tokio::test]
    async fn a_connection_failure_names_the_host_and_not_its_credentials() {
        // Nothing listens on port 9 (discard) here; the connection is refused at once.
        let error = reqwest::Client::new()
            .get("http://user:hunter2@127.0.0.1:9/batch/?token=phc_secret")
            .send()
            .await
            .unwrap_err();
        let reason = transport_reason(&error);
        assert!(
            reason.starts_with("could not connect (127.0.0.1:9)"),
            "{reason}"
        );
        for secret in ["hunter2", "user", "phc_secret"] {
            assert!(!reason.contains(secret), "{reason}");
        }
    }

    #[test]
    fn debug_hides_the_key() {
        for mode in [CaptureMode::V0, CaptureMode::V1] {
            let transport = Transport::new(
                "http://127.0.0.1:1",
                ApiKey::new("phc_secret123456"),
                mode,
                Compression::Gzip,
                Duration::from_secs(1),
            );
            assert!(!format!("{transport:?}").contains("secret123456"));
        }
    }
}
