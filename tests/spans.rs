//! The tracing spans of a tracked commit and of a relay round, with their counts.
//!
//! A test binary of its own. tracing keeps each callsite's interest process-wide, shared by
//! every test thread: run in parallel with `ops.rs`'s metrics scenario in one process, this
//! test's scoped subscriber saw no span at all, every time (run one after the other, both
//! passed). In a process of its own it no longer depends on what other tests' threads do.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use posthog_track::testing::MockPostHog;
use posthog_track_tests::{commit_events, sqlite_file, tracker_for, unique};

/// Spans seen by a subscriber: name -> fields recorded (at creation or later).
#[derive(Clone, Default)]
struct Spans(Arc<Mutex<BTreeMap<String, BTreeMap<String, String>>>>);

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl<S> tracing_subscriber::Layer<S> for Spans
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let name = attrs.metadata().name().to_owned();
        let mut spans = self.0.lock().unwrap();
        let fields = spans.entry(name.clone()).or_default();
        attrs.record(&mut Fields(fields));
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(name);
        }
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let Some(span) = ctx.span(id) else { return };
        let Some(name) = span.extensions().get::<String>().cloned() else {
            return;
        };
        let mut spans = self.0.lock().unwrap();
        values.record(&mut Fields(spans.entry(name).or_default()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_claim_send_and_settle_have_spans_with_counts() {
    use tracing::instrument::WithSubscriber as _;
    use tracing_subscriber::layer::SubscriberExt as _;

    let spans = Spans::default();
    let subscriber = tracing_subscriber::registry().with(spans.clone());
    let mock = MockPostHog::start().await;
    let (pool, _url, dir) = sqlite_file("ops-spans").await;
    // External delivery: the relay rounds run here, inside the subscriber.
    let tracker = tracker_for(&mock).external_relay(true).build();
    tracker.migrate(&pool).await.unwrap();
    let tag = unique("spans");
    async {
        commit_events(&tracker, &pool, &tag, "spanned", 4, 4).await;
        tracker.relay(pool.clone()).drain().await.unwrap();
    }
    .with_subscriber(subscriber)
    .await;
    let spans = spans.0.lock().unwrap().clone();
    let field = |span: &str, field: &str| {
        spans
            .get(span)
            .and_then(|fields| fields.get(field))
            .cloned()
            .unwrap_or_else(|| panic!("{span}.{field} missing: {spans:#?}"))
    };
    assert_eq!(field("posthog_track.commit", "events"), "4");
    assert_eq!(field("posthog_track.commit", "backend"), "\"SQLite\"");
    assert_eq!(field("posthog_track.claim", "rows"), "4");
    assert_eq!(field("posthog_track.send", "events"), "4");
    assert_eq!(field("posthog_track.settle", "delivered"), "4");
    assert_eq!(field("posthog_track.settle", "dead"), "0");
    pool.close().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// The start of the statement that counts the events left up to an id (and when the first can
/// be claimed): it reads every row it counts.
const PENDING_COUNT: &str = "SELECT COUNT(*), COALESCE(MIN(CASE";

/// Statements seen by a subscriber whose text contains `needle` (sqlx logs each statement
/// it runs as an event of target `sqlx::query`, with its text in `db.statement`).
#[derive(Clone)]
struct Statements {
    needle: &'static str,
    seen: Arc<Mutex<usize>>,
}

struct Statement(Option<String>);

impl tracing::field::Visit for Statement {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "db.statement" {
            self.0 = Some(value.to_owned());
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "db.statement" {
            self.0 = Some(format!("{value:?}"));
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Statements {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if event.metadata().target() != "sqlx::query" {
            return;
        }
        let mut statement = Statement(None);
        event.record(&mut statement);
        if statement.0.is_some_and(|sql| sql.contains(self.needle)) {
            *self.seen.lock().unwrap() += 1;
        }
    }
}

/// Draining a backlog counted the events left after every round, a statement that reads every
/// row left up to the drain's newest id: a drain's work grew with the square of its backlog
/// (100,000 events on SQLite: 23 us of CPU per event delivered, against 5). Counted here on
/// PostgreSQL, whose statements are logged on the drain's own task (SQLite's run on sqlx's
/// worker thread, outside this test's subscriber).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_a_backlog_does_not_recount_it_after_every_round() {
    use tracing::instrument::WithSubscriber as _;
    use tracing_subscriber::layer::SubscriberExt as _;

    let Some(url) = posthog_track_tests::database_url("POSTGRES_URL") else {
        return;
    };
    let pool = posthog_track_tests::isolated_postgres(&url, "drain_counts").await;
    let mock = MockPostHog::start().await;
    let tracker = tracker_for(&mock)
        .external_relay(true)
        .batch_size(50)
        .build();
    tracker.migrate(&pool).await.unwrap();
    let tag = unique("drain-counts");
    commit_events(&tracker, &pool, &tag, "backlog", 2_000, 500).await;

    let counts = Statements {
        needle: PENDING_COUNT,
        seen: Arc::default(),
    };
    let subscriber = tracing_subscriber::registry().with(counts.clone());
    async { tracker.relay(pool.clone()).drain().await.unwrap() }
        .with_subscriber(subscriber)
        .await;
    assert_eq!(mock.events().len(), 2_000, "every event delivered");
    let seen = *counts.seen.lock().unwrap();
    // 40 rounds of 50: one count after the first round and one at the end (a round that
    // claims the last rows may be followed by one more), not one per round.
    assert!(
        (1..=4).contains(&seen),
        "{seen} counting statements for a drain of 40 rounds"
    );
}

/// A `flush` waiting for an external relay asked every 100 ms how many events were left, a
/// count of every row left: with a backlog of millions (an outage just over, ten replicas
/// shutting down) each waiting process kept the database scanning it. It now asks whether any
/// is left (one index probe) and counts only when it gives up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_flush_does_not_count_the_backlog_on_every_poll() {
    use tracing::instrument::WithSubscriber as _;
    use tracing_subscriber::layer::SubscriberExt as _;

    let Some(url) = posthog_track_tests::database_url("POSTGRES_URL") else {
        return;
    };
    let pool = posthog_track_tests::isolated_postgres(&url, "flush_counts").await;
    // Each request answered after 150 ms: six batches keep the flush waiting about a second.
    let mock = posthog_track_tests::slow_mock(std::time::Duration::from_millis(150)).await;
    let tracker = tracker_for(&mock)
        .external_relay(true)
        .batch_size(50)
        .build();
    tracker.migrate(&pool).await.unwrap();
    let tag = unique("flush-counts");
    commit_events(&tracker, &pool, &tag, "waiting", 300, 300).await;
    // The external relay, outside the subscriber.
    let relay = tokio::spawn({
        let relay = tracker.relay(pool.clone());
        async move { relay.drain().await }
    });

    let counts = Statements {
        needle: PENDING_COUNT,
        seen: Arc::default(),
    };
    let subscriber = tracing_subscriber::registry().with(counts.clone());
    async { tracker.flush().await.unwrap() }
        .with_subscriber(subscriber)
        .await;
    relay.await.unwrap().unwrap();
    assert_eq!(mock.events().len(), 300, "every event delivered");
    let seen = *counts.seen.lock().unwrap();
    assert_eq!(
        seen, 0,
        "{seen} counts of the backlog while the flush waited"
    );
}

/// A plain-http host to another machine is warned about under the name it was set by: one
/// given in code (`.host(...)`) was called POSTHOG_HOST, sending the reader to an environment
/// that does not hold it.
#[test]
fn a_plain_http_host_is_warned_about_under_the_name_it_was_set_by() {
    use tracing_subscriber::layer::SubscriberExt as _;

    let warnings = posthog_track_tests::LogLines::at(tracing::Level::WARN);
    let subscriber = tracing_subscriber::registry().with(warnings.clone());
    tracing::subscriber::with_default(subscriber, || {
        let _tracker = posthog_track::Tracker::builder()
            .api_key("phc_test")
            .host("http://10.0.0.5:8000")
            .unwrap()
            .build();
    });
    let seen = warnings.take();
    let plain: Vec<&String> = seen
        .iter()
        .filter(|message| message.contains("plain http://"))
        .collect();
    assert_eq!(plain.len(), 1, "{seen:?}");
    assert!(
        plain[0].contains("`.host(...)`") && !plain[0].contains("POSTHOG_HOST"),
        "{seen:?}"
    );
}

#[derive(Debug, Clone, posthog_track::TrackedModel)]
#[tracked(
    table = "drafts",
    distinct_id = owner,
    table_variant(flag = "drafts-v2", variant = "test", table = "drafts_v2")
)]
struct Draft {
    #[tracked(key, property)]
    id: String,
    #[tracked(property)]
    owner: String,
}

/// A routed write in a dry run (no key, no definitions) cannot ask PostHog: it falls back to
/// the default table with the reason. It also warned that it "asks PostHog inside an open
/// transaction", which it never did.
#[tokio::test]
async fn a_dry_run_does_not_warn_of_asking_posthog_in_a_transaction() {
    use posthog_track::TrackedModel as _;
    use tracing::instrument::WithSubscriber as _;
    use tracing_subscriber::layer::SubscriberExt as _;

    let pool = posthog_track_examples::memory_database().await.unwrap();
    sqlx::query("CREATE TABLE drafts (id TEXT PRIMARY KEY, owner TEXT NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    let mock = MockPostHog::start().await;
    // A dry run, then a tracker with a key and no definitions, which does ask PostHog.
    for (tracker, asks) in [
        (posthog_track::Tracker::builder().build(), false),
        (tracker_for(&mock).build(), true),
    ] {
        tracker.migrate(&pool).await.unwrap();
        let warnings = posthog_track_tests::LogLines::at(tracing::Level::WARN);
        let subscriber = tracing_subscriber::registry().with(warnings.clone());
        async {
            let mut tx = tracker.begin(&pool).await.unwrap();
            Draft {
                id: unique("draft"),
                owner: "ada".into(),
            }
            .insert(&mut tx)
            .await
            .unwrap();
            tx.commit().await.unwrap();
        }
        .with_subscriber(subscriber)
        .await;
        let seen = warnings.take();
        assert!(
            seen.iter().any(|message| message.contains("default table")),
            "the fallback is warned about: {seen:?}"
        );
        let warned = seen
            .iter()
            .filter(|message| message.contains("inside an open transaction"))
            .count();
        assert_eq!(warned, usize::from(asks), "{seen:?}");
    }
}
