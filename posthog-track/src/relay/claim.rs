//! The outbox statements of the relay, per backend: claim a batch under a lease, then ack,
//! release or dead-letter exactly the rows claimed (fenced by their attempt number, so a relay
//! whose lease expired cannot touch rows another relay has claimed since).

use sqlx::Pool;

use crate::backend::{Backend, Dialect};
use crate::error::Result;
use crate::outbox::Status;

/// A row claimed for delivery.
#[derive(Debug, Clone)]
pub(crate) struct Claimed {
    pub id: i64,
    /// The fence: this claim's attempt number ...
    pub attempts: i64,
    /// ... and the event's uuid (ids of deleted rows may be reused).
    pub uuid: String,
    pub payload: String,
}

/// Milliseconds since the Unix epoch: the unit of `leased_until`.
pub(crate) fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn placeholders(dialect: Dialect, first: usize, count: usize) -> String {
    let mut sql = String::with_capacity(count * 4);
    for i in 0..count {
        if i > 0 {
            sql.push_str(", ");
        }
        dialect.push_placeholder(&mut sql, first + i);
    }
    sql
}

/// Leases up to `limit` deliverable rows (pending, not leased or lease expired), oldest first.
pub(crate) async fn claim<DB: Backend>(
    pool: &Pool<DB>,
    limit: i64,
    lease_millis: i64,
) -> Result<Vec<Claimed>> {
    let now = now_millis();
    let until = now + lease_millis;
    let pending = Status::Pending.code();
    match DB::DIALECT {
        Dialect::Postgres => {
            let sql = "UPDATE posthog_outbox SET leased_until = $1, attempts = attempts + 1 \
                       WHERE id IN (SELECT id FROM posthog_outbox \
                           WHERE status = $2 AND (leased_until IS NULL OR leased_until < $3) \
                           ORDER BY id LIMIT $4 FOR UPDATE SKIP LOCKED) \
                       RETURNING id, attempts, uuid, payload";
            fetch_claimed::<DB>(pool, sql, [until, pending, now, limit]).await
        }
        Dialect::Sqlite => {
            // SQLite has one writer at a time, so the UPDATE is the lock.
            let sql = "UPDATE posthog_outbox SET leased_until = ?, attempts = attempts + 1 \
                       WHERE id IN (SELECT id FROM posthog_outbox \
                           WHERE status = ? AND (leased_until IS NULL OR leased_until < ?) \
                           ORDER BY id LIMIT ?) \
                       RETURNING id, attempts, uuid, payload";
            let mut rows = fetch_claimed::<DB>(pool, sql, [until, pending, now, limit]).await?;
            rows.sort_by_key(|row| row.id);
            Ok(rows)
        }
        Dialect::MySql => {
            // No UPDATE ... RETURNING: lock with SKIP LOCKED, update, read back, in one
            // transaction. READ COMMITTED, because under InnoDB's default REPEATABLE READ the
            // locking read also locks the gap after the last row, where the application's
            // next outbox INSERT goes: that would block (and deadlock) user commits.
            let mut conn = pool.acquire().await?;
            DB::execute(
                &mut conn,
                sqlx::query("SET TRANSACTION ISOLATION LEVEL READ COMMITTED"),
            )
            .await?;
            let mut tx = sqlx::Connection::begin(&mut *conn).await?;
            let select = "SELECT id FROM posthog_outbox \
                          WHERE status = ? AND (leased_until IS NULL OR leased_until < ?) \
                          ORDER BY id LIMIT ? FOR UPDATE SKIP LOCKED";
            let mut query = sqlx::query(select);
            for value in [pending, now, limit] {
                query = DB::bind_i64(query, value);
            }
            let rows = DB::fetch_all(&mut tx, query).await?;
            let ids = rows
                .iter()
                .map(|row| DB::int(row, 0))
                .collect::<Result<Vec<_>, _>>()?;
            if ids.is_empty() {
                tx.commit().await?;
                return Ok(Vec::new());
            }
            let list = placeholders(Dialect::MySql, 1, ids.len());
            let update = format!(
                "UPDATE posthog_outbox SET leased_until = ?, attempts = attempts + 1 WHERE id IN ({list})"
            );
            let mut query = DB::bind_i64(sqlx::query(sqlx::AssertSqlSafe(update)), until);
            for id in &ids {
                query = DB::bind_i64(query, *id);
            }
            DB::execute(&mut tx, query).await?;
            let read = format!(
                "SELECT id, attempts, uuid, payload FROM posthog_outbox WHERE id IN ({list}) ORDER BY id"
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(read));
            for id in &ids {
                query = DB::bind_i64(query, *id);
            }
            let rows = DB::fetch_all(&mut tx, query).await?;
            tx.commit().await?;
            rows.iter().map(|row| decode::<DB>(row)).collect()
        }
    }
}

async fn fetch_claimed<DB: Backend>(
    pool: &Pool<DB>,
    sql: &'static str,
    values: [i64; 4],
) -> Result<Vec<Claimed>> {
    let mut query = sqlx::query(sql);
    for value in values {
        query = DB::bind_i64(query, value);
    }
    let mut conn = pool.acquire().await?;
    let rows = DB::fetch_all(&mut conn, query).await?;
    rows.iter().map(|row| decode::<DB>(row)).collect()
}

fn decode<DB: Backend>(row: &DB::Row) -> Result<Claimed> {
    Ok(Claimed {
        id: DB::int(row, 0)?,
        attempts: DB::int(row, 1)?,
        uuid: DB::text(row, 2)?,
        payload: DB::text(row, 3)?,
    })
}

/// What to do with claimed rows once PostHog has answered.
pub(crate) enum Settle<'a> {
    /// Delivered: delete.
    Delete,
    /// Try again after `retry_at` (ms since epoch), remembering why.
    Release { retry_at: i64, reason: &'a str },
    /// Rejected for good.
    Dead { reason: &'a str },
}

/// Applies `settle` to `rows`, each fenced by its attempt number and uuid. Returns rows
/// affected.
pub(crate) async fn settle<DB: Backend>(
    pool: &Pool<DB>,
    rows: &[&Claimed],
    settle: Settle<'_>,
) -> Result<u64> {
    if rows.is_empty() {
        return Ok(0);
    }
    let dialect = DB::DIALECT;
    let mut conn = pool.acquire().await?;
    let mut affected = 0;
    // One statement per attempt number (rows of one claim almost always share it).
    let mut by_attempts: Vec<(i64, Vec<&Claimed>)> = Vec::new();
    for row in rows {
        match by_attempts
            .iter_mut()
            .find(|(attempts, _)| *attempts == row.attempts)
        {
            Some((_, group)) => group.push(row),
            None => by_attempts.push((row.attempts, vec![row])),
        }
    }
    for (attempts, group) in by_attempts {
        for chunk in group.chunks(500) {
            let (head, first_id) = match settle {
                Settle::Delete => ("DELETE FROM posthog_outbox".to_owned(), 1),
                Settle::Release { .. } => {
                    let mut head = "UPDATE posthog_outbox SET leased_until = ".to_owned();
                    dialect.push_placeholder(&mut head, 1);
                    head.push_str(", last_error = ");
                    dialect.push_placeholder(&mut head, 2);
                    (head, 3)
                }
                Settle::Dead { .. } => {
                    let mut head =
                        "UPDATE posthog_outbox SET leased_until = NULL, status = ".to_owned();
                    dialect.push_placeholder(&mut head, 1);
                    head.push_str(", last_error = ");
                    dialect.push_placeholder(&mut head, 2);
                    (head, 3)
                }
            };
            let mut sql = head;
            sql.push_str(" WHERE attempts = ");
            dialect.push_placeholder(&mut sql, first_id);
            sql.push_str(" AND id IN (");
            sql.push_str(&placeholders(dialect, first_id + 1, chunk.len()));
            sql.push_str(") AND uuid IN (");
            sql.push_str(&placeholders(
                dialect,
                first_id + 1 + chunk.len(),
                chunk.len(),
            ));
            sql.push(')');
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            match settle {
                Settle::Delete => {}
                Settle::Release { retry_at, reason } => {
                    query = DB::bind_i64(query, retry_at);
                    query = DB::bind_text(query, reason);
                }
                Settle::Dead { reason } => {
                    query = DB::bind_i64(query, Status::Dead.code());
                    query = DB::bind_text(query, reason);
                }
            }
            query = DB::bind_i64(query, attempts);
            for row in chunk {
                query = DB::bind_i64(query, row.id);
            }
            for row in chunk {
                query = DB::bind_text(query, &row.uuid);
            }
            let result = DB::execute(&mut conn, query).await?;
            affected += DB::rows_affected(&result);
        }
    }
    Ok(affected)
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use super::*;

    async fn outbox() -> Pool<sqlx::Sqlite> {
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect("sqlite::memory:")
            .await
            .unwrap();
        crate::outbox::migrate(&pool).await.unwrap();
        pool
    }

    async fn insert(pool: &Pool<sqlx::Sqlite>, uuid: &str) {
        sqlx::query(
            "INSERT INTO posthog_outbox (uuid, event, distinct_id, timestamp, payload) \
             VALUES (?, 'e', 'd', 't', '{}')",
        )
        .bind(uuid)
        .execute(pool)
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn stale_acks_are_fenced_off() {
        let pool = outbox().await;
        insert(&pool, "a").await;
        insert(&pool, "b").await;
        // A zero lease expires at once: a second relay may claim the same rows.
        let first = claim(&pool, 10, 0).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let second = claim(&pool, 10, 60_000).await.unwrap();
        assert_eq!(first.len(), 2);
        assert_eq!(
            second.iter().map(|row| row.attempts).collect::<Vec<_>>(),
            [2, 2]
        );
        assert!(
            claim(&pool, 10, 60_000).await.unwrap().is_empty(),
            "leased rows are not claimable"
        );

        let stale: Vec<&Claimed> = first.iter().collect();
        assert_eq!(
            settle(&pool, &stale, Settle::Delete).await.unwrap(),
            0,
            "the stale ack is fenced"
        );
        let current: Vec<&Claimed> = second.iter().collect();
        assert_eq!(settle(&pool, &current, Settle::Delete).await.unwrap(), 2);
    }

    #[tokio::test]
    async fn a_reused_id_is_not_mistaken_for_the_deleted_event() {
        let pool = outbox().await;
        insert(&pool, "old").await;
        let claimed = claim(&pool, 10, 0).await.unwrap();
        let rows: Vec<&Claimed> = claimed.iter().collect();
        // Another relay delivers and deletes it; a new event then takes the same id.
        sqlx::query("DELETE FROM posthog_outbox")
            .execute(&pool)
            .await
            .unwrap();
        insert(&pool, "new").await;
        let reclaimed = claim(&pool, 10, 0).await.unwrap();
        assert_eq!(
            (reclaimed[0].id, reclaimed[0].attempts),
            (claimed[0].id, claimed[0].attempts)
        );
        assert_eq!(settle(&pool, &rows, Settle::Delete).await.unwrap(), 0);
        assert_eq!(crate::outbox::Outbox::new(&pool).len().await.unwrap(), 1);
    }
}
