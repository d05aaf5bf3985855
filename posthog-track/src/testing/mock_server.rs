//! A local PostHog that validates, records and, on request, misbehaves.
//!
//! ```no_run
//! # async fn demo() {
//! use posthog_track::testing::{MockPostHog, Reply};
//! use posthog_track::Tracker;
//!
//! let mock = MockPostHog::start().await;
//! let tracker = Tracker::builder().api_key(mock.api_key()).host(mock.url()).unwrap().build();
//! mock.script([Reply::Status(503), Reply::RetryAfter { status: 429, seconds: 1 }]);
//! // ... tracked writes, tracker.flush().await ...
//! let events = mock.wait_for_events(3, std::time::Duration::from_secs(5)).await.unwrap();
//! # }
//! ```

use std::collections::{BTreeSet, VecDeque};
use std::io::Read as _;
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

const DEFAULT_API_KEY: &str = "phc_mock_project_key";
const PERSONAL_API_KEY: &str = "phx_mock_personal_key";
const PROPERTY_TYPES: [&str; 5] = ["DateTime", "String", "Numeric", "Boolean", "Duration"];
const MAX_EVENT_BYTES: usize = 1_000_000;
const MAX_REQUEST_BYTES: usize = 20 * 1024 * 1024;

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

type Predicate = Arc<dyn Fn(&Value) -> bool + Send + Sync>;

#[derive(Default)]
struct State {
    events: Vec<ReceivedEvent>,
    unique: BTreeSet<Uuid>,
    requests: Vec<ReceivedRequest>,
    script: VecDeque<Reply>,
    outage: Option<Reply>,
    random: Option<(f64, Vec<Reply>, fastrand::Rng)>,
    reject: Option<(u16, Predicate)>,
    flag_definitions: Option<Value>,
    definitions_status: Option<u16>,
    definitions_requests: Vec<(u16, Option<String>)>,
    remote_flags: Option<Value>,
    flags_requests: Vec<Value>,
    event_definitions: Vec<MockDefinition>,
    property_definitions: Vec<MockDefinition>,
    api_requests: Vec<ApiRequest>,
}

struct Shared {
    api_key: String,
    state: Mutex<State>,
    arrived: Notify,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A PostHog capture endpoint on 127.0.0.1, for tests. Stops when dropped.
pub struct MockPostHog {
    address: SocketAddr,
    shared: Arc<Shared>,
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

    /// Serves `definitions` (a `/flags/definitions` body) to local evaluation, with an ETag,
    /// answering 304 to a poll that already has them.
    pub fn set_flag_definitions(&self, definitions: Value) {
        self.shared.state().flag_definitions = Some(definitions);
    }

    /// Answers `/flags/definitions` with this status (401, 402, 429, ...) until `None`.
    pub fn set_flag_definitions_status(&self, status: Option<u16>) {
        self.shared.state().definitions_status = status;
    }

    /// Each `/flags/definitions` request: the status answered and its `If-None-Match`.
    pub fn flag_definitions_requests(&self) -> Vec<(u16, Option<String>)> {
        self.shared.state().definitions_requests.clone()
    }

    /// Answers remote evaluation (`POST /flags`) with this body.
    pub fn set_remote_flags(&self, response: Value) {
        self.shared.state().remote_flags = Some(response);
    }

    /// The bodies of the remote evaluation requests received.
    pub fn flags_requests(&self) -> Vec<Value> {
        self.shared.state().flags_requests.clone()
    }

    /// The personal API key the mock's app API accepts (`Authorization: Bearer ...`).
    pub fn personal_api_key(&self) -> &'static str {
        PERSONAL_API_KEY
    }

    /// Adds an event definition, as PostHog creates on an event's first ingestion.
    pub fn add_event_definition(&self, name: &str, description: Option<&str>) -> Uuid {
        let definition = definition(name, description, None);
        let id = definition.id;
        self.shared.state().event_definitions.push(definition);
        id
    }

    /// Adds an event property definition.
    pub fn add_property_definition(
        &self,
        name: &str,
        property_type: Option<&str>,
        description: Option<&str>,
    ) -> Uuid {
        let definition = definition(name, description, property_type);
        let id = definition.id;
        self.shared.state().property_definitions.push(definition);
        id
    }

    /// The event definitions, sorted by name, as patched so far.
    pub fn event_definitions(&self) -> Vec<MockDefinition> {
        sorted(&self.shared.state().event_definitions)
    }

    /// The event property definitions, sorted by name, as patched so far.
    pub fn property_definitions(&self) -> Vec<MockDefinition> {
        sorted(&self.shared.state().property_definitions)
    }

    /// Every request to the app API (`/api/projects/...`).
    pub fn api_requests(&self) -> Vec<ApiRequest> {
        self.shared.state().api_requests.clone()
    }

    /// Forgets recorded events and requests.
    pub fn clear(&self) {
        let mut state = self.shared.state();
        state.events.clear();
        state.unique.clear();
        state.requests.clear();
        state.api_requests.clear();
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

type HttpResponse = Response<Full<Bytes>>;

/// The error that makes hyper drop the connection without answering.
#[derive(Debug)]
struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped on purpose")
    }
}

impl std::error::Error for Dropped {}

async fn handle(shared: Arc<Shared>, request: Request<Incoming>) -> Result<HttpResponse, Dropped> {
    let path = request.uri().path().to_owned();
    if path.starts_with("/api/projects/") {
        return app_api(&shared, request).await;
    }
    let capture = matches!(
        path.as_str(),
        "/batch/" | "/batch" | "/capture/" | "/capture" | "/e/" | "/i/v0/e/"
    );
    if path == "/flags/definitions" || path == "/flags/definitions/" {
        let if_none_match = request
            .headers()
            .get("if-none-match")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        return Ok(flag_definitions(&shared, if_none_match));
    }
    if path == "/flags/" || path == "/flags" {
        let body = match request.into_body().collect().await {
            Ok(body) => body.to_bytes(),
            Err(_) => return Err(Dropped),
        };
        let mut state = shared.state();
        state
            .flags_requests
            .push(serde_json::from_slice(&body).unwrap_or(Value::Null));
        let answer = state
            .remote_flags
            .clone()
            .unwrap_or_else(|| json!({"flags": {}}));
        return Ok(respond(200, answer, None));
    }
    if !capture {
        return Ok(respond(
            404,
            json!({"type": "not_found", "detail": "unknown endpoint"}),
            None,
        ));
    }
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
            let response = accept(&shared, &body, gzip, &mut record);
            record.status = response.status().as_u16();
            shared.state().requests.push(record);
            std::future::pending::<()>().await;
            return Err(Dropped);
        }
        Reply::Accept | Reply::Delay(..) => {
            let gzip = gzip_query || content_encoding.as_deref() == Some("gzip");
            accept(&shared, &body, gzip, &mut record)
        }
    };
    record.status = response.status().as_u16();
    shared.state().requests.push(record);
    Ok(response)
}

fn definition(
    name: &str,
    description: Option<&str>,
    property_type: Option<&str>,
) -> MockDefinition {
    MockDefinition {
        id: Uuid::new_v4(),
        name: name.to_owned(),
        description: description.map(str::to_owned),
        property_type: property_type.map(str::to_owned),
    }
}

fn sorted(definitions: &[MockDefinition]) -> Vec<MockDefinition> {
    let mut definitions = definitions.to_vec();
    definitions.sort_by(|a, b| a.name.cmp(&b.name));
    definitions
}

fn definition_json(definition: &MockDefinition, property: bool) -> Value {
    let mut value = json!({
        "id": definition.id.to_string(),
        "name": definition.name,
        "description": definition.description,
        "tags": [],
    });
    if property {
        value["property_type"] = json!(definition.property_type);
    }
    value
}

/// The app API's definitions endpoints: paged lists (limit/offset, `next` as an absolute URL)
/// and `PATCH` of one definition, behind `Authorization: Bearer <personal key>`.
async fn app_api(shared: &Shared, request: Request<Incoming>) -> Result<HttpResponse, Dropped> {
    let method = request.method().as_str().to_owned();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or_default().to_owned();
    let host = request
        .headers()
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let authorized = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        == Some(format!("Bearer {PERSONAL_API_KEY}").as_str());
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => return Err(Dropped),
    };
    let response = if authorized {
        definitions_endpoint(shared, &method, &path, &query, &host, &body)
    } else {
        respond(
            401,
            json!({"type": "authentication_error", "code": "authentication_failed", "detail": "Personal API key found in request Authorization header is invalid."}),
            None,
        )
    };
    shared.state().api_requests.push(ApiRequest {
        method,
        path: if query.is_empty() {
            path
        } else {
            format!("{path}?{query}")
        },
        status: response.status().as_u16(),
    });
    Ok(response)
}

fn definitions_endpoint(
    shared: &Shared,
    method: &str,
    path: &str,
    query: &str,
    host: &str,
    body: &[u8],
) -> HttpResponse {
    let not_found = || {
        respond(
            404,
            json!({"type": "invalid_request", "code": "not_found", "detail": "Not found."}),
            None,
        )
    };
    // /api/projects/{project}/{collection}/[{id}/]
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (collection, id) = match segments.as_slice() {
        ["api", "projects", project, collection] if project.parse::<u64>().is_ok() => {
            (*collection, None)
        }
        ["api", "projects", project, collection, id] if project.parse::<u64>().is_ok() => {
            (*collection, Some(*id))
        }
        _ => return not_found(),
    };
    let property = match collection {
        "event_definitions" => false,
        "property_definitions" => true,
        _ => return not_found(),
    };
    let mut state = shared.state();
    let definitions = if property {
        &mut state.property_definitions
    } else {
        &mut state.event_definitions
    };
    match (method, id) {
        ("GET", None) => {
            let param = |name: &str| {
                query
                    .split('&')
                    .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
                    .and_then(|v| v.parse::<usize>().ok())
            };
            let limit = param("limit").unwrap_or(100).max(1);
            let offset = param("offset").unwrap_or(0);
            let all = sorted(definitions);
            let results: Vec<Value> = all
                .iter()
                .skip(offset)
                .take(limit)
                .map(|d| definition_json(d, property))
                .collect();
            let next = (offset + limit < all.len()).then(|| {
                let kept: Vec<&str> = query
                    .split('&')
                    .filter(|p| {
                        !p.is_empty() && !p.starts_with("offset=") && !p.starts_with("limit=")
                    })
                    .collect();
                let mut next_query = kept.join("&");
                if !next_query.is_empty() {
                    next_query.push('&');
                }
                format!(
                    "http://{host}{path}?{next_query}limit={limit}&offset={}",
                    offset + limit
                )
            });
            respond(
                200,
                json!({"count": all.len(), "next": next, "previous": null, "results": results}),
                None,
            )
        }
        ("PATCH", Some(id)) => {
            let Some(definition) = definitions.iter_mut().find(|d| d.id.to_string() == id) else {
                return not_found();
            };
            let Ok(Value::Object(patch)) = serde_json::from_slice::<Value>(body) else {
                return invalid("body is not a JSON object");
            };
            let mut updated = definition.clone();
            if let Some(description) = patch.get("description") {
                updated.description = description.as_str().map(str::to_owned);
            }
            if let Some(property_type) = patch.get("property_type") {
                if !property {
                    return invalid("event definitions have no property_type");
                }
                match property_type.as_str() {
                    Some(ty) if PROPERTY_TYPES.contains(&ty) => {
                        updated.property_type = Some(ty.to_owned());
                    }
                    None if property_type.is_null() => updated.property_type = None,
                    _ => return invalid(format!("{property_type} is not a valid choice")),
                }
            }
            *definition = updated.clone();
            respond(200, definition_json(&updated, property), None)
        }
        _ => respond(
            405,
            json!({"type": "invalid_request", "code": "method_not_allowed", "detail": "Method not allowed."}),
            None,
        ),
    }
}

fn flag_definitions(shared: &Shared, if_none_match: Option<String>) -> HttpResponse {
    let mut state = shared.state();
    if let Some(status) = state.definitions_status {
        state.definitions_requests.push((status, if_none_match));
        return respond(
            status,
            json!({"type": "scripted", "detail": "scripted failure"}),
            None,
        );
    }
    let definitions = state
        .flag_definitions
        .clone()
        .unwrap_or_else(|| json!({"flags": []}));
    let text = definitions.to_string();
    let etag = format!("\"{:016x}\"", fnv1a(text.as_bytes()));
    let status = if if_none_match.as_deref() == Some(etag.as_str()) {
        304
    } else {
        200
    };
    state.definitions_requests.push((status, if_none_match));
    let mut response = if status == 304 {
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        response
    } else {
        respond(200, definitions, None)
    };
    if let Ok(value) = hyper::header::HeaderValue::from_str(&etag) {
        response.headers_mut().insert("etag", value);
    }
    response
}

/// A small stable hash for ETags (FNV-1a).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn respond(status: u16, body: Value, retry_after: Option<u64>) -> HttpResponse {
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

fn invalid(detail: impl Into<String>) -> HttpResponse {
    respond(
        400,
        json!({"type": "validation_error", "code": "invalid_payload", "detail": detail.into()}),
        None,
    )
}

/// Validates like PostHog's capture, and records the events when all of them are valid.
fn accept(shared: &Shared, body: &[u8], gzip: bool, record: &mut ReceivedRequest) -> HttpResponse {
    let decoded = if gzip {
        let mut decoded = Vec::new();
        let limit = u64::try_from(MAX_REQUEST_BYTES + 1).unwrap_or(u64::MAX);
        if flate2::read::GzDecoder::new(body)
            .take(limit)
            .read_to_end(&mut decoded)
            .is_err()
        {
            return invalid("body is not valid gzip");
        }
        decoded
    } else {
        body.to_vec()
    };
    record.decoded_bytes = decoded.len();
    if decoded.len() > MAX_REQUEST_BYTES {
        return respond(
            413,
            json!({"type": "invalid_request", "detail": "request too large"}),
            None,
        );
    }
    let Ok(payload) = serde_json::from_slice::<Value>(&decoded) else {
        return invalid("body is not JSON");
    };
    record.body = payload.clone();
    record.historical_migration = payload["historical_migration"] == json!(true);
    let key = payload
        .get("api_key")
        .or_else(|| payload.get("token"))
        .and_then(Value::as_str);
    if key != Some(shared.api_key.as_str()) {
        return respond(
            401,
            json!({"type": "authentication_error", "code": "invalid_api_key", "detail": "Project API key invalid"}),
            None,
        );
    }
    let events: Vec<Value> = match payload.get("batch") {
        Some(Value::Array(batch)) => batch.clone(),
        Some(_) => return invalid("`batch` must be an array"),
        None => vec![payload.clone()],
    };
    record.event_count = events.len();
    if events.is_empty() {
        return invalid("`batch` is empty");
    }
    let reject = shared.state().reject.clone();
    let mut accepted = Vec::with_capacity(events.len());
    for (index, event) in events.into_iter().enumerate() {
        match validate(&event) {
            Ok(received) => {
                if let Some((status, predicate)) = &reject
                    && predicate(&event)
                {
                    let detail = format!("event {index} was refused by the test's predicate");
                    return if *status == 400 {
                        invalid(detail)
                    } else {
                        respond(*status, json!({"type": "scripted", "detail": detail}), None)
                    };
                }
                accepted.push(received);
            }
            Err(detail) => return invalid(format!("event {index}: {detail}")),
        }
    }
    let mut state = shared.state();
    for event in accepted {
        state.unique.insert(event.uuid);
        state.events.push(event);
    }
    drop(state);
    shared.arrived.notify_waiters();
    respond(200, json!({"status": "Ok"}), None)
}

fn validate(event: &Value) -> Result<ReceivedEvent, String> {
    if !event.is_object() {
        return Err("not an object".to_owned());
    }
    if event.to_string().len() > MAX_EVENT_BYTES {
        return Err("event too large (over 1 MB)".to_owned());
    }
    let name = event["event"]
        .as_str()
        .filter(|name| !name.is_empty())
        .ok_or("`event` must be a non-empty string")?;
    let distinct_id = match &event["distinct_id"] {
        Value::String(id) if !id.is_empty() => id.clone(),
        Value::Number(id) => id.to_string(),
        _ => return Err("`distinct_id` must be a non-empty string or a number".to_owned()),
    };
    let uuid = match &event["uuid"] {
        Value::Null => Uuid::new_v4(),
        Value::String(uuid) => {
            Uuid::parse_str(uuid).map_err(|_| format!("`uuid` {uuid:?} is not a UUID"))?
        }
        _ => return Err("`uuid` must be a string".to_owned()),
    };
    let timestamp = match &event["timestamp"] {
        Value::Null => String::new(),
        Value::String(timestamp) => {
            let parsed = chrono::DateTime::parse_from_rfc3339(timestamp)
                .map_err(|_| format!("`timestamp` {timestamp:?} is not RFC 3339"))?;
            if parsed.offset().local_minus_utc() != 0 {
                return Err(format!("`timestamp` {timestamp:?} is not in UTC"));
            }
            timestamp.clone()
        }
        _ => return Err("`timestamp` must be a string".to_owned()),
    };
    let properties = match &event["properties"] {
        Value::Null => Value::Object(serde_json::Map::new()),
        Value::Object(_) => event["properties"].clone(),
        _ => return Err("`properties` must be an object".to_owned()),
    };
    Ok(ReceivedEvent {
        uuid,
        event: name.to_owned(),
        distinct_id,
        timestamp,
        properties,
        raw: event.clone(),
    })
}
