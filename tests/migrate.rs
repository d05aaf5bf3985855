//! The outbox's own migrations: racing replicas, a forgotten `migrate`, and tables created by
//! the previous version, with events in them, upgraded in place.

use posthog_track::testing::MockPostHog;
use posthog_track::{Backend, Error, Event, Tracker};
use posthog_track_tests::{execute, on_every_backend, tracker_for, unique};
use sqlx::Pool;
use sqlx::query::Query;

/// The outbox as the previous version created it (dead rows kept in place with `status = 1`).
fn previous_layout(dialect: posthog_track::Dialect) -> &'static str {
    match dialect {
        posthog_track::Dialect::Postgres => {
            "CREATE TABLE posthog_outbox (id BIGSERIAL PRIMARY KEY, uuid TEXT NOT NULL, \
             event TEXT NOT NULL, distinct_id TEXT NOT NULL, timestamp TEXT NOT NULL, \
             payload TEXT NOT NULL, status BIGINT NOT NULL DEFAULT 0, \
             attempts BIGINT NOT NULL DEFAULT 0, leased_until BIGINT, claim BIGINT, \
             last_error TEXT)"
        }
        posthog_track::Dialect::MySql => {
            "CREATE TABLE posthog_outbox (id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, \
             uuid CHAR(36) NOT NULL, event TEXT NOT NULL, distinct_id TEXT NOT NULL, \
             timestamp VARCHAR(40) NOT NULL, payload MEDIUMTEXT NOT NULL, \
             status BIGINT NOT NULL DEFAULT 0, attempts BIGINT NOT NULL DEFAULT 0, \
             leased_until BIGINT NULL, claim BIGINT NULL, last_error TEXT NULL) \
             DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin"
        }
        _ => {
            "CREATE TABLE posthog_outbox (id INTEGER PRIMARY KEY, uuid TEXT NOT NULL, \
             event TEXT NOT NULL, distinct_id TEXT NOT NULL, timestamp TEXT NOT NULL, \
             payload TEXT NOT NULL, status INTEGER NOT NULL DEFAULT 0, \
             attempts INTEGER NOT NULL DEFAULT 0, leased_until INTEGER, claim INTEGER, \
             last_error TEXT)"
        }
    }
}

on_every_backend!(replicas_migrating_at_once_all_succeed);

/// Ten replicas start together and all run `migrate`: every one succeeds (PostgreSQL alone
/// raced on `CREATE TABLE IF NOT EXISTS` before: a unique violation on `pg_type`).
async fn replicas_migrating_at_once_all_succeed<DB: Backend>(pool: &Pool<DB>, _url: &str) {
    let tracker = Tracker::builder().build();
    migrate_at_once(&tracker, pool, 10).await;
    assert_eq!(tracker.outbox(pool).len().await.unwrap(), 0);
    assert_eq!(
        tracker.outbox(pool).schema_version().await.unwrap(),
        Some(posthog_track::outbox::SCHEMA_VERSION),
        "the version is recorded once, whoever ran it"
    );
}

on_every_backend!(a_forgotten_migrate_says_what_to_do);

async fn a_forgotten_migrate_says_what_to_do<DB: Backend>(pool: &Pool<DB>, _url: &str) {
    let mock = MockPostHog::start().await;
    let tracker = tracker_for(&mock).external_relay(true).build();
    let mut tx = tracker.begin(pool).await.unwrap();
    tx.set_distinct_id("u");
    tx.capture(Event::new("e")).unwrap();
    let error = tx.commit().await.unwrap_err();
    assert!(matches!(error, Error::OutboxMissing { .. }), "{error}");
    let text = error.to_string();
    assert!(
        text.contains("tracker.migrate(&pool)") && text.contains("create_table_sql"),
        "{text}"
    );
}

/// `replicas` copies of `tracker` run `migrate` at once; every one must succeed.
async fn migrate_at_once<DB: Backend>(tracker: &Tracker, pool: &Pool<DB>, replicas: usize) {
    let replicas: Vec<_> = (0..replicas)
        .map(|_| {
            let (tracker, pool) = (tracker.clone(), pool.clone());
            tokio::spawn(async move { tracker.migrate(&pool).await })
        })
        .collect();
    for replica in replicas {
        replica.await.unwrap().unwrap();
    }
}

/// An INSERT of one outbox event (`event`, numbered `n`, for `tag`) as an older version wrote
/// it: the five columns every version has, bound, then the `more` columns, which the caller
/// binds.
fn old_outbox_row<DB: Backend>(
    tag: &str,
    event: &str,
    n: i64,
    more: &[&str],
) -> Query<'static, DB, <DB as sqlx::Database>::Arguments> {
    let uuid = uuid::Uuid::new_v4().to_string();
    let timestamp = "2026-01-01T00:00:00.000000Z";
    let payload = serde_json::json!({
        "uuid": uuid, "event": event, "distinct_id": tag,
        "timestamp": timestamp, "properties": {"n": n}
    })
    .to_string();
    let columns: Vec<&str> = ["uuid", "event", "distinct_id", "timestamp", "payload"]
        .into_iter()
        .chain(more.iter().copied())
        .collect();
    let placeholders: Vec<String> = (1..=columns.len())
        .map(|n| {
            let mut placeholder = String::new();
            DB::DIALECT.push_placeholder(&mut placeholder, n);
            placeholder
        })
        .collect();
    let sql = format!(
        "INSERT INTO posthog_outbox ({}) VALUES ({})",
        columns.join(", "),
        placeholders.join(", ")
    );
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for text in [uuid.as_str(), event, tag, timestamp, &payload] {
        query = DB::bind_text(query, text);
    }
    query
}

on_every_backend!(an_outbox_of_the_previous_version_is_upgraded_in_place);

/// A table created by the previous layout, with pending and dead events in it, is upgraded by
/// `migrate` (by several replicas at once, then once more, to show it is safe concurrently
/// and idempotent) without losing any; the schema version is recorded, and delivery goes on.
async fn an_outbox_of_the_previous_version_is_upgraded_in_place<DB: Backend>(
    pool: &Pool<DB>,
    _url: &str,
) {
    let mut conn = pool.acquire().await.unwrap();
    DB::execute(&mut conn, sqlx::query(previous_layout(DB::DIALECT)))
        .await
        .unwrap();
    let tag = unique("upgrade");
    for (n, status) in [(0, 0), (1, 1), (2, 0)] {
        let query = old_outbox_row::<DB>(&tag, "old", n, &["status", "last_error"]);
        let query = DB::bind_i64(query, status);
        let query = DB::bind_text(query, if status == 1 { "400 Bad Request" } else { "" });
        DB::execute(&mut conn, query).await.unwrap();
    }
    drop(conn);

    let mock = MockPostHog::start().await;
    let tracker = tracker_for(&mock).external_relay(true).build();
    assert_eq!(tracker.outbox(pool).schema_version().await.unwrap(), None);
    migrate_at_once(&tracker, pool, 4).await;
    tracker.migrate(pool).await.unwrap();
    assert_eq!(
        tracker.outbox(pool).schema_version().await.unwrap(),
        Some(posthog_track::outbox::SCHEMA_VERSION)
    );
    let columns = tracker.outbox(pool).columns().await.unwrap();
    for column in posthog_track::outbox::COLUMNS {
        assert!(
            columns.iter().any(|c| c == column),
            "{column} after the upgrade"
        );
    }
    let status = tracker.outbox(pool).status().await.unwrap();
    assert_eq!((status.pending, status.dead), (2, 1), "no event lost");
    assert_eq!(status.dead_reasons[0].0, "400 Bad Request");

    tracker.relay(pool.clone()).drain().await.unwrap();
    assert_eq!(mock.events().len(), 2, "the pending events are delivered");
    assert_eq!(tracker.outbox(pool).requeue(None).await.unwrap(), 1);
    tracker.relay(pool.clone()).drain().await.unwrap();
    assert_eq!(mock.events().len(), 3);
}

on_every_backend!(tables_without_the_historical_flag_gain_it);

/// The outbox and dead-letter tables of schema version 1 (before backfills: no `historical`
/// column) gain the column through step 2, with their events kept and sent as before.
async fn tables_without_the_historical_flag_gain_it<DB: Backend>(pool: &Pool<DB>, _url: &str) {
    let mock = MockPostHog::start().await;
    let tracker = tracker_for(&mock).external_relay(true).build();
    tracker.migrate(pool).await.unwrap();
    let mut conn = pool.acquire().await.unwrap();
    for sql in [
        "ALTER TABLE posthog_outbox DROP COLUMN historical",
        "ALTER TABLE posthog_outbox_dead DROP COLUMN historical",
        "DELETE FROM posthog_outbox_schema WHERE version >= 2",
    ] {
        DB::execute(&mut conn, sqlx::query(sql)).await.unwrap();
    }
    let tag = unique("historical");
    for n in 0..2 {
        let query = old_outbox_row::<DB>(&tag, "before", n, &[]);
        DB::execute(&mut conn, query).await.unwrap();
    }
    drop(conn);
    assert!(
        tracker.relay(pool.clone()).drain().await.is_err(),
        "this version's relay needs the column"
    );
    tracker.migrate(pool).await.unwrap();
    tracker.relay(pool.clone()).drain().await.unwrap();
    assert_eq!(mock.events().len(), 2);
    assert!(
        mock.requests()
            .iter()
            .all(|request| !request.historical_migration)
    );
}

on_every_backend!(a_new_outbox_is_created_not_upgraded);

/// `migrate` on a database without an outbox says it created the tables, at which schema
/// version, once; it does not report each step as an upgrade, which reads as if existing data
/// had been changed. A table that existed before is upgraded, and says so by step; a migrate
/// with nothing to do says nothing.
async fn a_new_outbox_is_created_not_upgraded<DB: Backend>(pool: &Pool<DB>, _url: &str) {
    use tracing_subscriber::layer::SubscriberExt as _;
    let logs = posthog_track_tests::LogLines::at(tracing::Level::INFO);
    let _subscriber =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(logs.clone()));
    let tracker = Tracker::builder().build();
    tracker.migrate(pool).await.unwrap();
    let version = posthog_track::outbox::SCHEMA_VERSION;
    assert_eq!(
        logs.take(),
        [format!("outbox tables created version={version}")]
    );

    tracker.migrate(pool).await.unwrap();
    assert_eq!(logs.take(), Vec::<String>::new(), "nothing to do");

    for sql in [
        "ALTER TABLE posthog_outbox DROP COLUMN historical",
        "ALTER TABLE posthog_outbox_dead DROP COLUMN historical",
        "DELETE FROM posthog_outbox_schema WHERE version >= 2",
    ] {
        execute(pool, sql).await;
    }
    tracker.migrate(pool).await.unwrap();
    let logs = logs.take();
    assert_eq!(logs.len(), 1, "{logs:?}");
    assert!(
        logs[0].starts_with("outbox schema upgraded version=2 step="),
        "{logs:?}"
    );
}

on_every_backend!(tables_created_from_the_script_know_their_version);

/// The outbox created from `create_table_sql` in the application's own migrations records its
/// schema version as `migrate` does, so `migrate` and `doctor` know it (before, `doctor` warned
/// of an unversioned outbox), and `migrate` afterwards is a no-op.
async fn tables_created_from_the_script_know_their_version<DB: Backend>(
    pool: &Pool<DB>,
    _url: &str,
) {
    let script = posthog_track::outbox::create_table_sql(DB::DIALECT);
    for statement in script.split(";\n") {
        execute(pool, statement).await;
    }
    let tracker = Tracker::builder().build();
    let version = || async { tracker.outbox(pool).schema_version().await.unwrap() };
    assert_eq!(version().await, Some(posthog_track::outbox::SCHEMA_VERSION));
    tracker.migrate(pool).await.unwrap();
    assert_eq!(version().await, Some(posthog_track::outbox::SCHEMA_VERSION));
    let mut tx = tracker.begin(pool).await.unwrap();
    tx.set_distinct_id("u");
    tx.capture(Event::new("e")).unwrap();
    tx.commit().await.unwrap();
}

on_every_backend!(the_script_over_a_previous_outbox_still_upgrades_it);

/// The script run over an outbox an older version created (its `CREATE TABLE IF NOT EXISTS`
/// keeps the old table, yet it records the versions) does not make `migrate` skip the
/// upgrade: the missing columns are added and the old dead rows moved.
async fn the_script_over_a_previous_outbox_still_upgrades_it<DB: Backend>(
    pool: &Pool<DB>,
    _url: &str,
) {
    execute(pool, previous_layout(DB::DIALECT)).await;
    execute(
        pool,
        "INSERT INTO posthog_outbox (uuid, event, distinct_id, timestamp, payload, status, \
         last_error) VALUES ('00000000-0000-0000-0000-000000000001', 'old', 'd', \
         '2026-01-01T00:00:00.000000Z', '{}', 0, NULL), \
         ('00000000-0000-0000-0000-000000000002', 'old', 'd', \
         '2026-01-01T00:00:00.000000Z', '{}', 1, '400 Bad Request')",
    )
    .await;
    for statement in posthog_track::outbox::create_table_sql(DB::DIALECT).split(";\n") {
        execute(pool, statement).await;
    }
    let tracker = Tracker::builder().build();
    tracker.migrate(pool).await.unwrap();
    let columns = tracker.outbox(pool).columns().await.unwrap();
    for column in posthog_track::outbox::COLUMNS {
        assert!(
            columns.iter().any(|c| c == column),
            "{column} missing: {columns:?}"
        );
    }
    let status = tracker.outbox(pool).status().await.unwrap();
    assert_eq!((status.pending, status.dead), (1, 1));
}

/// On PostgreSQL the script can join the application's migrations after `migrate` made the
/// outbox (the README's two routes, taken one after the other): it keeps what is there.
#[tokio::test]
async fn the_script_runs_over_an_outbox_that_migrate_made_on_postgres() {
    let Some(url) = posthog_track_tests::database_url("POSTGRES_URL") else {
        return;
    };
    let pool = posthog_track_tests::isolated_postgres(&url, "script_after_migrate").await;
    let tracker = Tracker::builder().build();
    tracker.migrate(&pool).await.unwrap();
    let script = posthog_track::outbox::create_table_sql(posthog_track::Dialect::Postgres);
    for statement in script.split(";\n") {
        execute(&pool, statement).await;
    }
    assert_eq!(
        tracker.outbox(&pool).schema_version().await.unwrap(),
        Some(posthog_track::outbox::SCHEMA_VERSION)
    );
    tracker.migrate(&pool).await.unwrap();
}

/// MySQL/MariaDB: migrations serialise on a named lock, and MySQL's named locks belong to the
/// server, not to a database: a migration of one database (another application, another
/// tenant, a slow upgrade) held up `migrate` of every other database on the server, which
/// failed after 60 s. The lock is the database's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_of_another_database_does_not_hold_this_one_up() {
    let Some(url) = posthog_track_tests::database_url("MYSQL_URL") else {
        return;
    };
    let other = posthog_track_tests::isolated_mysql(&url, "migrate_lock_other").await;
    let this = posthog_track_tests::isolated_mysql(&url, "migrate_lock_this").await;
    let mock = MockPostHog::start().await;
    let tracker = tracker_for(&mock).build();
    tracker.migrate(&other).await.unwrap();
    // A migration of the other database in progress holds its lock (under this version's name,
    // and an earlier version's).
    let mut migrating = other.acquire().await.unwrap();
    let lock = "SELECT GET_LOCK(CONCAT('posthog_outbox_migrate.', MD5(DATABASE())), 0), \
                GET_LOCK('posthog_outbox_migrate', 0)";
    sqlx::query(lock).execute(&mut *migrating).await.unwrap();
    let migrated =
        tokio::time::timeout(std::time::Duration::from_secs(30), tracker.migrate(&this)).await;
    sqlx::query("SELECT RELEASE_ALL_LOCKS()")
        .execute(&mut *migrating)
        .await
        .unwrap();
    migrated
        .expect("migrate waited for another database's migration")
        .unwrap();
}
