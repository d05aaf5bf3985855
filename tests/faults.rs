//! The fault matrix: every way an operator, a new user or a misbehaving PostHog has broken
//! delivery, each as a test against real databases and a scripted `MockPostHog`. In every
//! scenario nothing committed is lost, nothing rolled back is sent, nothing is stuck, and any
//! duplicate is an identical resend (PostHog deduplicates by uuid).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use posthog_track::testing::{MockPostHog, Reply};
use posthog_track::{Backend, CaptureMode, Delivery, Dialect, Error, Event, Mode, Tracker};
use posthog_track_tests::{
    StderrLog, assert_timed_out, capture_numbered, commit_events, database_url, exit_within,
    migrated_tracker, on_every_backend, outbox_events, posthog_track_binary, received,
    relay_command, slow_mock, tracker_for, unique,
};
use serde_json::Value;
use sqlx::Pool;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

/// A tracker whose commits start no relay: the scenario decides who delivers.
fn committer(mock: &MockPostHog) -> Tracker {
    tracker_for(mock).external_relay(true).build()
}

/// Makes `mock` fail `rate` of the requests (seeded by `seed`) with, at random, a 500, a
/// `status`, a dropped connection or `other`.
fn fail_randomly(mock: &MockPostHog, rate: f64, status: u16, other: Reply, seed: u64) {
    mock.set_random_failures(
        rate,
        vec![
            Reply::Status(500),
            Reply::Status(status),
            Reply::DropConnection,
            other,
        ],
        seed,
    );
}

/// Committed == received, nothing rolled back arrived, and every duplicate is byte-identical
/// to the first copy. Returns (delivered, duplicates).
fn assert_exactly_delivered(
    mock: &MockPostHog,
    tag: &str,
    committed: &BTreeSet<Uuid>,
) -> (usize, usize) {
    let mine: Vec<_> = mock
        .events()
        .into_iter()
        .filter(|event| event.distinct_id == tag)
        .collect();
    assert!(
        mine.iter().all(|event| event.event != "rolled_back"),
        "nothing rolled back is sent"
    );
    let mut first: BTreeMap<Uuid, &Value> = BTreeMap::new();
    let mut duplicates = 0;
    for event in &mine {
        match first.get(&event.uuid) {
            Some(original) => {
                duplicates += 1;
                assert_eq!(*original, &event.raw, "a duplicate is an identical resend");
            }
            None => {
                first.insert(event.uuid, &event.raw);
            }
        }
    }
    let got: BTreeSet<Uuid> = first.keys().copied().collect();
    let missing = committed.difference(&got).count();
    assert_eq!(missing, 0, "{missing} committed event(s) never arrived");
    assert_eq!(&got, committed, "nothing arrived that was not committed");
    (got.len(), duplicates)
}

// 1. A process without a key never consumes the shared outbox.

on_every_backend!(keyless_processes_leave_the_outbox_alone);

async fn keyless_processes_leave_the_outbox_alone<DB: Backend>(pool: &Pool<DB>, url: &str) {
    let (mock, live, tag) = migrated_tracker(pool, committer, "keyless").await;
    let committed = commit_events(&live, pool, &tag, "kept", 5, 5).await;

    let dry_run = Tracker::builder().build();
    assert_eq!(dry_run.mode(), Mode::DryRun);
    let error = dry_run.relay(pool.clone()).run_once().await.unwrap_err();
    assert!(matches!(error, Error::CannotDeliver { .. }), "{error}");
    assert!(error.to_string().contains("POSTHOG_API_KEY"), "{error}");
    assert!(dry_run.start_relay(pool.clone()).is_err());
    assert!(dry_run.relay(pool.clone()).drain().await.is_err());
    // A dry-run commit prints its events and leaves the outbox as it is.
    let mut tx = dry_run.begin(pool).await.unwrap();
    tx.set_distinct_id(tag.clone());
    tx.capture(Event::new("printed")).unwrap();
    tx.commit().await.unwrap();
    dry_run.flush().await.unwrap();

    // The standalone command refuses too, and says why.
    let output = std::process::Command::new(posthog_track_binary())
        .args(["relay", "--database-url", url])
        .env_remove("POSTHOG_API_KEY")
        .env("POSTHOG_HOST", mock.url())
        .output()
        .unwrap();
    assert!(!output.status.success(), "the keyless relay exits non-zero");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("POSTHOG_API_KEY"), "{stderr}");

    let waiting: BTreeSet<Uuid> = outbox_events(&live, pool, |event| event.distinct_id == tag)
        .await
        .into_iter()
        .map(|event| event.uuid)
        .collect();
    assert_eq!(waiting, committed, "exactly the live process's events wait");
    assert!(mock.requests().is_empty(), "nothing was sent");
}

// 2. `flush` means delivered, through 30 % failures.

on_every_backend!(flush_delivers_through_partial_failures);

async fn flush_delivers_through_partial_failures<DB: Backend>(pool: &Pool<DB>, _url: &str) {
    let mock = MockPostHog::start().await;
    let retry_now = Reply::RetryAfter {
        status: 429,
        seconds: 0,
    };
    fail_randomly(&mock, 0.3, 502, retry_now, 11);
    let tracker = tracker_for(&mock)
        .batch_size(100)
        .flush_timeout(WAIT)
        .build();
    tracker.migrate(pool).await.unwrap();
    let tag = unique("flush");
    let committed = commit_events(&tracker, pool, &tag, "flushed", 2_000, 200).await;
    tracker.flush().await.unwrap();
    let (delivered, duplicates) = assert_exactly_delivered(&mock, &tag, &committed);
    let failed = mock.requests().iter().filter(|r| r.status != 200).count();
    assert!(failed > 0, "failures were injected");
    eprintln!(
        "fault matrix | flush through 30% failures | committed {} delivered {delivered} \
         duplicated {duplicates} dead 0 | failed requests {failed}",
        committed.len()
    );
    tracker.shutdown(Duration::from_secs(10)).await.unwrap();
}

/// A backlog behind a poison event: MockPostHog answers 500 to every request that holds this
/// test's `poison` event, and the poison is the oldest row (claimed first, with everything
/// behind it), followed by `good` events committed `per_tx` to a transaction by a tracker
/// that gives up on an event after 3 failures and leaves delivery to the test's relay.
struct PoisonFirst {
    mock: MockPostHog,
    tracker: Tracker,
    tag: String,
    poison: BTreeSet<Uuid>,
    committed: BTreeSet<Uuid>,
}

async fn poison_first<DB: Backend>(
    pool: &Pool<DB>,
    prefix: &str,
    good: usize,
    per_tx: usize,
) -> PoisonFirst {
    let mock = MockPostHog::start().await;
    let tag = unique(prefix);
    let poison_tag = tag.clone();
    mock.fail_events_where(500, move |event| {
        event["event"] == "poison" && event["distinct_id"] == poison_tag.as_str()
    });
    let tracker = tracker_for(&mock)
        .max_failures(3)
        .flush_timeout(WAIT)
        .external_relay(true)
        .build();
    tracker.migrate(pool).await.unwrap();
    let poison = commit_events(&tracker, pool, &tag, "poison", 1, 1).await;
    let committed = commit_events(&tracker, pool, &tag, "good", good, per_tx).await;
    PoisonFirst {
        mock,
        tracker,
        tag,
        poison,
        committed,
    }
}

impl PoisonFirst {
    /// Drains: the good events are delivered once each, and the poison is the one dead
    /// letter, reported by the drain. Returns its row.
    async fn drain_to_one_dead_letter<DB: Backend>(
        &self,
        pool: &Pool<DB>,
    ) -> posthog_track::outbox::OutboxEvent {
        let error = self.tracker.relay(pool.clone()).drain().await.unwrap_err();
        assert!(
            matches!(error, Error::Undelivered { dead: 1, .. }),
            "the poison is dead-lettered and reported: {error}"
        );
        assert_exactly_delivered(&self.mock, &self.tag, &self.committed);
        let mut dead = outbox_events(&self.tracker, pool, |event| {
            event.status == posthog_track::outbox::Status::Dead
        })
        .await;
        assert_eq!(dead.len(), 1);
        assert!(self.poison.contains(&dead[0].uuid));
        dead.remove(0)
    }
}

// 3. A poison event that fails every request it is in holds nothing back.

on_every_backend!(a_poison_event_holds_nothing_back);

async fn a_poison_event_holds_nothing_back<DB: Backend>(pool: &Pool<DB>, _url: &str) {
    let backlog = poison_first(pool, "poison", 200, 50).await;
    let dead = backlog.drain_to_one_dead_letter(pool).await;
    let PoisonFirst {
        mock,
        tracker,
        tag,
        poison,
        ..
    } = backlog;
    let history = dead.last_error.clone().unwrap_or_default();
    assert!(
        history.lines().count() >= 3 && history.contains("500"),
        "the dead letter keeps its history: {history}"
    );
    let status = tracker.outbox(pool).status().await.unwrap();
    assert_eq!((status.pending, status.dead), (0, 1));
    assert!(
        status.dead_reasons[0]
            .0
            .contains("gave up after 3 failures")
    );
    eprintln!(
        "fault matrix | 5xx poison in a 201-event backlog | committed 201 delivered 200 \
         duplicated 0 dead 1 | requests {}",
        mock.requests().len()
    );

    // Requeued (with fresh counts) and delivered once PostHog takes it.
    mock.fail_events_where(500, |_| false);
    assert_eq!(tracker.outbox(pool).requeue(None).await.unwrap(), 1);
    let requeued = &tracker.outbox(pool).events().await.unwrap()[0];
    assert_eq!(requeued.attempts, 0, "requeue resets the attempts");
    tracker.relay(pool.clone()).drain().await.unwrap();
    assert!(received(&mock, &tag).is_superset(&poison));
}

// 4b. During an outage, an event older than `max_age` is dead-lettered (kept, with its
// history, for a requeue) and a younger one waits; nothing is lost either way.

on_every_backend!(an_outage_dead_letters_only_events_past_max_age);

async fn an_outage_dead_letters_only_events_past_max_age<DB: Backend>(pool: &Pool<DB>, _url: &str) {
    const MAX_AGE: Duration = Duration::from_secs(4);
    let mock = MockPostHog::start().await;
    mock.set_random_failures(1.0, vec![Reply::Status(503)], 7);
    let tracker = tracker_for(&mock)
        .max_age(MAX_AGE)
        .flush_timeout(WAIT)
        .external_relay(true)
        .build();
    tracker.migrate(pool).await.unwrap();
    let tag = unique("max-age");
    let old = commit_events(&tracker, pool, &tag, "old", 10, 10).await;
    // Ages are read off the database's clock, from each row's `created_at`.
    tokio::time::sleep(MAX_AGE + Duration::from_millis(300)).await;
    let young = commit_events(&tracker, pool, &tag, "young", 5, 5).await;

    let relay = tracker.relay(pool.clone());
    let error = relay.drain_for(Duration::from_secs(2)).await.unwrap_err();
    assert!(
        matches!(error, Error::Timeout { pending: 5, .. }),
        "the young events still wait: {error}"
    );
    let dead = outbox_events(&tracker, pool, |event| {
        event.status == posthog_track::outbox::Status::Dead
    })
    .await;
    let dead_uuids: BTreeSet<Uuid> = dead.iter().map(|event| event.uuid).collect();
    assert_eq!(
        dead_uuids, old,
        "exactly the events older than max_age are dead-lettered"
    );
    let history = dead[0].last_error.clone().unwrap_or_default();
    assert!(
        history.contains("503"),
        "the dead letter keeps its history: {history}"
    );
    let status = tracker.outbox(pool).status().await.unwrap();
    assert_eq!((status.pending, status.dead), (5, 10));
    assert!(
        status.dead_reasons[0].0.contains("longer than max_age"),
        "{:?}",
        status.dead_reasons
    );
    assert!(
        mock.events().is_empty(),
        "PostHog took nothing during the outage"
    );

    // PostHog is back: the young events go out, and the old ones once requeued.
    mock.set_random_failures(0.0, vec![Reply::Status(503)], 7);
    relay.drain().await.unwrap();
    assert_eq!(tracker.outbox(pool).requeue(None).await.unwrap(), 10);
    relay.drain().await.unwrap();
    let all: BTreeSet<Uuid> = old.union(&young).copied().collect();
    assert_exactly_delivered(&mock, &tag, &all);
}

// A drain that runs out of time while its events wait out the backoff of an earlier failure
// (another round's, or another relay's) says what that failure was, not only that they wait.

on_every_backend!(a_drain_timed_out_by_a_backoff_names_the_failure_behind_it);

async fn a_drain_timed_out_by_a_backoff_names_the_failure_behind_it<DB: Backend>(
    pool: &Pool<DB>,
    _url: &str,
) {
    let mock = MockPostHog::start().await;
    mock.script([Reply::Status(503)]);
    let tracker = Tracker::builder()
        .api_key(mock.api_key())
        .host(mock.url())
        .unwrap()
        .backoff(posthog_track::Backoff {
            initial: Duration::from_secs(30),
            max: Duration::from_secs(30),
        })
        .external_relay(true)
        .build();
    tracker.migrate(pool).await.unwrap();
    let tag = unique("backoff-reason");
    commit_events(&tracker, pool, &tag, "waiting", 3, 3).await;
    let relay = tracker.relay(pool.clone());
    let pass = relay.run_once().await.unwrap();
    assert_eq!((pass.claimed, pass.retried), (3, 3), "{pass:?}");

    let error = relay
        .drain_for(Duration::from_millis(300))
        .await
        .unwrap_err();
    let Error::Timeout {
        pending, reason, ..
    } = &error
    else {
        panic!("a timeout: {error:?}");
    };
    assert_eq!(*pending, 3);
    assert!(
        reason.contains("503"),
        "the reason names the failure the events wait out: {reason}"
    );
}

// 5. `shutdown` always flushes the in-memory queue, even when the outbox cannot be drained.

on_every_backend!(shutdown_flushes_the_queue_when_the_outbox_cannot_drain);

async fn shutdown_flushes_the_queue_when_the_outbox_cannot_drain<DB: Backend>(
    pool: &Pool<DB>,
    _url: &str,
) {
    let mock = MockPostHog::start().await;
    mock.fail_events_where(503, |event| event["event"] == "stuck");
    let tracker = tracker_for(&mock).build();
    tracker.migrate(pool).await.unwrap();
    let tag = unique("shutdown");
    let stuck = commit_events(&tracker, pool, &tag, "stuck", 3, 3).await;
    let captured = tracker
        .capture(Event::new("captured").distinct_id(tag.clone()))
        .await
        .unwrap()
        .unwrap();
    let shutdown = tracker.shutdown(Duration::from_millis(1500)).await;
    assert_timed_out(shutdown, 3, "the true count of what waits");
    assert!(
        received(&mock, &tag).contains(&captured),
        "the captured event was delivered anyway"
    );
    let waiting = tracker.outbox(pool).status().await.unwrap().pending;
    assert_eq!(waiting, stuck.len() as i64, "the outbox events wait");
}

// 8. Configuration failures pause the relay; they never dead-letter, and it resumes.

on_every_backend!(configuration_failures_pause_and_resume);

async fn configuration_failures_pause_and_resume<DB: Backend>(pool: &Pool<DB>, _url: &str) {
    let mock = MockPostHog::start().await;
    let tracker = committer(&mock);
    tracker.migrate(pool).await.unwrap();
    for status in [403, 404, 405, 302, 401] {
        let tag = unique(&format!("config-{status}"));
        let committed = commit_events(&tracker, pool, &tag, "paused", 40, 40).await;
        mock.set_outage(Some(Reply::Status(status)));
        let relay = tracker.relay(pool.clone());
        let drained = relay.drain_for(Duration::from_millis(200)).await;
        let error = assert_timed_out(drained, 40, &status.to_string());
        assert!(error.to_string().contains("check POSTHOG_"), "{error}");
        assert!(relay.is_paused(), "{status}");
        let requests = mock.requests().len();
        let status_now = tracker.outbox(pool).status().await.unwrap();
        assert_eq!(status_now.dead, 0, "{status} dead-letters nothing");
        // PostHog (or the proxy) is fixed: the same relay resumes by itself.
        mock.set_outage(None);
        relay.drain_for(WAIT).await.unwrap();
        assert!(!relay.is_paused());
        assert_exactly_delivered(&mock, &tag, &committed);
        assert!(
            mock.requests().len() <= requests + 2,
            "{status}: not bisected into single sends"
        );
    }
}

// 9. A send that outlives the lease keeps it: no other relay sends the same rows meanwhile.

on_every_backend!(a_slow_send_keeps_its_lease);

async fn a_slow_send_keeps_its_lease<DB: Backend>(pool: &Pool<DB>, _url: &str) {
    let short_lease = |mock: &MockPostHog| {
        tracker_for(mock)
            .lease(Duration::from_millis(300))
            .external_relay(true)
            .build()
    };
    let (mock, tracker, tag) = migrated_tracker(pool, short_lease, "lease").await;
    let committed = commit_events(&tracker, pool, &tag, "slow", 20, 20).await;
    mock.script([Reply::Delay(
        Duration::from_millis(1500),
        Box::new(Reply::Accept),
    )]);
    let slow = tracker.relay(pool.clone());
    let in_flight = tokio::spawn(async move { slow.run_once().await });
    tokio::time::sleep(Duration::from_millis(900)).await;
    let other = tracker.relay(pool.clone()).run_once().await.unwrap();
    assert_eq!(other.claimed, 0, "the renewed lease holds past its 300 ms");
    let pass = in_flight.await.unwrap().unwrap();
    assert_eq!(pass.delivered, 20);
    let (_, duplicates) = assert_exactly_delivered(&mock, &tag, &committed);
    assert_eq!(duplicates, 0);
}

// 13. Forgetting `start_relay` delivers anyway; committing where no relay runs is reported.

on_every_backend!(commits_are_delivered_without_start_relay);

async fn commits_are_delivered_without_start_relay<DB: Backend>(pool: &Pool<DB>, _url: &str) {
    let (mock, tracker, tag) =
        migrated_tracker(pool, |mock| tracker_for(mock).build(), "no-start").await;
    let committed = commit_events(&tracker, pool, &tag, "auto", 30, 10).await;
    tracker.flush().await.unwrap();
    assert_exactly_delivered(&mock, &tag, &committed);

    // `track` cannot see the pool: its events wait, and flush says so instead of `Ok`.
    let blind = tracker_for(&mock)
        .flush_timeout(Duration::from_millis(300))
        .build();
    let mut tx = blind.track(pool.begin().await.unwrap());
    tx.set_distinct_id(tag.clone());
    tx.capture(Event::new("untracked_pool")).unwrap();
    tx.commit().await.unwrap();
    let error = blind.flush().await.unwrap_err();
    assert!(error.to_string().contains("start_relay"), "{error}");
    blind.start_relay(pool.clone()).unwrap();
    blind.flush().await.unwrap();
}

// 11. `commit` returns Ok once the database committed, whatever happens to delivery.

#[tokio::test]
async fn commit_is_ok_once_the_database_committed() {
    let mock = MockPostHog::start().await;
    let pool = sqlx::SqlitePool::connect("sqlite::memory:").await.unwrap();
    for tracker in [
        tracker_for(&mock).delivery(Delivery::AfterCommit).build(),
        tracker_for(&mock)
            .delivery(Delivery::AfterCommit)
            .disabled(true)
            .build(),
    ] {
        let _ = tracker.capture(Event::new("start").distinct_id("u")).await;
        tracker.shutdown(Duration::ZERO).await.ok();
        let mut tx = tracker.begin(&pool).await.unwrap();
        tx.set_distinct_id("u");
        tx.capture(Event::new("after_shutdown")).unwrap();
        tx.commit()
            .await
            .expect("the database committed, so commit is Ok");
    }
}

// 4. The in-memory path reports what it could not deliver, by cause.

#[tokio::test]
async fn in_memory_losses_are_reported_with_counts() {
    for (reply, cause) in [
        (Reply::Status(401), "misconfigured"),
        (Reply::Status(400), "rejected"),
        (Reply::Status(503), "after retries"),
    ] {
        let mock = MockPostHog::start().await;
        mock.set_outage(Some(reply));
        let tracker = tracker_for(&mock).max_retries(1).build();
        capture_numbered(&tracker, "lost", "u", 3).await;
        let error = tracker.flush().await.unwrap_err();
        assert!(
            matches!(error, Error::Undelivered { dropped: 3, .. }),
            "{cause}: {error}"
        );
        assert!(!error.to_string().contains("requeue"), "{error}");
        let stats = tracker.stats();
        let counted = match cause {
            "misconfigured" => stats.dropped_misconfigured,
            "rejected" => stats.dropped_rejected,
            _ => stats.dropped_after_retries,
        };
        assert_eq!(counted, 3, "{cause}: {stats:?}");
    }
}

// 6. Dropping the last tracker stops its background work.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_tracker_stops_its_background_work() {
    let mock = MockPostHog::start().await;
    let pool = sqlx::SqlitePool::connect("sqlite::memory:").await.unwrap();
    let metrics = tokio::runtime::Handle::current().metrics();
    let before = metrics.num_alive_tasks();
    {
        mock.set_flag_definitions(serde_json::json!({"flags": []}));
        let tracker = tracker_for(&mock)
            .personal_api_key(mock.personal_api_key())
            .poll_interval(Duration::from_millis(1), Duration::from_millis(5))
            .build();
        tracker.start_flag_poller(Duration::from_millis(5)).unwrap();
        tracker.migrate(&pool).await.unwrap();
        let mut tx = tracker.begin(&pool).await.unwrap(); // starts the relay
        tx.set_distinct_id("u");
        tx.capture(Event::new("e")).unwrap();
        tx.commit().await.unwrap();
        tracker
            .capture(Event::new("c").distinct_id("u"))
            .await
            .unwrap(); // starts the queue
        tracker.flush().await.unwrap();
        assert!(metrics.num_alive_tasks() > before);
    }
    let started = Instant::now();
    while metrics.num_alive_tasks() > before {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{} background task(s) outlived their tracker",
            metrics.num_alive_tasks() - before
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A figure for the record, not an assertion: this process's CPU while idle.
    if let (Some(before), started) = (cpu_ticks(), Instant::now()) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Some(after) = cpu_ticks() {
            eprintln!(
                "fault matrix | idle after dropping the tracker | {} CPU ticks (1/100 s) in {:?}",
                after - before,
                started.elapsed()
            );
        }
    }
}

/// User + system CPU time of this process, in clock ticks (Linux).
fn cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

// 10. The in-memory queue is bounded in bytes as well as in events.

#[tokio::test]
async fn the_queue_is_bounded_in_bytes() {
    let mock = slow_mock(Duration::from_secs(2)).await;
    let tracker = tracker_for(&mock)
        .queue_capacity(10_000)
        .queue_capacity_bytes(64 * 1024)
        .batch_size(1)
        .build();
    let big = "x".repeat(20 * 1024);
    let mut refused = 0;
    for n in 0..10 {
        let event = Event::new("big")
            .distinct_id("u")
            .property("n", n)
            .property("pad", big.as_str());
        if matches!(
            tracker.try_capture(event).await,
            Err(Error::QueueFull { .. })
        ) {
            refused += 1;
        }
    }
    assert!(
        refused >= 5,
        "about 200 KiB cannot fit in 64 KiB: {refused} refused"
    );
    assert_eq!(tracker.stats().dropped_queue_full, refused);
}

// 12. Secrets: an error body that echoes the request never carries the key further.

#[tokio::test]
async fn echoed_keys_never_reach_errors_or_the_outbox() {
    let mock = MockPostHog::start().await;
    mock.set_outage(Some(Reply::EchoRequest(400)));
    let tracker = tracker_for(&mock).gzip(false).external_relay(true).build();
    let pool = sqlx::SqlitePool::connect("sqlite::memory:").await.unwrap();
    tracker.migrate(&pool).await.unwrap();
    let mut tx = tracker.begin(&pool).await.unwrap();
    tx.set_distinct_id("u");
    tx.capture(Event::new("echoed")).unwrap();
    tx.commit().await.unwrap();
    let error = tracker.relay(pool.clone()).drain().await.unwrap_err();
    let stored = tracker.outbox(&pool).events().await.unwrap()[0]
        .last_error
        .clone()
        .unwrap_or_default();
    for text in [error.to_string(), stored] {
        assert!(!text.contains(mock.api_key()), "{text}");
    }
}

// The headline: several relay processes on one database, PostHog failing part of the
// requests, and one relay killed with SIGKILL mid-run.

on_every_backend!(relay_processes_killed_mid_run_lose_nothing);

async fn relay_processes_killed_mid_run_lose_nothing<DB: Backend>(pool: &Pool<DB>, url: &str) {
    let mock = MockPostHog::start().await;
    // Slow answers too, so that the kill lands on sends in flight.
    let slow = Reply::Delay(Duration::from_millis(300), Box::new(Reply::Accept));
    fail_randomly(&mock, 0.25, 503, slow, 5);
    let tracker = committer(&mock);
    tracker.migrate(pool).await.unwrap();
    let tag = unique("fleet");
    let committed = commit_events(&tracker, pool, &tag, "fleet", 3_000, 100).await;

    let logs = std::env::temp_dir().join(unique("relay-logs"));
    std::fs::create_dir_all(&logs).unwrap();
    let spawn = |n: usize| {
        relay_command(url, &mock, "posthog_track=error")
            .args(["--lease", "2", "--batch-size", "100"])
            .stderr(std::fs::File::create(logs.join(format!("relay-{n}.log"))).unwrap())
            .spawn()
            .unwrap()
    };
    let mut relays: Vec<_> = (0..3).map(spawn).collect();
    let started = Instant::now();
    while received(&mock, &tag).len() < committed.len() / 5 {
        if started.elapsed() > WAIT {
            let log = std::fs::read_to_string(logs.join("relay-0.log")).unwrap_or_default();
            panic!("the relays deliver nothing; the first one said:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    relays[0].kill().unwrap(); // SIGKILL: dies holding its lease, mid-send
    relays[0].wait().unwrap();
    while received(&mock, &tag).len() < committed.len() {
        assert!(
            started.elapsed() < WAIT,
            "only {} of {} arrived",
            received(&mock, &tag).len(),
            committed.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for relay in &mut relays[1..] {
        relay.kill().unwrap();
        relay.wait().unwrap();
    }
    let _ = std::fs::remove_dir_all(&logs);
    let (delivered, duplicates) = assert_exactly_delivered(&mock, &tag, &committed);
    let status = tracker.outbox(pool).status().await.unwrap();
    assert_eq!(status.dead, 0);
    eprintln!(
        "fault matrix | 3 relay processes, 25% failures, one SIGKILLed | {} committed \
         {} delivered {delivered} duplicated {duplicates} dead 0 | {:?}",
        DB::DIALECT.name(),
        committed.len(),
        started.elapsed()
    );
}

// A relay process frozen mid-send (SIGSTOP: a paused VM, a stalled host) keeps its
// connection open, so, unlike a killed one, nothing tells the database it is gone. Its claim
// must still end with its lease: on PostgreSQL the server ends the frozen session's held
// claim (`idle_in_transaction_session_timeout`), on MySQL/MariaDB the written lease runs out.
// Another relay then delivers everything. (Not on SQLite: there the relay is the database's
// own process, and one frozen inside a write would hold the file's lock; no lease covers it.)

on_every_backend!(a_frozen_relay_process_loses_its_claim_with_its_lease);

async fn a_frozen_relay_process_loses_its_claim_with_its_lease<DB: Backend>(
    pool: &Pool<DB>,
    url: &str,
) {
    if DB::DIALECT == Dialect::Sqlite {
        return;
    }
    let mock = MockPostHog::start().await;
    // The frozen relay's request is never answered in the test's time (and would be refused).
    mock.script([Reply::Delay(
        Duration::from_secs(600),
        Box::new(Reply::Status(503)),
    )]);
    let tracker = committer(&mock);
    tracker.migrate(pool).await.unwrap();
    let tag = unique("frozen");
    let committed = commit_events(&tracker, pool, &tag, "frozen", 50, 50).await;

    let mut frozen = relay_command(url, &mock, "posthog_track=error")
        .args(["--lease", "2"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Until the relay holds the rows: a written lease on MySQL, row locks on PostgreSQL.
    let started = Instant::now();
    while !holds_claim(&tracker, pool).await {
        assert!(started.elapsed() < WAIT, "the relay never claimed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stop = std::process::Command::new("kill")
        .args(["-STOP", &frozen.id().to_string()])
        .status()
        .unwrap();
    assert!(stop.success());

    let relay = tracker.relay(pool.clone());
    let drained = relay.drain_for(Duration::from_secs(30)).await;
    let waited = started.elapsed();
    frozen.kill().unwrap(); // SIGKILL ends a stopped process too
    frozen.wait().unwrap();
    drained.unwrap();
    assert_exactly_delivered(&mock, &tag, &committed);
    eprintln!(
        "fault matrix | relay frozen mid-send (SIGSTOP), lease 2 s | {} committed 50, \
         delivered by another relay after {waited:?}",
        DB::DIALECT.name()
    );
}

/// Whether a relay holds outbox rows: a written lease (MySQL/MariaDB, SQLite), or on
/// PostgreSQL a transaction holding row locks on the outbox (a held claim).
async fn holds_claim<DB: Backend>(tracker: &Tracker, pool: &Pool<DB>) -> bool {
    if DB::DIALECT != Dialect::Postgres {
        return tracker.outbox(pool).status().await.unwrap().leased > 0;
    }
    // `FOR UPDATE` takes ROW SHARE on the table until the transaction ends.
    let mut conn = pool.acquire().await.unwrap();
    let row = DB::fetch_one(
        &mut conn,
        sqlx::query(
            "SELECT COUNT(*) FROM pg_locks WHERE relation = 'posthog_outbox'::regclass \
             AND mode = 'RowShareLock' AND pid <> pg_backend_pid()",
        ),
    )
    .await
    .unwrap();
    DB::int(&row, 0).unwrap() > 0
}

// A second poison event after the first was dead-lettered. SQLite reuses the id of a deleted
// newest row, so the second event may have the first's id: the dead-letter table must still
// take it (it refused it with a UNIQUE violation, and the event was resent forever). Each
// poison event travels with a good one, which PostHog accepts in the same round: that is what
// makes a 400 the event's fault.

on_every_backend!(a_poison_event_after_one_dead_lettered_is_dead_lettered_too);

async fn a_poison_event_after_one_dead_lettered_is_dead_lettered_too<DB: Backend>(
    pool: &Pool<DB>,
    _url: &str,
) {
    let mock = MockPostHog::start().await;
    mock.reject_events_where(|event| event["event"] == "poison");
    let tracker = committer(&mock);
    tracker.migrate(pool).await.unwrap();
    let tag = unique("second-poison");
    let relay = tracker.relay(pool.clone());
    let mut dead = BTreeSet::new();
    for _ in 0..2 {
        let mut tx = tracker.begin(pool).await.unwrap();
        tx.set_distinct_id(tag.clone());
        tx.capture(Event::new("poison")).unwrap();
        tx.capture(Event::new("good")).unwrap();
        dead.insert(tx.staged()[0].uuid);
        tx.commit().await.unwrap();
        let pass = relay.run_once().await.unwrap();
        assert_eq!((pass.dead, pass.delivered), (1, 1), "{pass:?}");
    }
    let in_dead_table: BTreeSet<Uuid> = outbox_events(&tracker, pool, |event| {
        event.distinct_id == tag && event.status == posthog_track::outbox::Status::Dead
    })
    .await
    .into_iter()
    .map(|event| event.uuid)
    .collect();
    assert_eq!(in_dead_table, dead);
    // Both can be requeued and delivered.
    mock.reject_events_where(|_| false);
    assert_eq!(tracker.outbox(pool).requeue(None).await.unwrap(), 2);
    relay.drain().await.unwrap();
    let poison: BTreeSet<Uuid> = mock
        .events()
        .into_iter()
        .filter(|event| event.event == "poison" && event.distinct_id == tag)
        .map(|event| event.uuid)
        .collect();
    assert_eq!(poison, dead);
}

// Requeueing every dead event while a relay dead-letters another: the event dead-lettered
// in between is requeued or still dead, never gone. (PostgreSQL ran the copy and the delete as
// two statements under READ COMMITTED; a trigger that sleeps widens the window between them
// so that the race is certain.)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requeue_racing_a_dead_letter_loses_nothing_on_postgres() {
    let Some(url) = database_url("POSTGRES_URL") else {
        return;
    };
    let pool = posthog_track_tests::isolated_postgres(&url, "requeue_race").await;
    requeue_racing_a_dead_letter(
        &pool,
        &[
            "CREATE FUNCTION slow_requeue() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN PERFORM pg_sleep(1.5); RETURN NEW; END $$",
            "CREATE TRIGGER slow_requeue AFTER INSERT ON posthog_outbox FOR EACH ROW \
             WHEN (NEW.event = 'first_dead') EXECUTE FUNCTION slow_requeue()",
        ],
    )
    .await;
}

// The same on MariaDB with sessions in READ COMMITTED (a common server setting), where the
// copy's reads lock no gap: the delete re-ran the copy's filter and took the event
// dead-lettered in between, never copied.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requeue_racing_a_dead_letter_loses_nothing_on_mysql_read_committed() {
    let Some(url) = database_url("MYSQL_URL") else {
        return;
    };
    let pool = posthog_track_tests::isolated_mysql_with_session(
        &url,
        "requeue_race_rc",
        "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
    )
    .await;
    requeue_racing_a_dead_letter(
        &pool,
        &[
            "CREATE TRIGGER slow_requeue AFTER INSERT ON posthog_outbox FOR EACH ROW \
           BEGIN IF NEW.event = 'first_dead' THEN DO SLEEP(1.5); END IF; END",
        ],
    )
    .await;
}

/// Requeues every dead event while a relay dead-letters another; `slow_requeue` creates a
/// trigger that sleeps when the requeue copies the first event back, so that the relay's
/// dead-letter lands inside the requeue for certain.
async fn requeue_racing_a_dead_letter<DB: Backend>(pool: &Pool<DB>, slow_requeue: &[&str]) {
    let mock = MockPostHog::start().await;
    mock.reject_events_where(|event| event["event"] != "delivered");
    let tracker = committer(&mock);
    tracker.migrate(pool).await.unwrap();
    let tag = unique("requeue-race");
    let relay = tracker.relay(pool.clone());
    let commit = |name: &'static str| {
        let (tracker, pool, tag) = (tracker.clone(), pool.clone(), tag.clone());
        async move {
            let mut tx = tracker.begin(&pool).await.unwrap();
            tx.set_distinct_id(tag);
            tx.capture(Event::new(name)).unwrap();
            // Accepted in the same round, so the refusal is the event's fault.
            tx.capture(Event::new("delivered")).unwrap();
            let uuid = tx.staged()[0].uuid;
            tx.commit().await.unwrap();
            uuid
        }
    };
    let first = commit("first_dead").await;
    assert_eq!(relay.run_once().await.unwrap().dead, 1);
    for sql in slow_requeue {
        posthog_track_tests::execute(pool, *sql).await;
    }
    let second = commit("second_dead").await;
    let requeue = {
        let (tracker, pool) = (tracker.clone(), pool.clone());
        tokio::spawn(async move { tracker.outbox(&pool).requeue(None).await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Dead-letters `second` while the requeue is between its copy and its delete.
    assert_eq!(relay.run_once().await.unwrap().dead, 1);
    requeue.await.unwrap();
    let left: BTreeSet<Uuid> = outbox_events(&tracker, pool, |event| event.distinct_id == tag)
        .await
        .into_iter()
        .map(|event| event.uuid)
        .collect();
    assert!(left.contains(&first), "first is requeued: {left:?}");
    assert!(
        left.contains(&second),
        "the event dead-lettered during the requeue is requeued or still dead: {left:?}"
    );
}

// `flush` with delivery left to another process reports the events that process
// dead-lettered, as a flush by an in-process relay does (it returned Ok: the events had left
// the outbox).

on_every_backend!(a_flush_waiting_for_another_relay_reports_dead_letters);

async fn a_flush_waiting_for_another_relay_reports_dead_letters<DB: Backend>(
    pool: &Pool<DB>,
    _url: &str,
) {
    let mock = MockPostHog::start().await;
    mock.reject_events_where(|event| event["event"] == "external_poison");
    let tracker = committer(&mock);
    tracker.migrate(pool).await.unwrap();
    let tag = unique("external-flush");
    let mut tx = tracker.begin(pool).await.unwrap();
    tx.set_distinct_id(tag.clone());
    tx.capture(Event::new("external_poison")).unwrap();
    tx.capture(Event::new("external_fine")).unwrap();
    tx.commit().await.unwrap();
    let other_process = tracker_for(&mock).build();
    let relay_pool = pool.clone();
    let relay = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        other_process.relay(relay_pool).drain().await
    });
    let flushed = tracker.flush().await;
    assert!(relay.await.unwrap().is_err(), "the relay dead-lettered one");
    match flushed {
        Err(Error::Undelivered { dead, dropped, .. }) => assert_eq!((dead, dropped), (1, 0)),
        other => panic!("flush must report the dead-lettered event: {other:?}"),
    }
    // Nothing dead-lettered since: the next flush is clean.
    tracker.flush().await.unwrap();
}

// In v1 capture, rows written into the outbox by hand (a payload cut short, one with no uuid,
// one that is not JSON at all) are dead-lettered alone and the rest is delivered. A v1 400 was
// taken as every event's verdict (all 23 dead), and a payload without a uuid could never be
// settled by PostHog's per-uuid answer (resent until max_age).

on_every_backend!(v1_hand_written_rows_are_dead_lettered_alone);

async fn v1_hand_written_rows_are_dead_lettered_alone<DB: Backend>(pool: &Pool<DB>, _url: &str) {
    let mock = MockPostHog::start().await;
    let tracker = tracker_for(&mock)
        .capture_mode(CaptureMode::V1)
        .external_relay(true)
        .build();
    tracker.migrate(pool).await.unwrap();
    let tag = unique("v1-hand-written");
    let committed = commit_events(&tracker, pool, &tag, "good", 20, 20).await;
    for (n, payload) in [
        r#"{"uuid":"00000000-0000-4000-8000-000000000001","event":"cut","#,
        r#"{"event":"no_uuid","distinct_id":"x","properties":{}}"#,
        r#"{"event": "not json", "#,
    ]
    .iter()
    .enumerate()
    {
        posthog_track_tests::execute(
            pool,
            format!(
                "INSERT INTO posthog_outbox (uuid, event, distinct_id, timestamp, payload) \
                 VALUES ('00000000-0000-4000-8000-00000000000{n}', 'hand', 'x', \
                 '2024-01-01T00:00:00Z', '{payload}')"
            ),
        )
        .await;
    }
    let drained = tracker.relay(pool.clone()).drain_for(WAIT).await;
    assert!(
        matches!(drained, Err(Error::Undelivered { dead: 3, .. })),
        "{drained:?}"
    );
    assert_exactly_delivered(&mock, &tag, &committed);
    let status = tracker.outbox(pool).status().await.unwrap();
    assert_eq!((status.pending, status.dead), (0, 3), "{status:?}");
}

// An outage seen by many relays: ten relays taking turns, then relays started afresh for
// every round (restarted processes, `relay --drain` from cron). None of them saw PostHog
// accept anything, so a lone event failing again is nobody's fault; it was dead-lettered
// "while PostHog accepted other events" after max_failures rounds, because each relay started
// out believing PostHog healthy.

on_every_backend!(an_outage_seen_by_many_relays_gives_up_nothing);

async fn an_outage_seen_by_many_relays_gives_up_nothing<DB: Backend>(pool: &Pool<DB>, _url: &str) {
    let mock = MockPostHog::start().await;
    let tracker = tracker_for(&mock)
        .external_relay(true)
        .max_failures(3)
        .build();
    tracker.migrate(pool).await.unwrap();
    mock.set_outage(Some(Reply::Status(503)));
    let tag = unique("outage-relays");
    let committed = commit_events(&tracker, pool, &tag, "waits", 1, 1).await;
    let relays: Vec<_> = (0..10).map(|_| tracker.relay(pool.clone())).collect();
    let mut tried = 0;
    for round in 0..24 {
        let pass = if round < 12 {
            relays[round % relays.len()].run_once().await.unwrap()
        } else {
            tracker.relay(pool.clone()).run_once().await.unwrap()
        };
        tried += pass.claimed;
        assert_eq!(
            pass.dead, 0,
            "round {round}: nothing is given up in an outage"
        );
        tokio::time::sleep(Duration::from_millis(120)).await;
    }
    assert!(tried > 6, "the event was tried past max_failures: {tried}");
    mock.set_outage(None);
    tracker.relay(pool.clone()).drain_for(WAIT).await.unwrap();
    assert_exactly_delivered(&mock, &tag, &committed);
}

// A relay whose clock is off: PostHog corrects every event's timestamp by the request's
// `sent_at`, so a relay stamping it from its own clock, off by hours, shifted every event it
// sent by as much. It now times requests by the database's clock (which leases use already).
// The test moves the other clock: MariaDB's `SET timestamp` puts the sessions' NOW() three
// hours ahead of this process's clock.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_times_its_requests_by_the_database_clock() {
    let Some(url) = database_url("MYSQL_URL") else {
        return;
    };
    let pool = posthog_track_tests::isolated_mysql_with_session(
        &url,
        "relay_clock",
        "SET timestamp = UNIX_TIMESTAMP() + 3 * 3600",
    )
    .await;
    let mock = MockPostHog::start().await;
    let tracker = committer(&mock);
    tracker.migrate(&pool).await.unwrap();
    let tag = unique("relay-clock");
    let committed = commit_events(&tracker, &pool, &tag, "timed", 3, 3).await;
    tracker.relay(pool.clone()).drain_for(WAIT).await.unwrap();
    assert_exactly_delivered(&mock, &tag, &committed);
    let database_now = chrono::Utc::now() + chrono::Duration::hours(3);
    let requests = mock.requests();
    assert!(!requests.is_empty());
    for request in requests {
        let sent_at = request.body["sent_at"].as_str().unwrap_or_default();
        let sent_at = chrono::DateTime::parse_from_rfc3339(sent_at).unwrap();
        let off = (sent_at.with_timezone(&chrono::Utc) - database_now)
            .num_seconds()
            .abs();
        assert!(
            off < 300,
            "sent_at {sent_at} is not on the database's clock"
        );
    }
}

// A relay whose pool has one connection, on PostgreSQL with claims held by the sending
// transaction: the held claim keeps the connection for the round, so reading the database's
// clock in the middle of the round waited for the pool (4 s here) while PostgreSQL ended the
// idle held session at the lease (2 s), and the round failed with the events sent. The clock is
// read before the claim.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_with_one_connection_holds_its_claims() {
    let Some(url) = database_url("POSTGRES_URL") else {
        return;
    };
    drop(posthog_track_tests::isolated_postgres(&url, "relay_one_connection").await);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(4))
        .connect(&posthog_track_tests::with_search_path(
            &url,
            "pt_relay_one_connection",
        ))
        .await
        .unwrap();
    let mock = MockPostHog::start().await;
    let tracker = tracker_for(&mock)
        .held_claims(true)
        .lease(Duration::from_secs(2))
        .external_relay(true)
        .build();
    tracker.migrate(&pool).await.unwrap();
    let tag = unique("one-connection");
    let mut committed = BTreeSet::new();
    let relay = tracker.relay(pool.clone());
    for _ in 0..2 {
        committed.extend(commit_events(&tracker, &pool, &tag, "held", 5, 5).await);
        let pass = relay.run_once().await.unwrap();
        assert_eq!(pass.delivered, 5, "{pass:?}");
    }
    assert_exactly_delivered(&mock, &tag, &committed);
}

// A `before_send` hook may write any timestamp into the event; the outbox's own timestamp
// column (a VARCHAR(40) on MySQL) takes it only as RFC 3339 that fits, so a longer one stays in
// the payload alone instead of failing the commit ("Data too long" on MariaDB).

on_every_backend!(a_hook_timestamp_the_outbox_cannot_hold_stays_in_the_payload);

async fn a_hook_timestamp_the_outbox_cannot_hold_stays_in_the_payload<DB: Backend>(
    pool: &Pool<DB>,
    _url: &str,
) {
    let long = format!("2024-01-01T00:00:00.{}Z", "1".repeat(40));
    let hooked = long.clone();
    let mock = MockPostHog::start().await;
    let tracker = tracker_for(&mock)
        .external_relay(true)
        .before_send(move |mut event| {
            event["timestamp"] = serde_json::json!(hooked.clone());
            Some(event)
        })
        .build();
    tracker.migrate(pool).await.unwrap();
    let tag = unique("hook-timestamp");
    commit_events(&tracker, pool, &tag, "stamped", 2, 2).await;
    let stored = outbox_events(&tracker, pool, |event| event.distinct_id == tag).await;
    assert_eq!(stored.len(), 2);
    for event in stored {
        assert_ne!(
            event.timestamp, long,
            "the column keeps the staged timestamp"
        );
        assert_eq!(event.payload["timestamp"], serde_json::json!(long));
    }
}

// An operator's mistake in front of PostHog: a proxy (or a wrong POSTHOG_HOST, such as plain
// HTTP sent to an HTTPS port, which nginx answers with 400) refuses every request with 400.
// Bisection takes every batch down to single events, each refused alone: that is what a bad
// event looks like, but nothing shows PostHog accepting anything, so no event may be
// dead-lettered. Once the proxy is fixed, every event arrives.

on_every_backend!(a_proxy_refusing_every_request_dead_letters_nothing);

async fn a_proxy_refusing_every_request_dead_letters_nothing<DB: Backend>(
    pool: &Pool<DB>,
    _url: &str,
) {
    let mock = MockPostHog::start().await;
    let tracker = committer(&mock);
    tracker.migrate(pool).await.unwrap();
    let tag = unique("proxy-400");
    let mut committed = BTreeSet::new();
    // The relay saw PostHog accept an event a moment ago, as one running when the proxy broke
    // has: the refusals that follow are still not the events' fault.
    let relay = tracker.relay(pool.clone());
    let mut tx = tracker.begin(pool).await.unwrap();
    tx.set_distinct_id(tag.clone());
    tx.capture(Event::new("before_the_proxy_broke")).unwrap();
    committed.insert(tx.staged()[0].uuid);
    tx.commit().await.unwrap();
    relay.drain().await.unwrap();
    mock.set_outage(Some(Reply::Status(400)));
    for round in 0..3 {
        let mut tx = tracker.begin(pool).await.unwrap();
        tx.set_distinct_id(tag.clone());
        for n in 0..4 {
            tx.capture(Event::new("behind_a_proxy").property("n", round * 4 + n))
                .unwrap();
        }
        committed.extend(tx.staged().iter().map(|event| event.uuid));
        tx.commit().await.unwrap();
    }
    for _ in 0..6 {
        let pass = relay.run_once().await.unwrap();
        assert_eq!(
            pass.dead, 0,
            "nothing is dead-lettered behind the proxy: {pass:?}"
        );
        if pass.claimed == 0 {
            // Everything waits out a backoff; make it due again.
            posthog_track_tests::execute(pool, "UPDATE posthog_outbox SET leased_until = NULL")
                .await;
        }
    }
    let status = tracker.outbox(pool).status().await.unwrap();
    assert_eq!(status.dead, 0, "{status:?}");
    let stats = tracker.stats();
    assert!(
        stats.retried >= 12 && stats.dead_lettered == 0,
        "the refusals count as retries: {stats:?}"
    );
    mock.set_outage(None);
    posthog_track_tests::execute(pool, "UPDATE posthog_outbox SET leased_until = NULL").await;
    relay.drain().await.unwrap();
    assert_eq!(received(&mock, &tag), committed);
}

// A wrong POSTHOG_HOST that answers 200 with a web page (a site's catch-all route, a parked
// domain, a captive portal): PostHog never answers its capture endpoints with HTML, so the
// events did not arrive and must stay in the outbox, and the relay pauses as for a 404.

/// Commits one event for a tracker that sends to `host` with `key` in `mode`, runs one relay
/// pass, and checks that the pass delivered nothing and the event waits in the outbox, not
/// dead-lettered (then empties the outbox for the next case): the pass.
async fn one_pass_to_a_wrong_host(
    pool: &sqlx::SqlitePool,
    host: &str,
    key: &str,
    mode: CaptureMode,
) -> posthog_track::relay::Pass {
    let tracker = Tracker::builder()
        .api_key(key)
        .host(host)
        .unwrap()
        .capture_mode(mode)
        .external_relay(true)
        .build();
    tracker.migrate(pool).await.unwrap();
    let mut tx = tracker.begin(pool).await.unwrap();
    tx.set_distinct_id(unique("wrong-host"));
    tx.capture(Event::new("sent_to_a_wrong_host")).unwrap();
    tx.commit().await.unwrap();
    let pass = tracker.relay(pool.clone()).run_once().await.unwrap();
    assert_eq!(pass.delivered, 0, "{mode:?}: nothing delivered: {pass:?}");
    let status = tracker.outbox(pool).status().await.unwrap();
    assert_eq!(
        (status.pending, status.dead),
        (1, 0),
        "{mode:?}: the event waits: {status:?}"
    );
    posthog_track_tests::execute(pool, "DELETE FROM posthog_outbox").await;
    pass
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_answering_200_with_a_web_page_delivers_nothing() {
    let site = posthog_track_tests::html_site().await;
    let (pool, _url, dir) = posthog_track_tests::sqlite_file("html-200").await;
    for mode in [CaptureMode::V0, CaptureMode::V1] {
        let pass = one_pass_to_a_wrong_host(&pool, &site, "phc_wrong_host_test", mode).await;
        assert!(
            pass.paused
                .as_deref()
                .is_some_and(|why| why.contains("POSTHOG_HOST")),
            "{mode:?}: the relay pauses and names the setting to fix: {pass:?}"
        );
    }
    pool.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

// A host that answers 400 with a web page to every request: nginx does so to plain HTTP sent
// to its HTTPS port (`POSTHOG_HOST=http://...` where the proxy speaks HTTPS). PostHog answers a
// refused event with JSON, so such a page is a set-up to fix, not a verdict on the events:
// the relay pauses after one request and names the setting. It used to take each 400 as a
// refusal and split the batch until every event stood alone (2n - 1 requests a round, 15 for
// these 8 events, 999 for a batch of 500, each round again after its backoff), and said only
// at the end of such a round what was wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_answering_400_with_a_web_page_pauses_the_relay() {
    let (site, answered) = posthog_track_tests::https_port_site().await;
    let (pool, _url, dir) = posthog_track_tests::sqlite_file("html-400").await;
    for mode in [CaptureMode::V0, CaptureMode::V1] {
        answered.store(0, std::sync::atomic::Ordering::SeqCst);
        let tracker = Tracker::builder()
            .api_key("phc_https_port_test")
            .host(&site)
            .unwrap()
            .capture_mode(mode)
            .external_relay(true)
            .build();
        tracker.migrate(&pool).await.unwrap();
        let mut tx = tracker.begin(&pool).await.unwrap();
        tx.set_distinct_id(unique("https-port"));
        for n in 0..8 {
            tx.capture(Event::new("sent_to_an_https_port").property("n", n))
                .unwrap();
        }
        tx.commit().await.unwrap();
        let pass = tracker.relay(pool.clone()).run_once().await.unwrap();
        assert!(
            pass.paused
                .as_deref()
                .is_some_and(|why| why.contains("POSTHOG_HOST") && why.contains("web page")),
            "{mode:?}: the relay pauses and names the setting to fix: {pass:?}"
        );
        assert_eq!(
            answered.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "{mode:?}: one request, not one per event: {pass:?}"
        );
        let status = tracker.outbox(&pool).status().await.unwrap();
        assert_eq!(
            (status.pending, status.dead),
            (8, 0),
            "{mode:?}: the events wait, none counted against: {status:?}"
        );
        posthog_track_tests::execute(&pool, "DELETE FROM posthog_outbox").await;
    }
    pool.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

// `POSTHOG_HOST=https://...` aimed at a port that speaks plain HTTP: the TLS handshake fails
// on every request. The events wait and are retried as in an outage, and the failure says
// what to check: it said only rustls's "received corrupt message of type InvalidContentType".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_sent_to_a_plain_http_port_says_what_to_check() {
    let mock = MockPostHog::start().await;
    let host = mock.url().replacen("http://", "https://", 1);
    let (pool, _url, dir) = posthog_track_tests::sqlite_file("tls-to-http").await;
    let pass = one_pass_to_a_wrong_host(&pool, &host, mock.api_key(), CaptureMode::V0).await;
    let failure = pass.failure.clone().unwrap_or_default();
    assert!(
        failure.contains("POSTHOG_HOST") && failure.contains("plain HTTP"),
        "the failure names the setting and the likely mistake: {pass:?}"
    );
    assert!(mock.events().is_empty());
    pool.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

// A host that redirects (a proxy moved, `http://` sent to `https://`, a vanity domain) is a
// set-up to fix, not a way to follow: a 307 or 308 would resend the body, API key included,
// to wherever the redirect points. The relay pauses, names the setting, and the events stay.

/// A web server that redirects every request (307, the same path) to `target`; its URL.
async fn redirecting_site(target: String) -> String {
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let location = format!("{target}{uri}");
        async move {
            (
                axum::http::StatusCode::TEMPORARY_REDIRECT,
                [(axum::http::header::LOCATION, location)],
            )
        }
    });
    posthog_track_tests::serve(app).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_is_not_followed_with_the_events_and_key() {
    let elsewhere = MockPostHog::start().await;
    let site = redirecting_site(elsewhere.url()).await;
    let (pool, _url, dir) = posthog_track_tests::sqlite_file("redirect").await;
    for mode in [CaptureMode::V0, CaptureMode::V1] {
        let pass = one_pass_to_a_wrong_host(&pool, &site, elsewhere.api_key(), mode).await;
        assert!(
            pass.paused
                .as_deref()
                .is_some_and(|why| why.contains("redirect") && why.contains("POSTHOG_HOST")),
            "{mode:?}: the relay pauses and names the setting to fix: {pass:?}"
        );
        assert!(
            elsewhere.requests().is_empty(),
            "{mode:?}: the redirect was followed, the key and events sent elsewhere"
        );
    }
    pool.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

// The same for feature flags: the definitions request carries the personal API key, remote
// evaluation the project key; neither follows a redirect.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flag_requests_do_not_follow_a_redirect() {
    let elsewhere = MockPostHog::start().await;
    elsewhere.set_flag_definitions(serde_json::json!({"flags": [], "group_type_mapping": {}}));
    elsewhere.set_remote_flags(serde_json::json!({"flags": {}}));
    let site = redirecting_site(elsewhere.url()).await;
    let tracker = Tracker::builder()
        .api_key(elsewhere.api_key())
        .host(&site)
        .unwrap()
        .personal_api_key(elsewhere.personal_api_key())
        .build();
    let error = tracker.load_flag_definitions().await.unwrap_err();
    assert!(
        error.to_string().contains("307") && error.to_string().contains("check POSTHOG_HOST"),
        "the error says what to fix: {error}"
    );
    let remote = tracker
        .get_feature_flag(
            "any-flag",
            posthog_track::flags::FlagsRequest::new("redirected-user"),
        )
        .await;
    let remote = remote.unwrap_err().to_string();
    assert!(
        remote.contains("307") && remote.contains("check POSTHOG_HOST"),
        "{remote}"
    );
    assert!(
        elsewhere.flag_definitions_requests().is_empty() && elsewhere.flags_requests().is_empty(),
        "a flag request followed the redirect, its key with it"
    );
    tracker.shutdown(Duration::ZERO).await.ok();
}

// A lease of zero (`relay --lease 0`, `.lease(Duration::ZERO)`) expired as it was taken: any
// other relay claimed the rows while the first was still sending them, so every event went
// out once per relay, and on PostgreSQL a held claim's session was ended a millisecond into
// the send, its events resent every round. A lease lasts at least 250 ms.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_lease_still_keeps_a_claim_from_other_relays() {
    let (pool, _url, dir) = posthog_track_tests::sqlite_file("zero-lease").await;
    let mock = slow_mock(Duration::from_millis(1500)).await;
    let tracker = tracker_for(&mock)
        .external_relay(true)
        .lease(Duration::ZERO)
        .build();
    tracker.migrate(&pool).await.unwrap();
    let tag = unique("zero-lease");
    let committed = commit_events(&tracker, &pool, &tag, "leased", 5, 5).await;
    let first = tracker.relay(pool.clone());
    let sending = tokio::spawn(async move { first.run_once().await.unwrap() });
    // The first relay has claimed the rows (a written lease marks them) and is sending them.
    loop {
        let claimed: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM posthog_outbox WHERE claim IS NOT NULL")
                .fetch_one(&pool)
                .await
                .unwrap();
        if claimed > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let second = tracker.relay(pool.clone()).run_once().await.unwrap();
    assert_eq!(
        second.claimed, 0,
        "rows being sent are not claimed again: {second:?}"
    );
    assert_eq!(sending.await.unwrap().delivered, committed.len());
    assert_exactly_delivered(&mock, &tag, &committed);
    pool.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

// A shutdown whose deadline passes mid-send hands the rows back at the deadline; the final
// drain's next round then claimed them again and started a fresh request after the deadline
// (sent, never waited for: a second copy of every event, and the stop no sooner). A round
// due after the deadline claims nothing.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_sends_nothing_after_its_deadline() {
    let (pool, _url, dir) = posthog_track_tests::sqlite_file("shutdown-deadline").await;
    let mock = slow_mock(Duration::from_secs(5)).await;
    let tracker = tracker_for(&mock).build();
    tracker.migrate(&pool).await.unwrap();
    let tag = unique("shutdown-deadline");
    commit_events(&tracker, &pool, &tag, "at_the_deadline", 3, 3).await;
    // The in-process relay has claimed the rows and is sending them.
    loop {
        let claimed: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM posthog_outbox WHERE claim IS NOT NULL")
                .fetch_one(&pool)
                .await
                .unwrap();
        if claimed > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let stopped = tracker.shutdown(Duration::from_millis(300)).await;
    assert!(
        stopped.is_err(),
        "the events were not delivered: {stopped:?}"
    );
    for event in tracker.outbox(&pool).events().await.unwrap() {
        let history = event.last_error.unwrap_or_default();
        assert_eq!(
            history.matches("abandoned").count(),
            1,
            "sent once, abandoned once at the deadline: {history}"
        );
        assert_eq!(event.attempts, 0, "an abandoned send is not counted");
    }
    pool.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

// `requeue` of a long list of dead-letter ids (an operator's export of what to resend): every
// backend bounds the parameters of one statement (SQLite 32,766; PostgreSQL and MySQL 65,535),
// and the ids went into one statement, so the requeue failed whole. They go in chunks.

on_every_backend!(requeue_takes_a_long_list_of_ids);

async fn requeue_takes_a_long_list_of_ids<DB: Backend>(pool: &Pool<DB>, _url: &str) {
    let mock = MockPostHog::start().await;
    let tracker = committer(&mock);
    tracker.migrate(pool).await.unwrap();
    posthog_track_tests::execute(
        pool,
        "INSERT INTO posthog_outbox_dead (id, uuid, event, distinct_id, timestamp, payload, \
         attempts, reason, dead_at) VALUES (69999, '00000000-0000-4000-8000-000000000001', 'e', \
         'd', '2026-01-01T00:00:00Z', '{}', 1, 'test', 0)",
    )
    .await;
    let dead_id: i64 = {
        let mut conn = pool.acquire().await.unwrap();
        let row = DB::fetch_one(
            &mut conn,
            sqlx::query("SELECT MAX(id) FROM posthog_outbox_dead"),
        )
        .await
        .unwrap();
        DB::int(&row, 0).unwrap()
    };
    let mut ids: Vec<i64> = (1_000_000..1_070_000).collect();
    ids.push(dead_id);
    assert_eq!(tracker.outbox(pool).requeue(Some(&ids)).await.unwrap(), 1);
    let status = tracker.outbox(pool).status().await.unwrap();
    assert_eq!((status.pending, status.dead), (1, 0), "{status:?}");
}

// `requeue(Some(ids))` with an empty list (a script's selection of dead events that found
// none) requeued every dead event: the empty filter read as no filter.

on_every_backend!(requeue_of_no_ids_requeues_nothing);

async fn requeue_of_no_ids_requeues_nothing<DB: Backend>(pool: &Pool<DB>, _url: &str) {
    let mock = MockPostHog::start().await;
    let tracker = committer(&mock);
    tracker.migrate(pool).await.unwrap();
    posthog_track_tests::execute(
        pool,
        "INSERT INTO posthog_outbox_dead (id, uuid, event, distinct_id, timestamp, payload, \
         attempts, reason, dead_at) VALUES (7, '00000000-0000-4000-8000-000000000002', 'e', \
         'd', '2026-01-01T00:00:00Z', '{}', 1, 'kept dead', 0)",
    )
    .await;
    assert_eq!(tracker.outbox(pool).requeue(Some(&[])).await.unwrap(), 0);
    let status = tracker.outbox(pool).status().await.unwrap();
    assert_eq!((status.pending, status.dead), (0, 1), "{status:?}");
}

// A large `--batch-size` (a backlog drain) put every claimed id into one statement: MySQL's
// lease UPDATE (over 65,535 ids) and the hand-back of what a claim's byte budget leaves out
// (over SQLite's 32,766) failed, every round, and nothing was delivered while they did.

on_every_backend!(a_claim_larger_than_a_statement_still_delivers);

async fn a_claim_larger_than_a_statement_still_delivers<DB: Backend>(pool: &Pool<DB>, _url: &str) {
    let mock = MockPostHog::start().await;
    let tracker = tracker_for(&mock)
        .external_relay(true)
        .batch_size(70_000)
        .max_claim_bytes(1)
        .build();
    tracker.migrate(pool).await.unwrap();
    let tag = unique("large-claim");
    commit_events(&tracker, pool, &tag, "backlog", 70_000, 10_000).await;
    let pass = tracker.relay(pool.clone()).run_once().await.unwrap();
    assert_eq!(
        pass.delivered, 1,
        "the byte budget holds one event: {pass:?}"
    );
    let status = tracker.outbox(pool).status().await.unwrap();
    assert_eq!(
        (status.pending, status.leased),
        (69_999, 0),
        "the rest is handed back: {status:?}"
    );
}

// A relay started before the outbox exists (relays and `outbox migrate` started together):
// every round failed with the driver's bare error ('relation "posthog_outbox" does not exist
// at line 1392' in the log, Error::Database to `run_once`), where the outbox's other
// operations say the table is missing and how to create it.

on_every_backend!(a_relay_without_an_outbox_says_how_to_create_it);

async fn a_relay_without_an_outbox_says_how_to_create_it<DB: Backend>(pool: &Pool<DB>, _url: &str) {
    let mock = MockPostHog::start().await;
    let tracker = committer(&mock);
    let relay = tracker.relay(pool.clone());
    for _ in 0..2 {
        let error = relay.run_once().await.unwrap_err();
        assert!(matches!(error, Error::OutboxMissing { .. }), "{error:?}");
    }
    assert!(matches!(
        relay.drain().await.unwrap_err(),
        Error::OutboxMissing { .. }
    ));
}

// The `relay` command started before the outbox exists (replicas starting before the
// application migrated) says so once, in the command's terms, keeps running, and delivers
// once the table is there.

on_every_backend!(a_relay_command_started_before_the_outbox_waits_for_it);

async fn a_relay_command_started_before_the_outbox_waits_for_it<DB: Backend>(
    pool: &Pool<DB>,
    url: &str,
) {
    let mock = MockPostHog::start().await;
    let tracker = committer(&mock);
    let log = StderrLog::new("relay-before-outbox.log");
    let mut relay = relay_command(url, &mock, "posthog_track=off")
        .stderr(log.file())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let said = log.wait_for("does not exist", WAIT).await;
    assert!(
        said.contains("warning: posthog_outbox does not exist in this database yet")
            && said.contains("posthog-track outbox migrate --database-url"),
        "{said}"
    );
    assert!(
        relay.try_wait().unwrap().is_none(),
        "the relay keeps running"
    );

    tracker.migrate(pool).await.unwrap();
    let tag = unique("before-outbox");
    let committed = commit_events(&tracker, pool, &tag, "later", 3, 3).await;
    while received(&mock, &tag).len() < committed.len() {
        assert!(started.elapsed() < WAIT, "the relay never delivered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    relay.kill().unwrap();
    relay.wait().unwrap();
    assert_exactly_delivered(&mock, &tag, &committed);
}

// A drain (what flush, shutdown and `relay --drain` run) while the database does not answer
// (here: another session holds a lock on the outbox; in production a partition or a hung
// server): its statements waited without end, so `drain_for(1 s)` never returned, and neither
// did a SIGTERM'd relay's shutdown. A drain ends at its timeout, whatever the database does.

on_every_backend!(a_drain_ends_at_its_timeout_while_the_database_hangs);

async fn a_drain_ends_at_its_timeout_while_the_database_hangs<DB: Backend>(
    pool: &Pool<DB>,
    _url: &str,
) {
    let mock = MockPostHog::start().await;
    let tracker = committer(&mock);
    tracker.migrate(pool).await.unwrap();
    let tag = unique("hung-database");
    commit_events(&tracker, pool, &tag, "behind_a_lock", 3, 3).await;
    let mut locker = pool.acquire().await.unwrap();
    let lock: &[&str] = match DB::DIALECT {
        Dialect::Postgres => &[
            "BEGIN",
            "LOCK TABLE posthog_outbox IN ACCESS EXCLUSIVE MODE",
        ],
        Dialect::MySql => &["LOCK TABLES posthog_outbox WRITE, posthog_outbox_dead WRITE"],
        Dialect::Sqlite => &["BEGIN IMMEDIATE"],
    };
    for statement in lock {
        DB::execute(&mut locker, sqlx::query(*statement))
            .await
            .unwrap();
    }
    let drained = tokio::time::timeout(
        WAIT,
        tracker
            .relay(pool.clone())
            .drain_for(Duration::from_secs(1)),
    )
    .await;
    let unlock = match DB::DIALECT {
        Dialect::MySql => "UNLOCK TABLES",
        Dialect::Postgres | Dialect::Sqlite => "ROLLBACK",
    };
    DB::execute(&mut locker, sqlx::query(unlock)).await.unwrap();
    drop(locker);
    let drained = drained.expect("the drain returned at its timeout, not when the lock went");
    assert!(matches!(drained, Err(Error::Timeout { .. })), "{drained:?}");
    assert_no_false_count(&drained.unwrap_err(), 3);
    tracker.relay(pool.clone()).drain().await.unwrap();
    assert_eq!(received(&mock, &tag).len(), 3);
}

// The same for a shutdown: after its drain it counted what was left in the outbox, a query
// that waited without end for the database, so shutdown(1 s) never returned either.

on_every_backend!(a_shutdown_ends_at_its_deadline_while_the_database_hangs);

async fn a_shutdown_ends_at_its_deadline_while_the_database_hangs<DB: Backend>(
    pool: &Pool<DB>,
    _url: &str,
) {
    let mock = MockPostHog::start().await;
    let tracker = tracker_for(&mock).build();
    tracker.migrate(pool).await.unwrap();
    let tag = unique("hung-shutdown");
    commit_events(&tracker, pool, &tag, "before_the_lock", 3, 3).await;
    tracker.flush().await.unwrap();
    let mut locker = pool.acquire().await.unwrap();
    let lock: &[&str] = match DB::DIALECT {
        Dialect::Postgres => &[
            "BEGIN",
            "LOCK TABLE posthog_outbox IN ACCESS EXCLUSIVE MODE",
        ],
        Dialect::MySql => &["LOCK TABLES posthog_outbox WRITE, posthog_outbox_dead WRITE"],
        Dialect::Sqlite => &["BEGIN IMMEDIATE"],
    };
    for statement in lock {
        DB::execute(&mut locker, sqlx::query(*statement))
            .await
            .unwrap();
    }
    let stopped = tokio::time::timeout(WAIT, tracker.shutdown(Duration::from_secs(1))).await;
    let unlock = match DB::DIALECT {
        Dialect::MySql => "UNLOCK TABLES",
        Dialect::Postgres | Dialect::Sqlite => "ROLLBACK",
    };
    DB::execute(&mut locker, sqlx::query(unlock)).await.unwrap();
    assert!(
        stopped.is_ok(),
        "the shutdown returned at its deadline, not when the lock went"
    );
    assert_eq!(received(&mock, &tag).len(), 3);
}

// And the `relay` command: stopped by SIGTERM while the database does not answer, it counted
// what was left with a query that waited without end, and never exited.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigterm_stops_the_relay_command_while_the_database_hangs() {
    let Some(url) = database_url("POSTGRES_URL") else {
        return;
    };
    let pool = posthog_track_tests::isolated_postgres(&url, "hung_sigterm").await;
    let url = posthog_track_tests::with_search_path(&url, "pt_hung_sigterm");
    let mock = MockPostHog::start().await;
    committer(&mock).migrate(&pool).await.unwrap();
    let mut locker = pool.acquire().await.unwrap();
    for statement in [
        "BEGIN",
        "LOCK TABLE posthog_outbox IN ACCESS EXCLUSIVE MODE",
    ] {
        sqlx::query(statement).execute(&mut *locker).await.unwrap();
    }
    let log = StderrLog::new("hung-sigterm.log");
    let mut relay = relay_command(&url, &mock, "posthog_track=warn")
        .args(["--shutdown-timeout", "1"])
        .stderr(log.file())
        .spawn()
        .unwrap();
    log.wait_for("relaying", WAIT).await;
    std::process::Command::new("kill")
        .args(["-TERM", &relay.id().to_string()])
        .status()
        .unwrap();
    let exited = exit_within(&mut relay, WAIT).await.is_some();
    if !exited {
        relay.kill().unwrap();
    }
    relay.wait().unwrap();
    sqlx::query("ROLLBACK").execute(&mut *locker).await.unwrap();
    assert!(
        exited,
        "the relay never exited after SIGTERM:\n{}",
        log.text()
    );
}

// And a flush that waits for another process's relay (external delivery): its queries of the
// outbox waited without end as well.

on_every_backend!(a_flush_for_an_external_relay_ends_while_the_database_hangs);

async fn a_flush_for_an_external_relay_ends_while_the_database_hangs<DB: Backend>(
    pool: &Pool<DB>,
    _url: &str,
) {
    let mock = MockPostHog::start().await;
    let tracker = tracker_for(&mock)
        .external_relay(true)
        .flush_timeout(Duration::from_secs(1))
        .build();
    tracker.migrate(pool).await.unwrap();
    commit_events(&tracker, pool, &unique("hung-flush"), "waiting", 3, 3).await;
    let mut locker = pool.acquire().await.unwrap();
    let lock: &[&str] = match DB::DIALECT {
        Dialect::Postgres => &[
            "BEGIN",
            "LOCK TABLE posthog_outbox IN ACCESS EXCLUSIVE MODE",
        ],
        Dialect::MySql => &["LOCK TABLES posthog_outbox WRITE, posthog_outbox_dead WRITE"],
        Dialect::Sqlite => &["BEGIN IMMEDIATE"],
    };
    for statement in lock {
        DB::execute(&mut locker, sqlx::query(*statement))
            .await
            .unwrap();
    }
    let flushed = tokio::time::timeout(WAIT, tracker.flush()).await;
    let unlock = match DB::DIALECT {
        Dialect::MySql => "UNLOCK TABLES",
        Dialect::Postgres | Dialect::Sqlite => "ROLLBACK",
    };
    DB::execute(&mut locker, sqlx::query(unlock)).await.unwrap();
    let flushed = flushed.expect("the flush returned at its timeout, not when the lock went");
    assert!(matches!(flushed, Err(Error::Timeout { .. })), "{flushed:?}");
    assert_no_false_count(&flushed.unwrap_err(), 3);
}

/// A wait cut off by a database that never answered could not count what was left: its
/// timeout said "0 event(s) not yet delivered" while `waiting` events sat in the outbox. It
/// must give the true count or say that it is unknown.
fn assert_no_false_count(error: &Error, waiting: u64) {
    let said = error.to_string();
    let Error::Timeout { pending, .. } = error else {
        panic!("not a timeout: {said}");
    };
    assert!(
        *pending == 0 || *pending == waiting,
        "{pending} counted, {waiting} waiting: {said}"
    );
    assert!(
        !said.contains(": 0 event(s)"),
        "claims none are left: {said}"
    );
    if *pending == 0 {
        assert!(
            said.contains("an unknown number of events not yet delivered"),
            "{said}"
        );
    }
}

// In-memory events beside an outbox that cannot drain: the queue gets its share of
// `shutdown`'s deadline, and what it gives up is reported.

on_every_backend!(shutdown_sends_the_queue_while_the_outbox_drains);
on_every_backend!(a_flush_that_fails_for_the_outbox_still_reports_in_memory_losses);

/// `shutdown` drained the outbox first and flushed the in-memory queue only with what was left
/// of the deadline: with an outbox that could not drain (PostHog failing its events) the
/// captured event, waiting for its batch, was never sent and was lost at the deadline, though
/// PostHog would have accepted it at once.
async fn shutdown_sends_the_queue_while_the_outbox_drains<DB: Backend>(
    pool: &Pool<DB>,
    _url: &str,
) {
    let mock = MockPostHog::start().await;
    mock.fail_events_where(503, |event| event["event"] == "stuck");
    let tracker = tracker_for(&mock)
        .flush_interval(Duration::from_secs(600))
        .build();
    tracker.migrate(pool).await.unwrap();
    let tag = unique("share");
    let stuck = commit_events(&tracker, pool, &tag, "stuck", 3, 3).await;
    let captured = tracker
        .capture(Event::new("captured").distinct_id(tag.clone()))
        .await
        .unwrap()
        .unwrap();
    let shutdown = tracker.shutdown(Duration::from_millis(1500)).await;
    assert_timed_out(shutdown, 3, "the outbox events wait");
    assert!(
        received(&mock, &tag).contains(&captured),
        "the captured event was lost at shutdown; stats {:?}",
        tracker.stats()
    );
    assert_eq!(tracker.stats().dropped(), 0, "{:?}", tracker.stats());
    let waiting = tracker.outbox(pool).status().await.unwrap().pending;
    assert_eq!(waiting, stuck.len() as i64, "the outbox events wait");
}

/// A flush whose outbox part failed (here: events committed through `Tracker::track` with no
/// relay running) returned that error, and the in-memory events given up in the same flush
/// were reported nowhere: the next flush said Ok.
async fn a_flush_that_fails_for_the_outbox_still_reports_in_memory_losses<DB: Backend>(
    pool: &Pool<DB>,
    _url: &str,
) {
    let mock = MockPostHog::start().await;
    mock.reject_events_where(|event| event["event"] == "refused");
    let tracker = tracker_for(&mock).build();
    tracker.migrate(pool).await.unwrap();
    let tag = unique("report");
    let mut tx = tracker.track(pool.begin().await.unwrap());
    tx.set_distinct_id(tag.clone());
    tx.capture(Event::new("waits").property("tag", tag.clone()))
        .unwrap();
    tx.commit().await.unwrap();
    tracker
        .capture(Event::new("refused").distinct_id(tag.clone()))
        .await
        .unwrap();
    let first = tracker.flush().await;
    assert!(
        matches!(first, Err(Error::NoRelay { .. } | Error::Timeout { .. })),
        "no relay delivers the committed event: {first:?}"
    );
    let said = first.unwrap_err().to_string();
    assert!(said.contains("1 in-memory event(s) were lost"), "{said}");
    assert_eq!(tracker.stats().dropped_rejected, 1, "{:?}", tracker.stats());
    tracker.start_relay(pool.clone()).unwrap();
    let second = tracker.flush().await;
    assert!(
        matches!(second, Err(Error::Undelivered { dropped: 1, .. })),
        "the refused event must be reported by a flush: {second:?}"
    );
    assert!(tracker.flush().await.is_ok(), "reported once");
}

on_every_backend!(a_flush_after_shutdown_says_what_waits_without_waiting);

/// After `shutdown` stopped the in-process relay, a flush took the outbox for an external
/// relay's: it waited its whole flush timeout (30 s by default) for a relay that does not run,
/// and then blamed `posthog-track relay`.
async fn a_flush_after_shutdown_says_what_waits_without_waiting<DB: Backend>(
    pool: &Pool<DB>,
    _url: &str,
) {
    flush_after_shutdown(pool, false).await;
}

on_every_backend!(a_flush_after_a_cancelled_shutdown_says_what_waits);

/// A shutdown cancelled during its final drain (wrapped in a shorter timeout, or a second
/// signal) had taken the relays and let them stop; a later flush then waited its whole flush
/// timeout for an "external relay".
async fn a_flush_after_a_cancelled_shutdown_says_what_waits<DB: Backend>(
    pool: &Pool<DB>,
    _url: &str,
) {
    flush_after_shutdown(pool, true).await;
}

/// Commits three events PostHog cannot take (503), shuts the tracker down (timing out, or
/// `cancelled` mid-drain), then flushes: the flush must say at once that the three wait in
/// the outbox because the tracker was shut down, not wait for an external relay.
async fn flush_after_shutdown<DB: Backend>(pool: &Pool<DB>, cancelled: bool) {
    let mock = MockPostHog::start().await;
    mock.set_outage(Some(Reply::Status(503)));
    let tracker = tracker_for(&mock)
        .flush_timeout(Duration::from_secs(60))
        .build();
    tracker.migrate(pool).await.unwrap();
    let tag = unique("after-shutdown");
    commit_events(&tracker, pool, &tag, "waits", 3, 3).await;
    if cancelled {
        let shutdown = tokio::time::timeout(
            Duration::from_millis(300),
            tracker.shutdown(Duration::from_secs(60)),
        )
        .await;
        assert!(shutdown.is_err(), "the shutdown was cancelled mid-drain");
    } else {
        let shutdown = tracker.shutdown(Duration::from_millis(300)).await;
        assert_timed_out(shutdown, 3, "shutdown");
    }
    let flushed = tokio::time::timeout(Duration::from_secs(10), tracker.flush()).await;
    let flushed =
        flushed.expect("a flush after shutdown waited 10 s for a relay that does not run");
    let error = assert_timed_out(flushed, 3, "flush after shutdown");
    assert!(!error.to_string().contains("external relay"), "{error}");
    assert!(error.to_string().contains("shut down"), "{error}");
}

// Flag values at the top of their range (`--lease 18446744073709551615`, the largest u64) are
// what an operator types for "never": the relay must deliver and exit cleanly, not panic on
// adding them to the clock with its events sent and still in the outbox.

on_every_backend!(a_relay_with_the_largest_flag_values_delivers_and_exits);

async fn a_relay_with_the_largest_flag_values_delivers_and_exits<DB: Backend>(
    pool: &Pool<DB>,
    url: &str,
) {
    let mock = MockPostHog::start().await;
    let tracker = committer(&mock);
    tracker.migrate(pool).await.unwrap();
    let tag = unique("huge_flags");
    let committed = commit_events(&tracker, pool, &tag, "huge_flags", 3, 3).await;
    let max = u64::MAX.to_string();
    let output = relay_command(url, &mock, "posthog_track=warn")
        .args(["--drain", "--timeout", "30", "--lease", &max])
        .args(["--linger-ms", &max, "--shutdown-timeout", &max])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{:?}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(received(&mock, &tag), committed);
    assert_eq!(tracker.outbox(pool).status().await.unwrap().pending, 0);
}

// The running relay (not --drain) with the same values, stopped by SIGTERM: it delivers, then
// exits 0 with nothing left in the outbox.

on_every_backend!(a_running_relay_with_the_largest_flag_values_stops_cleanly);

async fn a_running_relay_with_the_largest_flag_values_stops_cleanly<DB: Backend>(
    pool: &Pool<DB>,
    url: &str,
) {
    let mock = MockPostHog::start().await;
    let tracker = committer(&mock);
    tracker.migrate(pool).await.unwrap();
    let tag = unique("huge_running");
    let committed = commit_events(&tracker, pool, &tag, "huge_running", 3, 3).await;
    let max = u64::MAX.to_string();
    let log = StderrLog::new("huge-running.log");
    let mut relay = relay_command(url, &mock, "posthog_track=warn")
        .args([
            "--lease",
            &max,
            "--linger-ms",
            &max,
            "--shutdown-timeout",
            &max,
        ])
        .args(["--poll-interval-ms", &max, "--max-lag", &format!("{max}d")])
        .args(["--metrics-addr", "127.0.0.1:0"])
        .stderr(log.file())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while received(&mock, &tag).len() < committed.len()
        && started.elapsed() < WAIT
        && relay.try_wait().unwrap().is_none()
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    std::process::Command::new("kill")
        .args(["-TERM", &relay.id().to_string()])
        .status()
        .unwrap();
    let status = exit_within(&mut relay, WAIT.saturating_sub(started.elapsed())).await;
    let _ = relay.kill();
    let _ = relay.wait();
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}: {}",
        log.text()
    );
    assert_eq!(received(&mock, &tag), committed);
    assert_eq!(tracker.outbox(pool).status().await.unwrap().pending, 0);
}

// A second Ctrl-C (or SIGTERM) while the relay command delivers what is claimable after the
// first: the operator wants it gone now. It ignored every signal until its --shutdown-timeout
// ran out (here ten minutes: PostHog is down), and had to be killed. It stops at once, and
// nothing is lost: the events wait in the outbox for the next relay.

on_every_backend!(a_second_signal_stops_the_relay_command_at_once);

async fn a_second_signal_stops_the_relay_command_at_once<DB: Backend>(pool: &Pool<DB>, url: &str) {
    let mock = MockPostHog::start().await;
    mock.set_outage(Some(Reply::Status(503)));
    let tracker = committer(&mock);
    tracker.migrate(pool).await.unwrap();
    let tag = unique("second_signal");
    let committed = commit_events(&tracker, pool, &tag, "second_signal", 3, 3).await;
    let log = StderrLog::new("second-signal.log");
    let mut relay = relay_command(url, &mock, "posthog_track=warn")
        .args(["--shutdown-timeout", "600"])
        .stderr(log.file())
        .spawn()
        .unwrap();
    let signal = |name: &str| {
        std::process::Command::new("kill")
            .args([name, &relay.id().to_string()])
            .status()
            .unwrap()
    };
    let started = Instant::now();
    while mock.requests().is_empty() && started.elapsed() < WAIT {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !mock.requests().is_empty(),
        "the relay sent nothing:\n{}",
        log.text()
    );
    signal("-TERM");
    log.wait_for("stopping:", WAIT.saturating_sub(started.elapsed()))
        .await;
    signal("-INT");
    let status = exit_within(&mut relay, WAIT.saturating_sub(started.elapsed())).await;
    let _ = relay.kill();
    let _ = relay.wait();
    let said = log.text();
    let status = status.unwrap_or_else(|| panic!("still running after a second signal:\n{said}"));
    assert!(
        !status.success(),
        "a forced stop is not a clean one:\n{said}"
    );
    assert!(said.contains("stopped at once"), "{said}");
    // Nothing lost: a relay that can deliver sends every event.
    mock.set_outage(None);
    let drained = relay_command(url, &mock, "posthog_track=warn")
        .args(["--drain", "--timeout", "120"])
        .output()
        .unwrap();
    assert!(
        drained.status.success(),
        "{}",
        String::from_utf8_lossy(&drained.stderr)
    );
    assert_eq!(received(&mock, &tag), committed);
}

// The same with the two signals sent back to back, as a supervisor or an impatient operator
// does: the command listened for the second only once it had printed "stopping:", and a signal
// that came before was lost (a full test run under load lost the one sent just after that
// line), so the command ran on for its whole --shutdown-timeout. It listens from the start.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_signals_at_once_stop_the_relay_command_at_once() {
    let (pool, url, dir) = posthog_track_tests::sqlite_file("two_signals").await;
    let mock = MockPostHog::start().await;
    mock.set_outage(Some(Reply::Status(503)));
    let tracker = committer(&mock);
    tracker.migrate(&pool).await.unwrap();
    let tag = unique("two_signals");
    commit_events(&tracker, &pool, &tag, "two_signals", 3, 3).await;
    let log = StderrLog::new("two-signals.log");
    let mut relay = relay_command(&url, &mock, "posthog_track=warn")
        .args(["--shutdown-timeout", "600"])
        .stderr(log.file())
        .spawn()
        .unwrap();
    // Its relay at work (its first request refused), so that its stop has something to do.
    let said = log.wait_for("relaying", WAIT).await;
    assert!(
        said.contains("relaying"),
        "the relay never started:\n{said}"
    );
    let started = Instant::now();
    while mock.requests().is_empty() && started.elapsed() < WAIT {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The shell's own `kill`, twice in one process: microseconds apart.
    let pid = relay.id();
    std::process::Command::new("sh")
        .args(["-c", &format!("kill -TERM {pid} && kill -INT {pid}")])
        .status()
        .unwrap();
    let status = exit_within(&mut relay, Duration::from_secs(30)).await;
    let _ = relay.kill();
    let _ = relay.wait();
    let said = log.text();
    pool.close().await;
    let _ = std::fs::remove_dir_all(&dir);
    let status = status.unwrap_or_else(|| panic!("still running 30 s after two signals:\n{said}"));
    assert!(!status.success(), "a forced stop:\n{said}");
    assert!(said.contains("stopped at once"), "{said}");
}

// The relay command's relay task panicked (a bug): the command went on running, /healthz and
// all, with nothing delivering, and a supervisor saw nothing wrong. It now says so loudly and
// exits non-zero, so that the supervisor restarts it. The panic is provoked by
// POSTHOG_TRACK_TEST_RELAY_PANIC, which only debug builds of the command read (nothing from
// the database or PostHog may panic the relay, so no input can stand in for it).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_command_exits_when_its_relay_task_panics() {
    let (pool, url, dir) = posthog_track_tests::sqlite_file("relay_panics").await;
    let mock = MockPostHog::start().await;
    let tracker = committer(&mock);
    tracker.migrate(&pool).await.unwrap();
    let tag = unique("relay_panics");
    commit_events(&tracker, &pool, &tag, "relay_panics", 2, 2).await;
    let log = StderrLog::new("relay-panics.log");
    let mut relay = relay_command(&url, &mock, "posthog_track=info")
        .args(["--metrics-addr", "127.0.0.1:0"])
        .env("POSTHOG_TRACK_TEST_RELAY_PANIC", "1")
        .stderr(log.file())
        .spawn()
        .unwrap();
    let status = exit_within(&mut relay, Duration::from_secs(30)).await;
    let _ = relay.kill();
    let _ = relay.wait();
    let said = log.text();
    pool.close().await;
    let _ = std::fs::remove_dir_all(&dir);
    assert!(said.contains("panics after a round"), "no panic:\n{said}");
    let status = status
        .unwrap_or_else(|| panic!("still running 30 s after its relay task panicked:\n{said}"));
    assert!(
        !status.success(),
        "a dead relay is not a clean stop:\n{said}"
    );
    assert!(
        said.contains("error: the relay stopped by itself"),
        "{said}"
    );
}

// The test-only panic switch above was read by the library: any debug build linking it (an
// application's, in development) panicked its relay after a round whenever
// POSTHOG_TRACK_TEST_RELAY_PANIC was set in its environment. Only the `posthog-track`
// command reads it now. Checked in a process of its own (this test binary run again, for the
// one test below): set here, the variable would reach every relay of this binary's tests.

#[test]
fn the_relay_panic_switch_is_not_read_by_the_library() {
    let inner = "a_relay_runs_in_a_process_with_the_panic_switch_set";
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([inner, "--exact", "--ignored", "--nocapture"])
        .env("POSTHOG_TRACK_TEST_RELAY_PANIC", "1")
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        said.contains("1 passed"),
        "the inner test did not run:\n{said}"
    );
    assert!(output.status.success(), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by the_relay_panic_switch_is_not_read_by_the_library, in a process of its own"]
async fn a_relay_runs_in_a_process_with_the_panic_switch_set() {
    assert!(
        std::env::var_os("POSTHOG_TRACK_TEST_RELAY_PANIC").is_some(),
        "run by the_relay_panic_switch_is_not_read_by_the_library, which sets the switch"
    );
    let (pool, _url, dir) = posthog_track_tests::sqlite_file("panic_switch").await;
    let mock = MockPostHog::start().await;
    let tracker = tracker_for(&mock)
        .flush_timeout(Duration::from_secs(5))
        .build();
    tracker.migrate(&pool).await.unwrap();
    tracker.start_relay(pool.clone()).unwrap();
    let tag = unique("panic_switch");
    let mut committed = commit_events(&tracker, &pool, &tag, "first", 2, 2).await;
    tracker.flush().await.unwrap();
    // Rounds after the first: the switch panicked the relay after any of them.
    tokio::time::sleep(Duration::from_millis(300)).await;
    committed.extend(commit_events(&tracker, &pool, &tag, "second", 2, 2).await);
    let flushed = tracker.flush().await;
    let state = tracker.relay_state();
    pool.close().await;
    let _ = std::fs::remove_dir_all(&dir);
    flushed.unwrap();
    assert_ne!(state, Some(posthog_track::relay::RelayState::Stopped));
    assert_eq!(received(&mock, &tag), committed);
}

// An outbox row whose `failures` is at the top of BIGINT (edited by hand, or copied from
// another database): the relay's blame, `failures + 1`, overflowed, which panics in debug
// builds (the relay task died) and wrapped to a negative count in release ones. The count
// now stops at the top, and the row is dead-lettered at its first blamed failure.

on_every_backend!(failures_at_the_top_of_bigint_dead_letter_the_row);

async fn failures_at_the_top_of_bigint_dead_letter_the_row<DB: Backend>(
    pool: &Pool<DB>,
    _url: &str,
) {
    let backlog = poison_first(pool, "top_failures", 20, 10).await;
    posthog_track_tests::execute(
        pool,
        format!(
            "UPDATE posthog_outbox SET failures = 9223372036854775807 \
             WHERE event = 'poison' AND distinct_id = '{}'",
            backlog.tag
        ),
    )
    .await;
    backlog.drain_to_one_dead_letter(pool).await;
}

// A row whose `attempts` is at the top of BIGINT, or whose `created_at` is at its bottom (rows
// edited by hand, or copied from another database): the claim's `attempts + 1` and `now -
// created_at` overflowed in the database ("bigint out of range" on PostgreSQL, MariaDB's
// "BIGINT value is out of range", a REAL on SQLite that no longer decodes as an integer), so
// every claim failed and not one event of the outbox was delivered, however many rounds ran.
// The counts now stop at the top and an age that cannot be computed is unknown: every event
// is delivered once.

on_every_backend!(counts_at_the_ends_of_bigint_hold_nothing_back);

async fn counts_at_the_ends_of_bigint_hold_nothing_back<DB: Backend>(pool: &Pool<DB>, _url: &str) {
    let mock = MockPostHog::start().await;
    let tag = unique("top_attempts");
    let tracker = tracker_for(&mock)
        .flush_timeout(WAIT)
        .external_relay(true)
        .build();
    tracker.migrate(pool).await.unwrap();
    let mut committed = commit_events(&tracker, pool, &tag, "odd", 2, 1).await;
    committed.extend(commit_events(&tracker, pool, &tag, "good", 20, 10).await);
    for (column, value, order) in [
        ("attempts", "9223372036854775807", "MIN"),
        ("created_at", "-9223372036854775808", "MAX"),
    ] {
        // The first odd row gets the first value, the second the second.
        posthog_track_tests::execute(
            pool,
            format!(
                "UPDATE posthog_outbox SET {column} = {value} WHERE id = \
                 (SELECT id FROM (SELECT {order}(id) AS id FROM posthog_outbox \
                  WHERE event = 'odd' AND distinct_id = '{tag}') AS odd)"
            ),
        )
        .await;
    }

    let relay = tracker.relay(pool.clone());
    tokio::time::timeout(WAIT, relay.drain())
        .await
        .expect("the drain ends")
        .unwrap();
    assert_exactly_delivered(&mock, &tag, &committed);
    let status = tracker.outbox(pool).status().await.unwrap();
    assert_eq!((status.pending, status.dead), (0, 0));
}
