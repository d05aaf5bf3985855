//! Commits: a tracked transaction's rows and events commit together or not at all, with every
//! value in the outbox exactly as staged, and leave nothing open or logged on the connection
//! afterwards. (These guard against a one-round-trip commit done wrong: one was built, measured
//! and reverted; BENCHMARKS.md says why.)

use std::sync::{Arc, Mutex};

use posthog_track::{Backend, Event, Tracker};
use posthog_track_tests::{
    database_url, execute, isolated_postgres, migrated_tracker, on_every_backend, outbox_events,
    tracker_for, with_search_path,
};
use sqlx::Pool;

/// Text that breaks SQL string constants written carelessly: quotes, backslashes (which an
/// escape string constant reads as escapes), dollar quotes, statements, control characters.
const HOSTILE: &[&str] = &[
    "it's",
    "''",
    "back\\slash",
    "\\' both",
    "trailing backslash \\",
    "\\x41 \\u0041 \\101 \\n",
    "$$ dollar $$ $tag$",
    "E'x'",
    "'); DROP TABLE posthog_outbox; --",
    ";\nCOMMIT;\nBEGIN;",
    "line\nbreak\ttab\rreturn",
    "emoji 🦀, ü, 中文",
];

fn tracker(mock: &posthog_track::testing::MockPostHog) -> Tracker {
    // External delivery: the events stay in the outbox to be read back.
    tracker_for(mock).external_relay(true).build()
}

async fn hostile_text_reaches_the_outbox_unchanged<DB: Backend>(pool: &Pool<DB>, _url: &str) {
    let (_mock, tracker, tag) = migrated_tracker(pool, tracker, "hostile").await;
    let mut staged = Vec::new();
    // One event per transaction, then all of them in one.
    for text in HOSTILE {
        let mut tx = tracker.begin(pool).await.unwrap();
        tx.set_distinct_id(format!("{tag}{text}"));
        tx.capture(
            Event::new(format!("hostile {text}"))
                .property("text", *text)
                .property("tag", tag.as_str()),
        )
        .unwrap();
        staged.extend(tx.staged().iter().cloned());
        tx.commit().await.unwrap();
    }
    let mut tx = tracker.begin(pool).await.unwrap();
    for text in HOSTILE {
        tx.capture(
            Event::new(format!("hostile {text}"))
                .distinct_id(format!("{tag}{text}"))
                .property("text", *text)
                .property("tag", tag.as_str()),
        )
        .unwrap();
    }
    staged.extend(tx.staged().iter().cloned());
    tx.commit().await.unwrap();

    let stored = outbox_events(&tracker, pool, |event| {
        event.property("tag").and_then(|value| value.as_str()) == Some(tag.as_str())
    })
    .await;
    assert_eq!(stored.len(), staged.len());
    for (stored, staged) in stored.iter().zip(&staged) {
        assert_eq!(stored.uuid, staged.uuid);
        assert_eq!(stored.event, staged.event);
        assert_eq!(stored.distinct_id, staged.distinct_id);
        assert_eq!(stored.timestamp, staged.timestamp);
        let payload: serde_json::Value = serde_json::from_str(&staged.payload).unwrap();
        assert_eq!(stored.payload, payload);
    }
    for (stored, text) in stored.iter().zip(HOSTILE.iter().chain(HOSTILE)) {
        assert_eq!(stored.property("text"), Some(&serde_json::json!(text)));
    }
}
on_every_backend!(hostile_text_reaches_the_outbox_unchanged);

/// A transaction whose events are large together: 40 events of 800 KB each (32 MB), which
/// PostHog takes one by one (each under its 1 MB limit). MariaDB refuses any statement over
/// `max_allowed_packet` (16 MB by default), so the outbox rows cannot go in one statement
/// however few they are; the commit must still store every one, unchanged.
async fn large_events_together_commit<DB: Backend>(pool: &Pool<DB>, _url: &str) {
    let (_mock, tracker, tag) = migrated_tracker(pool, tracker, "large").await;
    let filler = "x".repeat(800 * 1024);
    let mut tx = tracker.begin(pool).await.unwrap();
    tx.set_distinct_id(tag.clone());
    for n in 0..40 {
        tx.capture(
            Event::new("large")
                .property("n", n)
                .property("filler", filler.as_str())
                .property("tag", tag.as_str()),
        )
        .unwrap();
    }
    let staged: Vec<_> = tx.staged().iter().map(|event| event.uuid).collect();
    tx.commit().await.unwrap();
    let stored = outbox_events(&tracker, pool, |event| {
        event.property("tag").and_then(|value| value.as_str()) == Some(tag.as_str())
    })
    .await;
    let uuids: Vec<_> = stored.iter().map(|event| event.uuid).collect();
    assert_eq!(uuids, staged);
    assert!(
        stored
            .iter()
            .all(|event| event.property("filler") == Some(&serde_json::json!(filler))),
        "every event stored whole"
    );
}
on_every_backend!(large_events_together_commit);

/// What `sqlx` logged about the server's notices (PostgreSQL warns, for example, on a
/// `ROLLBACK` with no transaction open).
#[derive(Clone, Default)]
struct Notices(Arc<Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Notices {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Message<'a>(&'a mut String);
        impl tracing::field::Visit for Message<'_> {
            fn record_debug(&mut self, _: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                self.0.push_str(&format!("{value:?} "));
            }
        }
        if event
            .metadata()
            .target()
            .starts_with("sqlx::postgres::notice")
        {
            let mut message = String::new();
            event.record(&mut Message(&mut message));
            self.0.lock().unwrap().push(message);
        }
    }
}

/// A pool of one connection on `scenario`'s own schema: what one commit leaves on the
/// connection, the next query meets.
async fn one_connection(scenario: &str) -> Option<sqlx::PgPool> {
    let url = database_url("POSTGRES_URL")?;
    isolated_postgres(&url, scenario).await.close().await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&with_search_path(&url, &format!("pt_{scenario}")))
        .await
        .unwrap();
    Some(pool)
}

/// Whether each statement on `conn` runs in a transaction of its own (none left open by a
/// commit): a setting made local to the transaction of one statement must be gone in the next.
async fn runs_in_its_own_transaction(conn: &mut sqlx::PgConnection) -> bool {
    sqlx::query("SELECT set_config('posthog_track.probe', 'set', true)")
        .execute(&mut *conn)
        .await
        .unwrap();
    let probe: Option<String> =
        sqlx::query_scalar("SELECT current_setting('posthog_track.probe', true)")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
    probe.as_deref() != Some("set")
}

/// [`runs_in_its_own_transaction`] on the pool's one connection; then (a `BEGIN` would close
/// a transaction left open, so only after the probe) checks that the probe does see a
/// transaction that is open.
async fn pool_runs_in_its_own_transaction(pool: &sqlx::PgPool) -> bool {
    let own = runs_in_its_own_transaction(&mut pool.acquire().await.unwrap()).await;
    let mut open = pool.begin().await.unwrap();
    assert!(
        !runs_in_its_own_transaction(&mut open).await,
        "the probe missed an open transaction"
    );
    open.rollback().await.unwrap();
    own
}

// Current-thread runtime: the pool's release of the connection (a spawned task) runs on this
// thread too, inside the subscriber set below.
#[tokio::test]
async fn postgres_commit_leaves_the_connection_idle_and_quiet() {
    use tracing_subscriber::layer::SubscriberExt as _;
    let Some(pool) = one_connection("commit_idle").await else {
        return;
    };
    let notices = Notices::default();
    let _subscriber =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(notices.clone()));
    let (_mock, tracker, tag) = migrated_tracker(&pool, tracker, "idle").await;
    for n in 0..3 {
        let mut tx = tracker.begin(&pool).await.unwrap();
        tx.set_distinct_id(tag.clone());
        tx.capture(Event::new("idle_check").property("n", n))
            .unwrap();
        tx.commit().await.unwrap();
        assert!(
            pool_runs_in_its_own_transaction(&pool).await,
            "the commit left a transaction open on the pooled connection"
        );
    }
    let stored = outbox_events(&tracker, &pool, |event| event.distinct_id == tag).await;
    assert_eq!(stored.len(), 3);
    assert_eq!(*notices.0.lock().unwrap(), Vec::<String>::new());
}

/// On a pool of one connection with `schema` created: begins a transaction that inserts a
/// row with `insert` and stages one event for a distinct id ending in `suffix`, and asserts
/// that its commit fails with an error mentioning `expected`, whole: neither the row (in
/// `table`) nor the event exists afterwards, and the connection is back to a transaction per
/// statement.
async fn assert_commit_fails_whole(
    scenario: &str,
    schema: &[&str],
    (table, insert): (&str, &str),
    suffix: &str,
    expected: &str,
) {
    let Some(pool) = one_connection(scenario).await else {
        return;
    };
    let (_mock, tracker, tag) = migrated_tracker(&pool, tracker, scenario).await;
    for statement in schema {
        execute(&pool, *statement).await;
    }
    let distinct_id = format!("{tag}{suffix}");
    let mut tx = tracker.begin(&pool).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(insert))
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.set_distinct_id(distinct_id.clone());
    tx.capture(Event::new("doomed")).unwrap();
    let error = tx.commit().await.unwrap_err();
    assert!(
        error.to_string().contains(expected),
        "unexpected error: {error}"
    );
    let rows: i64 =
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(rows, 0);
    let events = outbox_events(&tracker, &pool, |event| event.distinct_id == distinct_id).await;
    assert!(events.is_empty());
    assert!(pool_runs_in_its_own_transaction(&pool).await);
}

/// The foreign key is checked at `COMMIT`, after the outbox `INSERT` has run.
#[tokio::test]
async fn postgres_a_failing_commit_keeps_neither_rows_nor_events() {
    let schema = [
        "CREATE TABLE parent (id BIGINT PRIMARY KEY)",
        "CREATE TABLE child (parent_id BIGINT NOT NULL REFERENCES parent (id) \
         DEFERRABLE INITIALLY DEFERRED)",
    ];
    let orphan = ("child", "INSERT INTO child (parent_id) VALUES (42)");
    assert_commit_fails_whole("commit_fails", &schema, orphan, "", "foreign key").await;
}

/// PostgreSQL's text cannot hold a NUL: the commit fails as the database says, whole.
#[tokio::test]
async fn postgres_a_nul_fails_the_commit_whole() {
    let schema = ["CREATE TABLE note (body TEXT NOT NULL)"];
    let note = (
        "note",
        "INSERT INTO note (body) VALUES ('kept only with its event')",
    );
    assert_commit_fails_whole("commit_nul", &schema, note, "\0nul", "0x00").await;
}

/// Any text without a NUL (control characters included), as a distinct id (not empty: an
/// empty one is no id) and a property, reaches PostgreSQL's outbox exactly as staged.
#[test]
fn postgres_any_text_reaches_the_outbox_unchanged() {
    use proptest::prelude::*;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let Some(pool) = runtime.block_on(one_connection("commit_any_text")) else {
        return;
    };
    let (_mock, tracker, _) = runtime.block_on(migrated_tracker(&pool, tracker, "any"));
    // `any::<String>()` draws no control characters; these do, and often quotes and backslashes.
    let text = "(\\PC|[\\x01-\\x1f\\x7f'\"\\\\$])*";
    proptest!(ProptestConfig::with_cases(64), |(text in text)| {
        let distinct_id = format!("d{text}");
        let stored = runtime.block_on(async {
            let mut tx = tracker.begin(&pool).await.unwrap();
            tx.set_distinct_id(distinct_id.clone());
            tx.capture(Event::new("any_text").property("text", text.as_str()))
                .unwrap();
            let uuid = tx.staged()[0].uuid;
            tx.commit().await.unwrap();
            outbox_events(&tracker, &pool, |event| event.uuid == uuid).await
        });
        prop_assert_eq!(stored.len(), 1);
        prop_assert_eq!(&stored[0].distinct_id, &distinct_id);
        prop_assert_eq!(stored[0].property("text"), Some(&serde_json::json!(text)));
    });
}

/// With `Delivery::AfterCommit` the events go to the in-memory queue only once the database
/// committed: a commit that fails (here a deferred foreign key, checked at `COMMIT`) sends
/// nothing, however many flushes follow.
#[tokio::test]
async fn postgres_a_failing_commit_sends_no_after_commit_event() {
    let Some(pool) = one_connection("commit_fails_after_commit").await else {
        return;
    };
    let mock = posthog_track::testing::MockPostHog::start().await;
    let tracker = tracker_for(&mock)
        .delivery(posthog_track::Delivery::AfterCommit)
        .build();
    for statement in [
        "CREATE TABLE parent (id BIGINT PRIMARY KEY)",
        "CREATE TABLE child (parent_id BIGINT NOT NULL REFERENCES parent (id) \
         DEFERRABLE INITIALLY DEFERRED)",
    ] {
        execute(&pool, statement).await;
    }
    let tag = posthog_track_tests::unique("after-commit-fails");
    let mut tx = tracker.begin(&pool).await.unwrap();
    sqlx::query("INSERT INTO child (parent_id) VALUES (42)")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.set_distinct_id(tag.clone());
    tx.capture(Event::new("doomed")).unwrap();
    let error = tx.commit().await.unwrap_err();
    assert!(error.to_string().contains("foreign key"), "{error}");

    // A later transaction that commits: its event goes, the doomed one never.
    let mut tx = tracker.begin(&pool).await.unwrap();
    tx.set_distinct_id(tag.clone());
    tx.capture(Event::new("committed")).unwrap();
    tx.commit().await.unwrap();
    tracker.flush().await.unwrap();
    let names: Vec<String> = mock
        .events()
        .into_iter()
        .filter(|event| event.distinct_id == tag)
        .map(|event| event.event)
        .collect();
    assert_eq!(names, ["committed"]);
}
