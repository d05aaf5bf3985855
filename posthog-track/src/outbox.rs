//! The outbox table, `posthog_outbox`: events committed with the rows that caused them.
//!
//! A tracked transaction writes its staged events here just before it commits, in the same
//! transaction, so a row and its events exist together or not at all. The relay delivers them
//! from here and deletes them once PostHog has accepted them.

use sqlx::Pool;
use uuid::Uuid;

use crate::backend::{Backend, Dialect};
use crate::error::Result;
use crate::event::StagedEvent;

/// Name of the outbox table.
pub const TABLE: &str = "posthog_outbox";
/// Name of the dead-letter table: events PostHog refused for good, with their history. They
/// live apart so that they never slow down the relay's claims.
pub const DEAD_TABLE: &str = "posthog_outbox_dead";

/// Columns bound per event by [`write`].
const COLUMNS_PER_EVENT: usize = 5;
/// Events per INSERT statement: far below every backend's parameter limit (SQLite's is the
/// lowest at 32,766), large enough that a big transaction needs few round trips.
const EVENTS_PER_STATEMENT: usize = 500;

/// The DDL of the outbox and dead-letter tables in `dialect`, as one script of `;`-separated
/// statements: what [`Tracker::migrate`](crate::Tracker::migrate) runs, and what to put in
/// your own migrations (for example a `sqlx::migrate!` file) if you prefer. Integer columns are
/// 64-bit everywhere so one decoder reads them on every backend.
///
/// `leased_until` and `created_at` are milliseconds since the Unix epoch on the database's
/// clock; `last_error` keeps the most recent delivery failures, newest last.
pub fn create_table_sql(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Postgres => {
            "CREATE TABLE IF NOT EXISTS posthog_outbox (\
                id BIGSERIAL PRIMARY KEY, \
                uuid TEXT NOT NULL, \
                event TEXT NOT NULL, \
                distinct_id TEXT NOT NULL, \
                timestamp TEXT NOT NULL, \
                payload TEXT NOT NULL, \
                attempts BIGINT NOT NULL DEFAULT 0, \
                failures BIGINT NOT NULL DEFAULT 0, \
                leased_until BIGINT, \
                claim BIGINT, \
                last_error TEXT, \
                created_at BIGINT DEFAULT (EXTRACT(EPOCH FROM now()) * 1000)::BIGINT, \
                historical BIGINT NOT NULL DEFAULT 0);\n\
             CREATE TABLE IF NOT EXISTS posthog_outbox_dead (\
                id BIGINT PRIMARY KEY, \
                uuid TEXT NOT NULL, \
                event TEXT NOT NULL, \
                distinct_id TEXT NOT NULL, \
                timestamp TEXT NOT NULL, \
                payload TEXT NOT NULL, \
                attempts BIGINT NOT NULL DEFAULT 0, \
                last_error TEXT, \
                reason TEXT NOT NULL, \
                dead_at BIGINT NOT NULL, \
                historical BIGINT NOT NULL DEFAULT 0)"
        }
        Dialect::MySql => {
            "CREATE TABLE IF NOT EXISTS posthog_outbox (\
                id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, \
                uuid CHAR(36) NOT NULL, \
                event TEXT NOT NULL, \
                distinct_id TEXT NOT NULL, \
                timestamp VARCHAR(40) NOT NULL, \
                payload MEDIUMTEXT NOT NULL, \
                attempts BIGINT NOT NULL DEFAULT 0, \
                failures BIGINT NOT NULL DEFAULT 0, \
                leased_until BIGINT NULL, \
                claim BIGINT NULL, \
                last_error TEXT NULL, \
                created_at BIGINT NULL DEFAULT (CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED)), \
                historical BIGINT NOT NULL DEFAULT 0\
            ) DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;\n\
             CREATE TABLE IF NOT EXISTS posthog_outbox_dead (\
                id BIGINT NOT NULL PRIMARY KEY, \
                uuid CHAR(36) NOT NULL, \
                event TEXT NOT NULL, \
                distinct_id TEXT NOT NULL, \
                timestamp VARCHAR(40) NOT NULL, \
                payload MEDIUMTEXT NOT NULL, \
                attempts BIGINT NOT NULL DEFAULT 0, \
                last_error TEXT NULL, \
                reason TEXT NOT NULL, \
                dead_at BIGINT NOT NULL, \
                historical BIGINT NOT NULL DEFAULT 0\
            ) DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin"
        }
        Dialect::Sqlite => {
            // Not AUTOINCREMENT, which costs an extra page write per commit: a deleted newest
            // id may be reused, but the relay's acks are fenced by a random per-claim token,
            // so a reused id can never be mistaken for the event it replaced.
            "CREATE TABLE IF NOT EXISTS posthog_outbox (\
                id INTEGER PRIMARY KEY, \
                uuid TEXT NOT NULL, \
                event TEXT NOT NULL, \
                distinct_id TEXT NOT NULL, \
                timestamp TEXT NOT NULL, \
                payload TEXT NOT NULL, \
                attempts INTEGER NOT NULL DEFAULT 0, \
                failures INTEGER NOT NULL DEFAULT 0, \
                leased_until INTEGER, \
                claim INTEGER, \
                last_error TEXT, \
                created_at INTEGER DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)), \
                historical INTEGER NOT NULL DEFAULT 0);\n\
             CREATE TABLE IF NOT EXISTS posthog_outbox_dead (\
                id INTEGER PRIMARY KEY, \
                uuid TEXT NOT NULL, \
                event TEXT NOT NULL, \
                distinct_id TEXT NOT NULL, \
                timestamp TEXT NOT NULL, \
                payload TEXT NOT NULL, \
                attempts INTEGER NOT NULL DEFAULT 0, \
                last_error TEXT, \
                reason TEXT NOT NULL, \
                dead_at INTEGER NOT NULL, \
                historical INTEGER NOT NULL DEFAULT 0)"
        }
    }
}

/// Columns that tables created by earlier versions lack, as `(table, column, DDL that adds
/// it)`. SQLite cannot add a column whose default is not constant, so its upgraded
/// `created_at` starts empty (such rows are exempt from the age limit). `historical` marks
/// events sent as `historical_migration` (a backfill's past events).
fn added_columns(dialect: Dialect) -> [(&'static str, &'static str, &'static str); 4] {
    match dialect {
        Dialect::Postgres => [
            (
                TABLE,
                "failures",
                "ALTER TABLE posthog_outbox ADD COLUMN failures BIGINT NOT NULL DEFAULT 0",
            ),
            (
                TABLE,
                "created_at",
                "ALTER TABLE posthog_outbox ADD COLUMN created_at BIGINT \
                 DEFAULT (EXTRACT(EPOCH FROM now()) * 1000)::BIGINT",
            ),
            (
                TABLE,
                "historical",
                "ALTER TABLE posthog_outbox ADD COLUMN historical BIGINT NOT NULL DEFAULT 0",
            ),
            (
                DEAD_TABLE,
                "historical",
                "ALTER TABLE posthog_outbox_dead ADD COLUMN historical BIGINT NOT NULL DEFAULT 0",
            ),
        ],
        Dialect::MySql => [
            (
                TABLE,
                "failures",
                "ALTER TABLE posthog_outbox ADD COLUMN failures BIGINT NOT NULL DEFAULT 0",
            ),
            (
                TABLE,
                "created_at",
                "ALTER TABLE posthog_outbox ADD COLUMN created_at BIGINT NULL \
                 DEFAULT (CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED))",
            ),
            (
                TABLE,
                "historical",
                "ALTER TABLE posthog_outbox ADD COLUMN historical BIGINT NOT NULL DEFAULT 0",
            ),
            (
                DEAD_TABLE,
                "historical",
                "ALTER TABLE posthog_outbox_dead ADD COLUMN historical BIGINT NOT NULL DEFAULT 0",
            ),
        ],
        Dialect::Sqlite => [
            (
                TABLE,
                "failures",
                "ALTER TABLE posthog_outbox ADD COLUMN failures INTEGER NOT NULL DEFAULT 0",
            ),
            (
                TABLE,
                "created_at",
                "ALTER TABLE posthog_outbox ADD COLUMN created_at INTEGER",
            ),
            (
                TABLE,
                "historical",
                "ALTER TABLE posthog_outbox ADD COLUMN historical INTEGER NOT NULL DEFAULT 0",
            ),
            (
                DEAD_TABLE,
                "historical",
                "ALTER TABLE posthog_outbox_dead ADD COLUMN historical INTEGER NOT NULL DEFAULT 0",
            ),
        ],
    }
}

/// Creates the outbox and dead-letter tables, or upgrades tables created by an earlier
/// version in place (missing columns are added; rows an earlier version marked dead move to
/// the dead-letter table). Idempotent, and safe when several processes run it at once: it
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
            migrate_locked::<DB>(&mut tx).await?;
            tx.commit().await?;
            Ok(())
        }
        Dialect::MySql => {
            // MySQL commits DDL implicitly, so a session lock serialises the migrations.
            let got = DB::fetch_one(
                &mut conn,
                sqlx::query("SELECT GET_LOCK('posthog_outbox_migrate', 60)"),
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
                sqlx::query("SELECT RELEASE_LOCK('posthog_outbox_migrate')"),
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
    let dialect = DB::DIALECT;
    for statement in create_table_sql(dialect).split(";\n") {
        DB::execute(conn, sqlx::query(sqlx::AssertSqlSafe(statement))).await?;
    }
    let mut columns = Vec::new();
    for table in [TABLE, DEAD_TABLE] {
        columns.push(table_columns::<DB>(conn, table).await?);
    }
    for (table, column, ddl) in added_columns(dialect) {
        let existing = if table == TABLE {
            &columns[0]
        } else {
            &columns[1]
        };
        if !existing.iter().any(|existing| existing == column) {
            DB::execute(conn, sqlx::query(ddl)).await?;
        }
    }
    let columns = &columns[0];
    // Versions before the dead-letter table kept dead rows in the outbox with `status = 1`.
    if columns.iter().any(|existing| existing == "status") {
        let move_dead = format!(
            "INSERT INTO posthog_outbox_dead \
                 (id, uuid, event, distinct_id, timestamp, payload, attempts, last_error, reason, dead_at) \
             SELECT id, uuid, event, distinct_id, timestamp, payload, attempts, last_error, \
                    COALESCE(last_error, 'dead-lettered by an earlier version'), {} \
             FROM posthog_outbox WHERE status = 1",
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

/// The lower-cased column names of `table` (one of the outbox's own tables).
async fn table_columns<DB: Backend>(conn: &mut DB::Connection, table: &str) -> Result<Vec<String>> {
    let sql = match DB::DIALECT {
        Dialect::Postgres => format!(
            "SELECT column_name::TEXT FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = '{table}'"
        ),
        Dialect::MySql => format!(
            "SELECT CAST(column_name AS CHAR) FROM information_schema.columns \
             WHERE table_schema = DATABASE() AND table_name = '{table}'"
        ),
        Dialect::Sqlite => format!("SELECT name FROM pragma_table_info('{table}')"),
    };
    Ok(DB::fetch_all(conn, sqlx::query(sqlx::AssertSqlSafe(sql)))
        .await?
        .iter()
        .map(|row| DB::text(row, 0).map(|name| name.to_ascii_lowercase()))
        .collect::<Result<Vec<_>, _>>()?)
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

/// Inserts staged events, in order, through `conn` (the caller's open transaction).
pub(crate) async fn write<DB: Backend>(
    conn: &mut DB::Connection,
    events: &[StagedEvent],
) -> Result<()> {
    write_marked::<DB>(conn, events, false).await
}

/// Inserts staged events like [`write`]; `historical` ones are sent as `historical_migration`
/// (PostHog's import path for past events) by every relay.
pub(crate) async fn write_marked<DB: Backend>(
    conn: &mut DB::Connection,
    events: &[StagedEvent],
    historical: bool,
) -> Result<()> {
    for chunk in events.chunks(EVENTS_PER_STATEMENT) {
        let sql = insert_sql(DB::DIALECT, chunk.len(), historical);
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        let mut uuid_buffer = Uuid::encode_buffer();
        for event in chunk {
            query = DB::bind_text(
                query,
                event.uuid.hyphenated().encode_lower(&mut uuid_buffer),
            );
            query = DB::bind_text(query, &event.event);
            query = DB::bind_text(query, &event.distinct_id);
            query = DB::bind_text(query, &event.timestamp);
            query = DB::bind_text(query, &event.payload);
        }
        DB::execute(conn, query)
            .await
            .map_err(|error| explain(error, DB::DIALECT))?;
    }
    Ok(())
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
                    COALESCE({now} - MIN(created_at), -1), \
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

    /// Puts dead events back in line for delivery (all of them, or those with these ids), at
    /// the back of the line with fresh attempt and failure counts. Returns how many were
    /// requeued.
    pub async fn requeue(&self, ids: Option<&[i64]>) -> Result<u64> {
        let filter = id_filter(DB::DIALECT, ids.unwrap_or_default(), 1);
        let copy = format!(
            "INSERT INTO posthog_outbox (uuid, event, distinct_id, timestamp, payload, historical) \
             SELECT uuid, event, distinct_id, timestamp, payload, historical \
             FROM posthog_outbox_dead{filter} \
             ORDER BY id"
        );
        let delete = format!("DELETE FROM posthog_outbox_dead{filter}");
        let mut conn = self.pool.acquire().await?;
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        let bind = |sql: String| {
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for id in ids.unwrap_or_default() {
                query = DB::bind_i64(query, *id);
            }
            query
        };
        let copied = DB::rows_affected(&DB::execute(&mut tx, bind(copy)).await?);
        DB::execute(&mut tx, bind(delete)).await?;
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
        let mut conn = self.pool.acquire().await?;
        Ok(DB::rows_affected(&DB::execute(&mut conn, query).await?))
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

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
