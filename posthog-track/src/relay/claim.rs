//! The outbox statements of the relay, per backend: claim a batch under a lease, then ack,
//! release or dead-letter exactly the rows claimed.
//!
//! Every claim writes a random 63-bit token into the rows it takes, and every later statement
//! about those rows is fenced by it: a relay whose lease expired (and whose rows another relay
//! has claimed since, with another token) cannot delete or release them, and an id reused by a
//! newer row can never be mistaken for the event it replaced. When a whole claim was
//! delivered, the ack is a single `DELETE ... WHERE claim = ? AND id BETWEEN ...`.

use sqlx::Pool;

use crate::backend::{Backend, Dialect};
use crate::error::Result;
use crate::outbox::Status;

/// Rows taken by one claim.
#[derive(Debug)]
pub(crate) struct Claim {
    /// The fence of every statement about these rows.
    pub token: i64,
    pub rows: Vec<Claimed>,
}

/// A row claimed for delivery.
#[derive(Debug, Clone)]
pub(crate) struct Claimed {
    pub id: i64,
    /// Delivery attempts including this one: drives the retry backoff.
    pub attempts: i64,
    pub payload: String,
}

/// Milliseconds since the Unix epoch: the unit of `leased_until`.
pub(crate) fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Leases up to `limit` deliverable rows (pending, not leased or lease expired), oldest first.
pub(crate) async fn claim<DB: Backend>(
    pool: &Pool<DB>,
    limit: i64,
    lease_millis: i64,
) -> Result<Claim> {
    let now = now_millis();
    let until = now + lease_millis;
    let token = fastrand::i64(1..i64::MAX);
    let pending = Status::Pending.code();
    let rows = match DB::DIALECT {
        Dialect::Postgres => {
            let sql = "UPDATE posthog_outbox SET leased_until = $1, claim = $2, attempts = attempts + 1 \
                       WHERE id IN (SELECT id FROM posthog_outbox \
                           WHERE status = $3 AND (leased_until IS NULL OR leased_until < $4) \
                           ORDER BY id LIMIT $5 FOR UPDATE SKIP LOCKED) \
                       RETURNING id, attempts, payload";
            let mut rows =
                fetch_claimed::<DB>(pool, sql, [until, token, pending, now, limit]).await?;
            rows.sort_by_key(|row| row.id);
            rows
        }
        Dialect::Sqlite => {
            // SQLite has one writer at a time, so the UPDATE is the lock.
            let sql = "UPDATE posthog_outbox SET leased_until = ?, claim = ?, attempts = attempts + 1 \
                       WHERE id IN (SELECT id FROM posthog_outbox \
                           WHERE status = ? AND (leased_until IS NULL OR leased_until < ?) \
                           ORDER BY id LIMIT ?) \
                       RETURNING id, attempts, payload";
            let mut rows =
                fetch_claimed::<DB>(pool, sql, [until, token, pending, now, limit]).await?;
            rows.sort_by_key(|row| row.id);
            rows
        }
        Dialect::MySql => claim_mysql::<DB>(pool, [pending, now, limit], until, token).await?,
    };
    Ok(Claim { token, rows })
}

/// MySQL has no `UPDATE ... RETURNING`: lock with SKIP LOCKED, update, read back, in one
/// transaction. READ COMMITTED, because under InnoDB's default REPEATABLE READ the locking
/// read also locks the gap after the last row, where the application's next outbox INSERT
/// goes: that would block (and deadlock) user commits.
async fn claim_mysql<DB: Backend>(
    pool: &Pool<DB>,
    select: [i64; 3],
    until: i64,
    token: i64,
) -> Result<Vec<Claimed>> {
    let mut conn = pool.acquire().await?;
    DB::execute(
        &mut conn,
        sqlx::query("SET TRANSACTION ISOLATION LEVEL READ COMMITTED"),
    )
    .await?;
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    let sql = "SELECT id FROM posthog_outbox \
               WHERE status = ? AND (leased_until IS NULL OR leased_until < ?) \
               ORDER BY id LIMIT ? FOR UPDATE SKIP LOCKED";
    let mut query = sqlx::query(sql);
    for value in select {
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
    let mut list = String::new();
    Dialect::MySql.push_placeholders(&mut list, 1, ids.len());
    let update = format!(
        "UPDATE posthog_outbox SET leased_until = ?, claim = ?, attempts = attempts + 1 WHERE id IN ({list})"
    );
    let mut query = DB::bind_i64(
        DB::bind_i64(sqlx::query(sqlx::AssertSqlSafe(update)), until),
        token,
    );
    for id in &ids {
        query = DB::bind_i64(query, *id);
    }
    DB::execute(&mut tx, query).await?;
    let read = format!(
        "SELECT id, attempts, payload FROM posthog_outbox WHERE id IN ({list}) ORDER BY id"
    );
    let mut read = sqlx::query(sqlx::AssertSqlSafe(read));
    for id in &ids {
        read = DB::bind_i64(read, *id);
    }
    let rows = DB::fetch_all(&mut tx, read).await?;
    tx.commit().await?;
    rows.iter().map(|row| decode::<DB>(row)).collect()
}

async fn fetch_claimed<DB: Backend>(
    pool: &Pool<DB>,
    sql: &'static str,
    values: [i64; 5],
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
        payload: DB::text(row, 2)?,
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

/// Applies `settle` to `rows` of `claim` (all of its rows when `rows` is `None`). Returns rows
/// affected: fewer than asked when the lease was lost to another relay.
pub(crate) async fn settle<DB: Backend>(
    pool: &Pool<DB>,
    claim: &Claim,
    rows: Option<&[&Claimed]>,
    settle: Settle<'_>,
) -> Result<u64> {
    let token = claim.token;
    let dialect = DB::DIALECT;
    let (mut head, mut next) = match settle {
        Settle::Delete => ("DELETE FROM posthog_outbox".to_owned(), 1),
        Settle::Release { .. } => ("UPDATE posthog_outbox SET leased_until = ".to_owned(), 1),
        Settle::Dead { .. } => (
            "UPDATE posthog_outbox SET leased_until = NULL, status = ".to_owned(),
            1,
        ),
    };
    if !matches!(settle, Settle::Delete) {
        dialect.push_placeholder(&mut head, 1);
        head.push_str(", last_error = ");
        dialect.push_placeholder(&mut head, 2);
        next = 3;
    }
    head.push_str(" WHERE claim = ");
    dialect.push_placeholder(&mut head, next);
    let bind_head = |query: crate::backend::BoundQuery<DB>| {
        let query = match settle {
            Settle::Delete => query,
            Settle::Release { retry_at, reason } => {
                DB::bind_text(DB::bind_i64(query, retry_at), reason)
            }
            Settle::Dead { reason } => {
                DB::bind_text(DB::bind_i64(query, Status::Dead.code()), reason)
            }
        };
        DB::bind_i64(query, token)
    };
    let mut conn = pool.acquire().await?;
    let Some(rows) = rows else {
        // The claim's id range keeps this on the primary key; the token picks its rows.
        let (Some(first), Some(last)) = (claim.rows.first(), claim.rows.last()) else {
            return Ok(0);
        };
        let mut sql = head;
        sql.push_str(" AND id BETWEEN ");
        dialect.push_placeholder(&mut sql, next + 1);
        sql.push_str(" AND ");
        dialect.push_placeholder(&mut sql, next + 2);
        let query = bind_head(sqlx::query(sqlx::AssertSqlSafe(sql)));
        let query = DB::bind_i64(DB::bind_i64(query, first.id), last.id);
        return Ok(DB::rows_affected(&DB::execute(&mut conn, query).await?));
    };
    let mut affected = 0;
    for chunk in rows.chunks(500) {
        let mut sql = head.clone();
        sql.push_str(" AND id IN (");
        dialect.push_placeholders(&mut sql, next + 1, chunk.len());
        sql.push(')');
        let mut query = bind_head(sqlx::query(sqlx::AssertSqlSafe(sql)));
        for row in chunk {
            query = DB::bind_i64(query, row.id);
        }
        affected += DB::rows_affected(&DB::execute(&mut conn, query).await?);
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
        assert_eq!(first.rows.len(), 2);
        assert_eq!(
            second
                .rows
                .iter()
                .map(|row| row.attempts)
                .collect::<Vec<_>>(),
            [2, 2]
        );
        assert!(
            claim(&pool, 10, 60_000).await.unwrap().rows.is_empty(),
            "leased rows are not claimable"
        );

        let stale: Vec<&Claimed> = first.rows.iter().collect();
        assert_eq!(
            settle(&pool, &first, Some(&stale), Settle::Delete)
                .await
                .unwrap(),
            0,
            "the stale ack is fenced"
        );
        assert_eq!(
            settle(&pool, &first, None, Settle::Delete).await.unwrap(),
            0
        );
        let release = Settle::Release {
            retry_at: 0,
            reason: "stale",
        };
        assert_eq!(settle(&pool, &first, None, release).await.unwrap(), 0);
        assert_eq!(
            settle(&pool, &second, None, Settle::Delete).await.unwrap(),
            2
        );
    }

    #[tokio::test]
    async fn a_reused_id_is_not_mistaken_for_the_deleted_event() {
        let pool = outbox().await;
        insert(&pool, "old").await;
        let first = claim(&pool, 10, 0).await.unwrap();
        // Another relay delivers and deletes it; a new event then takes the same id.
        sqlx::query("DELETE FROM posthog_outbox")
            .execute(&pool)
            .await
            .unwrap();
        insert(&pool, "new").await;
        let second = claim(&pool, 10, 0).await.unwrap();
        assert_eq!(
            (second.rows[0].id, second.rows[0].attempts),
            (first.rows[0].id, first.rows[0].attempts)
        );
        let rows: Vec<&Claimed> = first.rows.iter().collect();
        assert_eq!(
            settle(&pool, &first, Some(&rows), Settle::Delete)
                .await
                .unwrap(),
            0
        );
        assert_eq!(crate::outbox::Outbox::new(&pool).len().await.unwrap(), 1);
    }
}
