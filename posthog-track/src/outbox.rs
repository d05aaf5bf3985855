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
                last_error TEXT NULL\
            ) DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin"
        }
        Dialect::Sqlite => {
            // AUTOINCREMENT: ids are never reused, so an acknowledgement can never be mistaken
            // for one of a later event.
            "CREATE TABLE IF NOT EXISTS posthog_outbox (\
                id INTEGER PRIMARY KEY AUTOINCREMENT, \
                uuid TEXT NOT NULL, \
                event TEXT NOT NULL, \
                distinct_id TEXT NOT NULL, \
                timestamp TEXT NOT NULL, \
                payload TEXT NOT NULL, \
                status INTEGER NOT NULL DEFAULT 0, \
                attempts INTEGER NOT NULL DEFAULT 0, \
                leased_until INTEGER, \
                last_error TEXT)"
        }
    }
}

/// Creates the outbox table if it does not exist yet.
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
    let mut n = 0;
    for i in 0..events {
        sql.push_str(if i == 0 { "(" } else { ", (" });
        for c in 0..COLUMNS_PER_EVENT {
            if c > 0 {
                sql.push_str(", ");
            }
            n += 1;
            dialect.push_placeholder(&mut sql, n);
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
    /// PostHog rejected it permanently; kept with the reason until requeued or purged.
    Dead,
}

impl Status {
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
