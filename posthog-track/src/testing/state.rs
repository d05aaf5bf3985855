//! What every part of the mock shares: the [`MockPostHog`] handle and its state (what the
//! endpoints received and how they are told to answer), the records tests read back, and the
//! HTTP response helpers. A leaf: the endpoints (`capture`, `flags`, `app_api`) and the wiring
//! (`server`) build on it, and it imports none of them.

use std::collections::{BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::Notify;
use uuid::Uuid;

/// How the mock answers a request, instead of handling it normally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Handle the request as PostHog would.
    Accept,
    /// Answer with this status and accept nothing.
    Status(u16),
    /// Answer with this status and a `Retry-After` header.
    RetryAfter {
        /// Usually 429 or 503.
        status: u16,
        /// The header's value.
        seconds: u64,
    },
    /// Wait, then answer as the inner reply says.
    Delay(Duration, Box<Reply>),
    /// Close the connection without answering: the client sees a transport error.
    DropConnection,
    /// Answer with this status and the request's own body, as some proxies do in their error
    /// pages (a client must not log or store what it sent, key included).
    EchoRequest(u16),
    /// Accept and record the events, then never answer: PostHog has them, the client never
    /// learns it (as when a relay dies between sending and acknowledging).
    AcceptWithoutResponse,
    /// v1 only: a 200 whose `results` give the request's events these verdicts, by position
    /// (events past the list get `ok`); only `ok` events are recorded. With `retry_after`, the
    /// answer carries that `Retry-After` (in seconds); without it, an answer that asks for a
    /// retry carries `Retry-After: 1`, as PostHog's does.
    Verdicts {
        /// One verdict per event, in the request's order.
        verdicts: Vec<MockVerdict>,
        /// The answer's `Retry-After`, in seconds.
        retry_after: Option<u64>,
    },
}

/// `wait_for_events` ran out of time.
#[derive(Debug, Clone, thiserror::Error)]
#[error("waited {waited:?} for {expected} unique events; {received} arrived")]
pub struct WaitTimeout {
    /// Unique events expected.
    pub expected: usize,
    /// Unique events received.
    pub received: usize,
    /// How long it waited.
    pub waited: Duration,
}

pub(super) type Predicate = Arc<dyn Fn(&Value) -> bool + Send + Sync>;

/// Everything the mock holds: what the capture endpoints received and how they are told to
/// answer, and the state of the flag and app API endpoints.
#[derive(Default)]
pub(super) struct State {
    /// Accepted events, in arrival order, duplicates included.
    pub(super) events: Vec<ReceivedEvent>,
    /// Their distinct uuids.
    pub(super) unique: BTreeSet<Uuid>,
    /// Every capture request.
    pub(super) requests: Vec<ReceivedRequest>,
    /// Replies for the next capture requests, in order.
    pub(super) script: VecDeque<Reply>,
    /// The reply to every request (capture, flags, app API) while set.
    pub(super) outage: Option<Reply>,
    /// Random failures: probability, replies to draw from, generator.
    pub(super) random: Option<(f64, Vec<Reply>, fastrand::Rng)>,
    /// Refuses (with this status) a request holding an event the predicate matches.
    pub(super) reject: Option<(u16, Predicate)>,
    /// `/flags` and `/flags/definitions`.
    pub(super) flags: FlagsState,
    /// `/api/projects/...`.
    pub(super) app_api: AppApiState,
}

/// The state shared between the [`MockPostHog`] handle and the server's connections.
pub(super) struct Shared {
    /// The project key capture accepts.
    pub(super) api_key: String,
    pub(super) state: Mutex<State>,
    /// Woken when events are accepted.
    pub(super) arrived: Notify,
}

impl Shared {
    /// The state, also after a test panicked while holding it.
    pub(super) fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A PostHog capture endpoint on 127.0.0.1, for tests. Stops when dropped.
pub struct MockPostHog {
    pub(super) address: SocketAddr,
    pub(super) shared: Arc<Shared>,
    pub(super) server: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for MockPostHog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockPostHog")
            .field("url", &self.url())
            .finish_non_exhaustive()
    }
}

impl Drop for MockPostHog {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// One event PostHog accepted.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedEvent {
    /// The event's uuid.
    pub uuid: Uuid,
    /// Its name.
    pub event: String,
    /// Whom it is about.
    pub distinct_id: String,
    /// Its timestamp as sent.
    pub timestamp: String,
    /// Its properties.
    pub properties: Value,
    /// The whole event as sent.
    pub raw: Value,
}

/// One request to a capture endpoint, accepted or not.
#[derive(Debug, Clone)]
pub struct ReceivedRequest {
    /// The request path.
    pub path: String,
    /// The status the mock answered (0 for a dropped connection).
    pub status: u16,
    /// `User-Agent`.
    pub user_agent: Option<String>,
    /// `Content-Encoding`.
    pub content_encoding: Option<String>,
    /// Size on the wire.
    pub compressed_bytes: usize,
    /// Size after decompression.
    pub decoded_bytes: usize,
    /// The decoded body (`Null` when it was not JSON).
    pub body: Value,
    /// Events in the request.
    pub event_count: usize,
    /// The request was marked `historical_migration`.
    pub historical_migration: bool,
    /// Every header, names in lower case, in arrival order.
    pub headers: Vec<(String, String)>,
    /// The answer's body as sent (a v1 answer holds the per-event `results`).
    pub response_body: String,
    /// The answer's `Retry-After`, if any.
    pub response_retry_after: Option<String>,
}

impl ReceivedRequest {
    /// The value of header `name` (any case), if it was sent.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// The uuids of the request's events, in order.
    pub fn uuids(&self) -> Vec<String> {
        self.body["batch"]
            .as_array()
            .map(|batch| {
                batch
                    .iter()
                    .filter_map(|event| event["uuid"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The verdict the mock's v1 endpoint (`/i/v1/analytics/events`) gives one event of a request,
/// in [`Reply::Verdicts`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MockVerdict {
    /// `ok`: the event is accepted and recorded.
    Ok,
    /// `retry` (details `not_persisted`): not recorded; the client should send it again.
    Retry,
    /// `drop` with these details (e.g. `invalid_event`): not recorded, never to be retried.
    Drop(String),
    /// `limited` with these details (e.g. `billing_limit`): not recorded; a quota is exhausted.
    Limited(String),
    /// Any other `result`, with details: not recorded (a verdict from a future PostHog).
    Other {
        /// The `result` string.
        result: String,
        /// The `details` string.
        details: String,
    },
    /// No entry at all for the event in `results` (an answer that leaves an event out): not
    /// recorded; the client cannot know whether it was stored, so it must send it again.
    Omitted,
}

impl MockVerdict {
    /// The `{"result": ..., "details": ...}` entry of the answer's `results` map; `None` for
    /// [`Omitted`](MockVerdict::Omitted).
    pub(super) fn entry(&self) -> Option<Value> {
        Some(match self {
            MockVerdict::Ok => json!({"result": "ok"}),
            MockVerdict::Retry => json!({"result": "retry", "details": "not_persisted"}),
            MockVerdict::Drop(details) => json!({"result": "drop", "details": details}),
            MockVerdict::Limited(details) => json!({"result": "limited", "details": details}),
            MockVerdict::Other { result, details } => {
                json!({"result": result, "details": details})
            }
            MockVerdict::Omitted => return None,
        })
    }
}

/// An event or property definition held by the mock's app API
/// (`/api/projects/{id}/event_definitions/`, `.../property_definitions/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MockDefinition {
    /// Its id.
    pub id: Uuid,
    /// The event's or property's name.
    pub name: String,
    /// Its description.
    pub description: Option<String>,
    /// `String`, `Numeric`, `Boolean`, `DateTime` or `Duration` (always `None` for events).
    pub property_type: Option<String>,
}

/// One request to the app API: method, path with query, status answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiRequest {
    /// `GET` or `PATCH`.
    pub method: String,
    /// The path and query.
    pub path: String,
    /// The status the mock answered.
    pub status: u16,
}

/// The definitions the app API holds and the requests it received.
#[derive(Default)]
pub(super) struct AppApiState {
    pub(super) event_definitions: Vec<MockDefinition>,
    pub(super) property_definitions: Vec<MockDefinition>,
    pub(super) requests: Vec<ApiRequest>,
}

/// What the flag endpoints serve and what they received.
#[derive(Default)]
pub(super) struct FlagsState {
    /// The `/flags/definitions` body, `{"flags": []}` until set.
    pub(super) definitions: Option<Value>,
    /// A status that `/flags/definitions` answers instead.
    pub(super) definitions_status: Option<u16>,
    /// Each `/flags/definitions` request: status answered, `If-None-Match`.
    pub(super) definitions_requests: Vec<(u16, Option<String>)>,
    /// The `POST /flags` answer, `{"flags": {}}` until set.
    pub(super) remote: Option<Value>,
    /// The bodies of the `POST /flags` requests.
    pub(super) remote_requests: Vec<Value>,
}

pub(super) type HttpResponse = Response<Full<Bytes>>;

/// The error that makes hyper drop the connection without answering.
#[derive(Debug)]
pub(super) struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped on purpose")
    }
}

impl std::error::Error for Dropped {}

/// A JSON answer, with `Retry-After` when `retry_after` is set.
pub(super) fn respond(status: u16, body: Value, retry_after: Option<u64>) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    if let Some(seconds) = retry_after {
        response
            .headers_mut()
            .insert("retry-after", hyper::header::HeaderValue::from(seconds));
    }
    response
}

/// Answers with `status` and the request as it was sent (`sent`), as some proxies' error
/// pages do.
pub(super) fn echo(status: u16, sent: &[u8]) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from(
        String::from_utf8_lossy(sent).into_owned(),
    )));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    response
}

/// What an outage makes of a request to an endpoint other than capture (flags, app API).
pub(super) enum Outage {
    /// No outage, or one that accepts: the endpoint handles the request.
    Handle,
    /// The endpoint handles the request, then it is never answered
    /// ([`Reply::AcceptWithoutResponse`]).
    HandleUnanswered,
    /// This answer instead.
    Answer(HttpResponse),
    /// The connection is closed unanswered.
    Drop,
}

impl Outage {
    /// The status answered, as the endpoints record it: 0 for a dropped connection.
    pub(super) fn status(&self) -> Option<u16> {
        match self {
            Outage::Answer(response) => Some(response.status().as_u16()),
            Outage::Drop => Some(0),
            Outage::Handle | Outage::HandleUnanswered => None,
        }
    }
}

/// The outage's answer to a request to a flag or app API endpoint, `sent` being what the
/// request sent (its body, or for a `GET` its path and query), after any [`Reply::Delay`].
/// [`Reply::Verdicts`], which only v1 capture understands, handles the request.
pub(super) async fn outage(shared: &Shared, sent: &[u8]) -> Outage {
    let outage = shared.state().outage.clone();
    let Some(mut reply) = outage else {
        return Outage::Handle;
    };
    while let Reply::Delay(delay, inner) = reply {
        tokio::time::sleep(delay).await;
        reply = *inner;
    }
    let failure = json!({"type": "scripted", "detail": "scripted failure"});
    match reply {
        Reply::Accept | Reply::Delay(..) | Reply::Verdicts { .. } => Outage::Handle,
        Reply::AcceptWithoutResponse => Outage::HandleUnanswered,
        Reply::DropConnection => Outage::Drop,
        Reply::Status(status) => Outage::Answer(respond(status, failure, None)),
        Reply::RetryAfter { status, seconds } => {
            Outage::Answer(respond(status, failure, Some(seconds)))
        }
        Reply::EchoRequest(status) => Outage::Answer(echo(status, sent)),
    }
}

/// PostHog's 400 for a payload it refuses.
pub(super) fn invalid(detail: impl Into<String>) -> HttpResponse {
    respond(
        400,
        json!({"type": "validation_error", "code": "invalid_payload", "detail": detail.into()}),
        None,
    )
}
