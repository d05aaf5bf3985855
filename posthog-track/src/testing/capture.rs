//! The capture endpoints (`/batch/`, `/capture/`, `/e/`, `/i/v0/e/`): scripted replies,
//! decoding a request's body (gzip or not), validating its events as PostHog's capture does,
//! and the [`MockPostHog`] methods that script them and read back what they received.

use std::collections::BTreeSet;
use std::io::Read as _;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::Request;
use hyper::body::Incoming;
use serde_json::{Value, json};
use uuid::Uuid;

use super::state::{
    Dropped, HttpResponse, MockPostHog, ReceivedEvent, ReceivedRequest, Reply, Shared, WaitTimeout,
    invalid, respond,
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

/// A capture request: answered as the script, an outage or random failures say, else
/// validated and recorded.
pub(super) async fn request(
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
            let response = accept(shared, &body, gzip, &mut record);
            record.status = response.status().as_u16();
            shared.state().requests.push(record);
            std::future::pending::<()>().await;
            return Err(Dropped);
        }
        Reply::Accept | Reply::Delay(..) => {
            let gzip = gzip_query || content_encoding.as_deref() == Some("gzip");
            accept(shared, &body, gzip, &mut record)
        }
    };
    record.status = response.status().as_u16();
    shared.state().requests.push(record);
    Ok(response)
}

/// Validates like PostHog's capture, and records the events when all of them are valid.
pub(super) fn accept(
    shared: &Shared,
    body: &[u8],
    gzip: bool,
    record: &mut ReceivedRequest,
) -> HttpResponse {
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
