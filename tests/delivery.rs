//! Delivery from the outbox to PostHog (a `MockPostHog`) through faults, on real databases:
//! in every case the set of uuids PostHog received must equal the set committed, and nothing
//! from a rolled-back transaction may arrive.

use std::collections::BTreeSet;
use std::time::Duration;

use posthog_track::testing::{MockPostHog, Reply};
use posthog_track::{Backend, Event, Tracker};
use posthog_track_tests::{
    assert_timed_out, commit_events, migrated_tracker, on_every_backend, outbox_events, received,
    tracker_for, unique,
};
use sqlx::Pool;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

fn tracker(mock: &MockPostHog) -> Tracker {
    tracker_for(mock)
        .request_timeout(Duration::from_secs(5))
        .poll_interval(Duration::from_millis(10), Duration::from_millis(100))
        .build()
}

/// A tracker whose commits start no relay: the test drives relays by hand.
fn committer(mock: &MockPostHog) -> Tracker {
    tracker_for(mock)
        .request_timeout(Duration::from_secs(5))
        .external_relay(true)
        .build()
}

async fn wait_until_received(mock: &MockPostHog, tag: &str, expected: &BTreeSet<Uuid>) {
    let started = std::time::Instant::now();
    while received(mock, tag).len() < expected.len() {
        assert!(
            started.elapsed() < WAIT,
            "only {} of {} events arrived",
            received(mock, tag).len(),
            expected.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        &received(mock, tag),
        expected,
        "PostHog received exactly the committed events"
    );
    assert!(
        mock.events()
            .iter()
            .all(|event| event.event != "rolled_back"),
        "nothing rolled back is sent"
    );
}

// Scenarios run in parallel and each relay delivers whatever its outbox holds, so every
// scenario gets an outbox of its own (`on_every_backend!`).

on_every_backend!(outage_then_recovery);
on_every_backend!(random_failures);
on_every_backend!(rejected_event_is_dead_lettered_and_requeued);
on_every_backend!(shutdown_during_outage_loses_nothing);
on_every_backend!(concurrent_relays);

/// PostHog answers 503 for a while, then recovers: everything arrives, once the outage ends.
async fn outage_then_recovery<DB: Backend>(pool: &Pool<DB>, _url: &str) {
    let (mock, tracker, tag) = migrated_tracker(pool, tracker, "outage").await;
    mock.set_outage(Some(Reply::Status(503)));
    tracker.start_relay(pool.clone()).unwrap();
    let committed = commit_events(&tracker, pool, &tag, "delivery_test", 200, 20).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        received(&mock, &tag).is_empty(),
        "nothing is accepted during the outage"
    );
    assert!(
        mock.requests().iter().any(|r| r.status == 503),
        "the relay kept trying"
    );
    mock.set_outage(None);
    wait_until_received(&mock, &tag, &committed).await;
    tracker.shutdown(Duration::from_secs(10)).await.unwrap();
}

/// 10,000 events through 20 % random 500s, 429s with Retry-After and dropped connections.
async fn random_failures<DB: Backend>(pool: &Pool<DB>, _url: &str) {
    let (mock, tracker, tag) = migrated_tracker(pool, tracker, "chaos").await;
    mock.set_random_failures(
        0.2,
        vec![
            Reply::Status(500),
            Reply::Status(500),
            Reply::RetryAfter {
                status: 429,
                seconds: 1,
            },
            Reply::DropConnection,
        ],
        7,
    );
    tracker.start_relay(pool.clone()).unwrap();
    let committed = commit_events(&tracker, pool, &tag, "delivery_test", 10_000, 250).await;
    wait_until_received(&mock, &tag, &committed).await;
    assert!(
        mock.requests().iter().any(|r| r.status == 500),
        "failures were injected"
    );
    tracker.shutdown(Duration::from_secs(10)).await.unwrap();
}

/// One event of a batch is rejected with 400: it is dead-lettered with the reason, the rest
/// arrive, and a requeue delivers it once PostHog accepts it.
async fn rejected_event_is_dead_lettered_and_requeued<DB: Backend>(pool: &Pool<DB>, _url: &str) {
    let (mock, tracker, tag) = migrated_tracker(pool, committer, "poison").await;
    let poison_tag = tag.clone();
    mock.reject_events_where(move |event| {
        event["event"] == "poison" && event["properties"]["tag"] == poison_tag.as_str()
    });
    let mut committed = commit_events(&tracker, pool, &tag, "delivery_test", 30, 30).await;
    let mut tx = tracker.begin(pool).await.unwrap();
    tx.set_distinct_id(tag.clone());
    tx.capture(Event::new("poison").property("tag", tag.as_str()))
        .unwrap();
    let poison = tx.staged()[0].uuid;
    tx.commit().await.unwrap();

    let relay = tracker.relay(pool.clone());
    while relay.run_once().await.unwrap().claimed > 0 {}
    assert_eq!(
        received(&mock, &tag),
        committed,
        "every other event arrived"
    );
    let dead = outbox_events(&tracker, pool, |e| e.uuid == poison).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].status, posthog_track::outbox::Status::Dead);
    let reason = dead[0].last_error.as_deref().unwrap_or_default();
    assert!(reason.starts_with("400"), "the reason is kept: {reason}");

    mock.reject_events_where(|_| false);
    assert_eq!(
        tracker
            .outbox(pool)
            .requeue(Some(&[dead[0].id]))
            .await
            .unwrap(),
        1
    );
    relay.drain().await.unwrap();
    committed.insert(poison);
    assert_eq!(received(&mock, &tag), committed);
}

/// Shutdown with a deadline while PostHog is down returns in time, and the events wait in
/// the outbox for the next relay.
async fn shutdown_during_outage_loses_nothing<DB: Backend>(pool: &Pool<DB>, _url: &str) {
    let (mock, tracker, tag) = migrated_tracker(pool, tracker, "shutdown").await;
    mock.set_outage(Some(Reply::Status(503)));
    tracker.start_relay(pool.clone()).unwrap();
    let committed = commit_events(&tracker, pool, &tag, "delivery_test", 50, 10).await;
    let started = std::time::Instant::now();
    let result = tracker.shutdown(Duration::from_millis(500)).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "shutdown honours its deadline"
    );
    assert!(
        result.is_err(),
        "shutdown reports that delivery did not finish"
    );
    let waiting: BTreeSet<Uuid> = outbox_events(&tracker, pool, |event| event.distinct_id == tag)
        .await
        .into_iter()
        .map(|event| event.uuid)
        .collect();
    assert_eq!(
        waiting, committed,
        "every undelivered event waits in the outbox"
    );

    // The next process delivers them.
    mock.set_outage(None);
    let next = self::tracker(&mock);
    let relay = next.relay(pool.clone());
    let deadline = std::time::Instant::now() + WAIT;
    while received(&mock, &tag).len() < committed.len() && std::time::Instant::now() < deadline {
        let _ = relay.drain().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(received(&mock, &tag), committed);
}

/// Four relays on one database at once: every event is delivered, and none twice (no lease
/// expires here, so a duplicate would mean two relays claimed the same row).
async fn concurrent_relays<DB: Backend>(pool: &Pool<DB>, _url: &str) {
    let (mock, tracker, tag) = migrated_tracker(pool, committer, "fleet").await;
    let committed = commit_events(&tracker, pool, &tag, "delivery_test", 2_000, 100).await;
    let relays: Vec<Tracker> = (0..4).map(|_| self::tracker(&mock)).collect();
    for relay in &relays {
        relay.start_relay(pool.clone()).unwrap();
    }
    wait_until_received(&mock, &tag, &committed).await;
    let deliveries = mock
        .events()
        .iter()
        .filter(|event| event.distinct_id == tag)
        .count();
    assert_eq!(
        deliveries,
        committed.len(),
        "no event was sent by two relays"
    );
    for relay in relays {
        relay.shutdown(Duration::from_secs(10)).await.unwrap();
    }
}

on_every_backend!(relay_killed_between_send_and_ack);

/// A relay dies after PostHog accepted a batch but before it acknowledged the rows: once its
/// lease expires another relay resends them, with the same uuids and byte-identical events
/// (timestamps included), so PostHog's uuid deduplication absorbs the repeat. (Written leases
/// on every backend here; a claim held by its transaction on PostgreSQL, which ends with the
/// relay at once, is covered in `tests/scale.rs`.)
async fn relay_killed_between_send_and_ack<DB: Backend>(pool: &Pool<DB>, _url: &str) {
    let written_leases = |mock: &MockPostHog| {
        Tracker::builder()
            .api_key(mock.api_key())
            .host(mock.url())
            .unwrap()
            .held_claims(false)
            .lease(Duration::from_millis(300))
            .external_relay(true)
            .build()
    };
    let (mock, tracker, tag) = migrated_tracker(pool, written_leases, "killed").await;
    let committed = commit_events(&tracker, pool, &tag, "delivery_test", 20, 20).await;

    mock.script([Reply::AcceptWithoutResponse]);
    let doomed = tracker.relay(pool.clone());
    let killed = tokio::spawn(async move { doomed.run_once().await });
    let deadline = std::time::Instant::now() + WAIT;
    while received(&mock, &tag).len() < committed.len() {
        assert!(
            std::time::Instant::now() < deadline,
            "the first send never arrived"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    killed.abort(); // dies holding its lease, rows unacknowledged
    let first: Vec<_> = mock.events();

    // The rows are not claimable while the lease holds ...
    let successor = tracker.relay(pool.clone());
    assert_eq!(
        successor.run_once().await.unwrap().claimed,
        0,
        "the lease is respected"
    );
    // ... and are resent once it has expired.
    tokio::time::sleep(Duration::from_millis(400)).await;
    successor.drain().await.unwrap();
    let resent: Vec<_> = mock.events().into_iter().skip(first.len()).collect();
    assert_eq!(
        resent.len(),
        committed.len(),
        "every unacknowledged event is resent once"
    );
    for event in &resent {
        let original = first
            .iter()
            .find(|e| e.uuid == event.uuid)
            .expect("same uuid as the first send");
        assert_eq!(
            original.raw, event.raw,
            "the resent event is identical, timestamp included"
        );
    }
    assert_eq!(received(&mock, &tag), committed);
    assert!(
        tracker.outbox(pool).is_empty().await.unwrap(),
        "acknowledged rows are deleted"
    );
}

on_every_backend!(wrong_key_pauses_and_nothing_is_lost);

/// A 401 is a configuration failure: nothing is dead-lettered or counted against the events;
/// the relay pauses, and once the key is fixed everything is delivered.
async fn wrong_key_pauses_and_nothing_is_lost<DB: Backend>(pool: &Pool<DB>, _url: &str) {
    let mock = MockPostHog::start().await;
    let wrong = Tracker::builder()
        .api_key("phc_wrong_key_123")
        .host(mock.url())
        .unwrap()
        .external_relay(true)
        .build();
    wrong.migrate(pool).await.unwrap();
    let tag = unique("wrong-key");
    let committed = commit_events(&wrong, pool, &tag, "delivery_test", 10, 10).await;
    let relay = wrong.relay(pool.clone());
    let drained = relay.drain_for(Duration::from_millis(300)).await;
    let text = assert_timed_out(drained, 10, "a wrong key").to_string();
    assert!(
        text.contains("401") && text.contains("POSTHOG_API_KEY"),
        "the error says what to fix: {text}"
    );
    assert!(!text.contains("phc_wrong_key_123"), "{text}");
    assert!(relay.is_paused());
    assert_eq!(
        mock.requests().len(),
        1,
        "a paused relay waits before probing again"
    );
    let status = wrong.outbox(pool).status().await.unwrap();
    assert_eq!(
        (status.pending, status.dead),
        (10, 0),
        "nothing dead-lettered"
    );
    assert!(
        wrong
            .outbox(pool)
            .events()
            .await
            .unwrap()
            .iter()
            .all(|event| event.attempts == 0),
        "a configuration failure is not counted against the events"
    );

    let fixed = committer(&mock);
    fixed.relay(pool.clone()).drain().await.unwrap();
    assert_eq!(received(&mock, &tag), committed);
}
