//! Remote evaluation: `POST {host}/flags/?v=2`, PostHog deciding every flag for one user.

use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, USER_AGENT};
use serde_json::{Value, json};

use super::http::{HttpClient, error_excerpt, excerpt, read_bounded};
use super::request::{FlagsRequest, FlagsSnapshot};
use super::value::{FlagValue, decode_payload};
use crate::client::{Backoff, USER_AGENT_VALUE};
use crate::config::ApiKey;
use crate::error::{Error, Result};

/// Calls `/flags`. Retries only what a retry can fix: transport errors, 502 and 504.
#[derive(Debug, Clone)]
pub(crate) struct RemoteFlags {
    http: HttpClient,
    url: String,
    api_key: ApiKey,
}

const RETRIES: u32 = 2;
/// Largest `/flags` answer read; a larger one is an error.
const MAX_RESPONSE_BYTES: usize = 16 << 20;
/// A flag is usually needed to answer a request: retry soon, not for long.
const RETRY_BACKOFF: Backoff = Backoff {
    initial: Duration::from_millis(200),
    max: Duration::from_secs(1),
};

impl RemoteFlags {
    pub(crate) fn new(host: &str, api_key: ApiKey, timeout: Duration) -> Self {
        RemoteFlags {
            http: HttpClient::new(timeout),
            url: format!("{host}/flags/?v=2"),
            api_key,
        }
    }

    pub(crate) async fn evaluate(&self, request: &FlagsRequest) -> Result<FlagsSnapshot> {
        let mut body = json!({
            "token": self.api_key.expose(),
            "distinct_id": request.distinct_id,
            "person_properties": request.person_properties,
            "groups": request.groups,
            "group_properties": request.group_properties,
            "geoip_disable": request.disable_geoip,
        });
        if !request.flag_keys.is_empty() {
            body["flag_keys_to_evaluate"] = json!(request.flag_keys);
        }
        let body = body.to_string();
        let http = self.http.get()?;
        let mut attempt = 0;
        loop {
            let response = http
                .post(&self.url)
                .header(USER_AGENT, USER_AGENT_VALUE)
                .header(CONTENT_TYPE, "application/json")
                .body(body.clone())
                .send()
                .await;
            let retryable = match &response {
                Err(_) => true,
                Ok(response) => matches!(response.status().as_u16(), 502 | 504),
            };
            if retryable && attempt < RETRIES {
                attempt += 1;
                tokio::time::sleep(RETRY_BACKOFF.delay(attempt, None)).await;
                continue;
            }
            let response = response.map_err(|error| {
                Error::flags("the /flags request failed", Some(Box::new(error)))
            })?;
            let status = response.status();
            if !status.is_success() {
                // Redacted: a proxy that echoes the request would echo the project key.
                let excerpt = error_excerpt(response, self.api_key.expose()).await;
                return Err(Error::flags(
                    format!(
                        "/flags answered {status}{}: {excerpt}",
                        super::http::host_hint(status)
                    ),
                    None,
                ));
            }
            let (body, more) =
                read_bounded(response, MAX_RESPONSE_BYTES)
                    .await
                    .map_err(|error| {
                        Error::flags("reading the /flags answer failed", Some(Box::new(error)))
                    })?;
            if more {
                return Err(Error::flags(
                    format!("the /flags answer is larger than {MAX_RESPONSE_BYTES} bytes"),
                    None,
                ));
            }
            let json: Value = serde_json::from_slice(&body).map_err(|error| {
                Error::flags("/flags answered with invalid JSON", Some(Box::new(error)))
            })?;
            return parse_response(&json).map_err(|what| {
                // Redacted: an answer that echoes the request would show the project key.
                let shown = excerpt(&body, false, self.api_key.expose());
                Error::flags(format!("/flags answered {what}, not flags: {shown}"), None)
            });
        }
    }
}

/// The longest `requestId` kept (PostHog sends a uuid, 36 bytes).
const MAX_REQUEST_ID_BYTES: usize = 128;

/// Reads both response shapes: v2 (`flags: {key: {enabled, variant, metadata.payload}}`) and
/// v1 (`featureFlags`, `featureFlagPayloads`). Either map may be empty (no flag applies, or
/// `quotaLimited`), but one of them must be there: anything else (a string, an array, an
/// object holding neither, say a proxy's page or another API's answer) is not an answer, and
/// `Err` says what it is instead.
fn parse_response(json: &Value) -> Result<FlagsSnapshot, String> {
    let v2 = json.get("flags").and_then(Value::as_object);
    let v1 = json.get("featureFlags").and_then(Value::as_object);
    if v2.is_none() && v1.is_none() {
        return Err(match json {
            Value::Object(object) => match (object.get("flags"), object.get("featureFlags")) {
                (Some(other), _) | (None, Some(other)) => {
                    format!("an object whose flags are {}", kind(other))
                }
                (None, None) => "an object without `flags` or `featureFlags`".to_owned(),
            },
            other => kind(other).to_owned(),
        });
    }
    let mut snapshot = FlagsSnapshot::default();
    if let Some(flags) = v2 {
        for (key, flag) in flags {
            let value = match flag.get("variant").and_then(Value::as_str) {
                Some(variant) => FlagValue::Variant(variant.to_owned()),
                None => FlagValue::Enabled(
                    flag.get("enabled")
                        .and_then(Value::as_bool)
                        .unwrap_or(false),
                ),
            };
            if let Some(payload) = flag.pointer("/metadata/payload").filter(|p| !p.is_null()) {
                snapshot
                    .payloads
                    .insert(key.clone(), decode_payload(payload));
            }
            snapshot.values.insert(key.clone(), value);
        }
    } else if let Some(flags) = v1 {
        for (key, value) in flags {
            let value = match value {
                Value::String(variant) => FlagValue::Variant(variant.clone()),
                other => FlagValue::Enabled(other.as_bool().unwrap_or(false)),
            };
            snapshot.values.insert(key.clone(), value);
        }
        if let Some(payloads) = json.get("featureFlagPayloads").and_then(Value::as_object) {
            for (key, payload) in payloads.iter().filter(|(_, p)| !p.is_null()) {
                snapshot
                    .payloads
                    .insert(key.clone(), decode_payload(payload));
            }
        }
    }
    snapshot.quota_limited = json
        .get("quotaLimited")
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|item| item.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    snapshot.errors_while_computing = json
        .get("errorsWhileComputingFlags")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    // A uuid; anything longer than an id would be is not one, and would swell every exposure.
    snapshot.request_id = json
        .get("requestId")
        .and_then(Value::as_str)
        .filter(|id| id.len() <= MAX_REQUEST_ID_BYTES)
        .map(str::to_owned);
    Ok(snapshot)
}

/// What kind of JSON value `value` is, for a message.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_v2_and_v1_responses() {
        let v2 = json!({"flags": {
            "beta": {"key": "beta", "enabled": true, "variant": null, "metadata": {"payload": "{\"a\": 1}"}},
            "exp": {"key": "exp", "enabled": true, "variant": "test"},
            "off": {"key": "off", "enabled": false}
        }, "quotaLimited": ["feature_flags"]});
        let snapshot = parse_response(&v2).unwrap();
        assert!(
            snapshot.is_enabled("beta")
                && snapshot.is_enabled("exp")
                && !snapshot.is_enabled("off")
        );
        assert_eq!(snapshot.variant("exp"), Some("test"));
        assert_eq!(snapshot.payload("beta"), Some(&json!({"a": 1})));
        assert_eq!(snapshot.quota_limited(), ["feature_flags"]);
        assert!(!snapshot.is_enabled("unknown"));

        let v1 = json!({"featureFlags": {"beta": true, "exp": "control"}, "featureFlagPayloads": {"exp": "[1, 2]"}});
        let snapshot = parse_response(&v1).unwrap();
        assert_eq!(snapshot.value("beta"), Some(&FlagValue::Enabled(true)));
        assert_eq!(snapshot.variant("exp"), Some("control"));
        assert_eq!(snapshot.payload("exp"), Some(&json!([1, 2])));
    }

    #[test]
    fn reads_errors_while_computing_and_the_request_id() {
        let answer = json!({"flags": {}, "errorsWhileComputingFlags": true, "requestId": "4f1c"});
        let snapshot = parse_response(&answer).unwrap();
        assert!(snapshot.errors_while_computing());
        assert_eq!(snapshot.request_id(), Some("4f1c"));
        assert_eq!(
            snapshot.error_of("beta").as_deref(),
            Some("errors_while_computing_flags,flag_missing")
        );
        // Absent, or not what PostHog sends: no error, no id.
        for answer in [
            json!({"flags": {"beta": {"enabled": true}}}),
            json!({"flags": {"beta": {"enabled": true}}, "errorsWhileComputingFlags": "yes",
                   "requestId": 7}),
            json!({"flags": {"beta": {"enabled": true}},
                   "requestId": "x".repeat(MAX_REQUEST_ID_BYTES + 1)}),
        ] {
            let snapshot = parse_response(&answer).unwrap();
            assert!(!snapshot.errors_while_computing(), "{answer}");
            assert_eq!(snapshot.request_id(), None, "{answer}");
            assert_eq!(snapshot.error_of("beta"), None, "{answer}");
        }
    }

    #[test]
    fn empty_flag_maps_are_answers_and_other_shapes_are_not() {
        for empty in [
            json!({"flags": {}}),
            json!({"flags": {}, "quotaLimited": ["feature_flags"], "errorsWhileComputingFlags": false}),
            json!({"featureFlags": {}, "featureFlagPayloads": {}}),
        ] {
            let snapshot = parse_response(&empty);
            assert!(snapshot.is_ok(), "{empty}: {snapshot:?}");
        }
        for (answer, what) in [
            (json!("garbage"), "a string"),
            (json!([1, 2]), "an array"),
            (json!(null), "null"),
            (json!(7), "a number"),
            (json!({}), "an object without `flags` or `featureFlags`"),
            (
                json!({"detail": "Not found."}),
                "an object without `flags` or `featureFlags`",
            ),
            (
                json!({"flags": ["beta"]}),
                "an object whose flags are an array",
            ),
            (json!({"flags": null}), "an object whose flags are null"),
            (
                json!({"featureFlags": "beta"}),
                "an object whose flags are a string",
            ),
        ] {
            assert_eq!(parse_response(&answer).unwrap_err(), what, "{answer}");
        }
    }
}
