//! The flag endpoints: remote evaluation (`POST /flags`) and the definitions that local
//! evaluation polls (`GET /flags/definitions`, with an ETag).

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};

use super::state::{Dropped, HttpResponse, MockPostHog, Outage, Shared, outage, respond};

impl MockPostHog {
    /// Serves `definitions` (a `/flags/definitions` body) to local evaluation, with an ETag,
    /// answering 304 to a poll that already has them.
    pub fn set_flag_definitions(&self, definitions: Value) {
        self.shared.state().flags.definitions = Some(definitions);
    }

    /// Answers `/flags/definitions` with this status (401, 402, 429, ...) until `None`.
    pub fn set_flag_definitions_status(&self, status: Option<u16>) {
        self.shared.state().flags.definitions_status = status;
    }

    /// Each `/flags/definitions` request: the status answered (0 for a connection dropped on
    /// purpose) and its `If-None-Match`.
    pub fn flag_definitions_requests(&self) -> Vec<(u16, Option<String>)> {
        self.shared.state().flags.definitions_requests.clone()
    }

    /// Answers remote evaluation (`POST /flags`) with this body.
    pub fn set_remote_flags(&self, response: Value) {
        self.shared.state().flags.remote = Some(response);
    }

    /// The bodies of the remote evaluation requests received.
    pub fn flags_requests(&self) -> Vec<Value> {
        self.shared.state().flags.remote_requests.clone()
    }
}

/// `POST /flags`: records the body and answers as an outage says, else with the scripted
/// evaluation.
pub(super) async fn remote(
    shared: &Shared,
    request: Request<Incoming>,
) -> Result<HttpResponse, Dropped> {
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => return Err(Dropped),
    };
    let outage = outage(shared, &body).await;
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    // As PostHog: a project key it does not know is refused.
    let known_key = parsed
        .get("api_key")
        .or_else(|| parsed.get("token"))
        .and_then(Value::as_str)
        == Some(shared.api_key.as_str());
    let answer = {
        let mut guard = shared.state();
        let flags = &mut guard.flags;
        flags.remote_requests.push(parsed);
        flags.remote.clone().unwrap_or_else(|| json!({"flags": {}}))
    };
    match outage {
        Outage::Answer(response) => Ok(response),
        Outage::Drop => Err(Dropped),
        Outage::HandleUnanswered => std::future::pending().await,
        Outage::Handle if !known_key => Ok(respond(
            401,
            json!({"type": "authentication_error", "code": "invalid_api_key",
                   "detail": "Project API key invalid. You can find your project API key in PostHog project settings."}),
            None,
        )),
        Outage::Handle => Ok(respond(200, answer, None)),
    }
}

/// `GET /flags/definitions`: as an outage says, else the definitions with an ETag, 304 when
/// the poll already has them.
pub(super) async fn definitions(
    shared: &Shared,
    request: Request<Incoming>,
) -> Result<HttpResponse, Dropped> {
    let if_none_match = request
        .headers()
        .get("if-none-match")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // What a GET sends: its path and query (which carries the project key).
    let outage = outage(shared, request.uri().to_string().as_bytes()).await;
    if let Some(status) = outage.status() {
        shared
            .state()
            .flags
            .definitions_requests
            .push((status, if_none_match));
        return match outage {
            Outage::Answer(answer) => Ok(answer),
            _ => Err(Dropped),
        };
    }
    let response = definitions_answer(shared, if_none_match);
    if matches!(outage, Outage::HandleUnanswered) {
        std::future::pending::<()>().await;
    }
    Ok(response)
}

/// Records a `/flags/definitions` request and builds its answer.
fn definitions_answer(shared: &Shared, if_none_match: Option<String>) -> HttpResponse {
    let mut guard = shared.state();
    let state = &mut guard.flags;
    if let Some(status) = state.definitions_status {
        state.definitions_requests.push((status, if_none_match));
        return respond(
            status,
            json!({"type": "scripted", "detail": "scripted failure"}),
            None,
        );
    }
    let definitions = state
        .definitions
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
