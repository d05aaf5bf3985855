//! PostHog's capture v1 protocol (`POSTHOG_CAPTURE_MODE=v1`): the wire format, the retry rules
//! of the in-memory queue, and the relay's settlement of each outbox row by its event's verdict,
//! on SQLite, PostgreSQL and MariaDB.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use posthog_track::outbox::Status;
use posthog_track::testing::{MockPostHog, MockVerdict, ReceivedRequest, Reply};
use posthog_track::{Backend, CaptureMode, Compression, Error, Event, EventOptions, Tracker};
use posthog_track_tests::{migrated_tracker, on_every_backend, tracker_for};
use sqlx::Pool;

fn v1_tracker(mock: &MockPostHog) -> posthog_track::TrackerBuilder {
    tracker_for(mock).capture_mode(CaptureMode::V1)
}

/// A v1 tracker whose commits start no relay: the test drives the relay.
fn v1_committer(mock: &MockPostHog) -> Tracker {
    v1_tracker(mock).external_relay(true).build()
}

/// A v1 tracker whose retries back off from `initial` up to `max`.
fn v1_backing_off(
    mock: &MockPostHog,
    initial: Duration,
    max: Duration,
) -> posthog_track::TrackerBuilder {
    v1_tracker(mock).backoff(posthog_track::Backoff { initial, max })
}

fn is_rfc3339_utc(value: &str) -> bool {
    value.ends_with('Z') && chrono::DateTime::parse_from_rfc3339(value).is_ok()
}

async fn capture(tracker: &Tracker, distinct_id: &str, count: usize) -> Vec<uuid::Uuid> {
    let mut uuids = Vec::new();
    for n in 0..count {
        let event = Event::new(format!("event_{n}"))
            .distinct_id(distinct_id)
            .property("n", n as u64);
        uuids.push(tracker.capture(event).await.unwrap().unwrap());
    }
    uuids
}

fn v1_requests(mock: &MockPostHog) -> Vec<ReceivedRequest> {
    mock.requests()
        .into_iter()
        .filter(|request| request.path == "/i/v1/analytics/events")
        .collect()
}

// Wire format: headers, body and every encoding.

#[tokio::test]
async fn v1_requests_carry_the_headers_and_body_of_the_contract_in_every_encoding() {
    for compression in [
        Compression::None,
        Compression::Gzip,
        Compression::Deflate,
        Compression::Brotli,
        Compression::Zstd,
    ] {
        let mock = MockPostHog::start().await;
        let tracker = v1_tracker(&mock).compression(compression).build();
        let uuids = capture(&tracker, "wire-user", 3).await;
        tracker.flush().await.unwrap();

        let requests = mock.requests();
        assert_eq!(
            requests.len(),
            1,
            "{compression:?}: one request, to v1 only"
        );
        let request = &requests[0];
        assert_eq!(request.path, "/i/v1/analytics/events");
        assert_eq!(
            request.status, 200,
            "{compression:?}: {}",
            request.response_body
        );
        assert_eq!(
            request.header("authorization"),
            Some(format!("Bearer {}", mock.api_key()).as_str())
        );
        assert!(
            request
                .header("content-type")
                .is_some_and(|v| v.starts_with("application/json"))
        );
        let sdk_info = request.header("posthog-sdk-info").unwrap();
        assert_eq!(
            sdk_info,
            format!("{}/{}", posthog_track::LIB_NAME, posthog_track::LIB_VERSION)
        );
        assert_eq!(request.header("posthog-attempt"), Some("1"));
        let request_id = request.header("posthog-request-id").unwrap();
        assert!(uuid::Uuid::parse_str(request_id).is_ok(), "{request_id}");
        assert!(is_rfc3339_utc(
            request.header("posthog-request-timestamp").unwrap()
        ));
        assert!(request.header("user-agent").is_some_and(|v| !v.is_empty()));
        assert_eq!(
            request.header("content-encoding"),
            compression.content_encoding(),
            "{compression:?}"
        );
        if compression != Compression::None {
            assert!(request.compressed_bytes < request.decoded_bytes);
        }

        let body = &request.body;
        assert!(is_rfc3339_utc(body["created_at"].as_str().unwrap()));
        for absent in ["api_key", "token", "sent_at", "historical_migration"] {
            assert!(body.get(absent).is_none(), "{absent} in {body}");
        }
        let batch = body["batch"].as_array().unwrap();
        assert_eq!(batch.len(), 3);
        for (event, uuid) in batch.iter().zip(&uuids) {
            assert_eq!(event["uuid"], uuid.to_string());
            assert!(event["distinct_id"].is_string());
            assert!(event["properties"].get("distinct_id").is_none());
            assert!(is_rfc3339_utc(event["timestamp"].as_str().unwrap()));
            assert!(event["event"].is_string());
            assert!(event.get("options").is_none(), "nothing set, nothing sent");
        }
        assert_eq!(mock.events().len(), 3, "{compression:?}");
        let results = serde_json::from_str::<serde_json::Value>(&request.response_body).unwrap();
        assert_eq!(results["results"].as_object().unwrap().len(), 3);
        assert_eq!(request.response_retry_after, None);
    }
}

#[tokio::test]
async fn options_geoip_and_historical_migration_are_sent_as_v1_says() {
    let mock = MockPostHog::start().await;
    let tracker = v1_tracker(&mock)
        .disable_geoip(true)
        .historical_migration(true)
        .before_send(|mut event| {
            // A hook may set options too.
            if event["event"] == "hooked" {
                event["options"] = serde_json::json!({"product_tour_id": "from-hook"});
            }
            Some(event)
        })
        .build();
    let with_options = Event::new("with_options")
        .distinct_id("opt-user")
        .property("$set", serde_json::json!({"plan": "pro"}))
        .options(
            EventOptions::new()
                .cookieless_mode(true)
                .process_person_profile(false),
        );
    let hooked = Event::new("hooked").distinct_id("opt-user");
    for event in [with_options, hooked] {
        tracker.capture(event).await.unwrap();
    }
    tracker.flush().await.unwrap();
    let request = &mock.requests()[0];
    assert_eq!(request.body["historical_migration"], true);
    let batch = request.body["batch"].as_array().unwrap();
    assert_eq!(
        batch[0]["options"],
        serde_json::json!({"cookieless_mode": true, "process_person_profile": false}),
        "only what was set"
    );
    assert_eq!(batch[0]["properties"]["$geoip_disable"], true);
    assert!(batch[0]["properties"]["$set"].is_object());
    assert_eq!(batch[1]["options"]["product_tour_id"], "from-hook");
    assert_eq!(batch[1]["properties"]["$geoip_disable"], true);
}

#[tokio::test]
async fn v0_stays_the_default() {
    let mock = MockPostHog::start().await;
    let tracker = tracker_for(&mock).build();
    capture(&tracker, "v0-user", 1).await;
    tracker.flush().await.unwrap();
    let request = &mock.requests()[0];
    assert_eq!(request.path, "/batch/");
    assert_eq!(request.body["api_key"], mock.api_key());
    assert!(request.header("posthog-request-id").is_none());
}

/// A v1 answer with one verdict of each kind, in this order: ok, retry, drop, limited, and
/// one this version does not know.
fn one_of_each_verdict(retry_after: Option<u64>) -> Reply {
    Reply::Verdicts {
        verdicts: vec![
            MockVerdict::Ok,
            MockVerdict::Retry,
            MockVerdict::Drop("invalid_event".into()),
            MockVerdict::Limited("billing_limit".into()),
            MockVerdict::Other {
                result: "from_the_future".into(),
                details: "new".into(),
            },
        ],
        retry_after,
    }
}

// Responses, in-memory queue.

#[tokio::test]
async fn only_retry_events_are_resent_as_the_same_request_after_retry_after() {
    let mock = MockPostHog::start().await;
    let tracker = v1_backing_off(&mock, Duration::from_millis(10), Duration::from_secs(5)).build();
    mock.script([one_of_each_verdict(Some(1))]);
    let uuids = capture(&tracker, "partial-user", 5).await;
    let started = Instant::now();
    let flushed = tracker.flush().await;
    let waited = started.elapsed();

    let requests = v1_requests(&mock);
    assert_eq!(requests.len(), 2, "one retry, of the retry event only");
    assert_eq!(requests[1].uuids(), [uuids[1].to_string()]);
    assert_eq!(
        requests[0].header("posthog-request-id"),
        requests[1].header("posthog-request-id")
    );
    assert_eq!(requests[0].header("posthog-attempt"), Some("1"));
    assert_eq!(requests[1].header("posthog-attempt"), Some("2"));
    assert_ne!(
        requests[0].header("posthog-request-timestamp"),
        requests[1].header("posthog-request-timestamp"),
        "refreshed per attempt"
    );
    assert_eq!(
        requests[0].body["created_at"],
        requests[1].body["created_at"]
    );
    assert_eq!(
        requests[1].body["batch"][0], requests[0].body["batch"][1],
        "the same event: uuid and timestamp unchanged"
    );
    assert!(
        waited >= Duration::from_millis(950),
        "Retry-After: {waited:?}"
    );
    let received: BTreeSet<String> = mock.events().iter().map(|e| e.uuid.to_string()).collect();
    assert_eq!(
        received,
        BTreeSet::from([uuids[0].to_string(), uuids[1].to_string()])
    );
    let stats = tracker.stats();
    assert_eq!(stats.delivered, 2);
    assert_eq!(
        stats.dropped_rejected, 3,
        "drop, limited and unknown are final"
    );
    match flushed {
        Err(Error::Undelivered { dropped: 3, .. }) => {}
        other => panic!("flush reports the three given up: {other:?}"),
    }
}

#[tokio::test]
async fn retryable_statuses_are_retried_with_the_same_request_id_and_the_rest_never() {
    for status in [408, 500, 503, 504] {
        let mock = MockPostHog::start().await;
        let tracker = v1_tracker(&mock).build();
        mock.script([Reply::Status(status), Reply::Status(status)]);
        let uuids = capture(&tracker, "retry-user", 2).await;
        tracker.flush().await.unwrap();
        let requests = v1_requests(&mock);
        assert_eq!(requests.len(), 3, "{status}");
        for (n, request) in requests.iter().enumerate() {
            assert_eq!(
                request.header("posthog-attempt"),
                Some((n + 1).to_string().as_str()),
                "{status}"
            );
            assert_eq!(
                request.header("posthog-request-id"),
                requests[0].header("posthog-request-id")
            );
            assert_eq!(
                request.uuids(),
                uuids.iter().map(ToString::to_string).collect::<Vec<_>>()
            );
        }
    }
    for status in [400, 401, 402, 403, 413, 415] {
        let mock = MockPostHog::start().await;
        let tracker = v1_tracker(&mock).build();
        mock.script([Reply::Status(status)]);
        capture(&tracker, "refused-user", 1).await;
        let flushed = tracker.flush().await;
        assert_eq!(v1_requests(&mock).len(), 1, "{status} is never retried");
        assert!(
            matches!(flushed, Err(Error::Undelivered { dropped: 1, .. })),
            "{status}: {flushed:?}"
        );
    }
}

#[tokio::test]
async fn backoff_starts_at_100_ms_at_least_and_max_retries_is_respected() {
    let mock = MockPostHog::start().await;
    // A configured backoff of 1 ms is raised to v1's floor.
    let tracker = v1_backing_off(&mock, Duration::from_millis(1), Duration::from_millis(2))
        .max_retries(3)
        .build();
    mock.set_outage(Some(Reply::Status(502)));
    capture(&tracker, "outage-user", 1).await;
    let started = Instant::now();
    let flushed = tracker.flush().await;
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "3 waits of 100 ms at least"
    );
    assert_eq!(v1_requests(&mock).len(), 4, "the first send and 3 retries");
    assert!(matches!(
        flushed,
        Err(Error::Undelivered { dropped: 1, .. })
    ));
}

// The relay settles each row by its event's verdict.

on_every_backend!(v1_verdicts_settle_each_outbox_row);

async fn v1_verdicts_settle_each_outbox_row<DB: Backend>(pool: &Pool<DB>, _url: &str) {
    let (mock, tracker, tag) = migrated_tracker(pool, v1_committer, "verdicts").await;
    let mut tx = tracker.begin(pool).await.unwrap();
    tx.set_distinct_id(tag.clone());
    for name in ["accepted", "again", "invalid", "over_quota", "future"] {
        tx.capture(Event::new(name)).unwrap();
    }
    let uuids: Vec<uuid::Uuid> = tx.staged().iter().map(|event| event.uuid).collect();
    tx.commit().await.unwrap();
    mock.script([one_of_each_verdict(None)]);

    let relay = tracker.relay(pool.clone());
    let pass = relay.run_once().await.unwrap();
    assert_eq!(
        (pass.claimed, pass.delivered, pass.retried, pass.dead),
        (5, 1, 1, 3),
        "{pass:?}"
    );
    let by_name = |events: &[posthog_track::outbox::OutboxEvent], name: &str| {
        events.iter().find(|e| e.event == name).cloned()
    };
    let events = relay.outbox().events().await.unwrap();
    assert_eq!(events.len(), 4, "the ok row is deleted");
    assert!(by_name(&events, "accepted").is_none());
    let again = by_name(&events, "again").unwrap();
    assert_eq!(again.status, Status::Pending);
    assert!(
        again
            .last_error
            .as_deref()
            .unwrap_or_default()
            .contains("retry"),
        "{again:?}"
    );
    let dead = |name: &str| {
        let event = by_name(&events, name).unwrap();
        assert_eq!(event.status, Status::Dead, "{name}");
        event.last_error.unwrap_or_default()
    };
    let invalid = dead("invalid");
    assert!(
        invalid.contains("drop") && invalid.contains("invalid_event"),
        "{invalid}"
    );
    let limited = dead("over_quota");
    assert!(
        limited.contains("limited")
            && limited.contains("billing_limit")
            && limited.contains("requeue it once the quota allows"),
        "{limited}"
    );
    let future = dead("future");
    assert!(future.contains("from_the_future"), "{future}");
    let status = relay.outbox().status().await.unwrap();
    assert_eq!((status.pending, status.dead), (1, 3));
    assert_eq!(status.dead_reasons.len(), 3, "{:?}", status.dead_reasons);

    // The retry row waits out its backoff (Retry-After: 1 s, capped by the test's 200 ms),
    // then goes alone, its uuid and timestamp unchanged, as the second attempt.
    assert_eq!(relay.run_once().await.unwrap().claimed, 0, "backing off");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let pass = relay.run_once().await.unwrap();
    assert_eq!((pass.claimed, pass.delivered), (1, 1), "{pass:?}");
    let requests = v1_requests(&mock);
    let last = requests.last().unwrap();
    assert_eq!(last.uuids(), [uuids[1].to_string()]);
    assert_eq!(last.header("posthog-attempt"), Some("2"));
    assert_eq!(last.body["batch"][0], requests[0].body["batch"][1]);

    // A quota-limited row is requeued once the quota allows, and then delivered.
    let limited_id = by_name(&events, "over_quota").unwrap().id;
    assert_eq!(
        relay.outbox().requeue(Some(&[limited_id])).await.unwrap(),
        1
    );
    let pass = relay.run_once().await.unwrap();
    assert_eq!(pass.delivered, 1, "{pass:?}");
    let delivered: BTreeSet<uuid::Uuid> = mock.events().iter().map(|e| e.uuid).collect();
    assert_eq!(
        delivered,
        BTreeSet::from([uuids[0], uuids[1], uuids[3]]),
        "exactly the ok, the retried and the requeued event"
    );
    let status = relay.outbox().status().await.unwrap();
    assert_eq!((status.pending, status.dead), (0, 2));
}

// A 200 whose `results` leave an event out says nothing of that event: it is sent again (the
// same uuid, which PostHog deduplicates), never taken as delivered and deleted.

on_every_backend!(an_event_left_out_of_the_results_is_sent_again);

async fn an_event_left_out_of_the_results_is_sent_again<DB: Backend>(pool: &Pool<DB>, _url: &str) {
    let (mock, tracker, tag) = migrated_tracker(pool, v1_committer, "omitted").await;
    let mut tx = tracker.begin(pool).await.unwrap();
    tx.set_distinct_id(tag.clone());
    for name in ["first", "left_out", "third"] {
        tx.capture(Event::new(name)).unwrap();
    }
    let uuids: Vec<uuid::Uuid> = tx.staged().iter().map(|event| event.uuid).collect();
    tx.commit().await.unwrap();
    mock.script([Reply::Verdicts {
        verdicts: vec![MockVerdict::Ok, MockVerdict::Omitted, MockVerdict::Ok],
        retry_after: None,
    }]);

    let relay = tracker.relay(pool.clone());
    let pass = relay.run_once().await.unwrap();
    assert_eq!(
        (pass.claimed, pass.delivered, pass.retried, pass.dead),
        (3, 2, 1, 0),
        "{pass:?}"
    );
    let waiting = relay.outbox().events().await.unwrap();
    assert_eq!(
        waiting.iter().map(|event| event.uuid).collect::<Vec<_>>(),
        [uuids[1]],
        "the left-out event stays in the outbox"
    );
    relay.drain().await.unwrap();
    let requests = v1_requests(&mock);
    assert_eq!(requests.last().unwrap().uuids(), [uuids[1].to_string()]);
    let delivered: BTreeSet<uuid::Uuid> = mock.events().iter().map(|e| e.uuid).collect();
    assert_eq!(delivered, uuids.iter().copied().collect::<BTreeSet<_>>());
}

#[tokio::test]
async fn an_event_left_out_of_the_results_is_captured_again_from_memory() {
    let mock = MockPostHog::start().await;
    let tracker = v1_backing_off(&mock, Duration::from_millis(10), Duration::from_secs(5)).build();
    mock.script([Reply::Verdicts {
        verdicts: vec![MockVerdict::Omitted, MockVerdict::Ok],
        retry_after: Some(0),
    }]);
    let uuids = capture(&tracker, "omitted-user", 2).await;
    tracker.flush().await.unwrap();
    let requests = v1_requests(&mock);
    assert_eq!(requests.len(), 2, "one resend, of the left-out event only");
    assert_eq!(requests[1].uuids(), [uuids[0].to_string()]);
    let delivered: BTreeSet<uuid::Uuid> = mock.events().iter().map(|e| e.uuid).collect();
    assert_eq!(delivered, uuids.iter().copied().collect::<BTreeSet<_>>());
}

on_every_backend!(v1_whole_request_failures_keep_the_v0_rules);

async fn v1_whole_request_failures_keep_the_v0_rules<DB: Backend>(pool: &Pool<DB>, _url: &str) {
    let (mock, tracker, tag) = migrated_tracker(pool, v1_committer, "v1-whole").await;
    let committed = posthog_track_tests::commit_events(&tracker, pool, &tag, "whole", 4, 4).await;
    let relay = tracker.relay(pool.clone());

    // 503: released for a retry, nothing dead.
    mock.script([Reply::Status(503)]);
    let pass = relay.run_once().await.unwrap();
    assert_eq!((pass.retried, pass.dead), (4, 0), "{pass:?}");
    // 401: the relay pauses; nothing dead, nothing counted.
    mock.script([Reply::Status(401)]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pass = relay.run_once().await.unwrap();
    assert!(pass.paused.is_some() && pass.dead == 0, "{pass:?}");
    relay.drain_for(Duration::from_secs(10)).await.unwrap();
    assert_eq!(posthog_track_tests::received(&mock, &tag), committed);
    assert!(relay.outbox().is_empty().await.unwrap());
}

// The v0 in-memory queue under the same contract (PostHog's harness, suite `capture`).

#[tokio::test]
async fn v0_in_memory_retries_resend_the_whole_request_once_and_never_a_refused_one() {
    let mock = MockPostHog::start().await;
    let tracker = tracker_for(&mock).build();
    mock.script([Reply::Status(503)]);
    capture(&tracker, "v0-retry", 3).await;
    tracker.flush().await.unwrap();
    let requests = mock.requests();
    assert_eq!(requests.len(), 2, "one retry of the whole batch");
    assert_eq!(requests[0].uuids(), requests[1].uuids());
    assert_eq!(requests[0].body["batch"], requests[1].body["batch"]);

    for status in [401, 403] {
        let mock = MockPostHog::start().await;
        let tracker = tracker_for(&mock).build();
        mock.script([Reply::Status(status)]);
        capture(&tracker, "v0-refused", 1).await;
        let flushed = tracker.flush().await;
        assert_eq!(mock.requests().len(), 1, "{status} is never retried");
        assert!(
            matches!(flushed, Err(Error::Undelivered { dropped: 1, .. })),
            "{status}: {flushed:?}"
        );
        assert_eq!(tracker.stats().dropped_misconfigured, 1);
    }
}

/// A server that answers every request `200 OK` with a `Content-Length` 200 bytes longer than
/// `body_start`, sends `body_start` and closes: an answer cut short in its body. Returns its
/// URL and how many requests it answered.
async fn cutting_server(
    body_start: String,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let served = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = served.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let (body_start, counter) = (body_start.clone(), counter.clone());
            tokio::spawn(async move {
                // The whole request: its head, then `Content-Length` bytes of body.
                let (mut request, mut chunk) = (Vec::new(), [0u8; 65536]);
                loop {
                    let n = socket.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&chunk[..n]);
                    if let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&request[..end]).to_ascii_lowercase();
                        let length: usize = head
                            .lines()
                            .find_map(|line| line.strip_prefix("content-length:"))
                            .map_or(0, |value| value.trim().parse().unwrap());
                        if request.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                counter.fetch_add(1, Ordering::SeqCst);
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\n\r\n{body_start}",
                    body_start.len() + 200
                );
                let _ = socket.write_all(answer.as_bytes()).await;
                let _ = socket.flush().await;
            });
        }
    });
    (url, served)
}

on_every_backend!(an_answer_cut_short_is_not_taken_as_delivered);

/// A 200 whose body (the verdicts) is cut short may have said `retry` in the part that never
/// arrived: the event stays in the outbox to be sent again (PostHog deduplicates by uuid),
/// rather than being deleted as delivered.
async fn an_answer_cut_short_is_not_taken_as_delivered<DB: Backend>(pool: &Pool<DB>, _url: &str) {
    let (mock, committer, tag) = migrated_tracker(pool, v1_committer, "v1cut").await;
    let mut tx = committer.begin(pool).await.unwrap();
    tx.set_distinct_id(tag.clone());
    tx.capture(Event::new("kept")).unwrap();
    let uuid = tx.staged()[0].uuid;
    tx.commit().await.unwrap();

    let body_start =
        format!("{{\"results\":{{\"{uuid}\":{{\"result\":\"retry\",\"details\":\"overloaded");
    let (url, served) = cutting_server(body_start).await;
    let relay = Tracker::builder()
        .api_key(mock.api_key())
        .host(url)
        .unwrap()
        .capture_mode(CaptureMode::V1)
        .external_relay(true)
        .build();
    let pass = relay.relay(pool.clone()).run_once().await.unwrap();
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!((pass.delivered, pass.retried), (0, 1), "{pass:?}");
    assert!(
        pass.failure
            .as_deref()
            .is_some_and(|reason| reason.contains("cut short")),
        "{pass:?}"
    );
    let waiting: Vec<uuid::Uuid> = relay
        .outbox(pool)
        .events()
        .await
        .unwrap()
        .into_iter()
        .filter(|event| event.distinct_id == tag)
        .map(|event| event.uuid)
        .collect();
    assert_eq!(waiting, [uuid]);
}

// A proxy's credentials in POSTHOG_HOST (`https://user:password@proxy`) become a Basic
// `Authorization` header, and v1 authenticates with `Authorization: Bearer <key>`: requests
// went out with two Authorization headers, which a server reads as it pleases. v1 through such
// a host sends nothing and says why (a configuration failure: nothing is dropped from the
// outbox, the in-memory events are given up as for a 401), never showing the credentials.
#[tokio::test]
async fn v1_refuses_a_host_with_credentials() {
    let mock = MockPostHog::start().await;
    let host = posthog_track_tests::with_credentials(&mock.url());
    let tracker = Tracker::builder()
        .api_key(mock.api_key())
        .host(host)
        .unwrap()
        .capture_mode(CaptureMode::V1)
        .max_retries(0)
        .build();
    tracker
        .capture(Event::new("through_a_proxy").distinct_id("u1"))
        .await
        .unwrap();
    let flushed = tracker.flush().await;
    assert!(
        mock.requests().is_empty(),
        "nothing is sent: {:?}",
        mock.requests()
    );
    let shown = format!("{flushed:?}");
    assert!(
        shown.contains("credentials"),
        "the reason says why: {shown}"
    );
    assert!(!shown.contains("hunter2pw"), "{shown}");
}
