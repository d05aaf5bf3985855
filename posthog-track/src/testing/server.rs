//! The mock's server: the listener, the routing of requests to the endpoints, the scripted
//! replies of the capture endpoints, and the state every endpoint shares.

use std::collections::{BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use uuid::Uuid;

use super::app_api::{self, AppApiState};
use super::capture::{self, ReceivedEvent, ReceivedRequest};
use super::flags::{self, FlagsState};

const DEFAULT_API_KEY: &str = "phc_mock_project_key";

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

type Predicate = Arc<dyn Fn(&Value) -> bool + Send + Sync>;

/// Everything the mock holds: what the capture endpoints received and how they are told to
/// answer, and the state of the flag and app API endpoints.
#[derive(Default)]
pub(super) struct State {
    /// Accepted events, in arrival order, duplicates included.
    pub(super) events: Vec<ReceivedEvent>,
    /// Their distinct uuids.
    pub(super) unique: BTreeSet<Uuid>,
    /// Every capture request.
    requests: Vec<ReceivedRequest>,
    /// Replies for the next capture requests, in order.
    script: VecDeque<Reply>,
    /// The reply to every capture request while set.
    outage: Option<Reply>,
    /// Random failures: probability, replies to draw from, generator.
    random: Option<(f64, Vec<Reply>, fastrand::Rng)>,
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
    state: Mutex<State>,
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
    address: SocketAddr,
    pub(super) shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
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

impl MockPostHog {
    /// Starts a mock that accepts the key `phc_mock_project_key`.
    pub async fn start() -> MockPostHog {
        Self::start_with_api_key(DEFAULT_API_KEY).await
    }

    /// Starts a mock that accepts `api_key`.
    ///
    /// # Panics
    ///
    /// When no port on 127.0.0.1 can be bound (a broken test machine).
    pub async fn start_with_api_key(api_key: &str) -> MockPostHog {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0 for MockPostHog");
        let address = listener.local_addr().expect("local address of MockPostHog");
        let shared = Arc::new(Shared {
            api_key: api_key.to_owned(),
            state: Mutex::default(),
            arrived: Notify::new(),
        });
        let server_shared = shared.clone();
        let server = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let shared = server_shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| handle(shared.clone(), request));
                    // A dropped connection ends here with an error; that is the point of it.
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        MockPostHog {
            address,
            shared,
            server,
        }
    }

    /// `http://127.0.0.1:PORT`, to use as the PostHog host.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// The project key the mock accepts.
    pub fn api_key(&self) -> &str {
        &self.shared.api_key
    }

    /// Every accepted event, in arrival order, duplicates included.
    pub fn events(&self) -> Vec<ReceivedEvent> {
        self.shared.state().events.clone()
    }

    /// The distinct uuids accepted.
    pub fn unique_uuids(&self) -> BTreeSet<Uuid> {
        self.shared.state().unique.clone()
    }

    /// Every request to a capture endpoint.
    pub fn requests(&self) -> Vec<ReceivedRequest> {
        self.shared.state().requests.clone()
    }

    /// Waits until `unique` distinct events have been accepted.
    pub async fn wait_for_events(
        &self,
        unique: usize,
        timeout: Duration,
    ) -> Result<Vec<ReceivedEvent>, WaitTimeout> {
        let started = tokio::time::Instant::now();
        loop {
            let notified = self.shared.arrived.notified();
            let received = self.shared.state().unique.len();
            if received >= unique {
                return Ok(self.events());
            }
            if tokio::time::timeout_at(started + timeout, notified)
                .await
                .is_err()
            {
                return Err(WaitTimeout {
                    expected: unique,
                    received,
                    waited: started.elapsed(),
                });
            }
        }
    }

    /// Answers the next requests with these replies, in order, then normally again.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.shared.state().script.extend(replies);
    }

    /// Answers every request with `reply` until called with `None`.
    pub fn set_outage(&self, reply: Option<Reply>) {
        self.shared.state().outage = reply;
    }

    /// Fails each request with probability `probability`, with a reply drawn from `replies`.
    pub fn set_random_failures(&self, probability: f64, replies: Vec<Reply>, seed: u64) {
        self.shared.state().random =
            (!replies.is_empty()).then(|| (probability, replies, fastrand::Rng::with_seed(seed)));
    }

    /// Rejects with 400 every request holding an event for which `predicate` is true; like
    /// PostHog, nothing of such a request is accepted.
    pub fn reject_events_where(&self, predicate: impl Fn(&Value) -> bool + Send + Sync + 'static) {
        self.shared.state().reject = Some((400, Arc::new(predicate)));
    }

    /// Answers `status` (a 5xx, say) to every request holding an event for which `predicate`
    /// is true, accepting nothing of it: a poison event that fails every request it is in.
    pub fn fail_events_where(
        &self,
        status: u16,
        predicate: impl Fn(&Value) -> bool + Send + Sync + 'static,
    ) {
        self.shared.state().reject = Some((status, Arc::new(predicate)));
    }

    /// Forgets recorded events and requests.
    pub fn clear(&self) {
        let mut state = self.shared.state();
        state.events.clear();
        state.unique.clear();
        state.requests.clear();
        state.app_api.requests.clear();
    }

    /// Panics, listing them, if any uuid was accepted more than once.
    pub fn assert_no_duplicates(&self) {
        let state = self.shared.state();
        if state.events.len() != state.unique.len() {
            let mut seen = BTreeSet::new();
            let duplicated: Vec<Uuid> = state
                .events
                .iter()
                .filter(|e| !seen.insert(e.uuid))
                .map(|e| e.uuid)
                .collect();
            panic!("{} duplicate deliveries: {duplicated:?}", duplicated.len());
        }
    }
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

/// Routes a request to its endpoint.
async fn handle(shared: Arc<Shared>, request: Request<Incoming>) -> Result<HttpResponse, Dropped> {
    let path = request.uri().path();
    if path.starts_with("/api/projects/") {
        return app_api::serve(&shared, request).await;
    }
    match path {
        "/flags/definitions" | "/flags/definitions/" => Ok(flags::definitions(&shared, &request)),
        "/flags/" | "/flags" => flags::remote(&shared, request).await,
        "/batch/" | "/batch" | "/capture/" | "/capture" | "/e/" | "/i/v0/e/" => {
            capture_request(&shared, request).await
        }
        _ => Ok(respond(
            404,
            json!({"type": "not_found", "detail": "unknown endpoint"}),
            None,
        )),
    }
}

/// A capture request: answered as the script, an outage or random failures say, else
/// validated and recorded.
async fn capture_request(
    shared: &Shared,
    request: Request<Incoming>,
) -> Result<HttpResponse, Dropped> {
    let path = request.uri().path().to_owned();
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let user_agent = header("user-agent");
    let content_encoding = header("content-encoding");
    let gzip_query = request
        .uri()
        .query()
        .is_some_and(|q| q.contains("compression=gzip"));
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => return Err(Dropped),
    };
    let mut record = ReceivedRequest {
        path,
        status: 0,
        user_agent,
        content_encoding: content_encoding.clone(),
        compressed_bytes: body.len(),
        decoded_bytes: 0,
        body: Value::Null,
        event_count: 0,
        historical_migration: false,
    };

    let mut reply = {
        let mut state = shared.state();
        if let Some(reply) = state.script.pop_front() {
            reply
        } else if let Some(reply) = state.outage.clone() {
            reply
        } else if let Some((probability, replies, rng)) = &mut state.random {
            if rng.f64() < *probability {
                replies[rng.usize(..replies.len())].clone()
            } else {
                Reply::Accept
            }
        } else {
            Reply::Accept
        }
    };
    while let Reply::Delay(delay, inner) = reply {
        tokio::time::sleep(delay).await;
        reply = *inner;
    }
    let response = match reply {
        Reply::DropConnection => {
            shared.state().requests.push(record);
            return Err(Dropped);
        }
        Reply::Status(status) => respond(
            status,
            json!({"type": "scripted", "detail": "scripted failure"}),
            None,
        ),
        Reply::EchoRequest(status) => {
            let text = String::from_utf8_lossy(&body).into_owned();
            let mut response = hyper::Response::new(Full::new(Bytes::from(text)));
            *response.status_mut() =
                hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::BAD_GATEWAY);
            response
        }
        Reply::RetryAfter { status, seconds } => respond(
            status,
            json!({"type": "scripted", "detail": "slow down"}),
            Some(seconds),
        ),
        Reply::AcceptWithoutResponse => {
            let gzip = gzip_query || content_encoding.as_deref() == Some("gzip");
            let response = capture::accept(shared, &body, gzip, &mut record);
            record.status = response.status().as_u16();
            shared.state().requests.push(record);
            std::future::pending::<()>().await;
            return Err(Dropped);
        }
        Reply::Accept | Reply::Delay(..) => {
            let gzip = gzip_query || content_encoding.as_deref() == Some("gzip");
            capture::accept(shared, &body, gzip, &mut record)
        }
    };
    record.status = response.status().as_u16();
    shared.state().requests.push(record);
    Ok(response)
}

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

/// PostHog's 400 for a payload it refuses.
pub(super) fn invalid(detail: impl Into<String>) -> HttpResponse {
    respond(
        400,
        json!({"type": "validation_error", "code": "invalid_payload", "detail": detail.into()}),
        None,
    )
}
