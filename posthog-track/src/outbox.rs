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

/// Columns bound per event by [`write`].
const COLUMNS_PER_EVENT: usize = 5;
/// Events per INSERT statement: far below every backend's parameter limit (SQLite's is the
/// lowest at 32,766), large enough that a big transaction needs few round trips.
const EVENTS_PER_STATEMENT: usize = 500;

/// `CREATE TABLE` for the outbox in `dialect`. Integer columns are 64-bit everywhere so one
/// decoder reads them on every backend.
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
                status BIGINT NOT NULL DEFAULT 0, \
                attempts BIGINT NOT NULL DEFAULT 0, \
                leased_until BIGINT, \
                claim BIGINT, \
                last_error TEXT)"
        }
        Dialect::MySql => {
            "CREATE TABLE IF NOT EXISTS posthog_outbox (\
                id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, \
                uuid CHAR(36) NOT NULL, \
                event TEXT NOT NULL, \
                distinct_id TEXT NOT NULL, \
                timestamp VARCHAR(40) NOT NULL, \
                payload MEDIUMTEXT NOT NULL, \
                status BIGINT NOT NULL DEFAULT 0, \
                attempts BIGINT NOT NULL DEFAULT 0, \
                leased_until BIGINT NULL, \
                claim BIGINT NULL, \
                last_error TEXT NULL\
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
                status INTEGER NOT NULL DEFAULT 0, \
                attempts INTEGER NOT NULL DEFAULT 0, \
                leased_until INTEGER, \
                claim INTEGER, \
                last_error TEXT)"
        }
    }
}

/// Creates the outbox table if it does not exist yet.
///
/// There is deliberately no secondary index: the relay claims the oldest deliverable rows by
/// walking the primary key, which costs O(batch) while the head of the outbox is deliverable
/// (the normal case), and every tracked commit would otherwise pay for maintaining it.
pub(crate) async fn migrate<DB: Backend>(pool: &Pool<DB>) -> Result<()> {
    let mut conn = pool.acquire().await?;
    DB::execute(&mut conn, sqlx::query(create_table_sql(DB::DIALECT))).await?;
    Ok(())
}

/// Inserts staged events, in order, through `conn` (the caller's open transaction).
pub(crate) async fn write<DB: Backend>(
    conn: &mut DB::Connection,
    events: &[StagedEvent],
) -> Result<()> {
    for chunk in events.chunks(EVENTS_PER_STATEMENT) {
        let sql = insert_sql(DB::DIALECT, chunk.len());
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
        DB::execute(conn, query).await?;
    }
    Ok(())
}

fn insert_sql(dialect: Dialect, events: usize) -> String {
    let mut sql = String::with_capacity(96 + events * 24);
    sql.push_str(
        "INSERT INTO posthog_outbox (uuid, event, distinct_id, timestamp, payload) VALUES ",
    );
    for i in 0..events {
        sql.push_str(if i == 0 { "(" } else { ", (" });
        dialect.push_placeholders(&mut sql, i * COLUMNS_PER_EVENT + 1, COLUMNS_PER_EVENT);
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
    /// PostHog rejected it permanently; kept with the reason until requeued or purged.
    Dead,
}

impl Status {
    /// The value stored in the `status` column.
    pub(crate) const fn code(self) -> i64 {
        match self {
            Status::Pending => 0,
            Status::Dead => 1,
        }
    }

    fn from_code(code: i64) -> Status {
        if code == 1 {
            Status::Dead
        } else {
            Status::Pending
        }
    }
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
    /// Why PostHog rejected it, for dead events.
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

    /// Every event in the outbox, oldest first.
    pub async fn events(&self) -> Result<Vec<OutboxEvent>> {
        let mut conn = self.pool.acquire().await?;
        let rows = DB::fetch_all(
            &mut conn,
            sqlx::query(
                "SELECT id, uuid, event, distinct_id, timestamp, payload, status, attempts, \
                 last_error FROM posthog_outbox ORDER BY id",
            ),
        )
        .await?;
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
                    status: Status::from_code(DB::int(row, 6)?),
                    attempts: DB::int(row, 7)?,
                    last_error: DB::optional_text(row, 8)?,
                })
            })
            .collect()
    }

    /// How many events wait in the outbox (pending and dead).
    pub async fn len(&self) -> Result<i64> {
        let mut conn = self.pool.acquire().await?;
        let row = DB::fetch_one(
            &mut conn,
            sqlx::query("SELECT COUNT(*) FROM posthog_outbox"),
        )
        .await?;
        Ok(DB::int(&row, 0)?)
    }

    /// Whether the outbox is empty.
    pub async fn is_empty(&self) -> Result<bool> {
        Ok(self.len().await? == 0)
    }

    /// How many events wait for delivery and how many were rejected for good.
    pub async fn status(&self) -> Result<OutboxStatus> {
        let mut conn = self.pool.acquire().await?;
        let sql = "SELECT COUNT(*), COUNT(CASE WHEN status = 1 THEN 1 END), \
                   COALESCE(MIN(CASE WHEN status = 0 THEN id END), 0) FROM posthog_outbox";
        let row = DB::fetch_one(&mut conn, sqlx::query(sql)).await?;
        let total = DB::int(&row, 0)?;
        let dead = DB::int(&row, 1)?;
        Ok(OutboxStatus {
            pending: total - dead,
            dead,
            oldest_pending_id: DB::int(&row, 2)?,
        })
    }

    /// Puts dead events back in line for delivery (all of them, or those with these ids), with
    /// a fresh attempt count. Returns how many were requeued.
    pub async fn requeue(&self, ids: Option<&[i64]>) -> Result<u64> {
        let mut sql =
            "UPDATE posthog_outbox SET status = 0, leased_until = NULL, last_error = NULL \
                       WHERE status = 1"
                .to_owned();
        let ids = ids.unwrap_or_default();
        if !ids.is_empty() {
            sql.push_str(" AND id IN (");
            DB::DIALECT.push_placeholders(&mut sql, 1, ids.len());
            sql.push(')');
        }
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for id in ids {
            query = DB::bind_i64(query, *id);
        }
        let mut conn = self.pool.acquire().await?;
        let result = DB::execute(&mut conn, query).await?;
        Ok(DB::rows_affected(&result))
    }
}

/// Counts from [`Outbox::status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutboxStatus {
    /// Waiting for delivery (including rows a relay holds right now).
    pub pending: i64,
    /// Rejected by PostHog for good; see [`Outbox::requeue`].
    pub dead: i64,
    /// The oldest waiting row's id, 0 when none waits.
    pub oldest_pending_id: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_sql_numbers_postgres_placeholders_across_rows() {
        assert_eq!(
            insert_sql(Dialect::Postgres, 2),
            "INSERT INTO posthog_outbox (uuid, event, distinct_id, timestamp, payload) VALUES \
             ($1, $2, $3, $4, $5), ($6, $7, $8, $9, $10)"
        );
        assert_eq!(
            insert_sql(Dialect::Sqlite, 1),
            "INSERT INTO posthog_outbox (uuid, event, distinct_id, timestamp, payload) VALUES \
             (?, ?, ?, ?, ?)"
        );
    }
}
