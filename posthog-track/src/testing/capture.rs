//! The capture endpoints (v0's `/batch/`, `/capture/`, `/e/`, `/i/v0/e/` and v1's
//! `/i/v1/analytics/events`): scripted replies, decoding a request's body (gzip, deflate, br,
//! zstd), validating its events as PostHog's capture does, v1's per-event verdicts, and the
//! [`MockPostHog`] methods that script them and read back what they received.

use std::collections::BTreeSet;
use std::io::Read as _;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt as _;
use hyper::Request;
use hyper::body::Incoming;
use serde_json::{Value, json};
use uuid::Uuid;

use super::state::{
    Dropped, HttpResponse, MockPostHog, MockVerdict, ReceivedEvent, ReceivedRequest, Reply, Shared,
    WaitTimeout, echo, invalid, respond,
};

const MAX_EVENT_BYTES: usize = 1_000_000;
const MAX_REQUEST_BYTES: usize = 20 * 1024 * 1024;

impl MockPostHog {
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
            if tokio::time::timeout(timeout.saturating_sub(started.elapsed()), notified)
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

    /// Answers the next capture requests with these replies, in order, then normally again.
    /// (The flag and app API endpoints are not scripted; [`set_outage`](Self::set_outage)
    /// reaches them.)
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.shared.state().script.extend(replies);
    }

    /// Answers every request with `reply` until called with `None`: capture, remote flag
    /// evaluation (`/flags`), flag definitions (`/flags/definitions`) and the app API alike, so
    /// a test can see how its code copes when PostHog is down. [`Reply::Verdicts`], which only
    /// v1 capture understands, is [`Reply::Accept`] elsewhere. A [`script`](Self::script)ed
    /// reply, for capture, comes first.
    pub fn set_outage(&self, reply: Option<Reply>) {
        self.shared.state().outage = reply;
    }

    /// Fails each capture request with probability `probability`, with a reply drawn from
    /// `replies`.
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

/// The v1 endpoint's path.
const V1_PATH: &str = "/i/v1/analytics/events";

/// A capture request: answered as the script, an outage or random failures say, else
/// validated and recorded.
pub(super) async fn request(
    shared: &Shared,
    request: Request<Incoming>,
) -> Result<HttpResponse, Dropped> {
    let path = request.uri().path().to_owned();
    let v1 = path.trim_end_matches('/') == V1_PATH;
    let headers: Vec<(String, String)> = request
        .headers()
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
    };
    let user_agent = header("user-agent");
    let content_encoding = header("content-encoding");
    let request_id = header("posthog-request-id");
    let gzip_query = request
        .uri()
        .query()
        .is_some_and(|q| q.contains("compression=gzip"));
    let encoding = if gzip_query {
        Some("gzip".to_owned())
    } else {
        content_encoding.clone()
    };
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => return Err(Dropped),
    };
    let mut record = ReceivedRequest {
        path,
        status: 0,
        user_agent,
        content_encoding,
        compressed_bytes: body.len(),
        decoded_bytes: 0,
        body: Value::Null,
        event_count: 0,
        historical_migration: false,
        headers,
        response_body: String::new(),
        response_retry_after: None,
    };
    let endpoint = Endpoint {
        shared,
        v1,
        encoding: encoding.as_deref(),
    };
    // Whatever the answer, the request is recorded as sent, for the test to inspect.
    endpoint.inspect(&body, &mut record);

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
    let mut response = match reply {
        Reply::DropConnection => {
            shared.state().requests.push(record);
            return Err(Dropped);
        }
        Reply::Status(status) => endpoint.failure(status, "scripted failure", None),
        Reply::EchoRequest(status) => echo(status, &body),
        Reply::RetryAfter { status, seconds } => {
            endpoint.failure(status, "slow down", Some(seconds))
        }
        Reply::AcceptWithoutResponse => {
            let response = endpoint.accept(&body, None, &mut record);
            record.status = response.status().as_u16();
            shared.state().requests.push(record);
            std::future::pending::<()>().await;
            return Err(Dropped);
        }
        Reply::Verdicts {
            verdicts,
            retry_after,
        } => endpoint.accept(&body, Some((verdicts, retry_after)), &mut record),
        Reply::Accept | Reply::Delay(..) => endpoint.accept(&body, None, &mut record),
    };
    if v1
        && let Some(id) = request_id
        && let Ok(value) = hyper::header::HeaderValue::from_str(&id)
    {
        response.headers_mut().insert("posthog-request-id", value);
    }
    record.status = response.status().as_u16();
    record.response_retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    record.response_body = response_text(&response);
    shared.state().requests.push(record);
    Ok(response)
}

/// The text of an answer the mock built (its body is a single in-memory chunk).
fn response_text(response: &HttpResponse) -> String {
    use hyper::body::Body as _;
    let Some(size) = response.body().size_hint().exact() else {
        return String::new();
    };
    // Full<Bytes> can be cloned and polled without a runtime: it is ready at once.
    let mut body = response.body().clone();
    let waker = std::task::Waker::noop();
    let mut context = std::task::Context::from_waker(waker);
    let mut text = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    while let std::task::Poll::Ready(Some(Ok(frame))) =
        std::pin::Pin::new(&mut body).poll_frame(&mut context)
    {
        if let Ok(data) = frame.into_data() {
            text.extend_from_slice(&data);
        }
    }
    String::from_utf8_lossy(&text).into_owned()
}

/// The endpoint a request arrived at, and how its body is encoded.
struct Endpoint<'a> {
    shared: &'a Shared,
    /// `/i/v1/analytics/events` rather than one of v0's.
    v1: bool,
    encoding: Option<&'a str>,
}

/// Verdicts scripted for one v1 request, and its `Retry-After`.
type Scripted = (Vec<MockVerdict>, Option<u64>);

impl Endpoint<'_> {
    /// An error answer in the endpoint's format: v1's `{error, error_description, error_uri}`
    /// (with `Retry-After: 1` on the statuses PostHog retries), or v0's `{type, detail}`.
    fn failure(&self, status: u16, detail: &str, retry_after: Option<u64>) -> HttpResponse {
        if !self.v1 {
            return respond(
                status,
                json!({"type": "scripted", "detail": detail}),
                retry_after,
            );
        }
        let retry_after = retry_after
            .or_else(|| matches!(status, 408 | 429 | 500 | 502 | 503 | 504).then_some(1));
        respond(
            status,
            json!({
                "error": "scripted",
                "error_description": detail,
                "error_uri": "https://posthog.com/docs/api",
            }),
            retry_after,
        )
    }

    /// The body, decoded as its `Content-Encoding` says (gzip, deflate, br, zstd), at most
    /// `MAX_REQUEST_BYTES + 1` bytes of it.
    fn decode(&self, body: &[u8]) -> Result<Vec<u8>, String> {
        let limit = u64::try_from(MAX_REQUEST_BYTES + 1).unwrap_or(u64::MAX);
        let mut decoded = Vec::new();
        let result = match self.encoding {
            None | Some("identity") => return Ok(body.to_vec()),
            Some("gzip") => flate2::read::GzDecoder::new(body)
                .take(limit)
                .read_to_end(&mut decoded),
            Some("deflate") => flate2::read::ZlibDecoder::new(body)
                .take(limit)
                .read_to_end(&mut decoded),
            Some("br") => brotli::Decompressor::new(body, 4096)
                .take(limit)
                .read_to_end(&mut decoded),
            Some("zstd") => zstd::stream::read::Decoder::new(body)
                .and_then(|decoder| decoder.take(limit).read_to_end(&mut decoded)),
            Some(other) => return Err(format!("unsupported Content-Encoding `{other}`")),
        };
        match result {
            Ok(_) => Ok(decoded),
            Err(error) => Err(format!(
                "body is not valid {}: {error}",
                self.encoding.unwrap_or_default()
            )),
        }
    }

    /// Records what the body holds, when it decodes to JSON.
    fn inspect(&self, body: &[u8], record: &mut ReceivedRequest) {
        let Ok(decoded) = self.decode(body) else {
            return;
        };
        record.decoded_bytes = decoded.len();
        if let Ok(payload) = serde_json::from_slice::<Value>(&decoded) {
            record.event_count = payload["batch"].as_array().map_or(1, Vec::len);
            record.historical_migration = payload["historical_migration"] == json!(true);
            record.body = payload;
        }
    }

    /// Whether the request carries the project key: in the body on v0, as a bearer token on v1.
    fn authorised(&self, payload: &Value, record: &ReceivedRequest) -> bool {
        let key = if self.v1 {
            record
                .header("authorization")
                .and_then(|value| value.strip_prefix("Bearer "))
        } else {
            payload
                .get("api_key")
                .or_else(|| payload.get("token"))
                .and_then(Value::as_str)
        };
        key == Some(self.shared.api_key.as_str())
    }

    /// Validates like PostHog's capture and records the accepted events: on v0 all of them or
    /// none; on v1 each by its verdict (scripted, or `ok` for every valid event).
    fn accept(
        &self,
        body: &[u8],
        scripted: Option<Scripted>,
        record: &mut ReceivedRequest,
    ) -> HttpResponse {
        let decoded = match self.decode(body) {
            Ok(decoded) => decoded,
            Err(detail) if self.v1 => return self.failure(400, &detail, None),
            Err(detail) => return invalid(detail),
        };
        record.decoded_bytes = decoded.len();
        if decoded.len() > MAX_REQUEST_BYTES {
            return self.failure(413, "request too large", None);
        }
        let Ok(payload) = serde_json::from_slice::<Value>(&decoded) else {
            return self.bad("body is not JSON");
        };
        record.body = payload.clone();
        record.historical_migration = payload["historical_migration"] == json!(true);
        if !self.authorised(&payload, record) {
            return if self.v1 {
                respond(
                    401,
                    json!({"error": "invalid_api_key", "error_description": "Project API key invalid", "error_uri": "https://posthog.com/docs/api"}),
                    None,
                )
            } else {
                respond(
                    401,
                    json!({"type": "authentication_error", "code": "invalid_api_key", "detail": "Project API key invalid"}),
                    None,
                )
            };
        }
        if self.v1 {
            if let Some(field) = ["api_key", "token", "sent_at"]
                .into_iter()
                .find(|field| payload.get(field).is_some())
            {
                return self.bad(&format!("`{field}` does not belong in a v1 body"));
            }
            let created_at = payload["created_at"].as_str().unwrap_or_default();
            if chrono::DateTime::parse_from_rfc3339(created_at).is_err() {
                return self.bad("`created_at` must be an RFC 3339 timestamp");
            }
        }
        let events: Vec<Value> = match payload.get("batch") {
            Some(Value::Array(batch)) => batch.clone(),
            Some(_) => return self.bad("`batch` must be an array"),
            None if self.v1 => return self.bad("`batch` is missing"),
            None => vec![payload.clone()],
        };
        record.event_count = events.len();
        if events.is_empty() {
            return self.bad("`batch` is empty");
        }
        let reject = self.shared.state().reject.clone();
        let mut accepted = Vec::with_capacity(events.len());
        let mut results = serde_json::Map::new();
        let (verdicts, retry_after) = scripted.unwrap_or_default();
        let mut asks_retry = false;
        for (index, event) in events.into_iter().enumerate() {
            let received = match validate(&event, self.v1) {
                Ok(received) => received,
                Err(detail) if self.v1 => {
                    let key = event["uuid"].as_str().unwrap_or_default().to_owned();
                    results.insert(key, json!({"result": "drop", "details": detail}));
                    continue;
                }
                Err(detail) => return invalid(format!("event {index}: {detail}")),
            };
            if let Some((status, predicate)) = &reject
                && predicate(&event)
            {
                let detail = format!("event {index} was refused by the test's predicate");
                return if *status == 400 {
                    self.bad(&detail)
                } else {
                    self.failure(*status, &detail, None)
                };
            }
            if self.v1 {
                let verdict = verdicts.get(index).cloned().unwrap_or(MockVerdict::Ok);
                asks_retry |= verdict == MockVerdict::Retry;
                if let Some(entry) = verdict.entry() {
                    results.insert(received.uuid.to_string(), entry);
                }
                if verdict != MockVerdict::Ok {
                    continue;
                }
            }
            accepted.push(received);
        }
        let mut state = self.shared.state();
        for event in accepted {
            state.unique.insert(event.uuid);
            state.events.push(event);
        }
        drop(state);
        self.shared.arrived.notify_waiters();
        if self.v1 {
            let retry_after = retry_after.or(asks_retry.then_some(1));
            respond(200, json!({ "results": results }), retry_after)
        } else {
            respond(200, json!({"status": "Ok"}), None)
        }
    }

    /// 400 in the endpoint's format.
    fn bad(&self, detail: &str) -> HttpResponse {
        if self.v1 {
            self.failure(400, detail, None)
        } else {
            invalid(detail)
        }
    }
}

/// One event as PostHog's capture checks it; v1 also wants a string `distinct_id` and a `uuid`.
fn validate(event: &Value, v1: bool) -> Result<ReceivedEvent, String> {
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
        Value::Number(_) if v1 => return Err("`distinct_id` must be a string".to_owned()),
        Value::Number(id) => id.to_string(),
        _ => return Err("`distinct_id` must be a non-empty string or a number".to_owned()),
    };
    let uuid = match &event["uuid"] {
        Value::Null if v1 => return Err("`uuid` is required".to_owned()),
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
