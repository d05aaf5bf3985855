//! The capture endpoints (`/batch/`, `/capture/`, `/e/`, `/i/v0/e/`): decoding a request's
//! body (gzip or not) and validating its events as PostHog's capture does.

use std::io::Read as _;

use serde_json::{Value, json};
use uuid::Uuid;

use super::server::{HttpResponse, Shared, invalid, respond};

const MAX_EVENT_BYTES: usize = 1_000_000;
const MAX_REQUEST_BYTES: usize = 20 * 1024 * 1024;

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
