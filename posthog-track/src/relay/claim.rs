//! The outbox statements of the relay, per backend: claim a batch under a lease, keep the
//! lease alive while the batch is in flight, then ack, release or dead-letter exactly the rows
//! claimed.
//!
//! Every time is the database's clock (`leased_until` is milliseconds since the epoch as the
//! database sees it), so relays on hosts whose clocks disagree still agree on who holds what.
//! Every claim writes a random 63-bit token into the rows it takes, and every later statement
//! about those rows is fenced by it: a relay whose lease expired (and whose rows another relay
//! has claimed since, with another token) cannot delete, release or dead-letter them, and an id
//! reused by a newer row can never be mistaken for the event it replaced.
//!
//! On PostgreSQL a claim is, by default, held by the sending transaction instead: the rows are
//! locked (`SELECT ... FOR UPDATE SKIP LOCKED`, which writes no new row versions), sent, and
//! settled in that transaction (deleted, released with a backoff, or dead-lettered, row by
//! row), which commits after PostHog answered. Nothing is written to claim them, so every
//! delivered event costs its `INSERT` and its `DELETE` and no claim `UPDATE`. The locks are the
//! fence: no other relay can touch the rows while they are held, and a relay that dies
//! (connection closed) or hangs (silent for longer than the lease:
//! `idle_in_transaction_session_timeout`, reset by the renewals while a send is in flight)
//! loses them at once, by rollback, with nothing of its round applied. MySQL/MariaDB (no
//! transaction-scoped idle timeout on MySQL, so a hung relay would keep its rows) and SQLite
//! (one writer: a transaction held over a send would block every application commit) keep
//! written leases.

use sqlx::Pool;

use crate::backend::{Backend, Dialect};
use crate::error::Result;
// A claim (`batch_size`) may hold more rows than a statement may bind parameters: its ids go
// in chunks.
use crate::outbox::IDS_PER_STATEMENT;

/// Payloads up to this size come back with the claim itself; larger ones are read one by one
/// while the claim's byte budget lasts, so a claim never holds more than
/// `batch_size x INLINE_PAYLOAD_BYTES + max_claim_bytes` of payload in memory.
const INLINE_PAYLOAD_BYTES: i64 = 16 * 1024;

/// How much failure history a row keeps (`last_error`, newest last).
const HISTORY_BYTES: i64 = 2000;

/// What a relay asks of one claim.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ask {
    /// At most this many rows.
    pub limit: i64,
    /// How long the rows are the relay's, in milliseconds (a held claim: the longest the
    /// relay's session may stay silent).
    pub lease_millis: i64,
    /// About this many payload bytes at most (always at least one row).
    pub max_bytes: usize,
    /// On PostgreSQL, hold the claim by the sending transaction instead of a written lease.
    pub hold: bool,
    /// On PostgreSQL, the sessions default to a stricter isolation level than READ COMMITTED
    /// (`default_transaction_isolation`): the written-lease statements then run in READ
    /// COMMITTED transactions of their own (see [`BEGIN_READ_COMMITTED`]).
    pub isolate: bool,
}

/// Rows taken by one claim.
pub(crate) struct Claim<DB: Backend> {
    /// The fence of every statement about these rows (a written lease).
    pub token: i64,
    /// In id order.
    pub rows: Vec<Claimed>,
    /// PostgreSQL: the transaction whose row locks are the claim, committed by [`finish`].
    /// `None`: a lease written in the rows and fenced by `token`.
    held: Option<tokio::sync::Mutex<sqlx::Transaction<'static, DB>>>,
    /// [`Ask::isolate`], for the statements that settle a written lease.
    isolate: bool,
}

impl<DB: Backend> std::fmt::Debug for Claim<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claim")
            .field("token", &self.token)
            .field("rows", &self.rows)
            .field("held", &self.held.is_some())
            .finish()
    }
}

/// A row claimed for delivery.
#[derive(Debug, Clone)]
pub(crate) struct Claimed {
    pub id: i64,
    /// Sends of this row including this one.
    pub attempts: i64,
    /// Earlier failures of this row while PostHog accepted other events: evidence that this
    /// event itself is the problem (poison).
    pub failures: i64,
    /// Milliseconds since it was committed (database clock); `None` when unknown.
    pub age_millis: Option<i64>,
    pub payload: String,
    /// Sent as `historical_migration` (a backfill's past events).
    pub historical: bool,
}

/// Leases up to `ask.limit` deliverable rows (not leased, or lease or backoff expired),
/// oldest first, holding at most about `ask.max_bytes` of payload; rows past the byte budget
/// are handed back at once, uncounted. With `ask.hold` on PostgreSQL, the claim is held by a
/// transaction instead of a written lease (see the module's documentation); [`finish`] ends it.
pub(crate) async fn claim<DB: Backend>(pool: &Pool<DB>, ask: Ask) -> Result<Claim<DB>> {
    if ask.hold && DB::DIALECT == Dialect::Postgres {
        return claim_held(pool, ask).await;
    }
    let Ask {
        limit,
        lease_millis,
        max_bytes,
        isolate,
        ..
    } = ask;
    let token = fastrand::i64(1..i64::MAX);
    let now = DB::DIALECT.now_millis_sql();
    let (attempts, age) = (step("attempts", "1"), age_millis(now));
    let mut rows = match DB::DIALECT {
        Dialect::Postgres => {
            let sql = format!(
                "UPDATE posthog_outbox SET leased_until = {now} + $1, claim = $2, \
                     attempts = {attempts} \
                 WHERE id IN (SELECT id FROM posthog_outbox \
                     WHERE leased_until IS NULL OR leased_until < {now} \
                     ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED) \
                 RETURNING id, attempts, failures, {age}, \
                     octet_length(payload)::BIGINT, \
                     CASE WHEN octet_length(payload) <= $4 THEN payload END, historical"
            );
            fetch_claimed::<DB>(
                pool,
                sql,
                [lease_millis, token, limit, INLINE_PAYLOAD_BYTES],
                isolate,
            )
            .await?
        }
        Dialect::Sqlite => {
            // SQLite has one writer at a time, so the UPDATE is the lock.
            let sql = format!(
                "UPDATE posthog_outbox SET leased_until = {now} + ?, claim = ?, \
                     attempts = {attempts} \
                 WHERE id IN (SELECT id FROM posthog_outbox \
                     WHERE leased_until IS NULL OR leased_until < {now} \
                     ORDER BY id LIMIT ?) \
                 RETURNING id, attempts, failures, {age}, \
                     LENGTH(CAST(payload AS BLOB)), \
                     CASE WHEN LENGTH(CAST(payload AS BLOB)) <= ? THEN payload END, historical"
            );
            fetch_claimed::<DB>(
                pool,
                sql,
                [lease_millis, token, limit, INLINE_PAYLOAD_BYTES],
                isolate,
            )
            .await?
        }
        Dialect::MySql => claim_mysql::<DB>(pool, ask, token).await?,
    };
    rows.sort_by_key(|taken| taken.row.id);
    let rows = within_budget::<DB>(pool, token, rows, max_bytes, isolate).await?;
    Ok(Claim {
        token,
        rows,
        held: None,
        isolate,
    })
}

/// PostgreSQL: locks up to `limit` deliverable rows in a transaction that stays open until
/// [`finish`]. `attempts` is written only when a row is released or dead-lettered, so the
/// rows read back one more than stored (this send).
async fn claim_held<DB: Backend>(pool: &Pool<DB>, ask: Ask) -> Result<Claim<DB>> {
    // The lease of a held claim: the server ends the session of a relay silent for this long.
    let timeout = ask.lease_millis.clamp(1, i64::from(i32::MAX));
    // READ COMMITTED whatever the sessions' default (`default_transaction_isolation`): under
    // SERIALIZABLE or REPEATABLE READ, relays sharing the outbox failed their claims and
    // their commits (the settlements of events PostHog had accepted) with serialization
    // failures, although `SKIP LOCKED` already keeps their rows apart.
    let mut tx = pool
        .begin_with(sqlx::AssertSqlSafe(format!(
            "BEGIN ISOLATION LEVEL READ COMMITTED; \
             SET LOCAL idle_in_transaction_session_timeout = {timeout}"
        )))
        .await?;
    let taken = lock_deliverable::<DB>(&mut tx, ask.limit).await?;
    let budget = i64::try_from(ask.max_bytes).unwrap_or(i64::MAX);
    let mut used = 0i64;
    let mut rows = Vec::with_capacity(taken.len());
    for Taken {
        mut row,
        bytes,
        inline,
    } in taken
    {
        if !rows.is_empty() && used.saturating_add(bytes) > budget {
            // Past the budget: not sent, nothing written; their locks end with this claim.
            break;
        }
        used = used.saturating_add(bytes);
        if !inline {
            let query = DB::bind_i64(
                sqlx::query("SELECT payload FROM posthog_outbox WHERE id = $1"),
                row.id,
            );
            row.payload = DB::text(&DB::fetch_one(&mut tx, query).await?, 0)?;
        }
        rows.push(row);
    }
    Ok(Claim {
        token: 0,
        rows,
        held: Some(tokio::sync::Mutex::new(tx)),
        isolate: false,
    })
}

/// Ends a claim: commits a held claim's transaction, which applies its settlements and
/// releases its locks (a no-op for a written lease). A claim dropped without `finish` rolls
/// back: none of its settlements happen, and its rows are claimable again at once.
pub(crate) async fn finish<DB: Backend>(claim: Claim<DB>) -> Result<()> {
    if let Some(held) = claim.held {
        held.into_inner().commit().await?;
    }
    Ok(())
}

impl<DB: Backend> Claim<DB> {
    /// Whether a transaction holds this claim (PostgreSQL), rather than a written lease.
    pub(crate) fn is_held(&self) -> bool {
        self.held.is_some()
    }
}

/// A claimed row before its payload is known to fit.
struct Taken {
    row: Claimed,
    bytes: i64,
    /// Whether `row.payload` was read with the claim (small payloads are).
    inline: bool,
}

/// Keeps the claimed rows, in id order, while their payloads fit in `max_bytes` (the first
/// always does), reading the large payloads; hands the rest back untouched.
async fn within_budget<DB: Backend>(
    pool: &Pool<DB>,
    token: i64,
    taken: Vec<Taken>,
    max_bytes: usize,
    isolate: bool,
) -> Result<Vec<Claimed>> {
    let budget = i64::try_from(max_bytes).unwrap_or(i64::MAX);
    let mut used = 0i64;
    let mut kept = Vec::with_capacity(taken.len());
    let mut returned = Vec::new();
    for Taken {
        mut row,
        bytes,
        inline,
    } in taken
    {
        if !kept.is_empty() && (used.saturating_add(bytes) > budget || !returned.is_empty()) {
            returned.push(row.id);
            continue;
        }
        used = used.saturating_add(bytes);
        if !inline {
            let mut sql = "SELECT payload FROM posthog_outbox WHERE claim = ".to_owned();
            DB::DIALECT.push_placeholder(&mut sql, 1);
            sql.push_str(" AND id = ");
            DB::DIALECT.push_placeholder(&mut sql, 2);
            let query = DB::bind_i64(
                DB::bind_i64(sqlx::query(sqlx::AssertSqlSafe(sql)), token),
                row.id,
            );
            let mut conn = pool.acquire().await?;
            let found = DB::fetch_all(&mut conn, query).await?;
            let Some(found) = found.first() else {
                continue; // the lease was lost already: not ours to send
            };
            row.payload = DB::text(found, 0)?;
        }
        kept.push(row);
    }
    for chunk in returned.chunks(IDS_PER_STATEMENT) {
        let mut sql = format!(
            "UPDATE posthog_outbox SET leased_until = NULL, claim = NULL, attempts = {} \
             WHERE claim = ",
            step("attempts", "-1")
        );
        DB::DIALECT.push_placeholder(&mut sql, 1);
        push_id_list(DB::DIALECT, &mut sql, 2, chunk.len());
        let mut query = DB::bind_i64(sqlx::query(sqlx::AssertSqlSafe(sql)), token);
        for id in chunk {
            query = DB::bind_i64(query, *id);
        }
        let mut conn = pool.acquire().await?;
        execute_isolated::<DB>(&mut conn, query, isolate).await?;
    }
    Ok(kept)
}

/// MySQL has no `UPDATE ... RETURNING`: lock and read with SKIP LOCKED, then write the lease,
/// in one transaction (three round trips: `SET TRANSACTION ...; BEGIN`, the locking read, the
/// update; then `COMMIT`). READ COMMITTED, because under InnoDB's default REPEATABLE READ the
/// locking read also locks the gap after the last row, where the application's next outbox
/// INSERT goes: that would block (and deadlock) user commits.
async fn claim_mysql<DB: Backend>(pool: &Pool<DB>, ask: Ask, token: i64) -> Result<Vec<Taken>> {
    let now = Dialect::MySql.now_millis_sql();
    // One round trip: the isolation level applies to the transaction that follows.
    let mut tx = pool
        .begin_with(sqlx::AssertSqlSafe(
            "SET TRANSACTION ISOLATION LEVEL READ COMMITTED; BEGIN".to_owned(),
        ))
        .await?;
    let taken = lock_deliverable::<DB>(&mut tx, ask.limit).await?;
    if taken.is_empty() {
        tx.commit().await?;
        return Ok(taken);
    }
    for chunk in taken.chunks(IDS_PER_STATEMENT) {
        let mut update = format!(
            "UPDATE posthog_outbox SET leased_until = {now} + ?, claim = ?, \
             attempts = {} WHERE 1 = 1",
            step("attempts", "1")
        );
        push_id_list(Dialect::MySql, &mut update, 3, chunk.len());
        let mut query = DB::bind_i64(
            DB::bind_i64(sqlx::query(sqlx::AssertSqlSafe(update)), ask.lease_millis),
            token,
        );
        for taken in chunk {
            query = DB::bind_i64(query, taken.row.id);
        }
        DB::execute(&mut tx, query).await?;
    }
    tx.commit().await?;
    Ok(taken)
}

/// PostgreSQL and MySQL: locks up to `limit` deliverable rows in `tx` (`FOR UPDATE SKIP
/// LOCKED`, so concurrent relays take disjoint rows without waiting), oldest first, with
/// `attempts` as it is after this send.
async fn lock_deliverable<DB: Backend>(
    tx: &mut sqlx::Transaction<'static, DB>,
    limit: i64,
) -> Result<Vec<Taken>> {
    let now = DB::DIALECT.now_millis_sql();
    let bytes = match DB::DIALECT {
        Dialect::Postgres => "octet_length(payload)::BIGINT",
        Dialect::MySql | Dialect::Sqlite => "CAST(LENGTH(payload) AS SIGNED)",
    };
    // Both numbers are this crate's integers, not input: no placeholders needed.
    let sql = format!(
        "SELECT id, {}, failures, {}, {bytes}, \
             CASE WHEN {bytes} <= {INLINE_PAYLOAD_BYTES} THEN payload END, historical \
         FROM posthog_outbox WHERE leased_until IS NULL OR leased_until < {now} \
         ORDER BY id LIMIT {limit} FOR UPDATE SKIP LOCKED",
        step("attempts", "1"),
        age_millis(now),
    );
    DB::fetch_all(tx, sqlx::query(sqlx::AssertSqlSafe(sql)))
        .await?
        .iter()
        .map(|row| decode::<DB>(row))
        .collect()
}

async fn fetch_claimed<DB: Backend>(
    pool: &Pool<DB>,
    sql: String,
    values: [i64; 4],
    isolate: bool,
) -> Result<Vec<Taken>> {
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for value in values {
        query = DB::bind_i64(query, value);
    }
    let mut conn = pool.acquire().await?;
    let rows = fetch_isolated::<DB>(&mut conn, query, isolate).await?;
    rows.iter().map(|row| decode::<DB>(row)).collect()
}

/// How the relay's written-lease statements begin their transactions on PostgreSQL when the
/// sessions default to a stricter level ([`Ask::isolate`]). Under SERIALIZABLE (or REPEATABLE
/// READ) relays sharing the outbox failed their claims, deletes and releases with
/// serialization failures ("could not serialize access"), although the claim tokens already
/// keep their rows apart: a drain failed, and a delivered batch was sent again.
const BEGIN_READ_COMMITTED: &str = "BEGIN ISOLATION LEVEL READ COMMITTED";

/// A transaction on `conn`: READ COMMITTED with `isolate` on PostgreSQL (see
/// [`BEGIN_READ_COMMITTED`]), at the session's default level otherwise.
async fn begin_on<DB: Backend>(
    conn: &mut DB::Connection,
    isolate: bool,
) -> Result<sqlx::Transaction<'_, DB>> {
    Ok(if isolate && DB::DIALECT == Dialect::Postgres {
        sqlx::Connection::begin_with(conn, sqlx::AssertSqlSafe(BEGIN_READ_COMMITTED.to_owned()))
            .await?
    } else {
        sqlx::Connection::begin(conn).await?
    })
}

/// Runs `query` on `conn`: with `isolate` on PostgreSQL, in a READ COMMITTED transaction of its
/// own (see [`BEGIN_READ_COMMITTED`]); otherwise as it is.
async fn execute_isolated<DB: Backend>(
    conn: &mut DB::Connection,
    query: crate::backend::BoundQuery<DB>,
    isolate: bool,
) -> Result<DB::QueryResult> {
    if !isolate || DB::DIALECT != Dialect::Postgres {
        return Ok(DB::execute(conn, query).await?);
    }
    let mut tx = begin_on::<DB>(conn, isolate).await?;
    let done = DB::execute(&mut tx, query).await?;
    tx.commit().await?;
    Ok(done)
}

/// [`execute_isolated`] for a statement that returns rows.
async fn fetch_isolated<DB: Backend>(
    conn: &mut DB::Connection,
    query: crate::backend::BoundQuery<DB>,
    isolate: bool,
) -> Result<Vec<DB::Row>> {
    if !isolate || DB::DIALECT != Dialect::Postgres {
        return Ok(DB::fetch_all(conn, query).await?);
    }
    let mut tx = begin_on::<DB>(conn, isolate).await?;
    let rows = DB::fetch_all(&mut tx, query).await?;
    tx.commit().await?;
    Ok(rows)
}

fn decode<DB: Backend>(row: &DB::Row) -> Result<Taken> {
    let age = DB::int(row, 3)?;
    let payload = DB::optional_text(row, 5)?;
    Ok(Taken {
        inline: payload.is_some(),
        bytes: DB::int(row, 4)?,
        row: Claimed {
            id: DB::int(row, 0)?,
            attempts: DB::int(row, 1)?,
            failures: DB::int(row, 2)?,
            age_millis: (age >= 0).then_some(age),
            payload: payload.unwrap_or_default(),
            historical: DB::int(row, 6)? != 0,
        },
    })
}

/// Extends the lease of every row of `claim` still held: called while a send is in flight,
/// so that a slow send (a large batch split into many requests) never outlives its lease.
/// Returns the rows still held.
pub(crate) async fn renew<DB: Backend>(
    pool: &Pool<DB>,
    claim: &Claim<DB>,
    lease_millis: i64,
) -> Result<u64> {
    if let Some(held) = &claim.held {
        // A statement resets the session's idle timer, which is the held claim's lease.
        let mut tx = held.lock().await;
        DB::execute(&mut tx, sqlx::query("SELECT 1")).await?;
        return Ok(claim.rows.len() as u64);
    }
    let (Some(first), Some(last)) = (claim.rows.first(), claim.rows.last()) else {
        return Ok(0);
    };
    let dialect = DB::DIALECT;
    let sql = dialect.numbered(
        &format!(
            "UPDATE posthog_outbox SET leased_until = {} + ? WHERE claim = ? \
             AND id BETWEEN ? AND ?",
            dialect.now_millis_sql()
        ),
        1,
    );
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for value in [lease_millis, claim.token, first.id, last.id] {
        query = DB::bind_i64(query, value);
    }
    let mut conn = pool.acquire().await?;
    Ok(DB::rows_affected(
        &execute_isolated::<DB>(&mut conn, query, claim.isolate).await?,
    ))
}

/// What to do with claimed rows once PostHog has answered.
pub(crate) enum Settle<'a> {
    /// Delivered: delete.
    Delete,
    /// Claimable again after `delay_millis` (database clock), with `entry` added to the rows'
    /// history. `failed` counts a failure against the rows (PostHog accepted other events, so
    /// these may be poison); `counted` false hands the attempt back (nothing was wrong with the
    /// rows: the relay is paused, or never sent them).
    Release {
        delay_millis: i64,
        entry: &'a str,
        failed: bool,
        counted: bool,
    },
    /// Rejected for good: moved to the dead-letter table with its history and `reason`.
    Dead { reason: &'a str },
}

/// Applies `settle` to `rows` of `claim` (all of its rows when `rows` is `None`). Returns rows
/// affected: fewer than asked when the lease was lost to another relay.
pub(crate) async fn settle<DB: Backend>(
    pool: &Pool<DB>,
    claim: &Claim<DB>,
    rows: Option<&[&Claimed]>,
    settle: Settle<'_>,
) -> Result<u64> {
    let dialect = DB::DIALECT;
    if rows.is_some_and(<[_]>::is_empty) || claim.rows.is_empty() {
        return Ok(0);
    }
    if let Some(held) = &claim.held {
        // Every row by id: the locks are the fence, and an id range could take in rows
        // other relays hold.
        let ids: Vec<i64> = match rows {
            Some(rows) => rows.iter().map(|row| row.id).collect(),
            None => claim.rows.iter().map(|row| row.id).collect(),
        };
        let mut tx = held.lock().await;
        let mut affected = 0;
        for chunk in ids.chunks(IDS_PER_STATEMENT) {
            let (sql, binds) = settle_sql(dialect, &Fence::Held, chunk, &settle);
            affected +=
                DB::rows_affected(&DB::execute(&mut tx, bind_all::<DB>(sql, &binds)).await?);
            if let Settle::Dead { .. } = settle {
                let (delete, binds) = settle_sql(dialect, &Fence::Held, chunk, &Settle::Delete);
                DB::execute(&mut tx, bind_all::<DB>(delete, &binds)).await?;
            }
        }
        return Ok(affected);
    }
    let fence = Fence::Token {
        token: claim.token,
        first: claim.rows.first().map_or(0, |row| row.id),
        last: claim.rows.last().map_or(0, |row| row.id),
    };
    let ids: Vec<i64> = match rows {
        Some(rows) => rows.iter().map(|row| row.id).collect(),
        None => Vec::new(),
    };
    let mut conn = pool.acquire().await?;
    let mut affected = 0;
    // The whole claim is addressed by its id range, which keeps the statement on the primary
    // key; the token picks its rows.
    let chunks: Vec<&[i64]> = if ids.is_empty() {
        vec![&[]]
    } else {
        ids.chunks(IDS_PER_STATEMENT).collect()
    };
    for chunk in chunks {
        let (sql, binds) = settle_sql(dialect, &fence, chunk, &settle);
        match &settle {
            Settle::Dead { .. } => {
                let mut tx = begin_on::<DB>(&mut *conn, claim.isolate).await?;
                let copy = bind_all::<DB>(sql, &binds);
                affected += DB::rows_affected(&DB::execute(&mut tx, copy).await?);
                let (delete, binds) = settle_sql(dialect, &fence, chunk, &Settle::Delete);
                DB::execute(&mut tx, bind_all::<DB>(delete, &binds)).await?;
                tx.commit().await?;
            }
            _ => {
                let query = bind_all::<DB>(sql, &binds);
                affected += DB::rows_affected(
                    &execute_isolated::<DB>(&mut conn, query, claim.isolate).await?,
                );
            }
        }
    }
    Ok(affected)
}

enum Bind<'a> {
    Int(i64),
    Text(&'a str),
}

fn bind_all<DB: Backend>(sql: String, binds: &[Bind<'_>]) -> crate::backend::BoundQuery<DB> {
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for bind in binds {
        query = match bind {
            Bind::Int(value) => DB::bind_i64(query, *value),
            Bind::Text(value) => DB::bind_text(query, value),
        };
    }
    query
}

/// `last_error` with a `?` (the entry) appended on a new line, keeping the newest
/// `HISTORY_BYTES`.
fn appended_history(dialect: Dialect) -> String {
    match dialect {
        Dialect::Postgres => {
            format!("RIGHT(COALESCE(last_error || chr(10), '') || ?, {HISTORY_BYTES})")
        }
        Dialect::MySql => format!(
            "RIGHT(CONCAT(COALESCE(CONCAT(last_error, CHAR(10 USING utf8mb4)), ''), ?), \
             {HISTORY_BYTES})"
        ),
        Dialect::Sqlite => {
            format!("substr(COALESCE(last_error || char(10), '') || ?, -{HISTORY_BYTES})")
        }
    }
}

/// Which rows a settlement may touch.
enum Fence {
    /// A written lease: rows still carrying `token`, within the claim's id range.
    Token { token: i64, first: i64, last: i64 },
    /// A held claim: the rows are locked by the transaction the statement runs in. Their
    /// stored `attempts` does not count the current send yet.
    Held,
}

/// The statement for one chunk of rows (all of the claim's when `ids` is empty: written
/// leases only), with its parameters in order.
fn settle_sql<'a>(
    dialect: Dialect,
    fence: &Fence,
    ids: &[i64],
    settle: &Settle<'a>,
) -> (String, Vec<Bind<'a>>) {
    let now = dialect.now_millis_sql();
    let held = matches!(fence, Fence::Held);
    let mut binds = Vec::new();
    let history = appended_history(dialect);
    let mut sql = match settle {
        Settle::Delete => "DELETE FROM posthog_outbox WHERE claim = ".to_owned(),
        Settle::Release {
            delay_millis,
            entry,
            failed,
            counted,
        } => {
            binds.push(Bind::Int(*delay_millis));
            binds.push(Bind::Int(i64::from(*failed)));
            // A written lease counted the send when it claimed; a held claim did not.
            binds.push(Bind::Int(match (held, *counted) {
                (false, true) | (true, false) => 0,
                (false, false) => -1,
                (true, true) => 1,
            }));
            binds.push(Bind::Text(entry));
            dialect.numbered(
                &format!(
                    "UPDATE posthog_outbox SET leased_until = {now} + ?, claim = NULL, \
                     failures = {}, attempts = {}, last_error = {history} \
                     WHERE claim = ",
                    step("failures", "?"),
                    step("attempts", "?"),
                ),
                1,
            )
        }
        Settle::Dead { reason } => {
            binds.push(Bind::Text(reason));
            binds.push(Bind::Text(reason));
            let this_send = u8::from(held);
            let dead_id = crate::outbox::dead_id_sql(dialect);
            dialect.numbered(
                &format!(
                    "INSERT INTO posthog_outbox_dead \
                     (id, uuid, event, distinct_id, timestamp, payload, attempts, last_error, \
                      reason, dead_at, historical) \
                     SELECT {dead_id}, uuid, event, distinct_id, timestamp, payload, \
                         {}, {history}, ?, {now}, historical \
                     FROM posthog_outbox WHERE claim = ",
                    step("attempts", &this_send.to_string()),
                ),
                1,
            )
        }
    };
    let (token, first, last) = match fence {
        Fence::Token { token, first, last } => (*token, *first, *last),
        Fence::Held => {
            debug_assert!(sql.ends_with(" WHERE claim = "));
            // `WHERE claim = ... AND` is replaced by a condition that holds for every row.
            let cut = sql.len() - " WHERE claim = ".len();
            sql.truncate(cut);
            sql.push_str(" WHERE 1 = 1");
            push_id_list(dialect, &mut sql, binds.len() + 1, ids.len());
            binds.extend(ids.iter().map(|id| Bind::Int(*id)));
            return (sql, binds);
        }
    };
    dialect.push_placeholder(&mut sql, binds.len() + 1);
    binds.push(Bind::Int(token));
    if ids.is_empty() {
        sql.push_str(&dialect.numbered(" AND id BETWEEN ? AND ?", binds.len() + 1));
        binds.push(Bind::Int(first));
        binds.push(Bind::Int(last));
    } else {
        push_id_list(dialect, &mut sql, binds.len() + 1, ids.len());
        binds.extend(ids.iter().map(|id| Bind::Int(*id)));
    }
    (sql, binds)
}

/// `column + amount` in SQL (`amount` is -1, 0 or 1: a literal or one placeholder), or
/// `column` as it is at either end of BIGINT. The counts are read from rows, which may hold
/// anything (edited by hand, copied from another database): an overflow failed the statement
/// (PostgreSQL's "bigint out of range", MariaDB's "BIGINT value is out of range", a REAL on
/// SQLite that no longer decodes as an integer), and since a claim takes the oldest rows
/// whole, one such row failed every claim and held back the whole outbox.
fn step(column: &str, amount: &str) -> String {
    format!(
        "CASE WHEN {column} BETWEEN -9223372036854775807 AND 9223372036854775806 \
         THEN {column} + {amount} ELSE {column} END"
    )
}

/// A row's age in milliseconds on the database's clock (`now`), or -1 when unknown: no
/// `created_at` (a row of an older schema), or one below zero, from which `now - created_at`
/// could overflow (see [`step`]).
fn age_millis(now: &str) -> String {
    format!("COALESCE({now} - CASE WHEN created_at >= 0 THEN created_at END, -1)")
}

/// ` AND id IN (...)` with `count` placeholders numbered from `first`.
fn push_id_list(dialect: Dialect, sql: &mut String, first: usize, count: usize) {
    sql.push_str(" AND id IN (");
    dialect.push_placeholders(sql, first, count);
    sql.push(')');
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

    async fn insert(pool: &Pool<sqlx::Sqlite>, uuid: &str, payload: &str) {
        sqlx::query(
            "INSERT INTO posthog_outbox (uuid, event, distinct_id, timestamp, payload) \
             VALUES (?, 'e', 'd', 't', ?)",
        )
        .bind(uuid)
        .bind(payload)
        .execute(pool)
        .await
        .unwrap();
    }

    const BIG: usize = 1 << 30;

    /// A written-lease claim of up to 10 rows.
    fn ask(lease_millis: i64, max_bytes: usize) -> Ask {
        Ask {
            limit: 10,
            lease_millis,
            max_bytes,
            hold: false,
            isolate: false,
        }
    }

    #[tokio::test]
    async fn stale_acks_are_fenced_off() {
        let pool = outbox().await;
        insert(&pool, "a", "{}").await;
        insert(&pool, "b", "{}").await;
        // A negative lease is expired at once: a second relay may claim the same rows.
        let first = claim(&pool, ask(-1, BIG)).await.unwrap();
        let second = claim(&pool, ask(60_000, BIG)).await.unwrap();
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
            claim(&pool, ask(60_000, BIG))
                .await
                .unwrap()
                .rows
                .is_empty(),
            "leased rows are not claimable"
        );
        assert_eq!(renew(&pool, &first, 60_000).await.unwrap(), 0, "no renewal");

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
            delay_millis: 0,
            entry: "stale",
            failed: true,
            counted: true,
        };
        assert_eq!(settle(&pool, &first, None, release).await.unwrap(), 0);
        let dead = Settle::Dead { reason: "stale" };
        assert_eq!(settle(&pool, &first, None, dead).await.unwrap(), 0);
        assert_eq!(renew(&pool, &second, 60_000).await.unwrap(), 2);
        assert_eq!(
            settle(&pool, &second, None, Settle::Delete).await.unwrap(),
            2
        );
    }

    #[tokio::test]
    async fn a_reused_id_is_not_mistaken_for_the_deleted_event() {
        let pool = outbox().await;
        insert(&pool, "old", "{}").await;
        let first = claim(&pool, ask(-1, BIG)).await.unwrap();
        // Another relay delivers and deletes it; a new event then takes the same id.
        sqlx::query("DELETE FROM posthog_outbox")
            .execute(&pool)
            .await
            .unwrap();
        insert(&pool, "new", "{}").await;
        let second = claim(&pool, ask(-1, BIG)).await.unwrap();
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

    #[tokio::test]
    async fn a_claim_holds_at_most_its_byte_budget_and_hands_the_rest_back_uncounted() {
        let pool = outbox().await;
        let large = format!("{{\"x\":\"{}\"}}", "a".repeat(40_000));
        for uuid in ["a", "b", "c"] {
            insert(&pool, uuid, &large).await;
        }
        insert(&pool, "d", "{}").await;
        let taken = claim(&pool, ask(60_000, 50_000)).await.unwrap();
        assert_eq!(taken.rows.len(), 1, "one large row fits the budget");
        assert_eq!(taken.rows[0].payload, large, "read in full");
        let rest = claim(&pool, ask(60_000, BIG)).await.unwrap();
        assert_eq!(rest.rows.len(), 3, "the others were handed back");
        assert!(
            rest.rows.iter().all(|row| row.attempts == 1),
            "handing back does not count as an attempt"
        );
    }

    #[tokio::test]
    async fn dead_rows_move_to_the_dead_letter_table_with_their_history() {
        let pool = outbox().await;
        insert(&pool, "a", "{}").await;
        let first = claim(&pool, ask(60_000, BIG)).await.unwrap();
        let release = Settle::Release {
            delay_millis: -1,
            entry: "503 Service Unavailable",
            failed: true,
            counted: true,
        };
        settle(&pool, &first, None, release).await.unwrap();
        let second = claim(&pool, ask(60_000, BIG)).await.unwrap();
        assert_eq!(second.rows[0].failures, 1);
        let dead = Settle::Dead {
            reason: "400 Bad Request",
        };
        assert_eq!(settle(&pool, &second, None, dead).await.unwrap(), 1);
        let outbox = crate::outbox::Outbox::new(&pool);
        let status = outbox.status().await.unwrap();
        assert_eq!((status.pending, status.dead), (0, 1));
        assert_eq!(status.dead_reasons, [("400 Bad Request".to_owned(), 1)]);
        let events = outbox.events().await.unwrap();
        assert_eq!(
            events[0].last_error.as_deref(),
            Some("503 Service Unavailable\n400 Bad Request")
        );
        let hour = std::time::Duration::from_secs(3600);
        assert_eq!(outbox.purge(Some(hour)).await.unwrap(), 0, "too recent");
        assert_eq!(outbox.purge(None).await.unwrap(), 1);
        assert_eq!(outbox.status().await.unwrap().dead, 0);
    }
}
