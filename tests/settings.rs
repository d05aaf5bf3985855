//! Database settings an operator may have set, on the connection or on the server: tracked
//! writes, the outbox and the relay keep their contract under each (rows and events together,
//! every committed event delivered once and deleted, nothing stranded or silently changed).

use std::collections::BTreeSet;
use std::time::Duration;

use posthog_track::testing::MockPostHog;
use posthog_track::{Event, TrackedModel, Tracker};
use posthog_track_tests::{database_url, on_every_backend, tracker_for, unique};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

/// A tracker whose commits start no relay: the scenario decides who delivers.
fn committer(mock: &MockPostHog) -> Tracker {
    tracker_for(mock).external_relay(true).build()
}

/// The uuids `mock` accepted for distinct id `tag`, each exactly once.
fn delivered_once(mock: &MockPostHog, tag: &str) -> BTreeSet<Uuid> {
    let mine: Vec<Uuid> = mock
        .events()
        .into_iter()
        .filter(|event| event.distinct_id == tag)
        .map(|event| event.uuid)
        .collect();
    let unique: BTreeSet<Uuid> = mine.iter().copied().collect();
    assert_eq!(unique.len(), mine.len(), "an event was delivered twice");
    unique
}

/// Commits one captured event named `name` for `tag` through `tracker` on `pool`; its uuid.
async fn commit_one<DB: posthog_track::Backend>(
    tracker: &Tracker,
    pool: &sqlx::Pool<DB>,
    tag: &str,
    name: &'static str,
) -> Uuid {
    let mut tx = tracker.begin(pool).await.unwrap();
    tx.set_distinct_id(tag.to_owned());
    tx.capture(Event::new(name)).unwrap();
    let uuid = tx.staged()[0].uuid;
    tx.commit().await.unwrap();
    uuid
}

// PostgreSQL with a search_path that puts the application's own schema before the one that
// holds the outbox (`ALTER ROLE app SET search_path = app, public` after the outbox was made in
// `public`). Writes and relays find the outbox through the path; `migrate` looked for it in the
// first schema only (`current_schema()`), found nothing, and created a second, empty outbox
// there (`CREATE TABLE IF NOT EXISTS` looks in the schema it creates in), which from then on
// shadowed the first: the events waiting in it were never delivered, and `drain` said Ok.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_under_a_longer_search_path_keeps_the_outbox_it_finds() {
    use std::str::FromStr as _;
    let Some(url) = database_url("POSTGRES_URL") else {
        return;
    };
    let outbox_pool = posthog_track_tests::isolated_postgres(&url, "search_path_outbox").await;
    drop(posthog_track_tests::isolated_postgres(&url, "search_path_app").await);
    let mock = MockPostHog::start().await;
    let tracker = committer(&mock);
    tracker.migrate(&outbox_pool).await.unwrap();
    let tag = unique("search-path");
    let waiting = commit_one(&tracker, &outbox_pool, &tag, "waiting").await;
    outbox_pool.close().await;

    let options = sqlx::postgres::PgConnectOptions::from_str(&url)
        .unwrap()
        .options([("search_path", "pt_search_path_app, pt_search_path_outbox")]);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .unwrap();
    // The next start of the application.
    tracker.migrate(&pool).await.unwrap();
    tracker.migrate(&pool).await.unwrap();
    let after = commit_one(&tracker, &pool, &tag, "after").await;
    tracker.relay(pool.clone()).drain_for(WAIT).await.unwrap();
    assert_eq!(
        delivered_once(&mock, &tag),
        BTreeSet::from([waiting, after]),
        "the event committed before the path changed is delivered too"
    );
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT schemaname || '.' || tablename FROM pg_tables \
         WHERE schemaname = 'pt_search_path_app'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(tables.is_empty(), "no second outbox: {tables:?}");
    let status = tracker.outbox(&pool).status().await.unwrap();
    assert_eq!(status.pending, 0, "{status:?}");
    assert_eq!(
        tracker.outbox(&pool).schema_version().await.unwrap(),
        Some(posthog_track::outbox::SCHEMA_VERSION)
    );
}

/// A row of a table written before it was tracked: what a backfill sends.
#[derive(Debug, Clone, TrackedModel)]
#[tracked(table = "sp_people", distinct_id = id)]
struct Person {
    #[tracked(key, property)]
    id: String,
    #[tracked(person)]
    email: String,
}

// The same for the backfill's checkpoint table: a backfill completed before the path changed
// found no `posthog_backfill` in the first schema, created an empty one there, and sent every
// row again.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_under_a_longer_search_path_keeps_its_checkpoint() {
    use std::str::FromStr as _;
    let Some(url) = database_url("POSTGRES_URL") else {
        return;
    };
    let base = posthog_track_tests::isolated_postgres(&url, "search_path_backfill").await;
    drop(posthog_track_tests::isolated_postgres(&url, "search_path_backfill_app").await);
    let mock = MockPostHog::start().await;
    let tracker = tracker_for(&mock).build();
    tracker.migrate(&base).await.unwrap();
    posthog_track_tests::execute(
        &base,
        "CREATE TABLE sp_people (id TEXT PRIMARY KEY, email TEXT NOT NULL)",
    )
    .await;
    posthog_track_tests::execute(
        &base,
        "INSERT INTO sp_people VALUES ('a', 'a@example.com'), ('b', 'b@example.com')",
    )
    .await;
    let first = tracker.backfill::<Person>(&base).run().await.unwrap();
    assert!(first.complete && first.events == 2, "{first}");
    base.close().await;

    let options = sqlx::postgres::PgConnectOptions::from_str(&url)
        .unwrap()
        .options([(
            "search_path",
            "pt_search_path_backfill_app, pt_search_path_backfill",
        )]);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .unwrap();
    let again = tracker.backfill::<Person>(&pool).run().await.unwrap();
    assert!(
        again.already_complete && again.events == 0,
        "the checkpoint is the one the path finds: {again}"
    );
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT tablename::TEXT FROM pg_tables WHERE schemaname = 'pt_search_path_backfill_app'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(tables.is_empty(), "no second checkpoint table: {tables:?}");
}

// MySQL/MariaDB sessions with autocommit off (`autocommit = 0` in the server's configuration,
// `init_connect`, or a pool's `after_connect`). Tracked transactions are explicit and commit as
// ever, but the relay's own statements would each open a transaction that nothing commits: its
// deletes of delivered rows stay invisible (resent after the lease) while their locks block other
// relays, and its claim failed at once with the server's "Transaction characteristics can't be
// changed while a transaction is in progress", which names neither the setting nor the fix. The
// relay refuses such a pool with a typed error that says both, and leaves every event in place.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_refuses_sessions_without_autocommit() {
    let Some(url) = database_url("MYSQL_URL") else {
        return;
    };
    let (pool, plain) =
        with_session_and_plain(&url, "relay_autocommit_off", "SET autocommit = 0").await;
    let mock = MockPostHog::start().await;
    let tracker = committer(&mock);
    tracker.migrate(&plain).await.unwrap();
    let tag = unique("autocommit-off");
    let mut committed = BTreeSet::new();
    for name in ["first", "second"] {
        committed.insert(commit_one(&tracker, &pool, &tag, name).await);
    }
    let relay = tracker.relay(pool.clone());
    for _ in 0..2 {
        match relay.drain_for(Duration::from_secs(5)).await {
            Err(error @ posthog_track::Error::Unsupported { .. }) => {
                let message = error.to_string();
                assert!(
                    message.contains("autocommit") && message.contains("SET autocommit = 1"),
                    "{message}"
                );
            }
            other => panic!("the relay must refuse sessions without autocommit: {other:?}"),
        }
    }
    assert!(delivered_once(&mock, &tag).is_empty());
    let status = tracker.outbox(&plain).status().await.unwrap();
    assert_eq!((status.pending, status.leased), (2, 0), "{status:?}");
    // A pool with autocommit on delivers them, once.
    tracker.relay(plain.clone()).drain_for(WAIT).await.unwrap();
    assert_eq!(delivered_once(&mock, &tag), committed);
    assert_eq!(tracker.outbox(&plain).status().await.unwrap().pending, 0);
}

/// A note whose body is a tracked property.
#[derive(Debug, Clone, TrackedModel)]
#[tracked(table = "st_notes", distinct_id = owner, insert_event = "note_created")]
struct Note {
    #[tracked(key, property)]
    id: String,
    #[tracked(property)]
    owner: String,
    #[tracked(property)]
    body: String,
}

/// Text every MySQL character set of a connection can carry (within the Basic Multilingual
/// Plane), with what breaks naive SQL.
const BMP_TEXT: &str = "Zoë 名前 back\\slash \"dq\" 'sq' || pipes";
/// Characters beyond the Basic Multilingual Plane: four bytes in UTF-8, which a `utf8mb3`
/// (`utf8`) connection cannot carry.
const EMOJI_TEXT: &str = "🚀 launch 🎉 𝔘𝔫𝔦𝔠𝔬𝔡𝔢";

// MySQL/MariaDB connections whose character set is `utf8mb3` (`SET NAMES utf8`, a
// `charset=utf8` in an older configuration) cannot carry four-byte characters such as emoji. The
// outbox table is utf8mb4, but the payload went through the connection: in strict mode the
// commit of an event with an emoji in a property failed ("Incorrect string value"), and with
// strict mode off each emoji was silently stored, and sent to PostHog, as '????'. The payload
// is JSON: on MySQL/MariaDB such characters are written as JSON escapes (`\ud83d\ude80`), which
// every connection carries and PostHog reads as the same string.

async fn emoji_survive_a_utf8mb3_connection(scenario: &str, session: &'static str) {
    let Some(url) = database_url("MYSQL_URL") else {
        return;
    };
    let pool = posthog_track_tests::isolated_mysql_with_session(&url, scenario, session).await;
    posthog_track_tests::execute(
        &pool,
        "CREATE TABLE st_notes (id VARCHAR(100) PRIMARY KEY, owner VARCHAR(100) NOT NULL, \
         body TEXT NOT NULL) DEFAULT CHARSET = utf8mb4",
    )
    .await;
    let mock = MockPostHog::start().await;
    let tracker = committer(&mock);
    tracker.migrate(&pool).await.unwrap();
    let tag = unique("utf8mb3");
    let mut tx = tracker.begin(&pool).await.unwrap();
    tx.set_distinct_id(tag.clone());
    let note = Note {
        id: format!("{tag}-1"),
        owner: tag.clone(),
        body: BMP_TEXT.to_owned(),
    };
    note.insert(&mut tx).await.unwrap();
    tx.capture(
        Event::new("emoji_sent")
            .property("text", EMOJI_TEXT)
            .property(EMOJI_TEXT, "a key too"),
    )
    .unwrap();
    let staged: Vec<serde_json::Value> = tx
        .staged()
        .iter()
        .map(|event| serde_json::from_str(&event.payload).unwrap())
        .collect();
    tx.commit().await.unwrap();
    tracker.relay(pool.clone()).drain_for(WAIT).await.unwrap();
    let received: Vec<serde_json::Value> = mock
        .events()
        .into_iter()
        .filter(|event| event.distinct_id == tag)
        .map(|event| event.raw)
        .collect();
    assert_eq!(received.len(), 2, "{received:?}");
    for (staged, received) in staged.iter().zip(&received) {
        assert_eq!(received["properties"], staged["properties"]);
    }
    assert_eq!(received[0]["properties"]["body"], BMP_TEXT);
    assert_eq!(received[1]["properties"]["text"], EMOJI_TEXT);
    assert_eq!(received[1]["properties"][EMOJI_TEXT], "a key too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emoji_survive_a_utf8mb3_connection_in_strict_mode() {
    emoji_survive_a_utf8mb3_connection("emoji_utf8mb3_strict", "SET NAMES utf8mb3").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emoji_survive_a_utf8mb3_connection_without_strict_mode() {
    emoji_survive_a_utf8mb3_connection(
        "emoji_utf8mb3_lax",
        "SET NAMES utf8mb3, SESSION sql_mode = ''",
    )
    .await;
}

/// Whether the MySQL/MariaDB server behind `pool` knows named time zones (its time zone
/// tables are loaded: `mariadb-tzinfo-to-sql /usr/share/zoneinfo | mariadb mysql`, which
/// `.ci/run` does). Without them a test of a named zone cannot run: under `CI=true` that fails.
async fn named_time_zones(pool: &sqlx::MySqlPool) -> bool {
    let zones: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM mysql.time_zone_name")
        .fetch_one(pool)
        .await
        .unwrap_or(0);
    if zones == 0 {
        assert!(
            std::env::var("CI").map_or(true, |ci| ci != "true"),
            "the MariaDB server has no time zone tables; .ci/run loads them"
        );
        eprintln!("note: the MariaDB server has no time zone tables; skipping this test");
    }
    zones > 0
}

// MySQL/MariaDB sessions on a time zone with daylight saving time (`time_zone = 'SYSTEM'` on a
// server whose system zone is local time, MySQL's default, or a named zone). The database's
// clock in milliseconds was `UNIX_TIMESTAMP(NOW(3))`, which turns the local wall-clock time back
// into an instant: in the hour repeated when the clocks go back, the second 02:30 reads as the
// first, an hour early. For that hour the relay timed its requests an hour in the past (PostHog
// moves every event by the difference between `sent_at` and its arrival: an hour into the
// future), and leases and backoffs taken just before jumped an hour forward. The clock is now
// read from `UTC_TIMESTAMP(3)`, which no session time zone changes. The session's clock is set
// to 01:30 UTC on 2023-10-29, the second 02:30 in Berlin.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_clock_holds_through_the_hour_repeated_at_the_end_of_summer_time() {
    const SECOND_PASS: i64 = 1_698_543_000; // 2023-10-29T01:30:00Z, 02:30 CET
    let Some(url) = database_url("MYSQL_URL") else {
        return;
    };
    // Before the session below, which names a zone: without the tables every connection's
    // `SET time_zone` fails, and the pool times out instead of saying why.
    let plain = sqlx::MySqlPool::connect(&url).await.unwrap();
    let zones = named_time_zones(&plain).await;
    plain.close().await;
    if !zones {
        return;
    }
    let pool = posthog_track_tests::isolated_mysql_with_session(
        &url,
        "clock_summer_time",
        "SET time_zone = 'Europe/Berlin', timestamp = 1698543000",
    )
    .await;
    let mock = MockPostHog::start().await;
    let tracker = committer(&mock);
    tracker.migrate(&pool).await.unwrap();
    let tag = unique("summer-time");
    let committed = BTreeSet::from([commit_one(&tracker, &pool, &tag, "timed").await]);
    tracker.relay(pool.clone()).drain_for(WAIT).await.unwrap();
    assert_eq!(delivered_once(&mock, &tag), committed);
    let requests = mock.requests();
    assert!(!requests.is_empty());
    for request in requests {
        let sent_at = request.body["sent_at"].as_str().unwrap_or_default();
        let sent_at = chrono::DateTime::parse_from_rfc3339(sent_at).unwrap();
        let off = (sent_at.timestamp() - SECOND_PASS).abs();
        assert!(
            off < 300,
            "sent_at {sent_at} is not the database's clock (01:30 UTC)"
        );
    }
}

// PostgreSQL with `default_transaction_isolation = 'serializable'` (or 'repeatable read') for
// the application's sessions. Tracked writes keep it. Relays sharing the outbox took their
// claims in it too: a relay whose snapshot still showed rows another relay had delivered and
// deleted since failed its claim ("could not serialize access due to concurrent delete"), and
// with it the whole `drain` (a `flush`) with a database error, although nothing was wrong.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_sharing_a_serializable_outbox_drain_without_errors() {
    use std::str::FromStr as _;
    let Some(url) = database_url("POSTGRES_URL") else {
        return;
    };
    drop(posthog_track_tests::isolated_postgres(&url, "serializable_relays").await);
    let options = sqlx::postgres::PgConnectOptions::from_str(&url)
        .unwrap()
        .options([
            ("search_path", "pt_serializable_relays"),
            ("default_transaction_isolation", "serializable"),
        ]);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(12)
        .connect_with(options)
        .await
        .unwrap();
    let mock = MockPostHog::start().await;
    for held in [true, false] {
        let tracker = tracker_for(&mock)
            .external_relay(true)
            .held_claims(held)
            .batch_size(5)
            .build();
        tracker.migrate(&pool).await.unwrap();
        let tag = unique("serializable");
        let committed =
            posthog_track_tests::commit_events(&tracker, &pool, &tag, "serial", 300, 10).await;
        let relays: Vec<_> = (0..4)
            .map(|_| {
                let relay = tracker.relay(pool.clone());
                tokio::spawn(async move { relay.drain_for(WAIT).await })
            })
            .collect();
        for relay in relays {
            relay
                .await
                .unwrap()
                .unwrap_or_else(|error| panic!("held claims {held}: {error:?}"));
        }
        let delivered: BTreeSet<Uuid> = mock
            .events()
            .into_iter()
            .filter(|event| event.distinct_id == tag)
            .map(|event| event.uuid)
            .collect();
        assert_eq!(delivered, committed, "held claims {held}");
        assert_eq!(tracker.outbox(&pool).status().await.unwrap().pending, 0);
    }
}

/// The SQLSTATE of `error`'s database error, if it is one.
fn sqlstate(error: &posthog_track::Error) -> Option<String> {
    match error {
        posthog_track::Error::Database(sqlx::Error::Database(database)) => {
            database.code().map(|code| code.into_owned())
        }
        _ => None,
    }
}

// Tracked transactions under SERIALIZABLE keep rows and events together through a
// serialization failure, and say so in a way a retry loop can read (SQLSTATE 40001): at
// commit (write skew: each transaction read what the other wrote), and at a write (a row
// another transaction updated since the snapshot).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serialization_failures_roll_rows_and_events_back_together() {
    use std::str::FromStr as _;
    let Some(url) = database_url("POSTGRES_URL") else {
        return;
    };
    drop(posthog_track_tests::isolated_postgres(&url, "serialization_failures").await);
    let options = sqlx::postgres::PgConnectOptions::from_str(&url)
        .unwrap()
        .options([
            ("search_path", "pt_serialization_failures"),
            ("default_transaction_isolation", "serializable"),
        ]);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .unwrap();
    posthog_track_tests::execute(
        &pool,
        "CREATE TABLE st_notes (id TEXT PRIMARY KEY, owner TEXT NOT NULL, body TEXT NOT NULL)",
    )
    .await;
    let mock = MockPostHog::start().await;
    let tracker = committer(&mock);
    tracker.migrate(&pool).await.unwrap();
    let tag = unique("serialization");
    let note = |n: u32| Note {
        id: format!("{tag}-{n}"),
        owner: tag.clone(),
        body: format!("note {n}"),
    };
    let count = "SELECT COUNT(*) FROM st_notes";
    // Write skew: both read the table, each inserts a note.
    let mut first = tracker.begin(&pool).await.unwrap();
    let mut second = tracker.begin(&pool).await.unwrap();
    for tx in [&mut first, &mut second] {
        let _: i64 = sqlx::query_scalar(count)
            .fetch_one(&mut **tx)
            .await
            .unwrap();
    }
    let first_note = note(1).insert(&mut first).await.unwrap();
    note(2).insert(&mut second).await.unwrap();
    let kept = first.staged()[0].uuid;
    first.commit().await.unwrap();
    let error = second.commit().await.unwrap_err();
    assert_eq!(sqlstate(&error).as_deref(), Some("40001"), "{error:?}");
    // A write of a row updated since the snapshot.
    let mut late = tracker.begin(&pool).await.unwrap();
    let _: i64 = sqlx::query_scalar(count)
        .fetch_one(&mut *late)
        .await
        .unwrap();
    let mut update = tracker.begin(&pool).await.unwrap();
    let mut changed = first_note.clone();
    changed.body = "changed".to_owned();
    changed
        .update_changed(&first_note, &mut update)
        .await
        .unwrap();
    let updated = update.staged()[0].uuid;
    update.commit().await.unwrap();
    let mut again = first_note.clone();
    again.body = "changed again".to_owned();
    let error = again
        .update_changed(&first_note, &mut late)
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&error).as_deref(), Some("40001"), "{error:?}");
    assert!(late.commit().await.is_err());

    let rows: Vec<(String, String)> = sqlx::query_as("SELECT id, body FROM st_notes")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(rows, [(format!("{tag}-1"), "changed".to_owned())]);
    let outbox: BTreeSet<Uuid> = tracker
        .outbox(&pool)
        .events()
        .await
        .unwrap()
        .into_iter()
        .map(|event| event.uuid)
        .collect();
    assert_eq!(outbox, BTreeSet::from([kept, updated]));
}

// SQLite with a second writer holding the database (a migration, a VACUUM, a backup, or in the
// rollback journal a long reader) past the relay's busy timeout, just when PostHog accepted a
// batch: the relay's delete of the delivered rows failed with "database is locked", the round
// failed with it, and the rows stayed leased until the lease ran out and were sent a second
// time. The relay retries the delete (fenced by its claim) while its lease lasts.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivered_batch_is_deleted_once_the_sqlite_database_is_free_again() {
    for (journal, name) in [
        (sqlx::sqlite::SqliteJournalMode::Delete, "rollback"),
        (sqlx::sqlite::SqliteJournalMode::Wal, "wal"),
    ] {
        let dir = std::env::temp_dir().join(unique("sqlite-busy-ack"));
        std::fs::create_dir_all(&dir).unwrap();
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(dir.join("app.db"))
            .create_if_missing(true)
            .journal_mode(journal)
            .busy_timeout(Duration::from_millis(100));
        let pool = sqlx::SqlitePool::connect_with(options.clone())
            .await
            .unwrap();
        let mock = MockPostHog::start().await;
        mock.set_outage(Some(posthog_track::testing::Reply::Delay(
            Duration::from_secs(1),
            Box::new(posthog_track::testing::Reply::Accept),
        )));
        let tracker = committer(&mock);
        tracker.migrate(&pool).await.unwrap();
        let tag = unique("sqlite-busy");
        let committed =
            posthog_track_tests::commit_events(&tracker, &pool, &tag, "busy", 3, 3).await;
        let relay = std::sync::Arc::new(tracker.relay(pool.clone()));
        let round = {
            let relay = relay.clone();
            tokio::spawn(async move { relay.run_once().await })
        };
        // Once the rows are claimed, another writer takes the database.
        let claimed = tokio::time::timeout(WAIT, async {
            while tracker.outbox(&pool).status().await.unwrap().leased < 3 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        claimed.await.expect("the rows are claimed");
        let mut other = sqlx::ConnectOptions::connect(&options).await.unwrap();
        sqlx::query("BEGIN EXCLUSIVE")
            .execute(&mut other)
            .await
            .unwrap();
        // Meanwhile a tracked transaction cannot begin (it takes the write lock at once).
        match tracker.begin(&pool).await {
            Err(posthog_track::Error::Database(error)) => {
                assert!(error.to_string().contains("locked"), "{name}: {error}")
            }
            other => panic!("{name}: {:?}", other.map(|_| "began")),
        }
        // PostHog accepts the batch while the database is held, and the relay's delete meets
        // the lock (its busy timeout is 100 ms) before it is released.
        tokio::time::timeout(WAIT, mock.wait_for_events(3, WAIT))
            .await
            .unwrap()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(800)).await;
        sqlx::query("COMMIT").execute(&mut other).await.unwrap();
        let pass = round.await.unwrap();
        let pass = pass.unwrap_or_else(|error| panic!("{name}: {error:?}"));
        assert_eq!(pass.delivered, 3, "{name}: {pass:?}");
        mock.set_outage(None);
        relay.drain_for(WAIT).await.unwrap();
        assert_eq!(delivered_once(&mock, &tag), committed, "{name}");
        assert_eq!(tracker.outbox(&pool).status().await.unwrap().pending, 0);
        pool.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// A counter that two transactions increment from what they loaded.
#[derive(Debug, Clone, TrackedModel)]
#[tracked(table = "st_counters", distinct_id = owner, update_event = "counter_bumped")]
struct Counter {
    #[tracked(key, property)]
    id: String,
    #[tracked(property)]
    owner: String,
    #[tracked(property)]
    visits: i64,
}

// Two tracked transactions that load a row with `load_for_update` and write it back: the
// second waits for the first, as the README promises, and loads what the first wrote. On
// SQLite the transaction began deferred, so `load_for_update` took no lock: in WAL mode the
// first transaction's write then failed at once with "database is locked" (its snapshot was
// older than the second's commit, which no busy timeout waits out), and in the rollback
// journal one of them did. A tracked transaction begins `IMMEDIATE` on SQLite: it takes the
// write lock at `begin`, as `FOR UPDATE` takes the row's elsewhere.

on_every_backend!(load_for_update_serialises_two_writers);

async fn load_for_update_serialises_two_writers<DB: posthog_track::Backend>(
    pool: &sqlx::Pool<DB>,
    _url: &str,
) where
    Counter: posthog_track::TrackedRow<DB>,
{
    posthog_track_tests::execute(
        pool,
        "CREATE TABLE st_counters (id VARCHAR(100) PRIMARY KEY, owner VARCHAR(100) NOT NULL, \
         visits BIGINT NOT NULL)",
    )
    .await;
    let mock = MockPostHog::start().await;
    let tracker = committer(&mock);
    tracker.migrate(pool).await.unwrap();
    let tag = unique("counter");
    let key = format!("{tag}-c");
    posthog_track_tests::execute(
        pool,
        format!("INSERT INTO st_counters (id, owner, visits) VALUES ('{key}', '{tag}', 0)"),
    )
    .await;
    let bump = |tracker: Tracker, pool: sqlx::Pool<DB>, key: String| async move {
        let mut tx = tracker.begin(&pool).await?;
        let before = Counter::load_for_update(&key, &mut tx).await?.unwrap();
        let mut after = before.clone();
        after.visits += 1;
        after.update_changed(&before, &mut tx).await?;
        tx.commit().await
    };
    let mut first = tracker.begin(pool).await.unwrap();
    let before = Counter::load_for_update(&key, &mut first)
        .await
        .unwrap()
        .unwrap();
    let mut second = tokio::spawn(bump(tracker.clone(), pool.clone(), key.clone()));
    // The second writer waits for the first (if it does not, it finishes now, and the first
    // meets its write).
    let finished_early = tokio::time::timeout(Duration::from_millis(500), &mut second).await;
    let mut after = before.clone();
    after.visits += 1;
    let written = after.update_changed(&before, &mut first).await;
    let committed = first.commit().await;
    let second = match finished_early {
        Ok(done) => done.unwrap(),
        Err(_) => second.await.unwrap(),
    };
    written.unwrap();
    committed.unwrap();
    second.unwrap();
    let visits: Vec<i64> = tracker
        .outbox(pool)
        .events()
        .await
        .unwrap()
        .iter()
        .filter(|event| event.distinct_id == tag)
        .filter_map(|event| event.property("visits").and_then(serde_json::Value::as_i64))
        .collect();
    assert_eq!(visits, [1, 2], "each writer bumped what the other left");
}

/// A person row with a generated timestamp, for the sql_mode scenarios.
#[derive(Debug, Clone, TrackedModel)]
#[tracked(table = "st_people", distinct_id = id)]
struct ModePerson {
    #[tracked(key, property)]
    id: String,
    #[tracked(person)]
    email: String,
    #[tracked(generated, property)]
    created_at: chrono::DateTime<chrono::Utc>,
}

/// Every kind of tracked write, a dead letter, its requeue and a backfill, on a MySQL/MariaDB
/// pool whose sessions run `session`: every committed event arrives once, its strings byte
/// for byte, and the outbox ends empty.
async fn every_operation_under(scenario: &str, session: &'static str) {
    let Some(url) = database_url("MYSQL_URL") else {
        return;
    };
    let pool = posthog_track_tests::isolated_mysql_with_session(&url, scenario, session).await;
    posthog_track_tests::execute(
        &pool,
        "CREATE TABLE st_people (id VARCHAR(100) PRIMARY KEY, email TEXT NOT NULL, \
         created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)) DEFAULT CHARSET = utf8mb4",
    )
    .await;
    let mock = MockPostHog::start().await;
    mock.reject_events_where(|event| event["event"] == "poison");
    let tracker = committer(&mock);
    tracker.migrate(&pool).await.unwrap();
    tracker.migrate(&pool).await.unwrap();
    let tag = unique("sql-mode");
    let email = |n: usize| format!("{BMP_TEXT} {EMOJI_TEXT} \\\\n\\0 {n}@example.com");
    let people: Vec<ModePerson> = (0..4)
        .map(|n| ModePerson {
            id: format!("{tag}-{n}"),
            email: email(n),
            created_at: chrono::DateTime::UNIX_EPOCH,
        })
        .collect();
    let mut tx = tracker.begin(&pool).await.unwrap();
    let stored = ModePerson::insert_all(&people, &mut tx).await.unwrap();
    let mut changed = stored[0].clone();
    changed.email = format!("{} changed", email(0));
    changed.update_changed(&stored[0], &mut tx).await.unwrap();
    let upserted = ModePerson {
        id: format!("{tag}-u"),
        ..people[1].clone()
    };
    assert!(matches!(
        upserted.clone().upsert(&mut tx).await.unwrap(),
        posthog_track::Upserted::Inserted(_)
    ));
    assert!(matches!(
        upserted.upsert(&mut tx).await.unwrap(),
        posthog_track::Upserted::Updated(_)
    ));
    stored[1].delete(&mut tx).await.unwrap();
    tx.set_distinct_id(tag.clone());
    tx.capture(Event::new("poison").property("text", EMOJI_TEXT))
        .unwrap();
    let staged: std::collections::BTreeMap<Uuid, serde_json::Value> = tx
        .staged()
        .iter()
        .map(|event| (event.uuid, serde_json::from_str(&event.payload).unwrap()))
        .collect();
    tx.commit().await.unwrap();
    let drained = tracker.relay(pool.clone()).drain_for(WAIT).await;
    assert!(
        matches!(
            drained,
            Err(posthog_track::Error::Undelivered { dead: 1, .. })
        ),
        "{drained:?}"
    );
    let status = tracker.outbox(&pool).status().await.unwrap();
    assert_eq!((status.pending, status.dead), (0, 1), "{status:?}");
    mock.reject_events_where(|_| false);
    assert_eq!(tracker.outbox(&pool).requeue(None).await.unwrap(), 1);
    tracker.relay(pool.clone()).drain_for(WAIT).await.unwrap();
    let received: Vec<_> = mock
        .events()
        .into_iter()
        .filter(|event| staged.contains_key(&event.uuid))
        .collect();
    assert_eq!(received.len(), staged.len(), "each event once");
    for event in &received {
        assert_eq!(event.raw["properties"], staged[&event.uuid]["properties"]);
    }
    let report = tracker.backfill::<ModePerson>(&pool).run().await.unwrap();
    assert!(report.complete && report.person_updates == 4, "{report}");
    tracker.relay(pool.clone()).drain_for(WAIT).await.unwrap();
    let backfilled: BTreeSet<String> = mock
        .events()
        .into_iter()
        .filter(|event| event.event == "$set" && event.distinct_id.starts_with(&tag))
        .map(|event| {
            event.properties["$set"]["email"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let expected = BTreeSet::from([
        format!("{} changed", email(0)),
        email(1),
        email(2),
        email(3),
    ]);
    assert_eq!(backfilled, expected);
    let status = tracker.outbox(&pool).status().await.unwrap();
    assert_eq!((status.pending, status.dead), (0, 0), "{status:?}");
}

// The sql_mode settings an operator may give a server: ANSI (ANSI_QUOTES, PIPES_AS_CONCAT,
// ONLY_FULL_GROUP_BY, ...) with NO_BACKSLASH_ESCAPES and the zero-date rules, strict mode
// off, and a session time zone other than UTC. Every statement binds its values and quotes
// identifiers with backticks, so none of them changes what is written or sent.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_under_ansi_sql_mode() {
    every_operation_under(
        "sql_mode_ansi",
        "SET SESSION sql_mode = 'ANSI,NO_BACKSLASH_ESCAPES,STRICT_ALL_TABLES,NO_ZERO_DATE,\
         NO_ZERO_IN_DATE,ERROR_FOR_DIVISION_BY_ZERO'",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_without_strict_mode() {
    every_operation_under("sql_mode_lax", "SET SESSION sql_mode = ''").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_in_another_time_zone() {
    every_operation_under("time_zone_ist", "SET time_zone = '+05:30'").await;
}

// `outbox purge` through a pool whose sessions run with autocommit off: the DELETE opened a
// transaction nothing committed, so purge reported the dead events gone while they stayed
// (until the connection's next transaction committed it, or its close rolled it back). It
// runs in a transaction of its own.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_without_autocommit_is_committed() {
    let Some(url) = database_url("MYSQL_URL") else {
        return;
    };
    let (pool, plain) =
        with_session_and_plain(&url, "purge_autocommit_off", "SET autocommit = 0").await;
    let mock = MockPostHog::start().await;
    mock.reject_events_where(|event| event["event"] == "refused");
    let tracker = committer(&mock);
    tracker.migrate(&plain).await.unwrap();
    let tag = unique("purge-autocommit");
    let mut tx = tracker.begin(&pool).await.unwrap();
    tx.set_distinct_id(tag.clone());
    tx.capture(Event::new("refused")).unwrap();
    // Accepted in the same round, so the refusal is the event's fault.
    tx.capture(Event::new("accepted")).unwrap();
    tx.commit().await.unwrap();
    assert!(tracker.relay(plain.clone()).drain_for(WAIT).await.is_err());
    assert_eq!(tracker.outbox(&plain).status().await.unwrap().dead, 1);
    assert_eq!(tracker.outbox(&pool).purge(None).await.unwrap(), 1);
    assert_eq!(
        tracker.outbox(&plain).status().await.unwrap().dead,
        0,
        "the purge is committed"
    );
}

// A backfill through a pool whose sessions run with autocommit off: the checkpoint's creation
// (and a restart's reset) ran outside any transaction, so it opened one that nothing
// committed, and went back to the pool holding the checkpoint row's lock. The first page,
// on another of the pool's connections, waited on that lock for its advance until the lock
// wait timeout, and the run failed. Both now end with an explicit `COMMIT` on MySQL.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_without_autocommit_keeps_its_checkpoint() {
    let Some(url) = database_url("MYSQL_URL") else {
        return;
    };
    let (pool, plain) = with_session_and_plain(
        &url,
        "backfill_autocommit_off",
        "SET autocommit = 0, innodb_lock_wait_timeout = 2",
    )
    .await;
    let mock = MockPostHog::start().await;
    let tracker = committer(&mock);
    tracker.migrate(&plain).await.unwrap();
    sqlx::query("CREATE TABLE sp_people (id VARCHAR(50) PRIMARY KEY, email TEXT NOT NULL)")
        .execute(&plain)
        .await
        .unwrap();
    sqlx::query("INSERT INTO sp_people VALUES ('p1', 'p1@example.com'), ('p2', 'p2@example.com')")
        .execute(&plain)
        .await
        .unwrap();
    // Several idle connections, so the checkpoint's and the page's are not the same one.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(pool.acquire().await.unwrap());
    }
    drop(held);
    for restart in [false, true] {
        let mut backfill = tracker.backfill::<Person>(&pool).page_size(1);
        if restart {
            backfill = backfill.restart();
        }
        let report = backfill.run().await.unwrap();
        assert!(report.complete && report.rows == 2, "{report}");
    }
    let again = tracker.backfill::<Person>(&plain).run().await.unwrap();
    assert!(
        again.already_complete,
        "the checkpoint is committed: {again}"
    );
}

/// A MariaDB database of its own for `scenario`: a pool whose sessions begin with `session`,
/// and a plain pool on the same database, to set it up and look at it from outside.
async fn with_session_and_plain(
    url: &str,
    scenario: &str,
    session: &'static str,
) -> (sqlx::MySqlPool, sqlx::MySqlPool) {
    let pool = posthog_track_tests::isolated_mysql_with_session(url, scenario, session).await;
    let database: String = sqlx::query_scalar("SELECT DATABASE()")
        .fetch_one(&pool)
        .await
        .unwrap();
    let plain =
        sqlx::MySqlPool::connect(&format!("{}/{database}", url.rsplit_once('/').unwrap().0))
            .await
            .unwrap();
    (pool, plain)
}
