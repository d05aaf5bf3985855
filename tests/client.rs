//! The PostHog client without an outbox: `capture`, the in-memory queue, person and group
//! events, hooks, limits, and `AfterCommit` delivery of tracked writes.

use std::convert::identity;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use posthog_track::testing::{MockPostHog, Reply};
use posthog_track::{Backoff, Delivery, Error, Event, TrackedModel, Tracker, TrackerBuilder};
use posthog_track_examples::memory_database;
use posthog_track_tests::{capture_numbered, slow_mock, tracker_for};
use serde_json::json;

/// A started mock, and a tracker aimed at it with what `configure` sets.
async fn mock_tracker(
    configure: impl FnOnce(TrackerBuilder) -> TrackerBuilder,
) -> (MockPostHog, Tracker) {
    let mock = MockPostHog::start().await;
    let tracker = configure(tracker_for(&mock)).build();
    (mock, tracker)
}

#[tokio::test]
async fn capture_sends_a_gzipped_batch_with_the_wire_contract() {
    let (mock, tracker) = mock_tracker(identity).await;
    let at = chrono::DateTime::parse_from_rfc3339("2025-01-02T08:34:05+05:30").unwrap();
    let uuid = tracker
        .capture(
            Event::new("report_exported")
                .distinct_id("u1")
                .property("rows", 42)
                .timestamp(at),
        )
        .await
        .unwrap()
        .expect("recorded");
    tracker.flush().await.unwrap();

    let events = mock.events();
    assert_eq!(events.len(), 1);
    assert_eq!(
        events[0].uuid, uuid,
        "capture returns the uuid PostHog receives"
    );
    assert_eq!(
        events[0].timestamp, "2025-01-02T03:04:05.000000Z",
        "sent in UTC"
    );
    assert_eq!(events[0].properties["rows"], 42);
    assert_eq!(events[0].properties["$lib"], "posthog-track");
    assert_eq!(
        events[0].properties["$lib_version"],
        posthog_track::LIB_VERSION
    );
    let request = &mock.requests()[0];
    assert_eq!(request.path, "/batch/");
    assert_eq!(
        request.content_encoding.as_deref(),
        Some("gzip"),
        "gzip is on by default"
    );
    assert_eq!(
        request.user_agent.as_deref(),
        Some(
            format!(
                "posthog-track/{} (rust; server)",
                posthog_track::LIB_VERSION
            )
            .as_str()
        )
    );
    assert!(
        request.body["sent_at"]
            .as_str()
            .is_some_and(|s| s.ends_with('Z'))
    );
    assert_eq!(request.body["api_key"], mock.api_key());
}

#[tokio::test]
async fn person_and_group_events() {
    let (mock, tracker) = mock_tracker(identity).await;
    tracker
        .identify(
            "u1",
            Event::person()
                .set("plan", "pro")
                .set_once("first_seen", "2025-01-01")
                .unset("trial"),
        )
        .await
        .unwrap();
    tracker.alias("u1", "anon-7").await.unwrap();
    let mut company = serde_json::Map::new();
    company.insert("seats".into(), json!(12));
    tracker
        .group_identify("company", "acme", company)
        .await
        .unwrap();
    tracker.flush().await.unwrap();

    let events = mock
        .wait_for_events(3, Duration::from_secs(5))
        .await
        .unwrap();
    let identify = &events[0];
    assert_eq!(
        (identify.event.as_str(), identify.distinct_id.as_str()),
        ("$identify", "u1")
    );
    assert_eq!(identify.properties["$set"], json!({"plan": "pro"}));
    assert_eq!(
        identify.properties["$set_once"],
        json!({"first_seen": "2025-01-01"})
    );
    assert_eq!(identify.properties["$unset"], json!(["trial"]));
    let alias = &events[1];
    assert_eq!(alias.event, "$create_alias");
    assert_eq!(
        (&alias.properties["distinct_id"], &alias.properties["alias"]),
        (&json!("u1"), &json!("anon-7"))
    );
    let group = &events[2];
    assert_eq!(group.event, "$groupidentify");
    assert_eq!(group.distinct_id, "$company_acme");
    assert_eq!(group.properties["$group_type"], "company");
    assert_eq!(group.properties["$group_key"], "acme");
    assert_eq!(group.properties["$group_set"], json!({"seats": 12}));
}

#[tokio::test]
async fn a_full_queue_refuses_and_counts_instead_of_dropping_silently() {
    // PostHog answers slowly: the worker is busy with the first event while we fill the queue.
    let mock = slow_mock(Duration::from_millis(500)).await;
    let tracker = tracker_for(&mock).queue_capacity(2).batch_size(1).build();
    let mut refused = 0;
    for n in 0..10 {
        match tracker
            .try_capture(Event::new("burst").distinct_id("u1").property("n", n))
            .await
        {
            Ok(_) => {}
            Err(Error::QueueFull { capacity: 2 }) => refused += 1,
            Err(other) => panic!("unexpected error: {other}"),
        }
    }
    assert!(refused > 0, "the queue filled up");
    assert_eq!(tracker.stats().dropped_queue_full, refused);
    // `capture` waits for room instead: nothing is lost.
    mock.set_outage(None);
    capture_numbered(&tracker, "patient", "u1", 20).await;
    tracker.flush().await.unwrap();
    assert_eq!(
        mock.events()
            .iter()
            .filter(|e| e.event == "patient")
            .count(),
        20
    );
}

#[tokio::test]
async fn before_send_can_change_or_drop_events() {
    let (mock, tracker) = mock_tracker(|builder| {
        builder.before_send(|mut event| {
            if event["event"] == "internal_ping" {
                return None;
            }
            event["properties"]["email"] = json!("[redacted]");
            Some(event)
        })
    })
    .await;
    tracker
        .capture(Event::new("internal_ping").distinct_id("u1"))
        .await
        .unwrap();
    tracker
        .capture(
            Event::new("signup")
                .distinct_id("u1")
                .property("email", "a@b.c"),
        )
        .await
        .unwrap();
    tracker.flush().await.unwrap();
    let events = mock.events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].properties["email"], "[redacted]");
    assert_eq!(tracker.stats().filtered, 1);
}

#[tokio::test]
async fn historical_migration_marks_the_batch() {
    let (mock, tracker) =
        mock_tracker(|builder| builder.historical_migration(true).gzip(false)).await;
    tracker
        .capture(Event::new("imported").distinct_id("u1"))
        .await
        .unwrap();
    tracker.flush().await.unwrap();
    let request = &mock.requests()[0];
    assert!(request.historical_migration);
    assert_eq!(request.content_encoding, None);
}

#[tokio::test]
async fn an_event_too_large_for_posthog_is_a_typed_error() {
    let (_mock, tracker) = mock_tracker(identity).await;
    let huge = "x".repeat(1024 * 1024);
    let error = tracker
        .capture(Event::new("huge").distinct_id("u1").property("blob", huge))
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::EventTooLarge { bytes, .. } if bytes > 1024 * 1024),
        "{error}"
    );
}

#[tokio::test]
async fn a_413_splits_the_batch() {
    let mock = MockPostHog::start().await;
    mock.script([Reply::Status(413)]);
    let tracker = tracker_for(&mock).batch_size(100).build();
    capture_numbered(&tracker, "split", "u1", 10).await;
    tracker.flush().await.unwrap();
    assert_eq!(mock.unique_uuids().len(), 10);
    let statuses: Vec<u16> = mock.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [413, 200, 200], "one 413, then the two halves");
}

/// A 413 for one event alone is as often a proxy's body limit (nginx's
/// `client_max_body_size`, often 1 MB) as PostHog's: the reason says both, not "PostHog's
/// request limit" (found in an operator trial, behind a proxy whose limit it was).
#[tokio::test]
async fn a_413_for_one_event_names_the_proxy_as_well() {
    let mock = MockPostHog::start().await;
    mock.script([Reply::Status(413)]);
    let tracker = tracker_for(&mock).build();
    capture_numbered(&tracker, "big", "u1", 1).await;
    let error = tracker.flush().await.unwrap_err().to_string();
    assert!(
        error.contains("413") && error.contains("a proxy in front of it"),
        "{error}"
    );
}

#[tokio::test]
async fn in_memory_events_are_given_up_after_the_retry_budget_and_counted() {
    let mock = MockPostHog::start().await;
    mock.set_outage(Some(Reply::Status(503)));
    let tracker = tracker_for(&mock).max_retries(2).build();
    tracker
        .capture(Event::new("lost").distinct_id("u1"))
        .await
        .unwrap();
    let error = tracker.flush().await.unwrap_err();
    assert!(
        matches!(error, Error::Undelivered { dropped: 1, .. }),
        "flush says what it could not deliver: {error}"
    );
    assert_eq!(mock.requests().len(), 3, "one try and two retries");
    assert_eq!(tracker.stats().dropped_after_retries, 1);
}

#[tokio::test]
async fn keys_never_appear_in_debug_or_errors() {
    let tracker = Tracker::builder()
        .api_key("phc_supersecretvalue123")
        .build();
    let debug = format!("{tracker:?}");
    assert!(!debug.contains("supersecretvalue123"), "{debug}");
    let tracker = Tracker::builder()
        .api_key("phc_supersecretvalue123")
        .host("http://127.0.0.1:9")
        .unwrap()
        .max_retries(0)
        .build();
    tracker
        .capture(Event::new("e").distinct_id("u"))
        .await
        .unwrap();
    let error = tracker.flush().await.unwrap_err().to_string();
    assert!(!error.contains("supersecretvalue123"), "{error}");
}

/// Creates `Note`'s table.
async fn create_notes(pool: &sqlx::SqlitePool) {
    sqlx::query("CREATE TABLE notes (id INTEGER PRIMARY KEY, author TEXT)")
        .execute(pool)
        .await
        .unwrap();
}

#[derive(Debug, Clone, TrackedModel)]
#[tracked(table = "notes", distinct_id = author)]
struct Note {
    #[tracked(key, property)]
    id: i64,
    #[tracked(property)]
    author: String,
}

#[tokio::test]
async fn after_commit_delivery_needs_no_outbox_and_sends_nothing_rolled_back() {
    let (mock, tracker) = mock_tracker(|builder| builder.delivery(Delivery::AfterCommit)).await;
    let pool = memory_database().await.unwrap();
    create_notes(&pool).await;

    // Ada's note commits; Bob's is rolled back.
    for (id, author, commit) in [(1, "ada", true), (2, "bob", false)] {
        let mut tx = tracker.begin(&pool).await.unwrap();
        let note = Note {
            id,
            author: author.into(),
        };
        note.insert(&mut tx).await.unwrap();
        if commit {
            tx.commit().await.unwrap();
        } else {
            tx.rollback().await.unwrap();
        }
    }
    tracker.flush().await.unwrap();

    let events = mock.events();
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].event.as_str(), events[0].distinct_id.as_str()),
        ("note_created", "ada")
    );
    let outbox: Option<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE name = 'posthog_outbox'")
            .fetch_optional(&pool)
            .await
            .unwrap();
    assert_eq!(outbox, None, "no outbox table was needed");
}

#[tokio::test]
async fn max_batch_bytes_sends_early() {
    let (mock, tracker) = mock_tracker(|builder| builder.batch_size(100).max_batch_bytes(1)).await;
    capture_numbered(&tracker, "big", "u1", 5).await;
    tracker.flush().await.unwrap();
    assert_eq!(mock.unique_uuids().len(), 5);
    assert_eq!(
        mock.requests().len(),
        5,
        "every event alone exceeds the byte bound"
    );
}

#[tokio::test]
async fn a_disabled_tracker_leaves_the_outbox_alone() {
    let pool = memory_database().await.unwrap();
    let mock = MockPostHog::start().await;
    let recording = tracker_for(&mock).external_relay(true).build();
    recording.migrate(&pool).await.unwrap();
    let mut tx = recording.begin(&pool).await.unwrap();
    tx.capture(Event::new("kept").distinct_id("u1")).unwrap();
    tx.commit().await.unwrap();

    let disabled = Tracker::builder().disabled(true).build();
    let error = disabled.relay(pool.clone()).drain().await.unwrap_err();
    assert!(matches!(error, Error::CannotDeliver { .. }), "{error}");
    assert!(disabled.start_relay(pool.clone()).is_err());
    assert_eq!(
        disabled.outbox(&pool).len().await.unwrap(),
        1,
        "nothing was printed away or deleted"
    );
}

/// `capture` returns the uuid of the event as sent, also when `before_send` set it
/// (posthog-python re-reads it after the hook "so the returned uuid always matches the wire
/// event"); it returned the uuid from before the hook. A uuid the hook removes is put back, so
/// that retries stay deduplicated.
#[tokio::test]
async fn capture_returns_the_uuid_before_send_gave() {
    const FIXED: &str = "0190a1b2-0000-7000-8000-00000000abcd";
    let (mock, tracker) = mock_tracker(|builder| {
        builder.before_send(|mut event| {
            if event["event"] == "signup" {
                event["uuid"] = json!(FIXED);
            } else if let Some(event) = event.as_object_mut() {
                event.remove("uuid");
            }
            Some(event)
        })
    })
    .await;
    let returned = tracker
        .capture(Event::new("signup").distinct_id("u1"))
        .await
        .unwrap()
        .unwrap();
    let kept = tracker
        .capture(Event::new("login").distinct_id("u1"))
        .await
        .unwrap()
        .unwrap();
    tracker.flush().await.unwrap();
    let events = mock.events();
    assert_eq!(events[0].uuid.to_string(), FIXED);
    assert_eq!(
        returned.to_string(),
        FIXED,
        "returned uuid is not the one sent"
    );
    assert_eq!(events[1].uuid, kept, "a removed uuid is put back");
}

/// A `flush` that timed out left its request in the queue; when the worker got to it, it
/// took (and reset) the count of events given up and sent it to nobody, so no later flush
/// ever reported them.
#[tokio::test]
async fn a_timed_out_flush_does_not_swallow_the_report_of_events_given_up() {
    let (mock, tracker) = mock_tracker(|builder| {
        builder
            .backoff(Backoff {
                initial: Duration::from_millis(200),
                max: Duration::from_millis(200),
            })
            .max_retries(2)
            .flush_timeout(Duration::from_millis(100))
    })
    .await;
    mock.set_outage(Some(Reply::Status(503)));
    tracker
        .capture(Event::new("lost").distinct_id("u1"))
        .await
        .unwrap();
    let first = tracker.flush().await;
    assert!(matches!(first, Err(Error::Timeout { .. })), "{first:?}");
    // The worker gives the event up: 3 sends, 2 backoffs of 200 ms.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(tracker.stats().dropped_after_retries, 1, "it was given up");
    let second = tracker.flush().await;
    assert!(
        matches!(second, Err(Error::Undelivered { dropped: 1, .. })),
        "some flush must report the event given up; got {second:?}"
    );
}

/// On v0, a group of a round rate limited with `Retry-After` was resent at once when another
/// group of the same round got through: the server's wait was ignored.
#[tokio::test]
async fn v0_honours_retry_after_when_another_group_of_the_round_got_through() {
    let mock = MockPostHog::start().await;
    // Rounds 1 and 2: the whole batch fails (503). Round 3 splits it in two: the first half
    // passes, the second is rate limited for 2 s.
    mock.script([
        Reply::Status(503),
        Reply::Status(503),
        Reply::Accept,
        Reply::RetryAfter {
            status: 429,
            seconds: 2,
        },
    ]);
    let tracker = tracker_for(&mock)
        .backoff(Backoff {
            initial: Duration::from_millis(10),
            max: Duration::from_secs(10),
        })
        .build();
    capture_numbered(&tracker, "e", "u1", 2).await;
    let started = Instant::now();
    tracker.flush().await.unwrap();
    let elapsed = started.elapsed();
    let requests = mock.requests();
    let statuses: Vec<u16> = requests.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [503, 503, 200, 429, 200]);
    assert_eq!(requests[3].response_retry_after.as_deref(), Some("2"));
    assert_eq!(mock.unique_uuids().len(), 2);
    assert!(
        elapsed >= Duration::from_millis(1900),
        "the 429's Retry-After (2 s) was not waited out: all done in {elapsed:?}"
    );
}

/// `queue_capacity` bounded only the channel in front of the worker, which drained it into
/// its batch (up to `batch_size` events): `try_capture` accepted far more than the capacity
/// while nothing had been delivered.
#[tokio::test]
async fn queue_capacity_bounds_the_events_held_undelivered() {
    // PostHog answers slowly: nothing is delivered while the test fills the queue.
    let mock = slow_mock(Duration::from_secs(2)).await;
    let tracker = tracker_for(&mock)
        .queue_capacity(10)
        .flush_interval(Duration::from_secs(30))
        .build();
    let mut accepted = 0;
    for n in 0..100 {
        if tracker
            .try_capture(Event::new("e").distinct_id("u1").property("n", n))
            .await
            .is_ok()
        {
            accepted += 1;
        }
        tokio::task::yield_now().await;
    }
    assert!(
        accepted <= 10,
        "a queue of capacity 10 holds {accepted} undelivered events"
    );
    assert_eq!(
        accepted, 10,
        "a full batch is sent at once, but is still held"
    );
    mock.set_outage(None);
    tracker.flush().await.unwrap();
    assert_eq!(mock.unique_uuids().len(), 10);
}

/// `AfterCommit`: an event committed after `shutdown` could not be queued; it was counted in
/// the stats, but every later `flush` said Ok.
#[tokio::test]
async fn after_commit_event_lost_after_shutdown_is_reported_by_flush() {
    let (_mock, tracker) = mock_tracker(|builder| builder.delivery(Delivery::AfterCommit)).await;
    let pool = memory_database().await.unwrap();
    create_notes(&pool).await;
    // The queue exists (one event delivered), then the process starts shutting down.
    tracker
        .capture(Event::new("warmup").distinct_id("u0"))
        .await
        .unwrap();
    tracker.shutdown(Duration::from_secs(5)).await.unwrap();
    // A request still in flight commits.
    let mut tx = tracker.begin(&pool).await.unwrap();
    Note {
        id: 1,
        author: "ada".into(),
    }
    .insert(&mut tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(tracker.stats().dropped_at_shutdown, 1, "it was lost");
    let flushed = tracker.flush().await;
    assert!(
        matches!(flushed, Err(Error::Undelivered { dropped: 1, .. })),
        "flush after a committed event was lost must say so: {flushed:?}"
    );
    assert!(tracker.flush().await.is_ok(), "reported once");
}

/// `flush_timeout(Duration::MAX)` ("wait as long as it takes") panicked in `flush`: the
/// deadline overflowed the clock.
#[tokio::test]
async fn flush_with_an_unbounded_timeout_does_not_panic() {
    let (mock, tracker) = mock_tracker(|builder| builder.flush_timeout(Duration::MAX)).await;
    tracker
        .capture(Event::new("e").distinct_id("u1"))
        .await
        .unwrap();
    let joined = tokio::spawn(async move { tracker.flush().await }).await;
    assert!(joined.is_ok(), "flush panicked: {:?}", joined.err());
    joined.unwrap().unwrap();
    assert_eq!(mock.unique_uuids().len(), 1);
}

/// `shutdown(Duration::MAX)` panicked: the deadline overflowed the clock.
#[tokio::test]
async fn shutdown_with_an_unbounded_deadline_does_not_panic() {
    let (mock, tracker) = mock_tracker(identity).await;
    tracker
        .capture(Event::new("e").distinct_id("u1"))
        .await
        .unwrap();
    let joined = tokio::spawn(async move { tracker.shutdown(Duration::MAX).await }).await;
    assert!(joined.is_ok(), "shutdown panicked: {:?}", joined.err());
    joined.unwrap().unwrap();
    assert_eq!(mock.unique_uuids().len(), 1);
}

/// `flush_interval(Duration::MAX)` ("send on batch size or flush only") panicked the queue's
/// worker at the first event: every queued event was lost and flush failed with ShutDown.
#[tokio::test]
async fn an_unbounded_flush_interval_does_not_kill_the_worker() {
    let (mock, tracker) = mock_tracker(|builder| builder.flush_interval(Duration::MAX)).await;
    tracker
        .capture(Event::new("e").distinct_id("u1"))
        .await
        .unwrap();
    let flushed = tracker.flush().await;
    assert!(flushed.is_ok(), "{flushed:?}");
    assert_eq!(mock.unique_uuids().len(), 1);
}

/// Writes a `Retry-After` date for the instant given.
type DateForm = fn(chrono::DateTime<chrono::Utc>) -> String;

/// A server that answers the first request 503 with `Retry-After: <retry_after(now + 3 s)>`
/// and every later one 200; returns its URL and the instants of the requests.
async fn retry_after_server(retry_after: DateForm) -> (String, Arc<Mutex<Vec<Instant>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                loop {
                    let (mut request, mut chunk) = (Vec::new(), [0u8; 65536]);
                    loop {
                        let n = socket.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        request.extend_from_slice(&chunk[..n]);
                        if let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head =
                                String::from_utf8_lossy(&request[..end]).to_ascii_lowercase();
                            let length: usize = head
                                .lines()
                                .find_map(|line| line.strip_prefix("content-length:"))
                                .map_or(0, |value| value.trim().parse().unwrap());
                            if request.len() >= end + 4 + length {
                                break;
                            }
                        }
                    }
                    let first = {
                        let mut log = log.lock().unwrap();
                        log.push(Instant::now());
                        log.len() == 1
                    };
                    let answer = if first {
                        let value = retry_after(chrono::Utc::now() + chrono::Duration::seconds(3));
                        format!(
                            "HTTP/1.1 503 Service Unavailable\r\nRetry-After: {value}\r\n\
                             Content-Length: 0\r\n\r\n"
                        )
                    } else {
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                         Content-Length: 13\r\n\r\n{\"status\":1}\n"
                            .to_owned()
                    };
                    if socket.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, seen)
}

/// The time between the 503 of [`retry_after_server`], whose `Retry-After` is written by
/// `retry_after`, and the retry.
async fn gap_after_retry_after(retry_after: DateForm) -> Duration {
    let (url, seen) = retry_after_server(retry_after).await;
    let tracker = Tracker::builder()
        .api_key("phc_testkey123456")
        .host(url)
        .unwrap()
        .backoff(Backoff {
            initial: Duration::from_millis(10),
            max: Duration::from_secs(10),
        })
        .build();
    tracker
        .capture(Event::new("e").distinct_id("u1"))
        .await
        .unwrap();
    tracker.flush().await.unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    seen[1] - seen[0]
}

/// A `Retry-After` date in any of the three forms RFC 9110 (5.6.7) says a recipient must
/// accept is waited out; the obsolete ones (RFC 850, asctime) were ignored.
#[tokio::test]
async fn retry_after_dates_are_honoured_in_every_http_date_form() {
    let forms: [(&str, DateForm); 3] = [
        ("IMF-fixdate", |at| {
            at.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
        }),
        ("asctime", |at| {
            at.format("%a %b %e %H:%M:%S %Y").to_string()
        }),
        ("RFC 850", |at| {
            at.format("%A, %d-%b-%y %H:%M:%S GMT").to_string()
        }),
    ];
    for (form, retry_after) in forms {
        let gap = gap_after_retry_after(retry_after).await;
        assert!(
            gap >= Duration::from_millis(1500),
            "{form} Retry-After ignored: retried after {gap:?}"
        );
    }
}

/// `AfterCommit`: `commit` hands the events to the queue after the database committed,
/// waiting for room. A commit dropped during that wait (a web handler cancelled when its
/// client disconnects) lost the events silently: not sent, not counted, flush said Ok.
#[tokio::test]
async fn after_commit_events_of_a_cancelled_commit_are_not_lost_silently() {
    let mock = slow_mock(Duration::from_millis(1500)).await;
    let tracker = tracker_for(&mock)
        .delivery(Delivery::AfterCommit)
        .queue_capacity(1)
        .batch_size(1)
        .build();
    let pool = memory_database().await.unwrap();
    create_notes(&pool).await;
    // The worker is busy sending `a`; `b` fills the queue.
    for name in ["a", "b"] {
        tracker
            .capture(Event::new(name).distinct_id("u0"))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut tx = tracker.begin(&pool).await.unwrap();
    Note {
        id: 7,
        author: "ada".into(),
    }
    .insert(&mut tx)
    .await
    .unwrap();
    let _ = tokio::time::timeout(Duration::from_millis(200), tx.commit()).await;
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM notes")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 1, "the row committed");
    mock.set_outage(None);
    let flushed = tracker.flush().await;
    let delivered = mock.events().iter().any(|e| e.event == "note_created");
    assert!(
        delivered || flushed.is_err(),
        "the committed row's event was neither delivered nor reported: flush {flushed:?}, \
         stats {:?}",
        tracker.stats()
    );
}

/// Waits, for at most 10 s, until `done` holds.
async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "waited 10 s for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `AfterCommit`: a `commit` cancelled after its event was counted as pending but before the
/// queue took it (the queue's channel full of flush requests) left the pending count one too
/// high: a later flush that timed out reported an event too many as pending, and a shutdown
/// counted it as lost a second time.
#[tokio::test]
async fn a_cancelled_after_commit_hand_off_leaves_no_phantom_pending_event() {
    let (mock, tracker) = mock_tracker(|builder| {
        builder
            .delivery(Delivery::AfterCommit)
            .queue_capacity(2)
            .batch_size(1)
            .max_retries(1_000)
            .backoff(Backoff {
                initial: Duration::from_secs(600),
                max: Duration::from_secs(600),
            })
            .flush_timeout(Duration::from_millis(300))
    })
    .await;
    let pool = memory_database().await.unwrap();
    create_notes(&pool).await;
    // `a` fails and waits out a long backoff in the worker, holding one of the two places.
    mock.set_outage(Some(Reply::Status(503)));
    tracker
        .capture(Event::new("a").distinct_id("u0"))
        .await
        .unwrap();
    wait_for("the first send of `a`", || !mock.requests().is_empty()).await;
    // Two flush requests fill the queue's channel (each is sent by the flush's first poll).
    for _ in 0..2 {
        let _ = tokio::time::timeout(Duration::ZERO, tracker.flush()).await;
    }
    let mut tx = tracker.begin(&pool).await.unwrap();
    Note {
        id: 1,
        author: "ada".into(),
    }
    .insert(&mut tx)
    .await
    .unwrap();
    let commit = tokio::time::timeout(Duration::from_millis(200), tx.commit()).await;
    assert!(
        commit.is_err(),
        "the commit waited for the queue: {commit:?}"
    );
    assert_eq!(tracker.stats().dropped_cancelled, 1);
    let flushed = tracker.flush().await;
    assert!(
        matches!(flushed, Err(Error::Timeout { pending: 1, .. })),
        "only `a` is pending: {flushed:?}"
    );
    let shutdown = tracker.shutdown(Duration::from_millis(100)).await;
    assert!(
        matches!(shutdown, Err(Error::Undelivered { dropped: 2, .. })),
        "`a` lost at shutdown and the cancelled commit's event: {shutdown:?}"
    );
    assert_eq!(
        tracker.stats().dropped_at_shutdown,
        1,
        "{:?}",
        tracker.stats()
    );
    assert_eq!(tracker.stats().dropped(), 2, "{:?}", tracker.stats());
}
/// A lone event that PostHog refuses (400) leaves the in-memory queue: it must be counted as
/// `rejected` and reported by the next `flush`, on v0 and v1.
#[tokio::test]
async fn a_lone_event_refused_with_400_is_counted_and_reported() {
    for mode in [
        posthog_track::CaptureMode::V0,
        posthog_track::CaptureMode::V1,
    ] {
        let (mock, tracker) = mock_tracker(|builder| builder.capture_mode(mode)).await;
        mock.script([Reply::Status(400)]);
        tracker
            .capture(Event::new("refused").distinct_id("u1"))
            .await
            .unwrap();
        let flushed = tracker.flush().await;
        assert!(
            matches!(flushed, Err(Error::Undelivered { dropped: 1, .. })),
            "{mode:?}: flush must report the refused event: {flushed:?}"
        );
        assert_eq!(tracker.stats().dropped_rejected, 1, "{mode:?}");
        assert!(tracker.flush().await.is_ok(), "{mode:?}: reported once");
        assert!(mock.events().is_empty());
    }
}
/// In-memory events given up before `shutdown`'s deadline (refused, say) while others were
/// still being sent at the deadline: shutdown reported only the latter.
#[tokio::test]
async fn a_shutdown_that_times_out_reports_the_events_given_up_before_it() {
    let (mock, tracker) =
        mock_tracker(|builder| builder.delivery(Delivery::AfterCommit).batch_size(1)).await;
    let pool = memory_database().await.unwrap();
    create_notes(&pool).await;
    // The first event is refused; the second one's request hangs.
    mock.script([
        Reply::Status(400),
        Reply::Delay(Duration::from_secs(60), Box::new(Reply::Accept)),
    ]);
    for id in [1, 2] {
        let mut tx = tracker.begin(&pool).await.unwrap();
        Note {
            id,
            author: "ada".into(),
        }
        .insert(&mut tx)
        .await
        .unwrap();
        tx.commit().await.unwrap();
        if id == 1 {
            wait_for("the refusal of the first event", || {
                tracker.stats().dropped_rejected == 1
            })
            .await;
        }
    }
    let shutdown = tracker.shutdown(Duration::from_millis(200)).await;
    assert!(
        matches!(shutdown, Err(Error::Undelivered { dropped: 2, .. })),
        "both committed events are lost and must be reported: {shutdown:?}"
    );
    assert_eq!(tracker.stats().dropped(), 2, "{:?}", tracker.stats());
    assert!(tracker.flush().await.is_ok(), "reported once");
    // A commit after the shutdown cannot be queued: the next flush reports it.
    let mut tx = tracker.begin(&pool).await.unwrap();
    Note {
        id: 3,
        author: "ada".into(),
    }
    .insert(&mut tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let flushed = tracker.flush().await;
    assert!(
        matches!(flushed, Err(Error::Undelivered { dropped: 1, .. })),
        "{flushed:?}"
    );
}

/// Dry run: `stats().delivered` counts what is printed. A captured event was counted, a
/// committed one (printed at commit) was not.
#[tokio::test]
async fn dry_run_counts_committed_events_as_printed() {
    let tracker = Tracker::builder().build();
    assert_eq!(tracker.mode(), posthog_track::Mode::DryRun);
    let pool = memory_database().await.unwrap();
    create_notes(&pool).await;
    tracker.migrate(&pool).await.unwrap();
    let mut tx = tracker.begin(&pool).await.unwrap();
    Note {
        id: 1,
        author: "ada".into(),
    }
    .insert(&mut tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    tracker
        .capture(Event::new("captured").distinct_id("u1"))
        .await
        .unwrap();
    tracker.flush().await.unwrap();
    assert_eq!(tracker.stats().delivered, 2, "{:?}", tracker.stats());
}

/// After `shutdown`, the in-memory queue takes no more events, whether or not it was started
/// before: a capture or an `AfterCommit` commit after a shutdown that found no queue started a
/// new queue worker that nothing would stop or flush (its events lost at the process's exit,
/// counted nowhere), while after a shutdown that closed a queue they fail with `ShutDown`.
#[tokio::test]
async fn after_shutdown_no_queue_is_started() {
    let (mock, tracker) = mock_tracker(|builder| builder.delivery(Delivery::AfterCommit)).await;
    let pool = memory_database().await.unwrap();
    create_notes(&pool).await;
    tracker.shutdown(Duration::from_secs(5)).await.unwrap();
    let captured = tracker.capture(Event::new("late").distinct_id("u0")).await;
    assert!(matches!(captured, Err(Error::ShutDown)), "{captured:?}");
    let mut tx = tracker.begin(&pool).await.unwrap();
    Note {
        id: 1,
        author: "ada".into(),
    }
    .insert(&mut tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        tracker.stats().dropped_at_shutdown,
        1,
        "{:?}",
        tracker.stats()
    );
    let flushed = tracker.flush().await;
    assert!(
        matches!(flushed, Err(Error::Undelivered { dropped: 1, .. })),
        "{flushed:?}"
    );
    assert!(mock.requests().is_empty(), "nothing is sent after shutdown");
}

/// A `capture` waiting for room in the byte budget waited for the next timed send: with
/// `flush_interval(Duration::MAX)` ("on batch size or flush only") and a batch that held less
/// than the whole budget, it waited for ever (the worker sent nothing: no threshold reached),
/// and a task that flushes after its captures hung.
#[tokio::test]
async fn a_capture_waiting_for_room_does_not_wait_for_the_flush_interval() {
    let (mock, tracker) = mock_tracker(|builder| {
        builder
            .queue_capacity_bytes(8 * 1024)
            .flush_interval(Duration::MAX)
    })
    .await;
    let pad = "x".repeat(2 * 1024 + 300); // 3 KiB permits with the rest of the event
    for n in 0..3 {
        let captured = tokio::time::timeout(
            Duration::from_secs(10),
            tracker.capture(
                Event::new("e")
                    .distinct_id("u1")
                    .property("n", n)
                    .property("pad", pad.as_str()),
            ),
        )
        .await;
        assert!(
            matches!(captured, Ok(Ok(Some(_)))),
            "capture {n} waited for room for 10 s: {captured:?}"
        );
    }
    tracker.flush().await.unwrap();
    assert_eq!(mock.unique_uuids().len(), 3);
}

/// `try_capture` on a full queue refuses, and the worker sends what it holds: with
/// `flush_interval(Duration::MAX)` the queue stayed full until a flush, every `try_capture`
/// refused (and its event dropped) in the meantime.
#[tokio::test]
async fn a_full_queue_empties_without_waiting_for_the_flush_interval() {
    let (mock, tracker) = mock_tracker(|builder| {
        builder
            .queue_capacity_bytes(8 * 1024)
            .flush_interval(Duration::MAX)
    })
    .await;
    let pad = "x".repeat(2 * 1024 + 300); // 3 KiB permits with the rest of the event
    for n in 0..2 {
        let event = Event::new("e").distinct_id("u1").property("n", n);
        tracker
            .try_capture(event.property("pad", pad.as_str()))
            .await
            .unwrap();
    }
    let started = Instant::now();
    loop {
        let late = Event::new("late")
            .distinct_id("u1")
            .property("pad", pad.as_str());
        match tracker.try_capture(late).await {
            Ok(_) => break,
            Err(Error::QueueFull { .. }) => {}
            Err(other) => panic!("{other}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the full queue was not sent in 10 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tracker.flush().await.unwrap();
    assert_eq!(mock.unique_uuids().len(), 3);
}

/// A transaction begun on a pool the tracker had not seen, after `shutdown`, started a relay
/// for it: background work that nothing would stop again, after the tracker was shut down.
#[tokio::test]
async fn after_shutdown_no_relay_is_started() {
    let (_mock, tracker) = mock_tracker(identity).await;
    tracker.shutdown(Duration::from_secs(5)).await.unwrap();
    let pool = memory_database().await.unwrap();
    tracker.migrate(&pool).await.unwrap();
    create_notes(&pool).await;
    let mut tx = tracker.begin(&pool).await.unwrap();
    Note {
        id: 1,
        author: "ada".into(),
    }
    .insert(&mut tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(tracker.relay_state(), None, "no relay runs");
    let flushed = tracker.flush().await;
    assert!(
        matches!(flushed, Err(Error::Timeout { pending: 1, .. })),
        "the event waits in the outbox for the next relay: {flushed:?}"
    );
}

/// `AfterCommit`: a `commit` cancelled while the database committed (its `COMMIT` sent, the
/// answer not read yet) left the rows committed and their events nowhere: not queued, not
/// counted, and the next flush said Ok.
#[tokio::test]
async fn after_commit_events_of_a_commit_cancelled_mid_commit_are_not_lost_silently() {
    let (mock, tracker) = mock_tracker(|builder| builder.delivery(Delivery::AfterCommit)).await;
    // A file in rollback-journal mode: a reader's shared lock holds a writer's COMMIT back.
    let dir = std::env::temp_dir().join(format!("pt-mid-commit-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.join("notes.db"))
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Delete)
        .busy_timeout(Duration::from_secs(30));
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(2)
        .connect_with(options)
        .await
        .unwrap();
    create_notes(&pool).await;
    let mut tx = tracker.begin(&pool).await.unwrap();
    Note {
        id: 1,
        author: "ada".into(),
    }
    .insert(&mut tx)
    .await
    .unwrap();
    let mut reader = pool.begin().await.unwrap();
    let _: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM notes")
        .fetch_one(&mut *reader)
        .await
        .unwrap();
    // `COMMIT` waits for the reader's lock; the commit is cancelled meanwhile.
    let cancelled = tokio::time::timeout(Duration::from_millis(200), tx.commit()).await;
    assert!(cancelled.is_err(), "the commit did not wait: {cancelled:?}");
    reader.rollback().await.unwrap();
    let started = Instant::now();
    loop {
        let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM notes")
            .fetch_one(&pool)
            .await
            .unwrap();
        if rows == 1 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the row never committed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let flushed = tracker.flush().await;
    let delivered = mock.events().iter().any(|e| e.event == "note_created");
    assert!(
        delivered || matches!(flushed, Err(Error::Undelivered { dropped: 1, .. })),
        "the committed row's event was neither delivered nor reported: flush {flushed:?}, \
         stats {:?}",
        tracker.stats()
    );
    pool.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}
