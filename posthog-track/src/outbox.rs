//! The outbox table, `posthog_outbox`: events committed with the rows that caused them.
//!
//! A tracked transaction writes its staged events here in the same transaction as its rows
//! (just before it commits, or on PostgreSQL usually with the inserted row itself: see
//! `model::fold`), so a row and its events exist together or not at all. The relay delivers them
//! from here and deletes them once PostHog has accepted them.

use sqlx::Pool;
use uuid::Uuid;

use crate::backend::{Backend, BoundQuery, Dialect};
use crate::error::Result;
use crate::event::StagedEvent;

/// Name of the outbox table.
pub const TABLE: &str = "posthog_outbox";
/// Name of the dead-letter table: events PostHog refused for good, with their history. They
/// live apart so that they never slow down the relay's claims.
pub const DEAD_TABLE: &str = "posthog_outbox_dead";

/// Name of the table that records which schema steps [`Tracker::migrate`](crate::Tracker::migrate)
/// applied: one row per version, with its name and when (milliseconds since the Unix epoch).
pub const SCHEMA_TABLE: &str = "posthog_outbox_schema";

/// The columns of the outbox table this version reads and writes: a table that lacks one
/// needs `posthog-track outbox migrate` (or `tracker.migrate(&pool)`).
pub const COLUMNS: &[&str] = &[
    "id",
    "uuid",
    "event",
    "distinct_id",
    "timestamp",
    "payload",
    "attempts",
    "failures",
    "leased_until",
    "claim",
    "last_error",
    "created_at",
    "historical",
];

/// One versioned change to the outbox's schema, applied once by
/// [`Tracker::migrate`](crate::Tracker::migrate) and recorded in [`SCHEMA_TABLE`].
struct Step {
    version: i64,
    name: &'static str,
    /// `;\n`-separated statements for PostgreSQL, MySQL/MariaDB and SQLite.
    sql: [&'static str; 3],
}

impl Step {
    /// A step whose SQL is the same on every backend.
    #[allow(dead_code)] // for the next step; see `STEPS`
    const fn same(version: i64, name: &'static str, sql: &'static str) -> Step {
        Step {
            version,
            name,
            sql: [sql; 3],
        }
    }

    /// A step with SQL for each backend.
    const fn each(
        version: i64,
        name: &'static str,
        postgres: &'static str,
        mysql: &'static str,
        sqlite: &'static str,
    ) -> Step {
        Step {
            version,
            name,
            sql: [postgres, mysql, sqlite],
        }
    }

    fn sql(&self, dialect: Dialect) -> &'static str {
        self.sql[match dialect {
            Dialect::Postgres => 0,
            Dialect::MySql => 1,
            Dialect::Sqlite => 2,
        }]
    }
}

/// Version 1 is the layout of [`create_table_sql`]'s tables as of this version (reached from
/// any earlier, unversioned layout in place). Every later change to the outbox is one line
/// appended here, with the next version number, for example
///
/// ```text
/// Step::same(3, "index on leased_until", "CREATE INDEX posthog_outbox_lease ON posthog_outbox (leased_until)"),
/// Step::each(4, "column priority", "ALTER TABLE ... BIGINT ...", "ALTER TABLE ... BIGINT ...", "ALTER TABLE ... INTEGER ..."),
/// ```
///
/// (and a new column's name in [`COLUMNS`] when the code needs it). `migrate` applies the
/// steps a database lacks, in order, each recorded in [`SCHEMA_TABLE`] with the step itself
/// (atomically on PostgreSQL and SQLite); a statement that fails because its object already
/// exists counts as done, so a step interrupted half-way on MySQL (whose DDL commits at once),
/// or a table created from [`create_table_sql`], is completed rather than broken.
const STEPS: &[Step] = &[Step::each(
    2,
    "historical flag (events a backfill sends as historical_migration)",
    "ALTER TABLE posthog_outbox ADD COLUMN IF NOT EXISTS historical BIGINT NOT NULL DEFAULT 0;\n\
     ALTER TABLE posthog_outbox_dead ADD COLUMN IF NOT EXISTS historical BIGINT NOT NULL \
     DEFAULT 0",
    "ALTER TABLE posthog_outbox ADD COLUMN historical BIGINT NOT NULL DEFAULT 0;\n\
     ALTER TABLE posthog_outbox_dead ADD COLUMN historical BIGINT NOT NULL DEFAULT 0",
    "ALTER TABLE posthog_outbox ADD COLUMN historical INTEGER NOT NULL DEFAULT 0;\n\
     ALTER TABLE posthog_outbox_dead ADD COLUMN historical INTEGER NOT NULL DEFAULT 0",
)];

/// The schema version this version of posthog-track migrates to.
pub const SCHEMA_VERSION: i64 = latest_version(STEPS);

const fn latest_version(steps: &[Step]) -> i64 {
    let mut version = 1;
    let mut i = 0;
    while i < steps.len() {
        if steps[i].version > version {
            version = steps[i].version;
        }
        i += 1;
    }
    version
}

/// The PostgreSQL notification channel that wakes relays in other processes (`LISTEN
/// posthog_outbox`). A process that commits events and runs no relay for that database sends
/// `pg_notify('posthog_outbox', '')` inside the commit's transaction, at most once per commit
/// and at most once per 25 ms per database: on PostgreSQL every notifying commit takes a
/// database-wide lock until it is durable, which serialises them (in `pgbench`, a `NOTIFY`
/// with every commit cut the commits/s of 16 concurrent writers severalfold), and every
/// listening relay spends CPU on each notification it receives (at one per 10 ms, a
/// tenth of a busy relay's CPU). A relay woken by one notification claims again after its
/// linger (80 ms by default, longer than the throttle), which takes in the commits whose
/// notification was throttled away; a relay lingering less than 25 ms may find them only at
/// its next poll.
pub const WAKE_CHANNEL: &str = "posthog_outbox";

/// Columns bound per event by [`write`].
const COLUMNS_PER_EVENT: usize = 5;
/// Events per INSERT statement: far below every backend's parameter limit (SQLite's is the
/// lowest at 32,766), large enough that a big transaction needs few round trips.
const EVENTS_PER_STATEMENT: usize = 500;
/// Bytes of bound text per INSERT statement, unless one event alone is larger. MySQL and
/// MariaDB refuse a statement over `max_allowed_packet` (4 MB by default on MySQL 5.7,
/// 16 MB on MariaDB, 64 MB on MySQL 8) by closing the connection, and a transaction's events,
/// each under PostHog's 1 MB, can add up to more: 40 events of 800 KB did. Events of a few KB
/// (nearly all) reach [`EVENTS_PER_STATEMENT`] first.
const BYTES_PER_STATEMENT: usize = 2 * 1024 * 1024;

/// The DDL of the outbox and dead-letter tables in `dialect`, as one script of `;`-separated
/// statements: what [`Tracker::migrate`](crate::Tracker::migrate) creates, and what to put in
/// your own migrations (for example a `sqlx::migrate!` file) if you prefer. It records the
/// schema version it reaches, as `migrate` does. On PostgreSQL it can run over an outbox that
/// `migrate` already made; on MySQL/MariaDB and SQLite, which cannot add a column only if it
/// is missing, it is for a database without one. Integer columns are
/// 64-bit everywhere so one decoder reads them on every backend.
///
/// `leased_until` and `created_at` are milliseconds since the Unix epoch on the database's
/// clock; `last_error` keeps the most recent delivery failures, newest last.
pub fn create_table_sql(dialect: Dialect) -> &'static str {
    static SCRIPTS: [std::sync::OnceLock<String>; 3] = [const { std::sync::OnceLock::new() }; 3];
    let index = match dialect {
        Dialect::Postgres => 0,
        Dialect::MySql => 1,
        Dialect::Sqlite => 2,
    };
    SCRIPTS[index].get_or_init(|| {
        let mut script = baseline_sql(dialect);
        for step in STEPS {
            script.push_str(";\n");
            script.push_str(step.sql(dialect));
        }
        // The versions it reached, as `migrate` records them, so that `migrate` (and `doctor`)
        // later know them: without, `migrate` would treat the tables as unversioned.
        script.push_str(";\n");
        script.push_str(SCHEMA_TABLE_DDL);
        // Versions already recorded (by `migrate`, before the script was added to the
        // application's migrations) are kept.
        script.push_str(match dialect {
            Dialect::Postgres | Dialect::Sqlite => ";\nINSERT ",
            Dialect::MySql => ";\nINSERT IGNORE ",
        });
        if dialect == Dialect::Sqlite {
            script.push_str("OR IGNORE ");
        }
        script.push_str("INTO posthog_outbox_schema (version, name, applied_at) VALUES ");
        let now = dialect.now_millis_sql();
        let versions = std::iter::once((1, BASELINE_NAME))
            .chain(STEPS.iter().map(|step| (step.version, step.name)));
        for (n, (version, name)) in versions.enumerate() {
            if n > 0 {
                script.push_str(", ");
            }
            // Names are this crate's constants, without quotes.
            script.push_str(&format!("({version}, '{name}', {now})"));
        }
        if dialect == Dialect::Postgres {
            script.push_str(" ON CONFLICT (version) DO NOTHING");
        }
        script
    })
}

/// [`SCHEMA_TABLE`]: one row per schema version applied.
const SCHEMA_TABLE_DDL: &str = "CREATE TABLE IF NOT EXISTS posthog_outbox_schema \
     (version BIGINT NOT NULL PRIMARY KEY, name VARCHAR(200) NOT NULL, \
     applied_at BIGINT NOT NULL)";

/// The name version 1 is recorded with.
const BASELINE_NAME: &str = "outbox and dead-letter tables";

/// How the outbox's DDL differs between backends: column types, the auto-increment key, the
/// database clock as a column default, and table options.
struct ColumnTypes {
    /// The outbox's key, allocated by the database as events are written (at commit, or with
    /// their row on PostgreSQL): staging order within a transaction, roughly commit order
    /// across transactions.
    serial_key: &'static str,
    /// The dead-letter table's key: the outbox id the row had (a number of its own on
    /// SQLite; see [`dead_id_sql`]).
    copied_key: &'static str,
    uuid: &'static str,
    timestamp: &'static str,
    payload: &'static str,
    /// Every integer column: 64-bit, so one decoder reads them on every backend.
    int: &'static str,
    /// Written after a nullable column's type (MySQL says so explicitly).
    null: &'static str,
    /// `created_at`'s default: now, in milliseconds since the epoch.
    now_millis: &'static str,
    table_options: &'static str,
}

impl ColumnTypes {
    const fn of(dialect: Dialect) -> ColumnTypes {
        match dialect {
            Dialect::Postgres => ColumnTypes {
                serial_key: "BIGSERIAL PRIMARY KEY",
                copied_key: "BIGINT PRIMARY KEY",
                uuid: "TEXT",
                timestamp: "TEXT",
                payload: "TEXT",
                int: "BIGINT",
                null: "",
                now_millis: "(EXTRACT(EPOCH FROM now()) * 1000)::BIGINT",
                table_options: "",
            },
            Dialect::MySql => ColumnTypes {
                serial_key: "BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY",
                copied_key: "BIGINT NOT NULL PRIMARY KEY",
                uuid: "CHAR(36)",
                timestamp: "VARCHAR(40)",
                payload: "MEDIUMTEXT",
                int: "BIGINT",
                null: " NULL",
                now_millis: crate::backend::MYSQL_NOW_MILLIS,
                table_options: " DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin",
            },
            // Not AUTOINCREMENT, which costs an extra page write per commit: a deleted newest
            // id may be reused, but the relay's acks are fenced by a random per-claim token,
            // so a reused id can never be mistaken for the event it replaced.
            Dialect::Sqlite => ColumnTypes {
                serial_key: "INTEGER PRIMARY KEY",
                copied_key: "INTEGER PRIMARY KEY",
                uuid: "TEXT",
                timestamp: "TEXT",
                payload: "TEXT",
                int: "INTEGER",
                null: "",
                now_millis: "(CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER))",
                table_options: "",
            },
        }
    }

    /// The event's columns, which both tables have: `key` first, then the event as staged.
    fn event_columns(&self, key: &str) -> String {
        let ColumnTypes {
            uuid,
            timestamp,
            payload,
            int,
            ..
        } = self;
        format!(
            "id {key}, uuid {uuid} NOT NULL, event TEXT NOT NULL, distinct_id TEXT NOT NULL, \
             timestamp {timestamp} NOT NULL, payload {payload} NOT NULL, \
             attempts {int} NOT NULL DEFAULT 0"
        )
    }
}

/// What a row moved into the dead-letter table takes as its key: the outbox id, which
/// PostgreSQL and MySQL/MariaDB never hand out twice. SQLite reuses the id of a deleted newest
/// row, so a second event could carry the id of one dead-lettered before it; there the
/// dead-letter table numbers its rows itself (`NULL` into an `INTEGER PRIMARY KEY`), in the
/// order they died. Nothing relies on the two being equal: requeues give events new outbox
/// ids, and name dead rows by their dead-letter id.
pub(crate) const fn dead_id_sql(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Sqlite => "NULL",
        Dialect::Postgres | Dialect::MySql => "id",
    }
}

/// The tables of schema version 1.
fn baseline_sql(dialect: Dialect) -> String {
    let types = ColumnTypes::of(dialect);
    let ColumnTypes {
        int,
        null,
        now_millis,
        table_options,
        ..
    } = types;
    format!(
        "CREATE TABLE IF NOT EXISTS posthog_outbox ({outbox}, \
             failures {int} NOT NULL DEFAULT 0, leased_until {int}{null}, claim {int}{null}, \
             last_error TEXT{null}, created_at {int}{null} DEFAULT {now_millis}){table_options};\n\
         CREATE TABLE IF NOT EXISTS posthog_outbox_dead ({dead}, \
             last_error TEXT{null}, reason TEXT NOT NULL, dead_at {int} NOT NULL){table_options}",
        outbox = types.event_columns(types.serial_key),
        dead = types.event_columns(types.copied_key),
    )
}

/// Columns that tables created by earlier versions lack, with the DDL that adds each. SQLite
/// cannot add a column whose default is not constant, so its upgraded `created_at` starts
/// empty (such rows are exempt from the age limit).
fn added_columns(dialect: Dialect) -> [(&'static str, String); 2] {
    let ColumnTypes {
        int,
        null,
        now_millis,
        ..
    } = ColumnTypes::of(dialect);
    let created_at_default = match dialect {
        Dialect::Sqlite => String::new(),
        Dialect::Postgres | Dialect::MySql => format!(" DEFAULT {now_millis}"),
    };
    [
        (
            "failures",
            format!("ALTER TABLE posthog_outbox ADD COLUMN failures {int} NOT NULL DEFAULT 0"),
        ),
        (
            "created_at",
            format!(
                "ALTER TABLE posthog_outbox ADD COLUMN created_at {int}{null}{created_at_default}"
            ),
        ),
    ]
}

/// Creates the outbox and dead-letter tables, or upgrades tables created by an earlier
/// version in place (missing columns are added; rows an earlier version marked dead move to
/// the dead-letter table; then every versioned step the database lacks, see `STEPS`), and
/// records the schema version reached in [`SCHEMA_TABLE`]. Idempotent, and safe when several
/// processes run it at once: it
/// holds a lock for its duration (an advisory lock on PostgreSQL, `GET_LOCK` on MySQL and
/// MariaDB, an immediate transaction on SQLite), because `CREATE TABLE IF NOT EXISTS` alone is
/// not safe under concurrency on PostgreSQL.
///
/// There is deliberately no secondary index: the relay claims the oldest deliverable rows by
/// walking the primary key, which costs O(batch) while the head of the outbox is deliverable
/// (dead rows live in their own table), and every tracked commit would otherwise pay for
/// maintaining it.
pub(crate) async fn migrate<DB: Backend>(pool: &Pool<DB>) -> Result<()> {
    let mut conn = pool.acquire().await?;
    match DB::DIALECT {
        Dialect::Postgres => {
            // A transaction-scoped lock: released by the commit, or by the rollback when this
            // future is dropped half-way, never left behind on a pooled connection.
            let mut tx = sqlx::Connection::begin(&mut *conn).await?;
            DB::execute(
                &mut tx,
                sqlx::query("SELECT pg_advisory_xact_lock(7135245019)"),
            )
            .await?;
            // An outbox that the search_path finds in a later schema than the first (the path
            // grew an application schema in front of it) is the one to upgrade: for this
            // transaction, its schema comes first, so that `CREATE TABLE IF NOT EXISTS` (which
            // looks only in the schema it creates in) never makes a second, empty outbox that
            // would shadow it and strand its events.
            DB::execute(
                &mut tx,
                sqlx::query(
                    "SELECT set_config('search_path', \
                         quote_ident(n.nspname) || ', ' || current_setting('search_path'), true) \
                     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE c.oid = to_regclass('posthog_outbox') \
                       AND n.nspname IS DISTINCT FROM current_schema()",
                ),
            )
            .await?;
            migrate_locked::<DB>(&mut tx).await?;
            tx.commit().await?;
            Ok(())
        }
        Dialect::MySql => {
            // MySQL commits DDL implicitly, so a session lock serialises the migrations. Named
            // locks belong to the server: the name is this database's (at most 64 characters),
            // so that migrations of other databases on the server do not wait for each other.
            let got = DB::fetch_one(
                &mut conn,
                sqlx::query(
                    "SELECT GET_LOCK(CONCAT('posthog_outbox_migrate.', MD5(DATABASE())), 60)",
                ),
            )
            .await?;
            if DB::int(&got, 0)? != 1 {
                return Err(crate::Error::Database(sqlx::Error::Protocol(
                    "another process held the outbox migration lock for 60 s".into(),
                )));
            }
            let result = migrate_locked::<DB>(&mut conn).await;
            DB::execute(
                &mut conn,
                sqlx::query(
                    "SELECT RELEASE_LOCK(CONCAT('posthog_outbox_migrate.', MD5(DATABASE())))",
                ),
            )
            .await?;
            result
        }
        Dialect::Sqlite => {
            // The write lock, taken up front: the column check and the ALTERs are one step.
            DB::execute(&mut conn, sqlx::query("BEGIN IMMEDIATE")).await?;
            let result = migrate_locked::<DB>(&mut conn).await;
            let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
            DB::execute(&mut conn, sqlx::query(end)).await?;
            result
        }
    }
}

async fn migrate_locked<DB: Backend>(conn: &mut DB::Connection) -> Result<()> {
    migrate_steps::<DB>(conn, STEPS).await
}

/// Brings the schema from its recorded version up to the last of `steps`.
async fn migrate_steps<DB: Backend>(conn: &mut DB::Connection, steps: &[Step]) -> Result<()> {
    // Looked up first: PostgreSQL answers `CREATE TABLE IF NOT EXISTS` on an existing table
    // with a NOTICE, which sqlx logs on every start.
    let exists = DB::fetch_all(conn, sqlx::query(schema_table_exists_sql(DB::DIALECT))).await?;
    if exists.is_empty() {
        DB::execute(conn, sqlx::query(SCHEMA_TABLE_DDL)).await?;
    }
    let current = recorded_version::<DB>(conn).await?.unwrap_or(0);
    // No version recorded and no outbox: the tables are made here, and the steps complete a
    // new outbox rather than upgrade one, so they are not logged one by one as upgrades.
    let created = current < 1 && columns_of::<DB>(conn).await?.is_empty();
    if current < 1 {
        upgrade_to_baseline::<DB>(conn).await?;
        record_step::<DB>(conn, 1, BASELINE_NAME).await?;
    } else if !at_baseline::<DB>(conn).await? {
        // Versions recorded over tables that are older: `create_table_sql` run on a database
        // that had an outbox (its `CREATE TABLE IF NOT EXISTS` kept the old table).
        upgrade_to_baseline::<DB>(conn).await?;
    }
    for step in steps.iter().filter(|step| step.version > current.max(1)) {
        for statement in step.sql(DB::DIALECT).split(";\n") {
            run_step_statement::<DB>(conn, statement).await?;
        }
        record_step::<DB>(conn, step.version, step.name).await?;
        if !created {
            tracing::info!(
                version = step.version,
                step = step.name,
                "outbox schema upgraded"
            );
        }
    }
    let latest = latest_version(steps);
    if created {
        tracing::info!(version = latest, "outbox tables created");
    }
    if current > latest {
        tracing::warn!(
            recorded = current,
            known = latest,
            "the outbox schema was migrated by a newer posthog-track; this version leaves it as it is"
        );
    }
    Ok(())
}

/// The highest version recorded in [`SCHEMA_TABLE`]; `None` when it holds none.
async fn recorded_version<DB: Backend>(conn: &mut DB::Connection) -> Result<Option<i64>> {
    let row = DB::fetch_one(
        conn,
        sqlx::query("SELECT COALESCE(MAX(version), 0) FROM posthog_outbox_schema"),
    )
    .await?;
    let version = DB::int(&row, 0)?;
    Ok((version > 0).then_some(version))
}

async fn record_step<DB: Backend>(
    conn: &mut DB::Connection,
    version: i64,
    name: &str,
) -> Result<()> {
    let mut sql =
        "INSERT INTO posthog_outbox_schema (version, name, applied_at) VALUES (".to_owned();
    DB::DIALECT.push_placeholders(&mut sql, 1, 2);
    sql.push_str(", ");
    sql.push_str(DB::DIALECT.now_millis_sql());
    sql.push(')');
    let query = DB::bind_text(
        DB::bind_i64(sqlx::query(sqlx::AssertSqlSafe(sql)), version),
        name,
    );
    DB::execute(conn, query).await?;
    Ok(())
}

/// Runs one statement of a step; one that fails because what it creates already exists
/// counts as done (inside a savepoint on PostgreSQL and SQLite, whose transaction an error
/// would otherwise abort).
async fn run_step_statement<DB: Backend>(conn: &mut DB::Connection, statement: &str) -> Result<()> {
    let savepoint = DB::DIALECT != Dialect::MySql;
    if savepoint {
        DB::execute(conn, sqlx::query("SAVEPOINT posthog_outbox_step")).await?;
    }
    let result = DB::execute(conn, sqlx::query(sqlx::AssertSqlSafe(statement.to_owned()))).await;
    match result {
        Ok(_) => {}
        Err(error) if already_exists(&error) => {
            tracing::info!(%error, "outbox schema step already applied");
            if savepoint {
                DB::execute(
                    conn,
                    sqlx::query("ROLLBACK TO SAVEPOINT posthog_outbox_step"),
                )
                .await?;
            }
        }
        Err(error) => return Err(error.into()),
    }
    if savepoint {
        DB::execute(conn, sqlx::query("RELEASE SAVEPOINT posthog_outbox_step")).await?;
    }
    Ok(())
}

/// Whether `error` says the column, index or table a statement creates is there already.
fn already_exists(error: &sqlx::Error) -> bool {
    let sqlx::Error::Database(database) = error else {
        return false;
    };
    if matches!(
        database.code().as_deref(),
        Some("42701" | "42P07" | "42710")
    ) {
        return true;
    }
    let message = database.message().to_ascii_lowercase();
    message.contains("already exists")
        || message.starts_with("duplicate column name")
        || message.starts_with("duplicate key name")
}

/// Schema version 1 from nothing or from any earlier, unversioned layout.
async fn upgrade_to_baseline<DB: Backend>(conn: &mut DB::Connection) -> Result<()> {
    let dialect = DB::DIALECT;
    for statement in baseline_sql(dialect).split(";\n") {
        DB::execute(conn, sqlx::query(sqlx::AssertSqlSafe(statement))).await?;
    }
    let columns = columns_of::<DB>(conn).await?;
    for (column, ddl) in added_columns(dialect) {
        if !columns.iter().any(|existing| existing == column) {
            DB::execute(conn, sqlx::query(sqlx::AssertSqlSafe(ddl))).await?;
        }
    }
    // Versions before the dead-letter table kept dead rows in the outbox with `status = 1`.
    if columns.iter().any(|existing| existing == "status") {
        let move_dead = format!(
            "INSERT INTO posthog_outbox_dead \
                 (id, uuid, event, distinct_id, timestamp, payload, attempts, last_error, reason, dead_at) \
             SELECT {}, uuid, event, distinct_id, timestamp, payload, attempts, last_error, \
                    COALESCE(last_error, 'dead-lettered by an earlier version'), {} \
             FROM posthog_outbox WHERE status = 1",
            dead_id_sql(dialect),
            dialect.now_millis_sql()
        );
        DB::execute(conn, sqlx::query(sqlx::AssertSqlSafe(move_dead))).await?;
        DB::execute(
            conn,
            sqlx::query("DELETE FROM posthog_outbox WHERE status = 1"),
        )
        .await?;
    }
    Ok(())
}

/// Whether the outbox has the layout of version 1: the columns earlier versions lacked, and
/// not their `status` (dead rows kept in place).
async fn at_baseline<DB: Backend>(conn: &mut DB::Connection) -> Result<bool> {
    let columns = columns_of::<DB>(conn).await?;
    let has = |name: &str| columns.iter().any(|column| column == name);
    Ok(added_columns(DB::DIALECT)
        .iter()
        .all(|(column, _)| has(column))
        && !has("status"))
}

/// The outbox table's columns, lower case (none when it does not exist).
async fn columns_of<DB: Backend>(conn: &mut DB::Connection) -> Result<Vec<String>> {
    let columns_sql = match DB::DIALECT {
        // The table the search_path finds, as every statement on it does (not only one in
        // the first schema of the path).
        Dialect::Postgres => {
            "SELECT attname::TEXT FROM pg_attribute \
             WHERE attrelid = to_regclass('posthog_outbox') AND attnum > 0 AND NOT attisdropped"
        }
        Dialect::MySql => {
            "SELECT CAST(column_name AS CHAR) FROM information_schema.columns \
             WHERE table_schema = DATABASE() AND table_name = 'posthog_outbox'"
        }
        Dialect::Sqlite => "SELECT name FROM pragma_table_info('posthog_outbox')",
    };
    Ok(DB::fetch_all(conn, sqlx::query(columns_sql))
        .await?
        .iter()
        .map(|row| DB::text(row, 0).map(|name| name.to_ascii_lowercase()))
        .collect::<Result<Vec<_>, _>>()?)
}

/// A query that returns one row when [`SCHEMA_TABLE`] exists in the current schema, none
/// otherwise.
fn schema_table_exists_sql(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Postgres => "SELECT 1 WHERE to_regclass('posthog_outbox_schema') IS NOT NULL",
        Dialect::MySql => {
            "SELECT 1 FROM information_schema.tables \
             WHERE table_schema = DATABASE() AND table_name = 'posthog_outbox_schema'"
        }
        Dialect::Sqlite => {
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'posthog_outbox_schema'"
        }
    }
}

/// A missing outbox table says how to create it; every other database error stays as it is.
pub(crate) fn explain(error: sqlx::Error, dialect: Dialect) -> crate::Error {
    let missing = match &error {
        sqlx::Error::Database(database) => {
            let message = database.message();
            matches!(database.code().as_deref(), Some("42P01" | "42S02"))
                && message.contains("posthog_outbox")
                || message.contains("no such table: posthog_outbox")
        }
        _ => false,
    };
    if missing {
        crate::Error::OutboxMissing {
            backend: dialect.name(),
            source: error,
        }
    } else {
        crate::Error::Database(error)
    }
}

/// Inserts staged events, in order, through `conn` (the caller's open transaction); with
/// `notify` on PostgreSQL, also notifies [`WAKE_CHANNEL`] (delivered at commit, if it commits).
pub(crate) async fn write<DB: Backend>(
    conn: &mut DB::Connection,
    events: &[StagedEvent],
    notify: bool,
) -> Result<()> {
    write_marked::<DB>(conn, events, false, notify).await
}

/// Inserts staged events like [`write`]; `historical` ones are sent as `historical_migration`
/// (PostHog's import path for past events) by every relay.
pub(crate) async fn write_marked<DB: Backend>(
    conn: &mut DB::Connection,
    events: &[StagedEvent],
    historical: bool,
    notify: bool,
) -> Result<()> {
    for chunk in statements(events) {
        let sql = insert_sql(DB::DIALECT, chunk.len(), historical);
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for event in chunk {
            query = bind_event::<DB>(query, event);
        }
        DB::execute(conn, query)
            .await
            .map_err(|error| explain(error, DB::DIALECT))?;
    }
    if notify && DB::DIALECT == Dialect::Postgres {
        DB::execute(conn, sqlx::query("SELECT pg_notify('posthog_outbox', '')")).await?;
    }
    Ok(())
}

/// `events` cut into the runs that one `INSERT` each takes: at most [`EVENTS_PER_STATEMENT`]
/// events and [`BYTES_PER_STATEMENT`] bytes of text (an event larger than that goes alone).
fn statements(events: &[StagedEvent]) -> impl Iterator<Item = &[StagedEvent]> {
    let mut rest = events;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut bytes = 0;
        let mut taken = 0;
        for event in rest.iter().take(EVENTS_PER_STATEMENT) {
            // The uuid and timestamp are short and fixed; the payload repeats the rest.
            let size = event.payload.len() + event.event.len() + event.distinct_id.len() + 64;
            if taken > 0 && bytes + size > BYTES_PER_STATEMENT {
                break;
            }
            bytes += size;
            taken += 1;
        }
        let (statement, later) = rest.split_at(taken);
        rest = later;
        Some(statement)
    })
}

/// Binds an event's outbox columns, in the order every outbox `INSERT` lists them: uuid,
/// event, distinct id, timestamp, payload.
pub(crate) fn bind_event<DB: Backend>(
    query: BoundQuery<DB>,
    event: &StagedEvent,
) -> BoundQuery<DB> {
    let query = DB::bind_text(
        query,
        event
            .uuid
            .hyphenated()
            .encode_lower(&mut Uuid::encode_buffer()),
    );
    let query = DB::bind_text(query, &event.event);
    let query = DB::bind_text(query, &event.distinct_id);
    let query = DB::bind_text(query, &event.timestamp);
    if DB::DIALECT == Dialect::MySql {
        DB::bind_text(query, &escape_supplementary(&event.payload))
    } else {
        DB::bind_text(query, &event.payload)
    }
}

/// `payload` (JSON) with every character beyond the Basic Multilingual Plane (emoji: four bytes
/// in UTF-8) written as a JSON escape, `\ud83d\ude80`, for MySQL/MariaDB: a connection whose
/// character set is `utf8mb3` cannot carry such characters, and the server refuses the row
/// (strict mode) or silently stores `?` for each (strict mode off) although the table is
/// utf8mb4. The escaped JSON is the same value, and PostHog reads it as such. In JSON such
/// characters only occur inside strings, where escapes are valid.
fn escape_supplementary(payload: &str) -> std::borrow::Cow<'_, str> {
    // A four-byte UTF-8 sequence, and only such a sequence, starts with a byte of 0xF0 or more.
    if !payload.bytes().any(|byte| byte >= 0xF0) {
        return std::borrow::Cow::Borrowed(payload);
    }
    let mut escaped = String::with_capacity(payload.len() + 32);
    for character in payload.chars() {
        if u32::from(character) > 0xFFFF {
            let mut units = [0u16; 2];
            for unit in character.encode_utf16(&mut units) {
                escaped.push_str(&format!("\\u{unit:04x}"));
            }
        } else {
            escaped.push(character);
        }
    }
    std::borrow::Cow::Owned(escaped)
}

fn insert_sql(dialect: Dialect, events: usize, historical: bool) -> String {
    let mut sql = String::with_capacity(112 + events * 28);
    sql.push_str("INSERT INTO posthog_outbox (uuid, event, distinct_id, timestamp, payload");
    sql.push_str(if historical {
        ", historical) VALUES "
    } else {
        ") VALUES "
    });
    for i in 0..events {
        sql.push_str(if i == 0 { "(" } else { ", (" });
        dialect.push_placeholders(&mut sql, i * COLUMNS_PER_EVENT + 1, COLUMNS_PER_EVENT);
        if historical {
            sql.push_str(", 1");
        }
        sql.push(')');
    }
    sql
}

/// Whether an outbox row still waits for delivery or was rejected for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Status {
    /// Waiting for (re)delivery.
    Pending,
    /// PostHog rejected it permanently; kept with the reason in the dead-letter table until
    /// requeued or purged.
    Dead,
}

/// One row of the outbox, as read back for inspection.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct OutboxEvent {
    /// Row id: the outbox's order of commit.
    pub id: i64,
    /// The event's uuid, fixed when it was staged.
    pub uuid: Uuid,
    /// Event name.
    pub event: String,
    /// Whom the event is about.
    pub distinct_id: String,
    /// When it was staged.
    pub timestamp: String,
    /// The complete event as sent to PostHog.
    pub payload: serde_json::Value,
    /// Pending or dead.
    pub status: Status,
    /// Delivery attempts so far.
    pub attempts: i64,
    /// The most recent delivery failures, newest last (for dead events, what killed it).
    pub last_error: Option<String>,
}

impl OutboxEvent {
    /// A property of the event, if present.
    pub fn property(&self, name: &str) -> Option<&serde_json::Value> {
        self.payload.get("properties")?.get(name)
    }
}

/// A view of the outbox of one database.
#[derive(Debug)]
pub struct Outbox<'p, DB: Backend> {
    pool: &'p Pool<DB>,
}

impl<'p, DB: Backend> Outbox<'p, DB> {
    pub(crate) fn new(pool: &'p Pool<DB>) -> Self {
        Outbox { pool }
    }

    /// Every event in the outbox, pending and dead, oldest first.
    pub async fn events(&self) -> Result<Vec<OutboxEvent>> {
        let mut conn = self.pool.acquire().await?;
        let rows = DB::fetch_all(
            &mut conn,
            sqlx::query(
                "SELECT id, uuid, event, distinct_id, timestamp, payload, 'pending', attempts, \
                        last_error FROM posthog_outbox \
                 UNION ALL \
                 SELECT id, uuid, event, distinct_id, timestamp, payload, 'dead', attempts, \
                        last_error FROM posthog_outbox_dead \
                 ORDER BY 1",
            ),
        )
        .await
        .map_err(|error| explain(error, DB::DIALECT))?;
        rows.iter()
            .map(|row| {
                let payload = DB::text(row, 5)?;
                Ok(OutboxEvent {
                    id: DB::int(row, 0)?,
                    uuid: Uuid::parse_str(&DB::text(row, 1)?).unwrap_or_default(),
                    event: DB::text(row, 2)?,
                    distinct_id: DB::text(row, 3)?,
                    timestamp: DB::text(row, 4)?,
                    payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::Null),
                    status: if DB::text(row, 6)? == "dead" {
                        Status::Dead
                    } else {
                        Status::Pending
                    },
                    attempts: DB::int(row, 7)?,
                    last_error: DB::optional_text(row, 8)?,
                })
            })
            .collect()
    }

    /// How many events the outbox holds (pending and dead).
    pub async fn len(&self) -> Result<i64> {
        let status = self.status().await?;
        Ok(status.pending + status.dead)
    }

    /// Whether the outbox holds no event, pending or dead.
    pub async fn is_empty(&self) -> Result<bool> {
        Ok(self.len().await? == 0)
    }

    /// What waits, what is in flight, what was given up, and how far behind delivery is.
    pub async fn status(&self) -> Result<OutboxStatus> {
        let mut conn = self.pool.acquire().await?;
        let now = DB::DIALECT.now_millis_sql();
        let sql = format!(
            "SELECT COUNT(*), \
                    COUNT(CASE WHEN claim IS NOT NULL AND leased_until > {now} THEN 1 END), \
                    COUNT(CASE WHEN claim IS NULL AND leased_until > {now} THEN 1 END), \
                    COALESCE(MIN(id), 0), \
                    COALESCE({now} - MIN(CASE WHEN created_at >= 0 THEN created_at END), -1), \
                    (SELECT COUNT(*) FROM posthog_outbox_dead) \
             FROM posthog_outbox"
        );
        let row = DB::fetch_one(&mut conn, sqlx::query(sqlx::AssertSqlSafe(sql)))
            .await
            .map_err(|error| explain(error, DB::DIALECT))?;
        let age = DB::int(&row, 4)?;
        let mut status = OutboxStatus {
            pending: DB::int(&row, 0)?,
            leased: DB::int(&row, 1)?,
            backing_off: DB::int(&row, 2)?,
            dead: DB::int(&row, 5)?,
            oldest_pending_id: DB::int(&row, 3)?,
            oldest_pending_age: (age >= 0)
                .then(|| std::time::Duration::from_millis(age.unsigned_abs())),
            dead_reasons: Vec::new(),
        };
        if status.dead > 0 {
            let reasons = DB::fetch_all(
                &mut conn,
                sqlx::query(
                    "SELECT reason, COUNT(*) FROM posthog_outbox_dead \
                     GROUP BY reason ORDER BY COUNT(*) DESC, reason LIMIT 10",
                ),
            )
            .await?;
            for row in &reasons {
                status
                    .dead_reasons
                    .push((DB::text(row, 0)?, DB::int(row, 1)?));
            }
        }
        Ok(status)
    }

    /// The schema version recorded by [`Tracker::migrate`](crate::Tracker::migrate) (see
    /// [`SCHEMA_VERSION`]); `None` when none is recorded (a database never migrated, or one
    /// whose tables were created by hand from [`create_table_sql`]).
    pub async fn schema_version(&self) -> Result<Option<i64>> {
        let mut conn = self.pool.acquire().await?;
        let exists =
            DB::fetch_all(&mut conn, sqlx::query(schema_table_exists_sql(DB::DIALECT))).await?;
        if exists.is_empty() {
            return Ok(None);
        }
        recorded_version::<DB>(&mut conn).await
    }

    /// The outbox table's columns, lower case; empty when the table does not exist. Compare
    /// with [`COLUMNS`].
    pub async fn columns(&self) -> Result<Vec<String>> {
        let mut conn = self.pool.acquire().await?;
        columns_of::<DB>(&mut conn).await
    }

    /// The newest event id committed so far (0 when the outbox is empty): what a flush
    /// waits for.
    pub(crate) async fn newest_id(&self) -> Result<i64> {
        let mut conn = self.pool.acquire().await?;
        let row = DB::fetch_one(
            &mut conn,
            sqlx::query("SELECT COALESCE(MAX(id), 0) FROM posthog_outbox"),
        )
        .await
        .map_err(|error| explain(error, DB::DIALECT))?;
        Ok(DB::int(&row, 0)?)
    }

    /// Where a wait for another process's relay starts: the oldest and newest pending ids,
    /// and the database clock (for [`Outbox::dead_since`]).
    pub(crate) async fn wait_start(&self) -> Result<(i64, i64, i64)> {
        let mut conn = self.pool.acquire().await?;
        let sql = format!(
            "SELECT COALESCE(MIN(id), 0), COALESCE(MAX(id), 0), {} FROM posthog_outbox",
            DB::DIALECT.now_millis_sql()
        );
        let row = DB::fetch_one(&mut conn, sqlx::query(sqlx::AssertSqlSafe(sql)))
            .await
            .map_err(|error| explain(error, DB::DIALECT))?;
        Ok((DB::int(&row, 0)?, DB::int(&row, 1)?, DB::int(&row, 2)?))
    }

    /// Events dead-lettered since `since` (the database clock's milliseconds) whose outbox ids
    /// were `first..=last`. On SQLite, whose dead-letter table numbers its rows itself (see
    /// [`dead_id_sql`]), every event dead-lettered since then.
    pub(crate) async fn dead_since(&self, first: i64, last: i64, since: i64) -> Result<i64> {
        let by_id = DB::DIALECT != Dialect::Sqlite;
        let mut sql = "SELECT COUNT(*) FROM posthog_outbox_dead WHERE dead_at >= ?".to_owned();
        if by_id {
            sql.push_str(" AND id >= ? AND id <= ?");
        }
        let sql = DB::DIALECT.numbered(&sql, 1);
        let mut query = DB::bind_i64(sqlx::query(sqlx::AssertSqlSafe(sql)), since);
        if by_id {
            query = DB::bind_i64(DB::bind_i64(query, first), last);
        }
        let mut conn = self.pool.acquire().await?;
        let row = DB::fetch_one(&mut conn, query).await?;
        Ok(DB::int(&row, 0)?)
    }

    /// Whether any event with an id up to `newest` is still in the outbox: the first row in
    /// key order, one index probe, where [`pending_through`](Self::pending_through) reads every
    /// row left (a waiting `flush` asks this every 100 ms, a backlog may hold millions).
    pub(crate) async fn any_pending_through(&self, newest: i64) -> Result<bool> {
        let mut conn = self.pool.acquire().await?;
        let mut sql = "SELECT id FROM posthog_outbox WHERE id <= ".to_owned();
        DB::DIALECT.push_placeholder(&mut sql, 1);
        sql.push_str(" ORDER BY id LIMIT 1");
        let query = DB::bind_i64(sqlx::query(sqlx::AssertSqlSafe(sql)), newest);
        Ok(!DB::fetch_all(&mut conn, query).await?.is_empty())
    }

    /// The latest failure recorded on the oldest pending event up to `newest` that has one
    /// (the last entry of its `last_error` history), for a drain that ran out of time while
    /// its events waited out that failure's backoff.
    pub(crate) async fn last_failure_through(&self, newest: i64) -> Result<Option<String>> {
        let mut conn = self.pool.acquire().await?;
        let mut sql =
            "SELECT last_error FROM posthog_outbox WHERE last_error IS NOT NULL AND id <= "
                .to_owned();
        DB::DIALECT.push_placeholder(&mut sql, 1);
        sql.push_str(" ORDER BY id LIMIT 1");
        let query = DB::bind_i64(sqlx::query(sqlx::AssertSqlSafe(sql)), newest);
        let Some(row) = DB::fetch_all(&mut conn, query).await?.into_iter().next() else {
            return Ok(None);
        };
        let history = DB::optional_text(&row, 0)?.unwrap_or_default();
        Ok(history
            .lines()
            .rev()
            .find(|line| !line.trim().is_empty())
            .map(str::to_owned))
    }

    /// Pending events with ids up to `newest`, and the database clock's milliseconds until
    /// the first of them can be claimed (0 when one can be now).
    pub(crate) async fn pending_through(&self, newest: i64) -> Result<(i64, i64)> {
        let mut conn = self.pool.acquire().await?;
        let now = DB::DIALECT.now_millis_sql();
        let mut sql = format!(
            "SELECT COUNT(*), COALESCE(MIN(CASE WHEN leased_until IS NULL OR leased_until <= {now} \
             THEN 0 ELSE leased_until - {now} END), 0) FROM posthog_outbox WHERE id <= "
        );
        DB::DIALECT.push_placeholder(&mut sql, 1);
        let query = DB::bind_i64(sqlx::query(sqlx::AssertSqlSafe(sql)), newest);
        let row = DB::fetch_one(&mut conn, query).await?;
        Ok((DB::int(&row, 0)?, DB::int(&row, 1)?))
    }

    /// Puts dead events back in line for delivery (all of them, or those with these ids: none
    /// for an empty list), at the back of the line with fresh attempt and failure counts.
    /// Returns how many were requeued; an id no dead event has is skipped (see
    /// [`missing_dead`](Outbox::missing_dead) to tell them apart).
    pub async fn requeue(&self, ids: Option<&[i64]>) -> Result<u64> {
        match ids {
            // Those with no ids: none (an empty filter would read as no filter: all of them).
            Some([]) => Ok(0),
            // Every backend bounds the parameters of a statement: a long list goes in chunks.
            Some(ids) if ids.len() > IDS_PER_STATEMENT => {
                let mut moved = 0;
                for chunk in ids.chunks(IDS_PER_STATEMENT) {
                    moved += self.requeue_chunk(Some(chunk)).await?;
                }
                Ok(moved)
            }
            _ => self.requeue_chunk(ids).await,
        }
    }

    /// Those of `ids` that no dead event has (each once, in the order given): check them
    /// before a [`requeue`](Outbox::requeue), which counts only the ids it found, so that a
    /// mistyped id is reported instead of requeueing nothing in silence.
    pub async fn missing_dead(&self, ids: &[i64]) -> Result<Vec<i64>> {
        let mut found = std::collections::HashSet::new();
        let mut conn = self.pool.acquire().await?;
        for chunk in ids.chunks(IDS_PER_STATEMENT) {
            let filter = id_filter(DB::DIALECT, chunk, 1);
            let mut query = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT id FROM posthog_outbox_dead{filter}"
            )));
            for id in chunk {
                query = DB::bind_i64(query, *id);
            }
            for row in DB::fetch_all(&mut conn, query)
                .await
                .map_err(|error| explain(error, DB::DIALECT))?
            {
                found.insert(DB::int(&row, 0)?);
            }
        }
        let mut missing = Vec::new();
        for id in ids {
            if !found.contains(id) && !missing.contains(id) {
                missing.push(*id);
            }
        }
        Ok(missing)
    }

    /// [`requeue`](Outbox::requeue) of all dead events, or of at most [`IDS_PER_STATEMENT`] ids.
    async fn requeue_chunk(&self, ids: Option<&[i64]>) -> Result<u64> {
        let bind = |sql: String, ids: &[i64]| {
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for id in ids {
                query = DB::bind_i64(query, *id);
            }
            query
        };
        let ids = ids.unwrap_or_default();
        let filter = id_filter(DB::DIALECT, ids, 1);
        if DB::DIALECT == Dialect::Postgres {
            // One statement, so the rows deleted are exactly the rows copied. As two, under
            // READ COMMITTED, a row dead-lettered between the copy and the delete would be
            // deleted without having been copied.
            let moved = format!(
                "WITH moved AS (DELETE FROM posthog_outbox_dead{filter} \
                 RETURNING id, uuid, event, distinct_id, timestamp, payload, historical) \
                 INSERT INTO posthog_outbox (uuid, event, distinct_id, timestamp, payload, \
                 historical) \
                 SELECT uuid, event, distinct_id, timestamp, payload, historical FROM moved \
                 ORDER BY id"
            );
            let mut conn = self.pool.acquire().await?;
            return Ok(DB::rows_affected(
                &DB::execute(&mut conn, bind(moved, ids)).await?,
            ));
        }
        // Elsewhere: the rows to move are read (and on MySQL locked) first, and the copy and
        // the delete name exactly those ids. A filter re-run by the delete would, under READ
        // COMMITTED, also delete a row dead-lettered after the copy, which was never copied.
        // (SQLite has one writer, so nothing comes between; the same statements serve.)
        let lock = if DB::DIALECT == Dialect::MySql {
            " FOR UPDATE"
        } else {
            ""
        };
        let mut conn = self.pool.acquire().await?;
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        let chosen = DB::fetch_all(
            &mut tx,
            bind(
                format!("SELECT id FROM posthog_outbox_dead{filter} ORDER BY id{lock}"),
                ids,
            ),
        )
        .await?
        .iter()
        .map(|row| DB::int(row, 0))
        .collect::<std::result::Result<Vec<i64>, _>>()?;
        let mut copied = 0;
        for chunk in chosen.chunks(IDS_PER_STATEMENT) {
            let filter = id_filter(DB::DIALECT, chunk, 1);
            let copy = format!(
                "INSERT INTO posthog_outbox (uuid, event, distinct_id, timestamp, payload, \
                 historical) \
                 SELECT uuid, event, distinct_id, timestamp, payload, historical \
                 FROM posthog_outbox_dead{filter} ORDER BY id"
            );
            copied += DB::rows_affected(&DB::execute(&mut tx, bind(copy, chunk)).await?);
            let delete = format!("DELETE FROM posthog_outbox_dead{filter}");
            DB::execute(&mut tx, bind(delete, chunk)).await?;
        }
        tx.commit().await?;
        Ok(copied)
    }

    /// Deletes dead events for good: all of them, or those dead-lettered longer than
    /// `older_than` ago (by the database's clock). Returns how many were deleted.
    pub async fn purge(&self, older_than: Option<std::time::Duration>) -> Result<u64> {
        let mut sql = "DELETE FROM posthog_outbox_dead".to_owned();
        let mut query_age = None;
        if let Some(age) = older_than {
            sql.push_str(" WHERE dead_at < ");
            sql.push_str(DB::DIALECT.now_millis_sql());
            sql.push_str(" - ");
            DB::DIALECT.push_placeholder(&mut sql, 1);
            query_age = Some(i64::try_from(age.as_millis()).unwrap_or(i64::MAX / 2));
        }
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        if let Some(age) = query_age {
            query = DB::bind_i64(query, age);
        }
        // In a transaction of its own: on a MySQL/MariaDB session with autocommit off, the
        // DELETE alone would open a transaction that nothing commits.
        let mut conn = self.pool.acquire().await?;
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        let purged = DB::rows_affected(&DB::execute(&mut tx, query).await?);
        tx.commit().await?;
        Ok(purged)
    }
}

/// Ids named in one statement (a requeue's, a relay claim's lease, hand-back and
/// settlement): far under every backend's bind limit (SQLite's 32,766, PostgreSQL's and
/// MySQL's 65,535), so a list of any length goes in chunks of this many.
pub(crate) const IDS_PER_STATEMENT: usize = 500;

/// ` WHERE id IN (...)` for `ids`, or nothing when there are none.
fn id_filter(dialect: Dialect, ids: &[i64], first: usize) -> String {
    if ids.is_empty() {
        return String::new();
    }
    let mut sql = " WHERE id IN (".to_owned();
    dialect.push_placeholders(&mut sql, first, ids.len());
    sql.push(')');
    sql
}

/// Figures from [`Outbox::status`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutboxStatus {
    /// Waiting for delivery, including the rows counted as leased or backing off.
    pub pending: i64,
    /// Held by a relay right now (sent or being sent).
    pub leased: i64,
    /// Waiting out a retry backoff after a failed delivery.
    pub backing_off: i64,
    /// Rejected by PostHog for good, in the dead-letter table; see [`Outbox::requeue`] and
    /// [`Outbox::purge`].
    pub dead: i64,
    /// The oldest waiting row's id, 0 when none waits.
    pub oldest_pending_id: i64,
    /// How long the oldest waiting event has been in the outbox (the delivery lag an analyst
    /// sees), by the database's clock; `None` when none waits.
    pub oldest_pending_age: Option<std::time::Duration>,
    /// The most common reasons of dead events, with their counts.
    pub dead_reasons: Vec<(String, i64)>,
}

impl OutboxStatus {
    /// Sets the outbox gauges of [`metrics`](crate::metrics) (pending, dead, age of the
    /// oldest pending event) from these figures.
    pub fn record_metrics(&self) {
        crate::metrics::outbox(self.pending, self.dead, self.oldest_pending_age);
    }
}

#[cfg(test)]
mod tests {
    /// Outbox inserts are cut by count, and by bytes for large events, never leaving one out.
    #[test]
    fn large_events_are_inserted_in_smaller_statements() {
        let event = |payload_bytes: usize| crate::event::StagedEvent {
            uuid: uuid::Uuid::nil(),
            event: "large".into(),
            distinct_id: "d".to_owned(),
            timestamp: "2026-12-07T00:00:00Z".to_owned(),
            payload: "x".repeat(payload_bytes),
        };
        let sizes = |events: &[crate::event::StagedEvent]| -> Vec<usize> {
            super::statements(events).map(<[_]>::len).collect()
        };
        assert_eq!(sizes(&[]), Vec::<usize>::new());
        assert_eq!(sizes(&vec![event(300); 1_201]), [500, 500, 201]);
        // 800 KB each: two per statement under the 2 MB bound.
        assert_eq!(sizes(&vec![event(800 * 1024); 5]), [2, 2, 1]);
        // One event over the bound goes alone rather than never.
        let mut mixed = vec![event(10); 3];
        mixed.push(event(3 * 1024 * 1024));
        mixed.push(event(10));
        assert_eq!(sizes(&mixed), [3, 1, 1]);
    }

    use super::*;

    async fn memory() -> sqlx::SqlitePool {
        sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect("sqlite::memory:")
            .await
            .unwrap()
    }

    async fn migrate_with(pool: &sqlx::SqlitePool, steps: &[Step]) {
        let mut conn = pool.acquire().await.unwrap();
        sqlx::Sqlite::execute(&mut conn, sqlx::query("BEGIN IMMEDIATE"))
            .await
            .unwrap();
        migrate_steps::<sqlx::Sqlite>(&mut conn, steps)
            .await
            .unwrap();
        sqlx::Sqlite::execute(&mut conn, sqlx::query("COMMIT"))
            .await
            .unwrap();
    }

    const NEXT: &[Step] = &[
        Step::same(
            2,
            "index on leased_until",
            "CREATE INDEX posthog_outbox_lease ON posthog_outbox (leased_until)",
        ),
        Step::each(
            3,
            "column priority",
            "unused",
            "unused",
            "ALTER TABLE posthog_outbox ADD COLUMN priority INTEGER NOT NULL DEFAULT 0",
        ),
    ];

    #[tokio::test]
    async fn a_new_step_is_applied_once_and_recorded() {
        let pool = memory().await;
        migrate_with(&pool, &[]).await;
        let outbox = Outbox::new(&pool);
        assert_eq!(outbox.schema_version().await.unwrap(), Some(1));
        migrate_with(&pool, NEXT).await;
        migrate_with(&pool, NEXT).await;
        assert_eq!(outbox.schema_version().await.unwrap(), Some(3));
        assert!(
            outbox
                .columns()
                .await
                .unwrap()
                .contains(&"priority".to_owned())
        );
        let versions: Vec<(i64, String)> =
            sqlx::query_as("SELECT version, name FROM posthog_outbox_schema ORDER BY version")
                .fetch_all(&pool)
                .await
                .unwrap();
        assert_eq!(
            versions,
            [
                (1, "outbox and dead-letter tables".to_owned()),
                (2, "index on leased_until".to_owned()),
                (3, "column priority".to_owned())
            ]
        );
        assert_eq!(latest_version(NEXT), 3);
    }

    #[tokio::test]
    async fn a_step_whose_object_exists_already_is_completed_not_failed() {
        // As after a step interrupted half-way on MySQL, or tables made by hand from the
        // whole script.
        let pool = memory().await;
        sqlx::raw_sql(sqlx::AssertSqlSafe(baseline_sql(Dialect::Sqlite)))
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query("CREATE INDEX posthog_outbox_lease ON posthog_outbox (leased_until)")
            .execute(&pool)
            .await
            .unwrap();
        migrate_with(&pool, NEXT).await;
        assert_eq!(Outbox::new(&pool).schema_version().await.unwrap(), Some(3));
        // A real failure is still one.
        let mut conn = pool.acquire().await.unwrap();
        let broken = [Step::same(
            4,
            "broken",
            "ALTER TABLE no_such_table ADD COLUMN x INTEGER",
        )];
        sqlx::Sqlite::execute(&mut conn, sqlx::query("BEGIN IMMEDIATE"))
            .await
            .unwrap();
        assert!(
            migrate_steps::<sqlx::Sqlite>(&mut conn, &broken)
                .await
                .is_err()
        );
        sqlx::Sqlite::execute(&mut conn, sqlx::query("ROLLBACK"))
            .await
            .unwrap();
    }

    #[test]
    fn step_names_can_be_written_into_the_script_as_they_are() {
        for name in std::iter::once(BASELINE_NAME).chain(STEPS.iter().map(|step| step.name)) {
            assert!(!name.contains(['\'', '\\']), "{name}");
        }
    }

    #[tokio::test]
    async fn a_database_without_a_schema_table_has_no_version() {
        let pool = memory().await;
        let outbox = Outbox::new(&pool);
        assert_eq!(outbox.schema_version().await.unwrap(), None);
        assert!(outbox.columns().await.unwrap().is_empty());
    }

    #[test]
    fn supplementary_characters_are_escaped_into_the_same_json() {
        let value = serde_json::json!({"🚀 key": "a 🚀 b 𝔘 c ë 名", "plain": "x\\y\"z"});
        let payload = serde_json::to_string(&value).unwrap();
        let escaped = escape_supplementary(&payload);
        assert!(escaped.bytes().all(|byte| byte < 0xF0), "{escaped}");
        assert!(escaped.contains("\\ud83d\\ude80"), "{escaped}");
        assert!(
            escaped.contains("ë 名"),
            "three-byte characters stay as they are"
        );
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&escaped).unwrap(),
            value
        );
        let plain = r#"{"a":"ë 名"}"#;
        assert!(matches!(
            escape_supplementary(plain),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    #[test]
    fn insert_sql_numbers_postgres_placeholders_across_rows() {
        assert_eq!(
            insert_sql(Dialect::Postgres, 2, false),
            "INSERT INTO posthog_outbox (uuid, event, distinct_id, timestamp, payload) VALUES \
             ($1, $2, $3, $4, $5), ($6, $7, $8, $9, $10)"
        );
        assert_eq!(
            insert_sql(Dialect::Sqlite, 1, false),
            "INSERT INTO posthog_outbox (uuid, event, distinct_id, timestamp, payload) VALUES \
             (?, ?, ?, ?, ?)"
        );
        assert_eq!(
            insert_sql(Dialect::Sqlite, 2, true),
            "INSERT INTO posthog_outbox (uuid, event, distinct_id, timestamp, payload, historical) \
             VALUES (?, ?, ?, ?, ?, 1), (?, ?, ?, ?, ?, 1)"
        );
    }
}
