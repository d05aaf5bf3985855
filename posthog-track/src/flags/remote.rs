//! Remote evaluation: `POST {host}/flags/?v=2`, PostHog deciding every flag for one user.

use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, USER_AGENT};
use serde_json::{Value, json};

use super::http::{HttpClient, error_excerpt, read_bounded};
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
            return Ok(parse_response(&json));
        }
    }
}

/// Reads both response shapes: v2 (`flags: {key: {enabled, variant, metadata.payload}}`) and
/// v1 (`featureFlags`, `featureFlagPayloads`).
fn parse_response(json: &Value) -> FlagsSnapshot {
    let mut snapshot = FlagsSnapshot::default();
    if let Some(flags) = json.get("flags").and_then(Value::as_object) {
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
    } else if let Some(flags) = json.get("featureFlags").and_then(Value::as_object) {
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
    snapshot
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
        let snapshot = parse_response(&v2);
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
        let snapshot = parse_response(&v1);
        assert_eq!(snapshot.value("beta"), Some(&FlagValue::Enabled(true)));
        assert_eq!(snapshot.variant("exp"), Some("control"));
        assert_eq!(snapshot.payload("exp"), Some(&json!([1, 2])));
    }
}
