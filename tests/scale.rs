//! Delivery under load and across processes: a busy relay lingers so that its batches fill,
//! a lone event still leaves at once, and on PostgreSQL a standalone relay hears commits of
//! other processes (`LISTEN`/`NOTIFY`) instead of waiting for its next poll.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use posthog_track::testing::{MockPostHog, Reply};
use posthog_track::{Backend, Event, Tracker};
use posthog_track_tests::{
    commit_events, database_url, isolated_postgres, on_every_backend, received, relay_command,
    tracker_for, unique, with_search_path,
};
use sqlx::Pool;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

/// The PostgreSQL tests below notify one channel of one database: one at a time, so that each
/// counts only its own notifications.
static NOTIFYING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The PostgreSQL URL and a pool on a schema of its own for `scenario`, with the `NOTIFYING`
/// lock held; `None` when PostgreSQL is not configured.
async fn notifying_postgres(
    scenario: &str,
) -> Option<(String, sqlx::PgPool, tokio::sync::MutexGuard<'static, ()>)> {
    let url = database_url("POSTGRES_URL")?;
    let alone = NOTIFYING.lock().await;
    let pool = isolated_postgres(&url, scenario).await;
    Some((url, pool, alone))
}

/// Commits one event named `name` for `tag` in a transaction of its own; returns its uuid.
async fn commit_one<DB: Backend>(
    tracker: &Tracker,
    pool: &Pool<DB>,
    tag: &str,
    name: &str,
) -> Uuid {
    let mut tx = tracker.begin(pool).await.unwrap();
    tx.set_distinct_id(tag.to_owned());
    tx.capture(Event::new(name.to_owned())).unwrap();
    let uuid = tx.staged()[0].uuid;
    tx.commit().await.unwrap();
    uuid
}

/// Waits until `mock` has every event of `expected` for `tag`; returns how long it took.
async fn wait_for(
    mock: &MockPostHog,
    tag: &str,
    expected: &BTreeSet<Uuid>,
    within: Duration,
) -> Duration {
    let started = Instant::now();
    while !received(mock, tag).is_superset(expected) {
        assert!(
            started.elapsed() < within,
            "only {} of {} events arrived within {within:?}",
            received(mock, tag).intersection(expected).count(),
            expected.len()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    started.elapsed()
}

/// Events per accepted request, over the requests `mock` received.
fn batch_sizes(mock: &MockPostHog) -> Vec<usize> {
    mock.requests()
        .iter()
        .filter(|request| request.status == 200 && request.event_count > 0)
        .map(|request| request.event_count)
        .collect()
}

// A steady stream of single-event commits, as many writers make: without a linger the relay,
// woken by every commit, sends a request per handful of events; with one it sends a request
// per linger at most, carrying everything committed meanwhile.

/// A mock, and a tracker delivering to it whose relay lingers `linger` and polls fast.
async fn lingering<DB: Backend>(pool: &Pool<DB>, linger: Duration) -> (MockPostHog, Tracker) {
    let mock = MockPostHog::start().await;
    let tracker = tracker_for(&mock)
        .linger(linger)
        .poll_interval(Duration::from_millis(10), Duration::from_millis(100))
        .build();
    tracker.migrate(pool).await.unwrap();
    (mock, tracker)
}

on_every_backend!(lingering_relay_fills_its_batches_under_load);

async fn lingering_relay_fills_its_batches_under_load<DB: Backend>(pool: &Pool<DB>, _url: &str) {
    const EVENTS: usize = 300;
    let linger = Duration::from_millis(100);
    let mut means = Vec::new();
    for linger in [Duration::ZERO, linger] {
        let (mock, tracker) = lingering(pool, linger).await;
        let tag = unique("stream");
        let mut committed = BTreeSet::new();
        let started = Instant::now();
        for _ in 0..EVENTS {
            committed.insert(commit_one(&tracker, pool, &tag, "streamed").await);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let streamed_for = started.elapsed();
        wait_for(&mock, &tag, &committed, WAIT).await;
        let batches = batch_sizes(&mock);
        assert_eq!(
            batches.iter().sum::<usize>(),
            EVENTS,
            "each event sent once"
        );
        let mean = EVENTS as f64 / batches.len() as f64;
        eprintln!(
            "linger {linger:?}: {EVENTS} events committed over {streamed_for:?} arrived in {} \
             requests (mean {mean:.1} events per request) | {}",
            batches.len(),
            DB::DIALECT.name()
        );
        if !linger.is_zero() {
            // A claim per linger at most, plus the round of the first (lone) event and the
            // one after the stream ended.
            let bound = (streamed_for.as_secs_f64() / linger.as_secs_f64()).ceil() as usize + 3;
            assert!(
                batches.len() <= bound,
                "{} requests over {streamed_for:?} with a {linger:?} linger (at most {bound})",
                batches.len()
            );
        }
        tracker.shutdown(Duration::from_secs(10)).await.unwrap();
        means.push(mean);
    }
    assert!(
        means[1] > 2.0 * means[0],
        "the linger fills batches: {:.1} events per request with it, {:.1} without",
        means[1],
        means[0]
    );
}

// The linger is for a busy outbox only: an event committed after a quiet spell is claimed as
// soon as the commit wakes the relay, before and after a busy spell.

on_every_backend!(a_lone_event_leaves_at_once_despite_a_long_linger);

async fn a_lone_event_leaves_at_once_despite_a_long_linger<DB: Backend>(
    pool: &Pool<DB>,
    _url: &str,
) {
    let linger = Duration::from_secs(3);
    let (mock, tracker) = lingering(pool, linger).await;
    let tag = unique("lone");

    let first = BTreeSet::from([commit_one(&tracker, pool, &tag, "first").await]);
    let took_first = wait_for(&mock, &tag, &first, WAIT).await;
    assert!(
        took_first < Duration::from_secs(1),
        "the first event took {took_first:?}"
    );

    // A busy spell: the relay delivers it, then lingers, finds nothing more and goes idle.
    let burst = commit_events(&tracker, pool, &tag, "burst", 50, 50).await;
    wait_for(&mock, &tag, &burst, WAIT).await;
    tokio::time::sleep(linger + Duration::from_millis(500)).await;

    let lone = BTreeSet::from([commit_one(&tracker, pool, &tag, "lone").await]);
    let took = wait_for(&mock, &tag, &lone, WAIT).await;
    eprintln!(
        "lone events with a {linger:?} linger: first {took_first:?}, after a busy spell \
         {took:?} | {}",
        DB::DIALECT.name()
    );
    assert!(
        took < Duration::from_secs(1),
        "an event after a quiet spell took {took:?} (linger {linger:?})"
    );
    tracker.shutdown(Duration::from_secs(10)).await.unwrap();
}

/// Kills the child process when dropped, so that a failed assertion leaves no relay behind.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A standalone `posthog-track relay` that polls only once a minute still delivers a commit of
/// another process within moments: the commit notifies it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standalone_relay_on_postgres_hears_a_commit_before_its_poll() {
    let scenario = "notify_wakes_relay";
    let Some((url, pool, _alone)) = notifying_postgres(scenario).await else {
        return;
    };
    let url = with_search_path(&url, &format!("pt_{scenario}"));
    let mock = MockPostHog::start().await;
    let committer = tracker_for(&mock).external_relay(true).build();
    committer.migrate(&pool).await.unwrap();
    let tag = unique("notified");

    // Committed before the relay starts: its first round (at start) delivers it, which says
    // it is up.
    let before = BTreeSet::from([commit_one(&committer, &pool, &tag, "before").await]);
    let poll = Duration::from_secs(60);
    let _relay = Killed(
        relay_command(&url, &mock, "posthog_track=warn")
            .args(["--poll-interval-ms", &poll.as_millis().to_string()])
            .spawn()
            .unwrap(),
    );
    wait_for(&mock, &tag, &before, Duration::from_secs(30)).await;
    // Now idle until its next poll, a minute away.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let lone = BTreeSet::from([commit_one(&committer, &pool, &tag, "lone").await]);
    let took = wait_for(&mock, &tag, &lone, Duration::from_secs(10)).await;
    eprintln!("a standalone relay polling every {poll:?} delivered a commit in {took:?}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

/// Notifications are sent by processes that run no relay for the database only, at most one
/// per commit, and throttled under load (every notifying commit is serialised by PostgreSQL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_notify_other_processes_sparingly() {
    let scenario = "notify_sparingly";
    let Some((url, pool, _alone)) = notifying_postgres(scenario).await else {
        return;
    };
    let mock = MockPostHog::start().await;
    let mut listener = sqlx::postgres::PgListener::connect(&url).await.unwrap();
    listener
        .listen(posthog_track::outbox::WAKE_CHANNEL)
        .await
        .unwrap();

    // With its own relay, a process wakes it in memory: no notification.
    let relaying = tracker_for(&mock).build();
    relaying.migrate(&pool).await.unwrap();
    let tag = unique("sparing");
    commit_events(&relaying, &pool, &tag, "own_relay", 5, 1).await;
    relaying.shutdown(Duration::from_secs(10)).await.unwrap();
    assert_eq!(count_notifications(&mut listener).await, 0);

    // Without one: one notification for a commit of many events, and under a stream of
    // commits at most one per 25 ms.
    let external = tracker_for(&mock).external_relay(true).build();
    commit_events(&external, &pool, &tag, "many", 200, 200).await;
    assert_eq!(count_notifications(&mut listener).await, 1);
    tokio::time::sleep(Duration::from_millis(30)).await;
    let started = Instant::now();
    let commits = 100;
    commit_events(&external, &pool, &tag, "stream", commits, 1).await;
    let elapsed = started.elapsed();
    let count = count_notifications(&mut listener).await;
    let bound = (elapsed.as_millis() / 25 + 1) as usize;
    eprintln!("{commits} commits in {elapsed:?} sent {count} notifications (at most {bound})");
    assert!(
        count >= 1 && count <= bound.min(commits),
        "{count} notifications"
    );
}

/// Notifications that arrived by now (waits briefly for stragglers).
async fn count_notifications(listener: &mut sqlx::postgres::PgListener) -> usize {
    let mut count = 0;
    while let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(300), listener.recv()).await {
        count += 1;
    }
    count
}

/// Commits 20 events named `name` under a fresh tag, and starts a relay pass whose request
/// `mock` answers only after `delay`; returns 300 ms later, with the pass mid-send. Returns the
/// tag, the uuids committed and the pass.
async fn send_slowly(
    tracker: &Tracker,
    pool: &sqlx::PgPool,
    mock: &MockPostHog,
    name: &str,
    delay: Duration,
) -> (
    String,
    BTreeSet<Uuid>,
    tokio::task::JoinHandle<posthog_track::Result<posthog_track::relay::Pass>>,
) {
    let tag = unique(name);
    let committed = commit_events(tracker, pool, &tag, name, 20, 20).await;
    mock.script([Reply::Delay(delay, Box::new(Reply::Accept))]);
    let sending = tracker.relay(pool.clone());
    let pass = tokio::spawn(async move { sending.run_once().await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    (tag, committed, pass)
}

/// PostgreSQL: a claim held by the sending transaction writes nothing into the rows (a written
/// lease updates every one), still fences other relays off while the send is in flight, and
/// ends with its relay: the rows of a relay that dies mid-send are claimable again at once,
/// not after the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_claims_are_held_by_the_sending_transaction() {
    let Some(url) = database_url("POSTGRES_URL") else {
        return;
    };
    let pool = isolated_postgres(&url, "held_claims").await;
    for held in [false, true] {
        let mock = MockPostHog::start().await;
        let tracker = tracker_for(&mock)
            .held_claims(held)
            .lease(Duration::from_secs(60))
            .external_relay(true)
            .build();
        tracker.migrate(&pool).await.unwrap();
        let (tag, committed, in_flight) =
            send_slowly(&tracker, &pool, &mock, "held", Duration::from_millis(1000)).await;
        let written: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM posthog_outbox WHERE leased_until IS NOT NULL OR attempts > 0",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        let other = tracker.relay(pool.clone()).run_once().await.unwrap();
        assert_eq!(
            other.claimed, 0,
            "held {held}: the claim fences other relays off"
        );
        let pass = in_flight.await.unwrap().unwrap();
        assert_eq!(pass.delivered, 20);
        assert_eq!(received(&mock, &tag), committed);
        assert!(tracker.outbox(&pool).is_empty().await.unwrap());
        if held {
            assert_eq!(written, 0, "a held claim writes nothing into its rows");
        } else {
            assert_eq!(written, 20, "a written lease updates every claimed row");
        }

        if held {
            let (tag, committed, dying) = send_slowly(
                &tracker,
                &pool,
                &mock,
                "held_crash",
                Duration::from_secs(10),
            )
            .await;
            dying.abort(); // dies mid-send, holding the claim
            let _ = dying.await;
            let started = Instant::now();
            tracker
                .relay(pool.clone())
                .drain_for(Duration::from_secs(10))
                .await
                .unwrap();
            assert!(received(&mock, &tag).is_superset(&committed));
            eprintln!(
                "rows of a relay that died mid-send were resent after {:?} (lease 60 s)",
                started.elapsed()
            );
        }
        tracker.shutdown(Duration::ZERO).await.ok();
    }
}

// Without notifications (MySQL/MariaDB, SQLite), an idle standalone relay polls ever less
// often, but never less often than every `max_poll` (2 s by default): a commit after a long
// quiet spell still arrives within about that.

on_every_backend!(an_idle_standalone_relay_polls_within_its_bound);

async fn an_idle_standalone_relay_polls_within_its_bound<DB: Backend>(pool: &Pool<DB>, url: &str) {
    let _alone = NOTIFYING.lock().await;
    let mock = MockPostHog::start().await;
    let committer = tracker_for(&mock).external_relay(true).build();
    committer.migrate(pool).await.unwrap();
    let tag = unique("polled");
    let before = BTreeSet::from([commit_one(&committer, pool, &tag, "before").await]);
    let _relay = Killed(
        relay_command(url, &mock, "posthog_track=warn")
            .spawn()
            .unwrap(),
    );
    wait_for(&mock, &tag, &before, Duration::from_secs(30)).await;
    // Long enough for the poll interval to have grown to its bound.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let lone = BTreeSet::from([commit_one(&committer, pool, &tag, "lone").await]);
    let took = wait_for(&mock, &tag, &lone, Duration::from_secs(30)).await;
    eprintln!(
        "an idle standalone relay delivered a commit in {took:?} | {}",
        DB::DIALECT.name()
    );
    assert!(
        took < Duration::from_secs(3),
        "took {took:?} (max_poll 2 s)"
    );
}
