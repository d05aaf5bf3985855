//! [`MockPostHog`], a local PostHog capture endpoint for tests (documented on the type, since
//! this module is private and re-exported by `testing`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::io::Read as _;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use uuid::Uuid;

/// How the mock answers a capture request, chosen before the request is handled normally.
///
/// See [`MockPostHog::script`], [`MockPostHog::set_outage`] and
/// [`MockPostHog::set_random_failures`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reply {
    /// Handle the request as PostHog would: validate it, record its events, answer 200 (or
    /// 400/401/413 when it is invalid).
    Accept,
    /// Answer with this status and a PostHog-style JSON error body, accepting nothing. A
    /// status outside 100..=999 is answered as 500; a 2xx status is answered with PostHog's
    /// success body, which lets a test play a server that loses events it claims to have.
    Status(u16),
    /// Answer with this status and a `Retry-After: <seconds>` header, accepting nothing.
    RetryAfter {
        /// Usually 429 or 503.
        status: u16,
        /// The header's value, in seconds.
        seconds: u64,
    },
    /// Wait, then answer as the inner reply says (build one with [`Reply::delayed`]). A
    /// delay longer than the client's timeout makes the client give up.
    Delay(Duration, Box<Reply>),
    /// Close the TCP connection without writing a response: the client sees a transport error.
    /// Nothing is accepted.
    DropConnection,
    /// Accept and record the events, then never answer (the connection stays open until the
    /// client gives up or the mock stops): PostHog has the events but the client never learns
    /// it, as when a sender dies between sending and acknowledging.
    AcceptWithoutResponse,
}

impl Reply {
    /// This reply, sent after `delay`: `Reply::Status(503).delayed(Duration::from_secs(1))`.
    pub fn delayed(self, delay: Duration) -> Reply {
        Reply::Delay(delay, Box::new(self))
    }
}

/// One event the mock accepted.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ReceivedEvent {
    /// The event's `uuid`; a fresh v4 uuid when the event had none (as PostHog assigns one;
    /// `raw["uuid"]` tells which).
    pub uuid: Uuid,
    /// The event's name (`event`).
    pub event: String,
    /// `distinct_id`, a number written as a string.
    pub distinct_id: String,
    /// `timestamp` exactly as sent; empty when the event had none.
    pub timestamp: String,
    /// `properties`; an empty object when the event had none.
    pub properties: Value,
    /// The whole event exactly as sent.
    pub raw: Value,
}

/// One request to a capture endpoint, accepted or not.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ReceivedRequest {
    /// The request path, such as `/batch/`.
    pub path: String,
    /// The query string, if any (such as `compression=gzip-js`).
    pub query: Option<String>,
    /// The status the mock answered; 0 when it wrote no response
    /// ([`Reply::DropConnection`], [`Reply::AcceptWithoutResponse`]).
    pub status: u16,
    /// The JSON body the mock answered with; `Null` when it wrote no response.
    pub response: Value,
    /// The `User-Agent` header.
    pub user_agent: Option<String>,
    /// The `Content-Encoding` header.
    pub content_encoding: Option<String>,
    /// The `Content-Type` header.
    pub content_type: Option<String>,
    /// The decoded JSON body; `Null` when it could not be decoded (bad gzip, not JSON, too
    /// large).
    pub body: Value,
    /// Size of the body as it arrived on the wire (compressed or not).
    pub compressed_bytes: usize,
    /// Size of the body once decompressed (equal to `compressed_bytes` when it was not
    /// compressed); reading stops just past [`MockPostHog::MAX_REQUEST_BYTES`].
    pub decoded_bytes: usize,
    /// Events in the body (the `batch` length, or 1 for a single event), valid or not.
    pub event_count: usize,
    /// The body had `"historical_migration": true`.
    pub historical_migration: bool,
    /// The body's `sent_at`, if it had one.
    pub sent_at: Option<String>,
}

/// [`MockPostHog::wait_for_events`] or [`MockPostHog::wait_for_requests`] ran out of time.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WaitTimeout {
    /// How many were awaited.
    pub expected: usize,
    /// How many had arrived when time ran out.
    pub received: usize,
    /// How long it waited.
    pub waited: Duration,
    what: &'static str,
}

impl fmt::Display for WaitTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "MockPostHog: waited {:?} for {} {}; {} arrived",
            self.waited, self.expected, self.what, self.received
        )
    }
}

impl std::error::Error for WaitTimeout {}

type Predicate = Arc<dyn Fn(&Value) -> bool + Send + Sync>;

struct RandomFailures {
    probability: f64,
    replies: Vec<Reply>,
    rng: fastrand::Rng,
}

#[derive(Default)]
struct State {
    events: Vec<ReceivedEvent>,
    unique: BTreeSet<Uuid>,
    requests: Vec<ReceivedRequest>,
    script: VecDeque<Reply>,
    outage: Option<Reply>,
    random: Option<RandomFailures>,
    reject: Option<Predicate>,
}

struct Shared {
    api_key: String,
    state: Mutex<State>,
    /// Unique uuids accepted so far, for `wait_for_events`.
    unique_count: watch::Sender<usize>,
    /// Capture requests recorded so far, for `wait_for_requests`.
    request_count: watch::Sender<usize>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panicking test thread must not make every later call panic too.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record_request(&self, request: ReceivedRequest) {
        let mut state = self.state();
        state.requests.push(request);
        self.request_count.send_replace(state.requests.len());
    }

    fn record_events(&self, events: Vec<ReceivedEvent>) {
        let mut state = self.state();
        for event in events {
            state.unique.insert(event.uuid);
            state.events.push(event);
        }
        self.unique_count.send_replace(state.unique.len());
    }

    /// The reply for the next capture request: script, then outage, then random failures.
    fn next_reply(&self) -> Reply {
        let mut state = self.state();
        if let Some(reply) = state.script.pop_front() {
            return reply;
        }
        if let Some(reply) = &state.outage {
            return reply.clone();
        }
        if let Some(random) = &mut state.random
            && random.rng.f64() < random.probability
        {
            let index = random.rng.usize(..random.replies.len());
            return random.replies[index].clone();
        }
        Reply::Accept
    }
}

/// Stops the server (and every open connection) when the last [`MockPostHog`] clone is dropped.
struct ServerTask(JoinHandle<()>);

impl Drop for ServerTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A real HTTP/1.1 server on `127.0.0.1` that behaves like PostHog's capture
/// endpoint. It validates what arrives the way PostHog does, records it, and misbehaves on
/// request, so delivery code can be tested against outages, rate limits, slow answers, dropped
/// connections and rejected events without a network.
///
/// ```
/// use std::time::Duration;
///
/// use posthog_track::testing::{MockPostHog, Reply};
/// use posthog_track::{Backoff, Event, Tracker};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> posthog_track::Result<()> {
/// let mock = MockPostHog::start().await;
/// let tracker = Tracker::builder()
///     .api_key(mock.api_key())
///     .host(mock.url())?
///     .backoff(Backoff { initial: Duration::from_millis(10), max: Duration::from_millis(100) })
///     .build();
///
/// // The first attempt meets an outage, the second is accepted.
/// mock.script([Reply::Status(503)]);
/// tracker.capture(Event::new("report_exported").distinct_id("u1").property("rows", 42)).await?;
/// tracker.flush().await?;
///
/// let events = mock.wait_for_events(1, Duration::from_secs(5)).await.expect("delivered");
/// assert_eq!(events[0].event, "report_exported");
/// assert_eq!(events[0].properties["rows"], 42);
///
/// let statuses: Vec<u16> = mock.requests().iter().map(|r| r.status).collect();
/// assert_eq!(statuses, [503, 200]);
/// mock.assert_no_duplicates();
/// # Ok(()) }
/// ```
///
/// # Endpoints
///
/// `POST /batch/` takes `{"api_key": ..., "batch": [event, ...], "sent_at": ...}`. The capture
/// endpoints `/capture/`, `/e/` and `/i/v0/e/` (each with or without the trailing slash, and
/// `/batch` too) take the same body, a single event with its own `api_key` (or `token`, or
/// `properties.token`), or a JSON array of such events. Any other path is answered 404 and is
/// not recorded; any other method on a capture path is answered 405.
///
/// Bodies may be gzip-compressed: `Content-Encoding: gzip`, `?compression=gzip-js`, or simply
/// gzip's magic bytes, as PostHog detects them.
///
/// # Validation
///
/// Every request handled normally is checked as PostHog's capture checks it, and the first
/// problem decides the answer (always with a JSON body `{"type", "code", "detail"}`; no input
/// makes the mock panic):
///
/// | Problem | Answer |
/// |---|---|
/// | body over [`MAX_REQUEST_BYTES`](MockPostHog::MAX_REQUEST_BYTES) (20 MiB) once decompressed | 413 |
/// | body not valid gzip, or not JSON | 400 |
/// | `api_key` / `token` missing or not the mock's key | 401 |
/// | `batch` not a non-empty array of objects | 400 |
/// | an event over [`MAX_EVENT_BYTES`](MockPostHog::MAX_EVENT_BYTES) (1,000,000) serialised | 400 |
/// | an event whose `event` is not a non-empty string | 400 |
/// | `distinct_id` not a non-empty string or a number (`properties.distinct_id` is the fallback, as in PostHog) | 400 |
/// | `uuid` present but not a UUID | 400 |
/// | `timestamp` present but not RFC 3339 in UTC (`Z` or `+00:00`; the wire contract, stricter than PostHog) | 400 |
/// | `properties` present but not an object | 400 |
/// | an event matched by [`reject_events_where`](MockPostHog::reject_events_where) | 400 |
///
/// Like PostHog, a request with one bad event is rejected whole: nothing in it is accepted.
/// A valid request is answered `200 {"status":"Ok"}` and each of its events is recorded.
///
/// # Faults
///
/// Before handling a capture request normally, the mock picks its [`Reply`]: the next one
/// from the [`script`](MockPostHog::script) if any is left, else the
/// [`outage`](MockPostHog::set_outage) reply if one is set, else a
/// [random failure](MockPostHog::set_random_failures) if one is drawn, else
/// [`Reply::Accept`]. Only [`Reply::Accept`] (and [`Reply::AcceptWithoutResponse`]) validate and
/// record events.
///
/// # Reading what arrived
///
/// [`events`](MockPostHog::events) lists every accepted event in arrival order, duplicates
/// included; [`unique_uuids`](MockPostHog::unique_uuids) and
/// [`duplicate_uuids`](MockPostHog::duplicate_uuids) show what PostHog's uuid deduplication
/// would make of them. [`requests`](MockPostHog::requests) lists every capture request,
/// accepted or not, with its headers, decoded body and the answer it got.
/// [`wait_for_events`](MockPostHog::wait_for_events) and
/// [`wait_for_requests`](MockPostHog::wait_for_requests) wait, without polling, for background
/// delivery to catch up.
///
/// # Lifetime
///
/// Cloning gives another handle to the same server; it stops, closing every connection, when
/// the last handle is dropped.
#[derive(Clone)]
pub struct MockPostHog {
    address: SocketAddr,
    shared: Arc<Shared>,
    _server: Arc<ServerTask>,
}

impl fmt::Debug for MockPostHog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.shared.state();
        f.debug_struct("MockPostHog")
            .field("url", &self.url())
            .field("requests", &state.requests.len())
            .field("events", &state.events.len())
            .field("unique_events", &state.unique.len())
            .finish_non_exhaustive()
    }
}

impl MockPostHog {
    /// The project API key [`start`](MockPostHog::start) accepts.
    pub const DEFAULT_API_KEY: &'static str = "phc_mock_project_key";
    /// Largest accepted event, serialised as compact JSON, in bytes (PostHog's 1 MB).
    pub const MAX_EVENT_BYTES: usize = 1_000_000;
    /// Largest accepted request body once decompressed, in bytes (20 MiB).
    pub const MAX_REQUEST_BYTES: usize = 20 * 1024 * 1024;

    /// Starts a mock on a free port of `127.0.0.1` that accepts the project key
    /// [`DEFAULT_API_KEY`](MockPostHog::DEFAULT_API_KEY) (`phc_mock_project_key`).
    ///
    /// # Panics
    ///
    /// When no port on `127.0.0.1` can be bound (a broken test machine), or outside a Tokio
    /// runtime.
    pub async fn start() -> MockPostHog {
        Self::start_with_api_key(Self::DEFAULT_API_KEY).await
    }

    /// Starts a mock on a free port of `127.0.0.1` that accepts the project key `api_key`.
    ///
    /// # Panics
    ///
    /// As [`start`](MockPostHog::start).
    pub async fn start_with_api_key(api_key: &str) -> MockPostHog {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("MockPostHog: bind a port on 127.0.0.1");
        let address = listener
            .local_addr()
            .expect("MockPostHog: local address of the listener");
        let shared = Arc::new(Shared {
            api_key: api_key.to_owned(),
            state: Mutex::default(),
            unique_count: watch::Sender::new(0),
            request_count: watch::Sender::new(0),
        });
        let server = tokio::spawn(serve(listener, shared.clone()));
        MockPostHog {
            address,
            shared,
            _server: Arc::new(ServerTask(server)),
        }
    }

    /// The base URL, `http://127.0.0.1:PORT`, to use as the PostHog host.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// The address the mock listens on.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The project API key the mock accepts.
    pub fn api_key(&self) -> &str {
        &self.shared.api_key
    }

    /// Every accepted event, in arrival order, duplicates included.
    pub fn events(&self) -> Vec<ReceivedEvent> {
        self.shared.state().events.clone()
    }

    /// The distinct uuids accepted: what PostHog keeps after deduplication.
    pub fn unique_uuids(&self) -> BTreeSet<Uuid> {
        self.shared.state().unique.clone()
    }

    /// Each uuid accepted more than once, with how many times it was accepted.
    pub fn duplicate_uuids(&self) -> BTreeMap<Uuid, usize> {
        let state = self.shared.state();
        let mut counts = BTreeMap::<Uuid, usize>::new();
        for event in &state.events {
            *counts.entry(event.uuid).or_default() += 1;
        }
        counts.retain(|_, count| *count > 1);
        counts
    }

    /// Every request to a capture endpoint, in arrival order, accepted or not.
    pub fn requests(&self) -> Vec<ReceivedRequest> {
        self.shared.state().requests.clone()
    }

    /// Waits until `unique` distinct uuids have been accepted, then returns
    /// [`events`](MockPostHog::events) (duplicates included). Wakes on each accepted request;
    /// never polls.
    ///
    /// # Errors
    ///
    /// [`WaitTimeout`], saying how many had arrived, when `timeout` passes first.
    pub async fn wait_for_events(
        &self,
        unique: usize,
        timeout: Duration,
    ) -> Result<Vec<ReceivedEvent>, WaitTimeout> {
        wait_until(&self.shared.unique_count, unique, timeout, "unique events").await?;
        Ok(self.events())
    }

    /// Waits until `count` capture requests have been recorded (accepted or not), then returns
    /// [`requests`](MockPostHog::requests). Handy to wait for a client's retries.
    ///
    /// # Errors
    ///
    /// [`WaitTimeout`] when `timeout` passes first.
    pub async fn wait_for_requests(
        &self,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<ReceivedRequest>, WaitTimeout> {
        wait_until(&self.shared.request_count, count, timeout, "requests").await?;
        Ok(self.requests())
    }

    /// Queues replies for the next capture requests, one per request, in order; after them
    /// (or when they are consumed) the mock answers as before. Scripted replies come before
    /// the outage and random failures. Calling it again appends.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.shared.state().script.extend(replies);
    }

    /// Answers every capture request with `reply` (once the script is consumed) until called
    /// with `None`.
    pub fn set_outage(&self, reply: Option<Reply>) {
        self.shared.state().outage = reply;
    }

    /// Fails each capture request with probability `probability` (clamped to 0..=1; 0 turns
    /// random failures off) with a reply drawn uniformly from `replies` (`Status(503)` when it
    /// is empty). Draws come from a generator seeded with `seed`, so a run is repeatable for
    /// a given order of requests.
    pub fn set_random_failures(&self, probability: f64, replies: Vec<Reply>, seed: u64) {
        let probability = if probability.is_nan() {
            0.0
        } else {
            probability.clamp(0.0, 1.0)
        };
        let replies = if replies.is_empty() {
            vec![Reply::Status(503)]
        } else {
            replies
        };
        self.shared.state().random = (probability > 0.0).then(|| RandomFailures {
            probability,
            replies,
            rng: fastrand::Rng::with_seed(seed),
        });
    }

    /// Rejects every request holding an event (the raw JSON object) for which `predicate` is
    /// true: `400 {"type":"validation_error","code":"invalid_event","detail":...}`, and, as
    /// PostHog rejects the whole batch, nothing in that request is accepted. Replaces any
    /// earlier predicate. A predicate that panics gets the request a 500.
    ///
    /// ```
    /// # async fn demo(mock: posthog_track::testing::MockPostHog) {
    /// mock.reject_events_where(|event| event["properties"]["poison"] == true);
    /// # }
    /// ```
    pub fn reject_events_where(&self, predicate: impl Fn(&Value) -> bool + Send + Sync + 'static) {
        self.shared.state().reject = Some(Arc::new(predicate));
    }

    /// Forgets the script, the outage, random failures and the rejection predicate: every
    /// request is handled normally again.
    pub fn clear_faults(&self) {
        let mut state = self.shared.state();
        state.script.clear();
        state.outage = None;
        state.random = None;
        state.reject = None;
    }

    /// Forgets recorded events and requests (faults stay; see
    /// [`clear_faults`](MockPostHog::clear_faults)).
    pub fn clear(&self) {
        let mut state = self.shared.state();
        state.events.clear();
        state.unique.clear();
        state.requests.clear();
        self.shared.unique_count.send_replace(0);
        self.shared.request_count.send_replace(0);
    }

    /// Panics if any uuid was accepted more than once, listing each with its count and
    /// event name.
    #[track_caller]
    pub fn assert_no_duplicates(&self) {
        let duplicates = self.duplicate_uuids();
        if duplicates.is_empty() {
            return;
        }
        let events = self.events();
        let mut message = format!(
            "MockPostHog accepted {} uuid(s) more than once ({} events, {} unique):",
            duplicates.len(),
            events.len(),
            events.len() - duplicates.values().map(|n| n - 1).sum::<usize>(),
        );
        for (uuid, count) in &duplicates {
            let name = events
                .iter()
                .find(|e| e.uuid == *uuid)
                .map_or("", |e| e.event.as_str());
            message.push_str(&format!("\n  {uuid} x{count} ({name})"));
        }
        panic!("{message}");
    }
}

async fn wait_until(
    counter: &watch::Sender<usize>,
    target: usize,
    timeout: Duration,
    what: &'static str,
) -> Result<(), WaitTimeout> {
    let started = tokio::time::Instant::now();
    let mut receiver = counter.subscribe();
    // `wait_for` only fails when the sender is gone, and `counter` is it.
    if let Ok(Ok(_)) = tokio::time::timeout(timeout, receiver.wait_for(|n| *n >= target)).await {
        return Ok(());
    }
    let received = *receiver.borrow();
    Err(WaitTimeout {
        expected: target,
        received,
        waited: started.elapsed(),
        what,
    })
}

// ---------------------------------------------------------------------------------------------
// Server

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    // Owned by this task: aborting it (the mock's drop) drops the set, which aborts every
    // connection, including those a `Reply::AcceptWithoutResponse` holds open.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve_connection(stream, shared.clone()));
                }
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::debug!(%error, "MockPostHog: accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |request| handle(shared.clone(), request));
    // A `Reply::DropConnection` ends the connection with an error here: that is its point.
    let _ = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

type HttpResponse = Response<Full<Bytes>>;

/// Returned by the service to make hyper close the connection without answering.
#[derive(Debug)]
struct DropConnection;

impl fmt::Display for DropConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MockPostHog dropped the connection on purpose")
    }
}

impl std::error::Error for DropConnection {}

const CAPTURE_PATHS: &[&str] = &[
    "/batch/",
    "/batch",
    "/capture/",
    "/capture",
    "/e/",
    "/e",
    "/i/v0/e/",
    "/i/v0/e",
];

async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<HttpResponse, DropConnection> {
    let path = request.uri().path().to_owned();
    if !CAPTURE_PATHS.contains(&path.as_str()) {
        let (_, response) = error_reply(
            404,
            "invalid_request",
            "not_found",
            format!("MockPostHog has no endpoint {path}"),
        );
        return Ok(response);
    }
    let method = request.method().clone();
    let query = request.uri().query().map(str::to_owned);
    let headers = request.headers().clone();
    let wire = match read_body(request.into_body()).await {
        Ok(wire) => wire,
        // The client went away mid-body: there is nobody to answer.
        Err(_) => return Err(DropConnection),
    };
    let decoded = decode(&wire, &headers, query.as_deref());
    let mut record = ReceivedRequest {
        path,
        query,
        status: 0,
        response: Value::Null,
        user_agent: header(&headers, hyper::header::USER_AGENT),
        content_encoding: header(&headers, hyper::header::CONTENT_ENCODING),
        content_type: header(&headers, hyper::header::CONTENT_TYPE),
        body: Value::Null,
        compressed_bytes: wire.total,
        decoded_bytes: decoded.bytes,
        event_count: 0,
        historical_migration: false,
        sent_at: None,
    };
    if let Ok(body) = &decoded.body {
        record.event_count = match body.get("batch") {
            Some(Value::Array(batch)) => batch.len(),
            Some(_) => 0,
            None => match body {
                Value::Array(events) => events.len(),
                Value::Object(_) => 1,
                _ => 0,
            },
        };
        record.historical_migration = body.get("historical_migration") == Some(&Value::Bool(true));
        record.sent_at = body
            .get("sent_at")
            .and_then(Value::as_str)
            .map(str::to_owned);
        record.body = body.clone();
    }

    if method != Method::POST {
        let (body, mut response) = error_reply(
            405,
            "invalid_request",
            "method_not_allowed",
            format!("{method} is not allowed; use POST"),
        );
        response
            .headers_mut()
            .insert(hyper::header::ALLOW, HeaderValue::from_static("POST"));
        return Ok(finish(&shared, record, body, response));
    }

    let mut reply = shared.next_reply();
    while let Reply::Delay(delay, inner) = reply {
        tokio::time::sleep(delay).await;
        reply = *inner;
    }
    let (body, response) = match reply {
        Reply::Accept | Reply::Delay(..) => process(&shared, decoded.body),
        Reply::Status(status) => scripted(status, None),
        Reply::RetryAfter { status, seconds } => scripted(status, Some(seconds)),
        Reply::DropConnection => {
            shared.record_request(record);
            return Err(DropConnection);
        }
        Reply::AcceptWithoutResponse => {
            let _ = process(&shared, decoded.body);
            shared.record_request(record);
            std::future::pending::<()>().await;
            return Err(DropConnection);
        }
    };
    Ok(finish(&shared, record, body, response))
}

fn finish(
    shared: &Shared,
    mut record: ReceivedRequest,
    body: Value,
    response: HttpResponse,
) -> HttpResponse {
    record.status = response.status().as_u16();
    record.response = body;
    tracing::debug!(
        path = %record.path,
        status = record.status,
        events = record.event_count,
        "MockPostHog answered"
    );
    shared.record_request(record);
    response
}

fn header(headers: &HeaderMap, name: hyper::header::HeaderName) -> Option<String> {
    headers
        .get(name)
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
}

/// A request body as read: at most `MAX_REQUEST_BYTES + 1` bytes kept, all of it counted.
struct WireBody {
    bytes: Vec<u8>,
    total: usize,
}

async fn read_body(mut body: Incoming) -> Result<WireBody, hyper::Error> {
    let keep = MockPostHog::MAX_REQUEST_BYTES + 1;
    let mut wire = WireBody {
        bytes: Vec::new(),
        total: 0,
    };
    // Read to the end even past the limit, so the client finishes sending and reads the 413
    // instead of failing on a closed socket.
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            wire.total += data.len();
            let room = keep.saturating_sub(wire.bytes.len());
            wire.bytes.extend_from_slice(&data[..data.len().min(room)]);
        }
    }
    Ok(wire)
}

enum BodyError {
    TooLarge,
    Invalid(String),
}

struct Decoded {
    body: Result<Value, BodyError>,
    /// Decompressed size, up to `MAX_REQUEST_BYTES + 1`.
    bytes: usize,
}

fn decode(wire: &WireBody, headers: &HeaderMap, query: Option<&str>) -> Decoded {
    let limit = MockPostHog::MAX_REQUEST_BYTES;
    let encoding = headers
        .get(hyper::header::CONTENT_ENCODING)
        .map(|value| {
            String::from_utf8_lossy(value.as_bytes())
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    let compression = query
        .into_iter()
        .flat_map(|query| query.split('&'))
        .find_map(|pair| pair.strip_prefix("compression="))
        .unwrap_or_default();
    let gzip = matches!(encoding.as_str(), "gzip" | "x-gzip")
        || compression.starts_with("gzip")
        || wire.bytes.starts_with(&[0x1f, 0x8b]);
    if !gzip && !matches!(encoding.as_str(), "" | "identity") {
        return Decoded {
            body: Err(BodyError::Invalid(format!(
                "unsupported Content-Encoding {encoding:?}; send gzip or nothing"
            ))),
            bytes: wire.bytes.len(),
        };
    }
    if wire.total > limit {
        return Decoded {
            body: Err(BodyError::TooLarge),
            bytes: wire.bytes.len(),
        };
    }
    let decompressed;
    let plain: &[u8] = if gzip {
        let mut out = Vec::new();
        let reader = flate2::read::GzDecoder::new(wire.bytes.as_slice());
        // `take` bounds what a gzip bomb can cost.
        let read = reader.take((limit + 1) as u64).read_to_end(&mut out);
        if out.len() > limit {
            return Decoded {
                body: Err(BodyError::TooLarge),
                bytes: out.len(),
            };
        }
        if let Err(error) = read {
            return Decoded {
                body: Err(BodyError::Invalid(format!(
                    "body is not valid gzip: {error}"
                ))),
                bytes: out.len(),
            };
        }
        decompressed = out;
        &decompressed
    } else {
        &wire.bytes
    };
    let body = serde_json::from_slice::<Value>(plain)
        .map_err(|error| BodyError::Invalid(format!("body is not valid JSON: {error}")));
    Decoded {
        body,
        bytes: plain.len(),
    }
}

// ---------------------------------------------------------------------------------------------
// Normal handling

/// A response and the JSON body it carries (kept for the request record).
type Answer = (Value, HttpResponse);

fn json_response(status: u16, body: &Value, retry_after: Option<u64>) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(seconds) = retry_after {
        response
            .headers_mut()
            .insert(hyper::header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

fn ok() -> Answer {
    let body = json!({"status": "Ok"});
    let response = json_response(200, &body, None);
    (body, response)
}

fn error_reply(status: u16, kind: &str, code: &str, detail: impl Into<String>) -> Answer {
    let body = json!({"type": kind, "code": code, "detail": detail.into(), "attr": null});
    let response = json_response(status, &body, None);
    (body, response)
}

fn invalid_payload(detail: impl Into<String>) -> Answer {
    error_reply(400, "validation_error", "invalid_payload", detail)
}

fn invalid_event(detail: impl Into<String>) -> Answer {
    error_reply(400, "validation_error", "invalid_event", detail)
}

fn scripted(status: u16, retry_after: Option<u64>) -> Answer {
    let status = if (100..=999).contains(&status) {
        status
    } else {
        500
    };
    if (200..300).contains(&status) {
        let (body, _) = ok();
        return (body.clone(), json_response(status, &body, retry_after));
    }
    let reason = StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let kind = match status {
        401 | 403 => "authentication_error",
        400..=499 => "invalid_request",
        _ => "server_error",
    };
    let body = json!({
        "type": kind,
        "code": "mock_scripted_reply",
        "detail": format!("MockPostHog scripted reply: {status} {reason}").trim_end().to_owned(),
        "attr": null,
    });
    let response = json_response(status, &body, retry_after);
    (body, response)
}

/// Validates like PostHog's capture and records the events when all of them are valid.
fn process(shared: &Shared, body: Result<Value, BodyError>) -> Answer {
    let payload = match body {
        Ok(payload) => payload,
        Err(BodyError::TooLarge) => {
            return error_reply(
                413,
                "invalid_request",
                "payload_too_large",
                format!(
                    "request body is larger than {} bytes once decompressed",
                    MockPostHog::MAX_REQUEST_BYTES
                ),
            );
        }
        Err(BodyError::Invalid(detail)) => return invalid_payload(detail),
    };

    // Where the events and the key are, for each body shape capture accepts.
    let (events, keys): (&[Value], Vec<Option<&str>>) = match &payload {
        Value::Object(object) => match object.get("batch") {
            Some(Value::Array(batch)) => (batch.as_slice(), vec![token(&payload)]),
            Some(_) => return unauthorized_or(shared, token(&payload), "`batch` must be an array"),
            None => (std::slice::from_ref(&payload), vec![token(&payload)]),
        },
        Value::Array(events) => (events.as_slice(), events.iter().map(token).collect()),
        _ => return invalid_payload("body must be a JSON object or array"),
    };
    if let Some(answer) = check_keys(shared, &keys) {
        return answer;
    }
    if events.is_empty() {
        return invalid_payload("`batch` must not be empty");
    }

    let mut accepted = Vec::with_capacity(events.len());
    for (index, event) in events.iter().enumerate() {
        match validate(event) {
            Ok(received) => accepted.push(received),
            Err(detail) => return invalid_event(format!("event {index}: {detail}")),
        }
    }
    let reject = shared.state().reject.clone();
    if let Some(predicate) = reject {
        for (index, event) in events.iter().enumerate() {
            match std::panic::catch_unwind(AssertUnwindSafe(|| predicate(event))) {
                Ok(false) => {}
                Ok(true) => {
                    return invalid_event(format!(
                        "event {index} (uuid {}) was rejected by reject_events_where",
                        accepted[index].uuid
                    ));
                }
                Err(_) => {
                    return error_reply(
                        500,
                        "server_error",
                        "predicate_panicked",
                        "the reject_events_where predicate panicked",
                    );
                }
            }
        }
    }
    shared.record_events(accepted);
    ok()
}

/// `api_key`, `token`, or (for single events) `properties.token`.
fn token(value: &Value) -> Option<&str> {
    value
        .get("api_key")
        .or_else(|| value.get("token"))
        .and_then(Value::as_str)
        .or_else(|| value.get("properties")?.get("token")?.as_str())
}

fn check_keys(shared: &Shared, keys: &[Option<&str>]) -> Option<Answer> {
    if keys.iter().any(Option::is_none) {
        return Some(error_reply(
            401,
            "authentication_error",
            "missing_api_key",
            "API key not provided. You can find your project API key in PostHog project settings.",
        ));
    }
    if keys.iter().any(|key| *key != Some(shared.api_key.as_str())) {
        return Some(error_reply(
            401,
            "authentication_error",
            "invalid_api_key",
            "Project API key invalid. You can find your project API key in PostHog project settings.",
        ));
    }
    None
}

fn unauthorized_or(shared: &Shared, key: Option<&str>, detail: &str) -> Answer {
    check_keys(shared, &[key]).unwrap_or_else(|| invalid_payload(detail))
}

fn validate(event: &Value) -> Result<ReceivedEvent, String> {
    let Value::Object(object) = event else {
        return Err("not a JSON object".to_owned());
    };
    let size = serde_json::to_vec(event).map_or(0, |bytes| bytes.len());
    if size > MockPostHog::MAX_EVENT_BYTES {
        return Err(format!(
            "event too large: {size} bytes (limit {})",
            MockPostHog::MAX_EVENT_BYTES
        ));
    }
    let name = match object.get("event") {
        Some(Value::String(name)) if !name.is_empty() => name.clone(),
        Some(Value::String(_)) => return Err("`event` is empty".to_owned()),
        Some(_) => return Err("`event` must be a string".to_owned()),
        None => return Err("`event` is missing".to_owned()),
    };
    let properties = match object.get("properties") {
        None => Value::Object(serde_json::Map::new()),
        Some(properties @ Value::Object(_)) => properties.clone(),
        Some(_) => return Err("`properties` must be an object".to_owned()),
    };
    let distinct_id = match object
        .get("distinct_id")
        .filter(|id| !id.is_null())
        .or_else(|| properties.get("distinct_id").filter(|id| !id.is_null()))
    {
        Some(Value::String(id)) if !id.is_empty() => id.clone(),
        Some(Value::Number(id)) => id.to_string(),
        Some(Value::String(_)) => return Err("`distinct_id` is empty".to_owned()),
        Some(_) => return Err("`distinct_id` must be a string or a number".to_owned()),
        None => return Err("`distinct_id` is missing".to_owned()),
    };
    let uuid = match object.get("uuid") {
        None | Some(Value::Null) => Uuid::new_v4(),
        Some(Value::String(uuid)) => {
            Uuid::parse_str(uuid).map_err(|_| format!("`uuid` {uuid:?} is not a UUID"))?
        }
        Some(_) => return Err("`uuid` must be a string".to_owned()),
    };
    let timestamp = match object.get("timestamp") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(timestamp)) => {
            let parsed = chrono::DateTime::parse_from_rfc3339(timestamp)
                .map_err(|_| format!("`timestamp` {timestamp:?} is not RFC 3339"))?;
            if parsed.offset().local_minus_utc() != 0 {
                return Err(format!(
                    "`timestamp` {timestamp:?} is not in UTC (use `Z` or `+00:00`)"
                ));
            }
            timestamp.clone()
        }
        Some(_) => return Err("`timestamp` must be a string".to_owned()),
    };
    Ok(ReceivedEvent {
        uuid,
        event: name,
        distinct_id,
        timestamp,
        properties,
        raw: event.clone(),
    })
}
