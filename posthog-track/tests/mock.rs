#![cfg(feature = "testing")]
//! `MockPostHog` spoken to over plain HTTP: validation, recording, fault injection, limits.
//!
//! Run with `cargo test -p posthog-track --features testing --test mock`.

use std::io::Write as _;
use std::time::{Duration, Instant};

use posthog_track::testing::{MockPostHog, Reply};
use serde_json::{Value, json};
use uuid::Uuid;

const TIMESTAMP: &str = "2025-01-02T03:04:05.000000Z";

fn event(name: &str, distinct_id: &str) -> Value {
    json!({
        "event": name,
        "distinct_id": distinct_id,
        "uuid": Uuid::new_v4().to_string(),
        "timestamp": TIMESTAMP,
        "properties": {"$lib": "mock-test"},
    })
}

fn batch(mock: &MockPostHog, events: &[Value]) -> Value {
    json!({"api_key": mock.api_key(), "batch": events, "sent_at": TIMESTAMP})
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// A finished exchange: status, `Retry-After`, JSON body.
struct Answer {
    status: u16,
    retry_after: Option<String>,
    body: Value,
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .user_agent("mock-test/1.0")
        .build()
        .unwrap()
}

async fn send(
    client: &reqwest::Client,
    url: String,
    body: Vec<u8>,
    gzipped: bool,
) -> reqwest::Result<Answer> {
    let mut request = client
        .post(url)
        .header("content-type", "application/json")
        .body(body);
    if gzipped {
        request = request.header("content-encoding", "gzip");
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = response.bytes().await?;
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Ok(Answer {
        status,
        retry_after,
        body,
    })
}

/// POSTs `body` as JSON to `path`, uncompressed.
async fn post(mock: &MockPostHog, path: &str, body: &Value) -> Answer {
    let url = format!("{}{path}", mock.url());
    send(&client(), url, body.to_string().into_bytes(), false)
        .await
        .expect("the mock answers")
}

#[tokio::test]
async fn a_valid_gzip_batch_is_accepted_and_recorded_with_its_headers() {
    let mock = MockPostHog::start().await;
    let mut numeric = event("order_paid", "ignored");
    numeric["distinct_id"] = json!(42);
    let events = [event("user_signed_up", "u1"), numeric];
    let mut body = batch(&mock, &events);
    body["historical_migration"] = json!(true);
    let plain = body.to_string().into_bytes();
    let compressed = gzip(&plain);

    let answer = send(
        &client(),
        format!("{}/batch/", mock.url()),
        compressed.clone(),
        true,
    )
    .await
    .unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, json!({"status": "Ok"}));

    let received = mock.events();
    assert_eq!(received.len(), 2);
    assert_eq!(received[0].event, "user_signed_up");
    assert_eq!(received[0].distinct_id, "u1");
    assert_eq!(received[0].uuid.to_string(), events[0]["uuid"]);
    assert_eq!(received[0].timestamp, TIMESTAMP);
    assert_eq!(received[0].properties, json!({"$lib": "mock-test"}));
    assert_eq!(received[0].raw, events[0]);
    assert_eq!(received[1].distinct_id, "42", "a numeric distinct_id");
    assert_eq!(mock.unique_uuids().len(), 2);

    let requests = mock.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.path, "/batch/");
    assert_eq!(request.query, None);
    assert_eq!(request.status, 200);
    assert_eq!(request.response, json!({"status": "Ok"}));
    assert_eq!(request.user_agent.as_deref(), Some("mock-test/1.0"));
    assert_eq!(request.content_encoding.as_deref(), Some("gzip"));
    assert_eq!(request.content_type.as_deref(), Some("application/json"));
    assert_eq!(request.body, body);
    assert_eq!(request.compressed_bytes, compressed.len());
    assert_eq!(request.decoded_bytes, plain.len());
    assert_eq!(request.event_count, 2);
    assert!(request.historical_migration);
    assert_eq!(request.sent_at.as_deref(), Some(TIMESTAMP));
    mock.assert_no_duplicates();
}

#[tokio::test]
async fn every_capture_endpoint_and_body_shape_is_accepted() {
    let mock = MockPostHog::start().await;
    let key = mock.api_key().to_owned();

    // `?compression=gzip-js` without a Content-Encoding header, as posthog-js sends.
    let mut single = event("a", "u1");
    single["api_key"] = json!(key);
    let answer = send(
        &client(),
        format!("{}/i/v0/e/?compression=gzip-js", mock.url()),
        gzip(single.to_string().as_bytes()),
        false,
    )
    .await
    .unwrap();
    assert_eq!(answer.status, 200);

    // A single event whose key is `properties.token`.
    let mut tokened = event("b", "u1");
    tokened["properties"]["token"] = json!(key);
    assert_eq!(post(&mock, "/e/", &tokened).await.status, 200);

    // A single event with `token`, on /capture/.
    let mut with_token = event("c", "u1");
    with_token["token"] = json!(key);
    assert_eq!(post(&mock, "/capture/", &with_token).await.status, 200);

    // A batch on /batch without the slash, with `token` instead of `api_key`.
    let body = json!({"token": key, "batch": [event("d", "u1")]});
    assert_eq!(post(&mock, "/batch", &body).await.status, 200);

    // A JSON array of events, each carrying the key.
    let mut first = event("e", "u1");
    first["api_key"] = json!(key);
    let mut second = event("f", "u1");
    second["api_key"] = json!(key);
    assert_eq!(post(&mock, "/e", &json!([first, second])).await.status, 200);

    // No uuid, no timestamp, no properties: PostHog fills in a uuid.
    let minimal = json!({"api_key": key, "batch": [{"event": "g", "distinct_id": "u1"}]});
    assert_eq!(post(&mock, "/batch/", &minimal).await.status, 200);

    let names: Vec<String> = mock.events().into_iter().map(|e| e.event).collect();
    assert_eq!(names, ["a", "b", "c", "d", "e", "f", "g"]);
    let last = mock.events().pop().unwrap();
    assert_eq!(last.timestamp, "");
    assert_eq!(last.properties, json!({}));
    assert_eq!(
        mock.requests()[0].query.as_deref(),
        Some("compression=gzip-js")
    );
    assert_eq!(mock.requests()[0].content_encoding, None);
}

#[tokio::test]
async fn a_wrong_or_missing_api_key_is_401_and_nothing_is_accepted() {
    let mock = MockPostHog::start_with_api_key("phc_right").await;
    assert_eq!(mock.api_key(), "phc_right");

    let wrong = json!({"api_key": "phc_wrong", "batch": [event("a", "u1")]});
    let answer = post(&mock, "/batch/", &wrong).await;
    assert_eq!(answer.status, 401);
    assert_eq!(answer.body["type"], "authentication_error");
    assert_eq!(answer.body["code"], "invalid_api_key");

    let missing = json!({"batch": [event("a", "u1")]});
    let answer = post(&mock, "/batch/", &missing).await;
    assert_eq!(answer.status, 401);
    assert_eq!(answer.body["code"], "missing_api_key");

    assert!(mock.events().is_empty());
    let statuses: Vec<u16> = mock.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [401, 401]);
    assert_eq!(mock.requests()[0].event_count, 1);
}

#[tokio::test]
async fn any_invalid_event_rejects_the_whole_request_with_400() {
    let mock = MockPostHog::start().await;
    let with = |field: &str, value: Value| {
        let mut bad = event("bad", "u1");
        if value.is_null() {
            bad.as_object_mut().unwrap().remove(field);
        } else {
            bad[field] = value;
        }
        bad
    };
    let cases = [
        ("invalid uuid", with("uuid", json!("not-a-uuid"))),
        ("uuid not a string", with("uuid", json!(12))),
        (
            "timestamp not RFC 3339",
            with("timestamp", json!("2025-01-02 03:04:05")),
        ),
        (
            "timestamp not UTC",
            with("timestamp", json!("2025-01-02T05:04:05+02:00")),
        ),
        ("missing distinct_id", with("distinct_id", Value::Null)),
        ("empty distinct_id", with("distinct_id", json!(""))),
        (
            "distinct_id an object",
            with("distinct_id", json!({"id": 1})),
        ),
        ("missing event", with("event", Value::Null)),
        ("empty event", with("event", json!(""))),
        ("properties an array", with("properties", json!([1, 2]))),
        ("event not an object", json!("just a string")),
    ];
    for (case, bad) in &cases {
        // The valid event comes first: it must not be accepted either.
        let body = batch(&mock, &[event("good", "u1"), bad.clone()]);
        let answer = post(&mock, "/batch/", &body).await;
        assert_eq!(answer.status, 400, "{case}: {}", answer.body);
        assert_eq!(answer.body["type"], "validation_error", "{case}");
        assert!(
            answer.body["detail"]
                .as_str()
                .unwrap()
                .starts_with("event 1"),
            "{case}: {}",
            answer.body
        );
    }
    assert!(
        mock.events().is_empty(),
        "nothing of a rejected batch is accepted"
    );
    assert_eq!(mock.requests().len(), cases.len());
    assert!(mock.requests().iter().all(|r| r.status == 400));

    // +00:00 is UTC too.
    let utc = with("timestamp", json!("2025-01-02T03:04:05+00:00"));
    assert_eq!(
        post(&mock, "/batch/", &batch(&mock, &[utc])).await.status,
        200
    );
}

#[tokio::test]
async fn malformed_bodies_are_400_with_a_json_error() {
    let mock = MockPostHog::start().await;
    let key = mock.api_key().to_owned();
    let url = format!("{}/batch/", mock.url());
    let cases: [(&str, Vec<u8>, bool); 6] = [
        ("not JSON", b"{\"api_key\":".to_vec(), false),
        ("not gzip", b"\x1f\x8bnot really gzip".to_vec(), true),
        (
            "empty batch",
            json!({"api_key": key, "batch": []})
                .to_string()
                .into_bytes(),
            false,
        ),
        (
            "batch not an array",
            json!({"api_key": key, "batch": {"event": "a"}})
                .to_string()
                .into_bytes(),
            false,
        ),
        ("a JSON string", b"\"hello\"".to_vec(), false),
        ("empty body", Vec::new(), false),
    ];
    for (case, body, gzipped) in cases {
        let answer = send(&client(), url.clone(), body, gzipped).await.unwrap();
        assert_eq!(answer.status, 400, "{case}");
        assert_eq!(answer.body["type"], "validation_error", "{case}");
        assert!(answer.body["detail"].is_string(), "{case}");
    }
    assert!(mock.events().is_empty());
    assert_eq!(mock.requests()[0].body, Value::Null, "undecodable body");
}

#[tokio::test]
async fn scripted_replies_are_consumed_in_order_then_requests_are_accepted() {
    let mock = MockPostHog::start().await;
    mock.script([
        Reply::Status(503),
        Reply::RetryAfter {
            status: 429,
            seconds: 2,
        },
    ]);

    // Unknown paths are 404 and consume nothing.
    let answer = post(&mock, "/nowhere/", &json!({})).await;
    assert_eq!(answer.status, 404);
    assert_eq!(answer.body["code"], "not_found");

    let body = batch(&mock, &[event("a", "u1")]);
    let first = post(&mock, "/batch/", &body).await;
    assert_eq!(first.status, 503);
    assert_eq!(first.retry_after, None);
    assert_eq!(first.body["type"], "server_error");
    let second = post(&mock, "/batch/", &body).await;
    assert_eq!(second.status, 429);
    assert_eq!(second.retry_after.as_deref(), Some("2"));
    let third = post(&mock, "/batch/", &body).await;
    assert_eq!(third.status, 200);

    assert_eq!(
        mock.events().len(),
        1,
        "only the accepted attempt is recorded"
    );
    let requests = mock.requests();
    let statuses: Vec<u16> = requests.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [503, 429, 200], "404s are not capture requests");
    assert_eq!(requests[0].body, body, "failed requests keep their body");
    assert_eq!(requests[0].event_count, 1);
}

#[tokio::test]
async fn delayed_replies_wait_before_answering() {
    let mock = MockPostHog::start().await;
    mock.script([Reply::Accept.delayed(Duration::from_millis(200))]);
    let started = Instant::now();
    let answer = post(&mock, "/batch/", &batch(&mock, &[event("a", "u1")])).await;
    assert_eq!(answer.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(mock.events().len(), 1);
}

#[tokio::test]
async fn an_outage_answers_every_request_until_cleared() {
    let mock = MockPostHog::start().await;
    let body = batch(&mock, &[event("a", "u1")]);
    mock.set_outage(Some(Reply::Status(500)));
    assert_eq!(post(&mock, "/batch/", &body).await.status, 500);
    assert_eq!(post(&mock, "/batch/", &body).await.status, 500);
    assert!(mock.events().is_empty());

    mock.set_outage(None);
    assert_eq!(post(&mock, "/batch/", &body).await.status, 200);
    assert_eq!(mock.events().len(), 1);

    // The script comes before the outage.
    mock.set_outage(Some(Reply::Status(502)));
    mock.script([Reply::Accept]);
    assert_eq!(post(&mock, "/batch/", &body).await.status, 200);
    assert_eq!(post(&mock, "/batch/", &body).await.status, 502);
    mock.clear_faults();
    assert_eq!(post(&mock, "/batch/", &body).await.status, 200);
}

#[tokio::test]
async fn a_dropped_connection_is_a_transport_error() {
    let mock = MockPostHog::start().await;
    mock.script([Reply::DropConnection]);
    let body = batch(&mock, &[event("a", "u1")]).to_string().into_bytes();
    let url = format!("{}/batch/", mock.url());
    let client = client();

    let error = match send(&client, url.clone(), body.clone(), false).await {
        Ok(answer) => panic!("expected a transport error, got {}", answer.status),
        Err(error) => error,
    };
    assert!(error.status().is_none(), "no HTTP status: {error}");
    assert!(mock.events().is_empty());
    assert_eq!(mock.requests().len(), 1);
    assert_eq!(mock.requests()[0].status, 0, "no response was written");
    assert_eq!(mock.requests()[0].response, Value::Null);

    // The next attempt, on a new connection, goes through.
    let answer = send(&client, url, body, false).await.unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(mock.events().len(), 1);
}

#[tokio::test]
async fn accept_without_response_records_but_never_answers() {
    let mock = MockPostHog::start().await;
    mock.script([Reply::AcceptWithoutResponse]);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let body = batch(&mock, &[event("a", "u1")]).to_string().into_bytes();
    let error = send(&client, format!("{}/batch/", mock.url()), body, false)
        .await
        .err()
        .expect("no answer");
    assert!(error.is_timeout(), "{error}");
    assert_eq!(mock.events().len(), 1, "PostHog has the event");
    assert_eq!(mock.requests()[0].status, 0);
}

#[tokio::test]
async fn random_failures_are_repeatable_for_a_seed() {
    async fn statuses(seed: u64) -> Vec<u16> {
        let mock = MockPostHog::start().await;
        mock.set_random_failures(0.5, vec![Reply::Status(500), Reply::Status(502)], seed);
        let body = batch(&mock, &[event("a", "u1")]);
        let mut statuses = Vec::new();
        for _ in 0..30 {
            statuses.push(post(&mock, "/batch/", &body).await.status);
        }
        statuses
    }
    let first = statuses(7).await;
    assert_eq!(first, statuses(7).await, "same seed, same failures");
    assert!(first.contains(&200) && first.contains(&500) && first.contains(&502));

    let mock = MockPostHog::start().await;
    let body = batch(&mock, &[event("a", "u1")]);
    mock.set_random_failures(1.0, vec![], 1);
    assert_eq!(
        post(&mock, "/batch/", &body).await.status,
        503,
        "default reply"
    );
    mock.set_random_failures(0.0, vec![Reply::Status(500)], 1);
    assert_eq!(
        post(&mock, "/batch/", &body).await.status,
        200,
        "turned off"
    );
}

#[tokio::test]
async fn reject_events_where_rejects_the_whole_request() {
    let mock = MockPostHog::start().await;
    mock.reject_events_where(|event| event["properties"]["poison"] == true);
    let mut poison = event("poisoned", "u1");
    poison["properties"]["poison"] = json!(true);

    let answer = post(
        &mock,
        "/batch/",
        &batch(&mock, &[event("good", "u1"), poison.clone()]),
    )
    .await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.body["type"], "validation_error");
    assert_eq!(answer.body["code"], "invalid_event");
    assert!(
        answer.body["detail"]
            .as_str()
            .unwrap()
            .contains(poison["uuid"].as_str().unwrap()),
        "{}",
        answer.body
    );
    assert!(mock.events().is_empty(), "nothing of the batch is accepted");

    let answer = post(&mock, "/batch/", &batch(&mock, &[event("good", "u1")])).await;
    assert_eq!(answer.status, 200);
    assert_eq!(mock.events().len(), 1);

    // A panicking predicate is a 500, not a dead server.
    mock.reject_events_where(|_| panic!("predicate bug"));
    let body = batch(&mock, &[event("good", "u1")]);
    assert_eq!(post(&mock, "/batch/", &body).await.status, 500);
    mock.clear_faults();
    assert_eq!(post(&mock, "/batch/", &body).await.status, 200);
}

#[tokio::test]
async fn wait_for_events_times_out_with_what_arrived() {
    let mock = MockPostHog::start().await;
    let timeout = mock
        .wait_for_events(1, Duration::from_millis(100))
        .await
        .unwrap_err();
    assert_eq!((timeout.expected, timeout.received), (1, 0));
    assert!(timeout.waited >= Duration::from_millis(100));
    assert!(timeout.to_string().contains("1 unique events; 0 arrived"));

    // It wakes up when events arrive from elsewhere.
    let sender = mock.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let event = event("late", "u1");
        let body = batch(&sender, &[event.clone(), event]);
        post(&sender, "/batch/", &body).await;
    });
    let events = mock
        .wait_for_events(1, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(events.len(), 2, "duplicates included");
    let requests = mock
        .wait_for_requests(1, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(requests.len(), 1);

    let timeout = mock
        .wait_for_events(2, Duration::from_millis(50))
        .await
        .unwrap_err();
    assert_eq!((timeout.expected, timeout.received), (2, 1), "unique uuids");
}

#[tokio::test]
async fn bodies_over_20_mib_are_413_and_events_over_1_mb_are_400() {
    let mock = MockPostHog::start().await;
    let url = format!("{}/batch/", mock.url());
    let mut big = event("big", "u1");
    big["properties"]["blob"] = json!("x".repeat(21 * 1024 * 1024));
    let plain = batch(&mock, &[big]).to_string().into_bytes();

    let answer = send(&client(), url.clone(), plain.clone(), false)
        .await
        .unwrap();
    assert_eq!(answer.status, 413);
    assert_eq!(answer.body["code"], "payload_too_large");

    // Small on the wire, too large once decompressed.
    let compressed = gzip(&plain);
    assert!(compressed.len() < 1024 * 1024);
    let answer = send(&client(), url.clone(), compressed.clone(), true)
        .await
        .unwrap();
    assert_eq!(answer.status, 413);

    let requests = mock.requests();
    assert_eq!(requests[0].compressed_bytes, plain.len());
    assert_eq!(requests[1].compressed_bytes, compressed.len());
    assert!(requests[1].decoded_bytes > MockPostHog::MAX_REQUEST_BYTES);
    assert_eq!(requests[1].body, Value::Null);

    // One event just over 1,000,000 bytes.
    let mut large = event("large", "u1");
    large["properties"]["blob"] = json!("x".repeat(MockPostHog::MAX_EVENT_BYTES));
    let answer = post(&mock, "/batch/", &batch(&mock, &[large])).await;
    assert_eq!(answer.status, 400);
    assert!(
        answer.body["detail"]
            .as_str()
            .unwrap()
            .contains("event too large"),
        "{}",
        answer.body
    );
    assert!(mock.events().is_empty());
}

#[tokio::test]
async fn duplicates_are_counted_and_reported() {
    let mock = MockPostHog::start().await;
    let once = event("once", "u1");
    let twice = event("twice", "u1");
    let body = batch(&mock, &[once, twice.clone()]);
    assert_eq!(post(&mock, "/batch/", &body).await.status, 200);
    mock.assert_no_duplicates();

    let body = batch(&mock, std::slice::from_ref(&twice));
    assert_eq!(post(&mock, "/batch/", &body).await.status, 200);
    assert_eq!(mock.events().len(), 3);
    assert_eq!(mock.unique_uuids().len(), 2);
    let uuid: Uuid = twice["uuid"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        mock.duplicate_uuids().into_iter().collect::<Vec<_>>(),
        [(uuid, 2)]
    );

    let panic = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        mock.assert_no_duplicates();
    }))
    .expect_err("duplicates make it panic");
    let message = panic.downcast_ref::<String>().unwrap();
    assert!(message.contains(&uuid.to_string()), "{message}");
    assert!(message.contains("x2 (twice)"), "{message}");

    mock.clear();
    assert!(mock.events().is_empty() && mock.requests().is_empty());
    assert!(mock.unique_uuids().is_empty());
    mock.assert_no_duplicates();
}

#[tokio::test]
async fn other_methods_are_405() {
    let mock = MockPostHog::start().await;
    let response = client()
        .get(format!("{}/batch/", mock.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 405);
    assert_eq!(response.headers()["allow"], "POST");
    assert_eq!(mock.requests()[0].status, 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_connections_are_served() {
    let mock = MockPostHog::start().await;
    mock.set_outage(Some(Reply::Accept.delayed(Duration::from_millis(300))));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let mock = mock.clone();
        tasks.push(tokio::spawn(async move {
            let body = batch(&mock, &[event("concurrent", &format!("u{i}"))]);
            post(&mock, "/batch/", &body).await.status
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), 200);
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "20 requests of 300 ms each were served in parallel, not one after another"
    );
    let events = mock
        .wait_for_events(20, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(events.len(), 20);
    mock.assert_no_duplicates();
}

#[tokio::test]
async fn dropping_the_last_handle_stops_the_server() {
    let mock = MockPostHog::start().await;
    let url = format!("{}/batch/", mock.url());
    let clone = mock.clone();
    drop(mock);
    assert_eq!(
        send(&client(), url.clone(), b"{}".to_vec(), false)
            .await
            .unwrap()
            .status,
        401,
        "a clone keeps it running"
    );
    drop(clone);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let fresh = reqwest::Client::new();
    let error = send(&fresh, url, b"{}".to_vec(), false)
        .await
        .err()
        .expect("stopped");
    assert!(error.is_connect(), "{error}");
}
