//! What a model's writes return and send, on SQLite, PostgreSQL and MariaDB: generated keys read
//! back as the row they belong to, values as the database stores them, person properties that
//! are absent left out of `$set`, and rows loaded and locked in the transaction that changes
//! them.

use chrono::{DateTime, TimeZone, Utc};
use posthog_track::{Backend, Error, TrackedModel, TrackedRow, Tracker};
use posthog_track_examples::memory_database;
use posthog_track_tests::{
    database_url, insert_committed, isolated_mysql, isolated_postgres, unique,
};
use serde_json::{Value, json};
use sqlx::Pool;

/// A key the database generates that is not a number: a UUID default.
#[derive(Debug, Clone, PartialEq, TrackedModel)]
#[tracked(table = "mc_devices", distinct_id = owner)]
struct Device {
    #[tracked(key, generated, property = "device_id")]
    id: String,
    #[tracked(property)]
    owner: String,
}

/// A key type the derive cannot judge by its name: whether MySQL can read it back is asked of
/// the database before the insert.
#[derive(Debug, Clone, PartialEq, sqlx::Type, serde::Serialize)]
#[sqlx(transparent)]
struct DeviceId(String);

/// The same table as [`Device`], through a newtype key.
#[derive(Debug, Clone, PartialEq, TrackedModel)]
#[tracked(table = "mc_devices", distinct_id = owner)]
struct TypedDevice {
    #[tracked(key, generated, property = "device_id")]
    id: DeviceId,
    #[tracked(property)]
    owner: String,
}

/// An AUTO_INCREMENT key, inserted first so that the connection's LAST_INSERT_ID() is set.
#[derive(Debug, Clone, PartialEq, TrackedModel)]
#[tracked(table = "mc_counters", distinct_id = owner)]
struct Counter {
    #[tracked(key, generated, property = "counter_id")]
    id: i64,
    #[tracked(property)]
    owner: String,
}

/// A value the database stores with less precision than it has in memory.
#[derive(Debug, Clone, PartialEq, TrackedModel)]
#[tracked(table = "mc_readings", distinct_id = owner, identify)]
struct Reading {
    #[tracked(key, property = "reading_id")]
    id: String,
    #[tracked(property)]
    owner: String,
    #[tracked(property)]
    taken_at: DateTime<Utc>,
    #[tracked(person)]
    nickname: Option<String>,
    #[tracked(person_once)]
    first_source: Option<String>,
    #[tracked(property)]
    note: Option<String>,
}

/// A composite key, for `load_for_update`.
#[derive(Debug, Clone, PartialEq, TrackedModel)]
#[tracked(table = "mc_seats", distinct_id = account)]
struct Seat {
    #[tracked(key, property)]
    account: String,
    #[tracked(key, property)]
    team: String,
    #[tracked(property)]
    role: String,
}

/// A column the database computes from others, on every update too.
#[derive(Debug, Clone, PartialEq, TrackedModel)]
#[tracked(table = "mc_lines", distinct_id = id)]
struct Line {
    #[tracked(key, property)]
    id: String,
    #[tracked(property)]
    qty: i64,
    #[tracked(property)]
    unit_price: i64,
    #[tracked(generated, property)]
    total: i64,
}

/// Every column is a key: an update has nothing to write.
#[derive(Debug, Clone, PartialEq, TrackedModel)]
#[tracked(table = "mc_members", distinct_id = user_id)]
struct Member {
    #[tracked(key, property)]
    user_id: String,
    #[tracked(key, property)]
    team_id: String,
}

/// Columns whose names contain a dot: one identifier each, not `"app"."version"`.
#[derive(Debug, Clone, PartialEq, TrackedModel)]
#[tracked(table = "mc_dotted", distinct_id = id)]
struct Dotted {
    #[tracked(key, property, column = "dotted.id")]
    id: String,
    #[tracked(person = "app_version", column = "app.version")]
    version: String,
}

const SQLITE_SCHEMA: &str = r#"
    CREATE TABLE mc_devices (id TEXT PRIMARY KEY DEFAULT (lower(hex(randomblob(16)))),
                             owner TEXT NOT NULL);
    CREATE TABLE mc_counters (id INTEGER PRIMARY KEY AUTOINCREMENT, owner TEXT NOT NULL);
    CREATE TABLE mc_readings (id TEXT PRIMARY KEY, owner TEXT NOT NULL, taken_at TEXT NOT NULL,
                              nickname TEXT, first_source TEXT, note TEXT);
    CREATE TABLE mc_seats (account TEXT NOT NULL, team TEXT NOT NULL, role TEXT NOT NULL,
                           PRIMARY KEY (account, team));
    CREATE TABLE mc_lines (id TEXT PRIMARY KEY, qty INTEGER NOT NULL, unit_price INTEGER NOT NULL,
                           total INTEGER GENERATED ALWAYS AS (qty * unit_price) STORED);
    CREATE TABLE mc_members (user_id TEXT NOT NULL, team_id TEXT NOT NULL,
                             PRIMARY KEY (user_id, team_id));
    CREATE TABLE mc_dotted ("dotted.id" TEXT PRIMARY KEY, "app.version" TEXT NOT NULL);
"#;

const POSTGRES_SCHEMA: &str = r#"
    CREATE TABLE mc_devices (id TEXT PRIMARY KEY DEFAULT gen_random_uuid()::text,
                             owner TEXT NOT NULL);
    CREATE TABLE mc_counters (id BIGSERIAL PRIMARY KEY, owner TEXT NOT NULL);
    CREATE TABLE mc_readings (id TEXT PRIMARY KEY, owner TEXT NOT NULL,
                              taken_at TIMESTAMPTZ NOT NULL,
                              nickname TEXT, first_source TEXT, note TEXT);
    CREATE TABLE mc_seats (account TEXT NOT NULL, team TEXT NOT NULL, role TEXT NOT NULL,
                           PRIMARY KEY (account, team));
    CREATE TABLE mc_lines (id TEXT PRIMARY KEY, qty BIGINT NOT NULL, unit_price BIGINT NOT NULL,
                           total BIGINT GENERATED ALWAYS AS (qty * unit_price) STORED);
    CREATE TABLE mc_members (user_id TEXT NOT NULL, team_id TEXT NOT NULL,
                             PRIMARY KEY (user_id, team_id));
    CREATE TABLE mc_dotted ("dotted.id" TEXT PRIMARY KEY, "app.version" TEXT NOT NULL);
"#;

// `taken_at` is a DATETIME without fractional seconds: MariaDB keeps whole seconds.
const MYSQL_SCHEMA: &str = r#"
    CREATE TABLE mc_devices (id CHAR(36) NOT NULL DEFAULT (UUID()) PRIMARY KEY,
                             owner VARCHAR(100) NOT NULL) ENGINE=InnoDB;
    CREATE TABLE mc_counters (id BIGINT AUTO_INCREMENT PRIMARY KEY,
                              owner VARCHAR(100) NOT NULL) ENGINE=InnoDB;
    CREATE TABLE mc_readings (id VARCHAR(100) PRIMARY KEY, owner VARCHAR(100) NOT NULL,
                              taken_at DATETIME NOT NULL,
                              nickname TEXT, first_source TEXT, note TEXT) ENGINE=InnoDB;
    CREATE TABLE mc_seats (account VARCHAR(100) NOT NULL, team VARCHAR(100) NOT NULL,
                           role TEXT NOT NULL, PRIMARY KEY (account, team)) ENGINE=InnoDB;
    CREATE TABLE mc_lines (id VARCHAR(100) PRIMARY KEY, qty BIGINT NOT NULL,
                           unit_price BIGINT NOT NULL,
                           total BIGINT AS (qty * unit_price) STORED) ENGINE=InnoDB;
    CREATE TABLE mc_members (user_id VARCHAR(100) NOT NULL, team_id VARCHAR(100) NOT NULL,
                             PRIMARY KEY (user_id, team_id)) ENGINE=InnoDB;
    CREATE TABLE mc_dotted (`dotted.id` VARCHAR(100) PRIMARY KEY,
                            `app.version` TEXT NOT NULL) ENGINE=InnoDB;
"#;

/// A tracker without an API key (it prints its events), its outbox migrated on `pool`.
async fn migrated_printer<DB: Backend>(pool: &Pool<DB>) -> Tracker {
    let tracker = Tracker::builder().build();
    tracker.migrate(pool).await.unwrap();
    tracker
}

async fn sqlite() -> sqlx::SqlitePool {
    // One connection: an in-memory database exists per connection.
    let pool = memory_database().await.unwrap();
    sqlx::raw_sql(SQLITE_SCHEMA).execute(&pool).await.unwrap();
    pool
}

async fn postgres(scenario: &str) -> Option<sqlx::PgPool> {
    let url = database_url("POSTGRES_URL")?;
    let pool = isolated_postgres(&url, scenario).await;
    sqlx::raw_sql(POSTGRES_SCHEMA).execute(&pool).await.unwrap();
    Some(pool)
}

async fn mysql(scenario: &str) -> Option<sqlx::MySqlPool> {
    let url = database_url("MYSQL_URL")?;
    let pool = isolated_mysql(&url, scenario).await;
    sqlx::raw_sql(MYSQL_SCHEMA).execute(&pool).await.unwrap();
    Some(pool)
}

/// The three tests of `$scenario`: on an in-memory SQLite database, and on a PostgreSQL schema
/// and a MariaDB database of their own named `$name`.
macro_rules! model_tests {
    ($scenario:ident, $name:literal, $sqlite:ident, $postgres:ident, $mysql:ident) => {
        #[tokio::test]
        async fn $sqlite() {
            $scenario(&sqlite().await).await;
        }

        #[tokio::test]
        async fn $postgres() {
            if let Some(pool) = postgres($name).await {
                $scenario(&pool).await;
            }
        }

        #[tokio::test]
        async fn $mysql() {
            if let Some(pool) = mysql($name).await {
                $scenario(&pool).await;
            }
        }
    };
}

// ---------------------------------------------------------------------------------------------
// #13.1: a generated key that is not AUTO_INCREMENT on MySQL/MariaDB.

/// MySQL has no RETURNING, so a generated key is found again by LAST_INSERT_ID(), which only an
/// AUTO_INCREMENT column sets. For a `CHAR(36) DEFAULT (UUID())` key it still holds the id of
/// the connection's previous insert: the insert must be refused, before anything is written,
/// rather than return (and send) another row.
#[tokio::test]
async fn mysql_generated_key_that_is_not_auto_increment_is_refused_before_writing() {
    let Some(pool) = mysql("mc_uuid_key").await else {
        return;
    };
    let tracker = migrated_printer(&pool).await;
    let owner = unique("device-owner");
    let mut tx = tracker.begin(&pool).await.unwrap();
    // Sets the connection's LAST_INSERT_ID().
    let counter = new_counter(&owner).insert(&mut tx).await.unwrap();
    assert!(counter.id > 0);
    let error = Device {
        id: String::new(),
        owner: owner.clone(),
    }
    .insert(&mut tx)
    .await
    .unwrap_err();
    match &error {
        Error::Unsupported {
            operation, reason, ..
        } => {
            assert_eq!(operation, "insert into `mc_devices`");
            assert!(reason.contains("AUTO_INCREMENT"), "{reason}");
        }
        other => panic!("expected Error::Unsupported, got {other:?}"),
    }
    assert_eq!(devices(&mut tx).await, 0, "nothing was written");
    assert_eq!(tx.staged().len(), 1, "only the counter's event is staged");

    // A key type whose SQL type the derive cannot see: the database's own description of the
    // column decides, still before anything is written.
    let error = TypedDevice {
        id: DeviceId(String::new()),
        owner: owner.clone(),
    }
    .insert(&mut tx)
    .await
    .unwrap_err();
    assert!(
        matches!(&error, Error::Unsupported { reason, .. } if reason.contains("AUTO_INCREMENT")),
        "{error:?}"
    );
    assert_eq!(devices(&mut tx).await, 0, "nothing was written");
    // An AUTO_INCREMENT key still reads back its own row, also after the refusals.
    let second = new_counter(&owner).insert(&mut tx).await.unwrap();
    assert!(second.id > counter.id);
    assert_eq!(second.owner, owner);
    tx.rollback().await.unwrap();
}

/// A counter of `owner`'s, its key left to `AUTO_INCREMENT`.
fn new_counter(owner: &str) -> Counter {
    Counter {
        id: 0,
        owner: owner.to_owned(),
    }
}

/// The rows of `mc_devices`, as `tx` sees them.
async fn devices(tx: &mut posthog_track::TrackedTransaction<'_, sqlx::MySql>) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM mc_devices")
        .fetch_one(&mut **tx.as_sqlx())
        .await
        .unwrap()
}

/// With RETURNING, the same model reads its generated text key back.
#[tokio::test]
async fn generated_text_key_reads_back_where_there_is_returning() {
    generated_text_key(&sqlite().await).await;
    if let Some(pool) = postgres("mc_uuid_key").await {
        generated_text_key(&pool).await;
    }
}

async fn generated_text_key<DB: Backend>(pool: &Pool<DB>)
where
    Device: TrackedRow<DB>,
{
    let tracker = migrated_printer(pool).await;
    let mut tx = tracker.begin(pool).await.unwrap();
    let device = Device {
        id: String::new(),
        owner: unique("owner"),
    }
    .insert(&mut tx)
    .await
    .unwrap();
    assert!(!device.id.is_empty());
    assert_eq!(
        tx.staged()[0].json()["properties"]["device_id"],
        json!(device.id)
    );
    tx.commit().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// #13.2: insert returns the row as stored, and the event carries the same values.

model_tests!(
    insert_returns_values_as_stored,
    "mc_as_stored",
    sqlite_insert_returns_values_as_stored,
    postgres_insert_returns_values_as_stored,
    mysql_insert_returns_values_as_stored
);

async fn insert_returns_values_as_stored<DB: TestDb>(pool: &Pool<DB>)
where
    Reading: TrackedRow<DB>,
{
    let tracker = migrated_printer(pool).await;
    // Nanoseconds: PostgreSQL keeps microseconds, this MariaDB column whole seconds.
    let taken_at = Utc
        .timestamp_opt(1_700_000_000, 123_456_789)
        .single()
        .unwrap();
    let reading = Reading {
        id: unique("reading"),
        owner: unique("owner"),
        taken_at,
        nickname: None,
        first_source: Some("import".to_owned()),
        note: None,
    };
    let mut tx = tracker.begin(pool).await.unwrap();
    let inserted = reading.clone().insert(&mut tx).await.unwrap();
    let event = tx.staged()[0].json();
    tx.commit().await.unwrap();

    let stored = DB::fetch_taken_at(pool, &reading.id).await;
    assert_eq!(
        inserted.taken_at, stored,
        "insert returns the value the database stored"
    );
    assert_eq!(
        event["properties"]["taken_at"],
        serde_json::to_value(stored).unwrap(),
        "the event carries the value the row holds"
    );
}

// ---------------------------------------------------------------------------------------------
// #13.3: absent person properties are left out of `$set`, as posthog-js and posthog-python do.

#[tokio::test]
async fn absent_person_properties_are_left_out_of_set() {
    let pool = sqlite().await;
    let tracker = migrated_printer(&pool).await;
    let owner = unique("owner");
    let reading = Reading {
        id: unique("reading"),
        owner: owner.clone(),
        taken_at: Utc.timestamp_opt(1_700_000_000, 0).single().unwrap(),
        nickname: None,
        first_source: Some("import".to_owned()),
        note: None,
    };
    let mut tx = tracker.begin(&pool).await.unwrap();
    let reading = reading.insert(&mut tx).await.unwrap();
    let mut named = reading.clone();
    named.nickname = Some("Ada".to_owned());
    named.first_source = None;
    named.update_changed(&reading, &mut tx).await.unwrap();
    let events: Vec<Value> = tx.staged().iter().map(|e| e.json()).collect();
    tx.commit().await.unwrap();

    let names: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "reading_created",
            "$identify",
            "reading_updated",
            "$identify"
        ]
    );
    let created = &events[0]["properties"];
    assert_eq!(
        created["nickname"],
        json!(null),
        "an event property keeps its null"
    );
    assert_eq!(created["note"], json!(null));
    assert!(
        created.get("$set").is_none(),
        "an absent person property is not set to null: {created}"
    );
    assert_eq!(created["$set_once"], json!({"first_source": "import"}));
    assert!(events[1]["properties"].get("$set").is_none());
    assert_eq!(
        events[1]["properties"]["$set_once"],
        json!({"first_source": "import"})
    );
    // The update: the nickname is set; the first source, now absent, is left alone.
    let updated = &events[2]["properties"];
    assert_eq!(updated["$set"], json!({"nickname": "Ada"}));
    assert_eq!(updated["first_source"], json!(null));
    assert!(updated.get("$set_once").is_none(), "{updated}");
    assert_eq!(events[3]["properties"]["$set"], json!({"nickname": "Ada"}));
}

// ---------------------------------------------------------------------------------------------
// #13.5: `load_for_update` reads `before` in the transaction that writes `after`, locked.

model_tests!(
    load_for_update,
    "mc_load",
    sqlite_load_for_update,
    postgres_load_for_update,
    mysql_load_for_update
);

async fn load_for_update<DB: TestDb>(pool: &Pool<DB>)
where
    Seat: TrackedRow<DB>,
    Reading: TrackedRow<DB>,
{
    let tracker = migrated_printer(pool).await;
    let account = unique("account");
    let seat = Seat {
        account: account.clone(),
        team: "core".to_owned(),
        role: "viewer".to_owned(),
    };
    let seat = insert_committed(&tracker, pool, seat).await;

    // Someone else changes the row after we read our copy.
    DB::set_role(pool, &account, "editor").await;

    let mut tx = tracker.begin(pool).await.unwrap();
    let key = (account.clone(), "core".to_owned());
    let before = Seat::load_for_update(&key, &mut tx)
        .await
        .unwrap()
        .expect("the row exists");
    assert_eq!(before.role, "editor", "the row as it is now, not our copy");
    assert_ne!(before, seat);
    let mut after = before.clone();
    after.role = "admin".to_owned();
    after.update_changed(&before, &mut tx).await.unwrap();
    let missing = Seat::load_for_update(&(account.clone(), "other".to_owned()), &mut tx)
        .await
        .unwrap();
    assert!(missing.is_none(), "no row, no model");
    let update = tx.staged()[0].json();
    tx.commit().await.unwrap();
    assert_eq!(
        update["properties"],
        json!({
            "$lib": update["properties"]["$lib"], "$lib_version": update["properties"]["$lib_version"],
            "account": account, "team": "core", "role": "admin",
        })
    );

    // A single key is the field's own type; the row comes back as stored.
    let reading = Reading {
        id: unique("reading"),
        owner: unique("owner"),
        taken_at: Utc.timestamp_opt(1_700_000_000, 0).single().unwrap(),
        nickname: Some("Ada".to_owned()),
        first_source: None,
        note: Some("ok".to_owned()),
    };
    let mut tx = tracker.begin(pool).await.unwrap();
    let reading = reading.insert(&mut tx).await.unwrap();
    let loaded = Reading::load_for_update(&reading.id, &mut tx)
        .await
        .unwrap();
    assert_eq!(loaded.as_ref(), Some(&reading));
    tx.rollback().await.unwrap();

    // SQLite locks the whole database, not rows: nothing to wait on there.
    if let Some(lock_timeout) = DB::LOCK_TIMEOUT {
        second_locker_waits(pool, lock_timeout).await;
    }
}

/// While one transaction holds the row from `load_for_update`, another one's `load_for_update`
/// of the same row waits: with a short lock timeout it fails instead of reading a stale row.
async fn second_locker_waits<DB: TestDb>(pool: &Pool<DB>, lock_timeout: &'static str)
where
    Seat: TrackedRow<DB>,
{
    let tracker = Tracker::builder().build();
    let account = unique("locked");
    let seat = Seat {
        account: account.clone(),
        team: "core".to_owned(),
        role: "viewer".to_owned(),
    };
    insert_committed(&tracker, pool, seat).await;

    let key = (account, "core".to_owned());
    let mut first = tracker.begin(pool).await.unwrap();
    assert!(
        Seat::load_for_update(&key, &mut first)
            .await
            .unwrap()
            .is_some()
    );
    let mut second = tracker.begin(pool).await.unwrap();
    DB::execute_in(&mut second, lock_timeout).await;
    let error = Seat::load_for_update(&key, &mut second)
        .await
        .expect_err("the row is locked by the first transaction");
    assert!(matches!(error, Error::Database(_)), "{error:?}");
    second.rollback().await.unwrap();
    first.rollback().await.unwrap();
}

/// The raw queries the checks need, per backend.
trait TestDb: Backend {
    /// The statement that makes a transaction wait for a locked row only briefly, where rows
    /// are locked.
    const LOCK_TIMEOUT: Option<&'static str>;
    async fn fetch_taken_at(pool: &Pool<Self>, id: &str) -> DateTime<Utc>;
    async fn set_role(pool: &Pool<Self>, account: &str, role: &str);
    async fn execute_in(
        tx: &mut posthog_track::TrackedTransaction<'_, Self>,
        statement: &'static str,
    );
}

macro_rules! impl_test_db {
    ($db:ty, $p1:literal, $p2:literal, $lock_timeout:expr) => {
        impl TestDb for $db {
            const LOCK_TIMEOUT: Option<&'static str> = $lock_timeout;

            async fn fetch_taken_at(pool: &Pool<Self>, id: &str) -> DateTime<Utc> {
                sqlx::query_scalar(concat!("SELECT taken_at FROM mc_readings WHERE id = ", $p1))
                    .bind(id)
                    .fetch_one(pool)
                    .await
                    .unwrap()
            }

            async fn set_role(pool: &Pool<Self>, account: &str, role: &str) {
                sqlx::query(concat!(
                    "UPDATE mc_seats SET role = ",
                    $p1,
                    " WHERE account = ",
                    $p2
                ))
                .bind(role)
                .bind(account)
                .execute(pool)
                .await
                .unwrap();
            }

            async fn execute_in(
                tx: &mut posthog_track::TrackedTransaction<'_, Self>,
                statement: &'static str,
            ) {
                sqlx::raw_sql(statement)
                    .execute(&mut **tx.as_sqlx())
                    .await
                    .unwrap();
            }
        }
    };
}

impl_test_db!(sqlx::Sqlite, "?", "?", None);
impl_test_db!(
    sqlx::Postgres,
    "$1",
    "$2",
    Some("SET LOCAL lock_timeout = '50ms'")
);
impl_test_db!(
    sqlx::MySql,
    "?",
    "?",
    Some("SET SESSION innodb_lock_wait_timeout = 1")
);

// ---------------------------------------------------------------------------------------------
// A write whose events fail half-way (its own event staged, `$identify` too large) stages none
// of them, on every path: an insert (folded, learning or unfolded), an upsert that inserts.

model_tests!(
    a_write_that_fails_half_way_stages_nothing,
    "mc_half_way",
    sqlite_a_write_that_fails_half_way_stages_nothing,
    postgres_a_write_that_fails_half_way_stages_nothing,
    mysql_a_write_that_fails_half_way_stages_nothing
);

async fn a_write_that_fails_half_way_stages_nothing<DB: TestDb>(pool: &Pool<DB>)
where
    Reading: TrackedRow<DB>,
{
    let tracker = migrated_printer(pool).await;
    let reading = || Reading {
        id: unique("reading"),
        owner: unique("owner"),
        taken_at: Utc.timestamp_opt(1_700_000_000, 0).single().unwrap(),
        nickname: None,
        first_source: None,
        note: None,
    };
    // Over posthog-track's limit on one event only as `$identify`'s `$anon_distinct_id`.
    let huge = "a".repeat(1024 * 1024);
    let too_large =
        |error: Error| assert!(matches!(error, Error::EventTooLarge { .. }), "{error:?}");

    let mut tx = tracker.begin(pool).await.unwrap();
    reading().insert(&mut tx).await.unwrap();
    let staged = tx.staged().to_vec();
    assert_eq!(staged.len(), 2, "the insert event and $identify");

    tx.set_context(posthog_track::TrackingContext::new().with_anonymous_id(huge.as_str()));
    too_large(reading().insert(&mut tx).await.unwrap_err());
    assert_eq!(tx.staged(), &staged[..], "a failed insert stages nothing");
    tx.rollback().await.unwrap();

    // (A transaction whose write failed after writing takes no more writes: a fresh one.)
    let mut tx = tracker.begin(pool).await.unwrap();
    reading().insert(&mut tx).await.unwrap();
    let staged = tx.staged().to_vec();
    tx.set_context(posthog_track::TrackingContext::new().with_anonymous_id(huge.as_str()));
    too_large(reading().upsert(&mut tx).await.unwrap_err());
    assert_eq!(tx.staged(), &staged[..], "a failed upsert stages nothing");
    tx.rollback().await.unwrap();
}

model_tests!(
    update_events_carry_the_row_as_stored,
    "model_update_stored",
    update_events_carry_the_row_as_stored_sqlite,
    update_events_carry_the_row_as_stored_postgres,
    update_events_carry_the_row_as_stored_mysql
);

/// `update` stages its event from the row as stored: a `generated` column the database
/// computes again on the update is read back (the event carried the caller's stale value). A
/// model with nothing to write (every column a key) still fails with `RowNotFound` for a
/// missing row (it staged an update event for a row that does not exist).
async fn update_events_carry_the_row_as_stored<DB: Backend>(pool: &Pool<DB>)
where
    Line: TrackedRow<DB>,
    Member: TrackedRow<DB>,
{
    let tracker = migrated_printer(pool).await;
    let mut tx = tracker.begin(pool).await.unwrap();
    let inserted = Line {
        id: unique("line"),
        qty: 2,
        unit_price: 10,
        total: 0,
    }
    .insert(&mut tx)
    .await
    .unwrap();
    assert_eq!(inserted.total, 20, "insert reads the generated column back");
    let mut after = inserted.clone();
    after.qty = 5;
    after.update(&mut tx).await.unwrap();
    let event = tx.staged().last().unwrap().json();
    assert_eq!(event["event"], "line_updated");
    assert_eq!(
        event["properties"]["total"],
        json!(50),
        "the update event carries the value the row holds: {event}"
    );

    let ghost = Member {
        user_id: unique("nobody"),
        team_id: "t".into(),
    };
    let staged = tx.staged().len();
    let result = ghost.update(&mut tx).await;
    assert!(
        matches!(result, Err(Error::RowNotFound { .. })),
        "update of a missing row: {result:?}"
    );
    assert_eq!(
        tx.staged().len(),
        staged,
        "no event for a row that does not exist"
    );
    let member = Member {
        user_id: unique("member"),
        team_id: "t".into(),
    }
    .insert(&mut tx)
    .await
    .unwrap();
    member.update(&mut tx).await.unwrap();
    assert_eq!(
        tx.staged().last().unwrap().json()["event"],
        "member_updated"
    );
    tx.commit().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// A column name with a dot in it is one identifier: every statement of the model (insert,
// insert_all, update, update_changed, upsert, load_for_update, delete, a backfill's pages)
// quotes it whole, where it used to split it into `"app"."version"`.

model_tests!(
    dotted_column_names,
    "mc_dotted",
    sqlite_dotted_column_names,
    postgres_dotted_column_names,
    mysql_dotted_column_names
);

async fn dotted_column_names<DB: TestDb>(pool: &Pool<DB>)
where
    Dotted: TrackedRow<DB>,
    Pool<DB>: posthog_track::BackfillPool<Dotted>,
{
    let tracker = migrated_printer(pool).await;
    let mut tx = tracker.begin(pool).await.unwrap();
    let row = Dotted {
        id: unique("dotted"),
        version: "1.2.3".into(),
    };
    assert_eq!(row.clone().insert(&mut tx).await.unwrap(), row);
    assert_eq!(
        tx.staged()[0].json()["properties"]["$set"]["app_version"],
        json!("1.2.3")
    );
    let more: Vec<Dotted> = (0..2)
        .map(|n| Dotted {
            id: unique("dotted"),
            version: format!("0.{n}"),
        })
        .collect();
    assert_eq!(Dotted::insert_all(&more, &mut tx).await.unwrap(), more);
    let mut after = row.clone();
    after.version = "1.2.4".into();
    after.update_changed(&row, &mut tx).await.unwrap();
    after.version = "1.2.5".into();
    after.update(&mut tx).await.unwrap();
    after.version = "1.2.6".into();
    assert!(!after.clone().upsert(&mut tx).await.unwrap().was_inserted());
    let loaded = Dotted::load_for_update(&after.id, &mut tx).await.unwrap();
    assert_eq!(loaded.as_ref(), Some(&after));
    more[0].clone().delete(&mut tx).await.unwrap();
    tx.commit().await.unwrap();

    let report = tracker
        .backfill::<Dotted>(pool)
        .dry_run()
        .run()
        .await
        .unwrap();
    assert_eq!(report.person_updates, 2, "{report}");
}
