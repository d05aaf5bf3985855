//! `MockPostHog` validates requests the way PostHog's capture does, so tests that pass against
//! it send what PostHog accepts.

use std::io::Write as _;

use posthog_track::testing::MockPostHog;
use serde_json::{Value, json};

async fn post(mock: &MockPostHog, body: &Value, gzip: bool) -> u16 {
    let mut request = reqwest::Client::new().post(format!("{}/batch/", mock.url()));
    let bytes = body.to_string().into_bytes();
    request = if gzip {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(&bytes).unwrap();
        request
            .header("content-encoding", "gzip")
            .body(encoder.finish().unwrap())
    } else {
        request.body(bytes)
    };
    request.send().await.unwrap().status().as_u16()
}

fn batch(mock: &MockPostHog, event: Value) -> Value {
    json!({"api_key": mock.api_key(), "batch": [event]})
}

fn valid() -> Value {
    json!({"event": "e", "distinct_id": "u1", "uuid": "0191d6e4-7c1a-7cc8-9e5a-4c3b2a1d0e9f",
           "timestamp": "2026-01-02T03:04:05.000006Z", "properties": {"a": 1}})
}

#[tokio::test]
async fn accepts_valid_gzip_and_plain_batches() {
    let mock = MockPostHog::start().await;
    assert_eq!(post(&mock, &batch(&mock, valid()), true).await, 200);
    let mut second = valid();
    second["uuid"] = json!("0191d6e4-7c1a-7cc8-9e5a-4c3b2a1d0ea0");
    assert_eq!(post(&mock, &batch(&mock, second), false).await, 200);
    assert_eq!(mock.unique_uuids().len(), 2);
    assert_eq!(mock.requests()[0].content_encoding.as_deref(), Some("gzip"));
    assert_eq!(mock.events()[0].properties["a"], 1);
}

#[tokio::test]
async fn rejects_what_posthog_rejects() {
    let mock = MockPostHog::start().await;
    let wrong_key = json!({"api_key": "phc_other", "batch": [valid()]});
    assert_eq!(post(&mock, &wrong_key, false).await, 401);
    for (field, value) in [
        ("uuid", json!("not-a-uuid")),
        ("timestamp", json!("2026-01-02T03:04:05+02:00")),
        ("timestamp", json!("yesterday")),
        ("distinct_id", json!("")),
        ("event", json!(null)),
        ("properties", json!([1, 2])),
    ] {
        let mut event = valid();
        event[field] = value.clone();
        assert_eq!(
            post(&mock, &batch(&mock, event), false).await,
            400,
            "{field} = {value}"
        );
    }
    let mut huge = valid();
    huge["properties"]["blob"] = json!("x".repeat(1_000_001));
    assert_eq!(
        post(&mock, &batch(&mock, huge), false).await,
        400,
        "an event over 1 MB"
    );
    let big_batch: Vec<Value> = (0..25)
        .map(|_| {
            let mut event = valid();
            event["properties"]["blob"] = json!("y".repeat(900_000));
            event
        })
        .collect();
    let body = json!({"api_key": mock.api_key(), "batch": big_batch});
    assert_eq!(post(&mock, &body, true).await, 413, "a request over 20 MiB");
    assert!(
        mock.events().is_empty(),
        "nothing of a rejected request is recorded"
    );
}
