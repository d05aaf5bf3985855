//! [`TrackedModel::upsert`](super::TrackedModel::upsert): insert the row or update the one
//! with its key, in one atomic statement, and stage the events of whichever happened.

use super::codegen::ModelSql;
use super::route::{RowTable, find_row, other_tables, route, tables_from};
use super::stage::{stage_inserted, stage_updated};
use super::traits::TrackedRow;
use crate::backend::{Backend, Dialect};
use crate::error::{Error, Result};
use crate::transaction::TrackedTransaction;

/// What [`TrackedModel::upsert`](super::TrackedModel::upsert) did, with the row as the
/// database stored it (`generated` columns read back).
///
/// ```no_run
/// # use posthog_track::{TrackedModel, Tracker, Upserted};
/// # #[derive(Clone, TrackedModel)]
/// # #[tracked(table = "users", distinct_id = id)]
/// # struct User {
/// #     #[tracked(key, property)] id: String,
/// #     #[tracked(property)] plan: String,
/// # }
/// # async fn sync(tracker: &Tracker, pool: &sqlx::SqlitePool, user: User) -> posthog_track::Result<()> {
/// let mut tx = tracker.begin(pool).await?;
/// match user.upsert(&mut tx).await? {
///     Upserted::Inserted(user) => println!("new user {}", user.id),
///     Upserted::Updated(user) => println!("updated user {}", user.id),
/// }
/// tx.commit().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "the upserted row is the row as stored; use `into_row` to keep it"]
pub enum Upserted<M> {
    /// No row had the key: the row was inserted, and the events of
    /// [`insert`](super::TrackedModel::insert) (`INSERT_EVENT`, ...) were staged.
    Inserted(M),
    /// A row had the key: its columns were overwritten, and the events of
    /// [`update`](super::TrackedModel::update) (`UPDATE_EVENT` with every tracked property,
    /// ...) were staged.
    Updated(M),
}

impl<M> Upserted<M> {
    /// The row as stored.
    pub fn row(&self) -> &M {
        match self {
            Upserted::Inserted(row) | Upserted::Updated(row) => row,
        }
    }

    /// The row as stored, whichever happened.
    pub fn into_row(self) -> M {
        match self {
            Upserted::Inserted(row) | Upserted::Updated(row) => row,
        }
    }

    /// Whether the row was created (rather than updated).
    pub fn was_inserted(&self) -> bool {
        matches!(self, Upserted::Inserted(_))
    }
}

/// Why a MySQL upsert failed when its row met another row on another unique key.
const ANOTHER_UNIQUE_KEY: &str = "the row conflicts with an existing row on another unique key \
    than the model's key, and ON DUPLICATE KEY UPDATE wrote that other row; roll the transaction \
    back (its commit is refused)";

/// The insert id of a MySQL/MariaDB upsert whose row existed: its statement's `ON DUPLICATE
/// KEY UPDATE` sets `LAST_INSERT_ID(UPSERT_FOUND)` (posthog-derive's `upsert_sql` writes it;
/// the two must agree). No AUTO_INCREMENT column of an inserted row reaches it.
const UPSERT_FOUND: u64 = u64::MAX;

/// [`TrackedModel::upsert`](super::TrackedModel::upsert).
pub(super) async fn upsert<M, DB>(
    model: M,
    tx: &mut TrackedTransaction<'_, DB>,
) -> Result<Upserted<M>>
where
    DB: Backend,
    M: TrackedRow<DB>,
{
    tx.begin_write(M::TABLE)?;
    let upserted = write(model, tx).await;
    tx.end_write(&upserted);
    upserted
}

/// [`upsert`], within its `begin_write` / `end_write`.
async fn write<M, DB>(mut model: M, tx: &mut TrackedTransaction<'_, DB>) -> Result<Upserted<M>>
where
    DB: Backend,
    M: TrackedRow<DB>,
{
    model.__fill_from_context(tx.context());
    let (sql, table, stamps) = route(&model, tx).await;
    let routed = RowTable { sql, table, stamps };
    let (row, inserted, RowTable { sql, stamps, .. }) = if M::__TABLE_VARIANTS.is_empty() {
        let (row, inserted) = upsert_into(&model, &routed, tx).await?;
        (row, inserted, routed)
    } else if DB::DIALECT == Dialect::MySql {
        upsert_routed_mysql(&model, routed, tx).await?
    } else {
        // A row stays in the table it was written to when its user's route changes: an
        // existing row in another of the model's tables is updated there, not inserted again
        // here. The routed table is asked first, as `update` does: a row there is the one to
        // write. SQLite's transaction holds the database's write lock, so nothing comes between
        // the look-up and the upsert; PostgreSQL's look-up of a missing key locks nothing, so
        // there the key is locked first (see `lock_routed_key`).
        if DB::DIALECT == Dialect::Postgres {
            lock_routed_key(&model, tx).await?;
        }
        let select = |sql: &'static ModelSql| model.__bind_key(sqlx::query(sql.select_for_update));
        let target = match find_row(tx, tables_from::<M, DB>(routed.clone()), select).await? {
            Some((_, found)) => found,
            None => routed,
        };
        let (row, inserted) = upsert_into(&model, &target, tx).await?;
        (row, inserted, target)
    };
    let stored = M::__from_row(&row)?;
    if inserted {
        stage_inserted(&stored, stamps, tx)?;
        Ok(Upserted::Inserted(stored))
    } else {
        // The events of `update`, which stages them from the row as given unless it reads the
        // row back (nothing to write, or a tracked generated column the database may compute
        // again): a value the column keeps otherwise than given (a timestamp's nanoseconds)
        // is sent as `update` sends it.
        let reads_back = sql.update.is_none() || M::__UPDATE_READS_BACK;
        stage_updated(if reads_back { &stored } else { &model }, stamps, tx)?;
        Ok(Upserted::Updated(stored))
    }
}

/// PostgreSQL, a flag-routed model: locks `model`'s key for the upsert's look-up and insert,
/// until the transaction ends (`pg_advisory_xact_lock`, released at commit or rollback).
///
/// The look-up of a missing key locks nothing, and a row another transaction inserted but has
/// not committed is invisible to it: two concurrent upserts of one new key routed to different
/// tables (an owner changing meanwhile) both found no row and each inserted it into its own
/// table, leaving the key in two tables. Under this lock the second waits for the first to end
/// and then, its next statement reading what the first committed (READ COMMITTED, PostgreSQL's
/// default), finds the row and updates it where it is. Under SERIALIZABLE PostgreSQL rolls one
/// of the two back (40001). Under REPEATABLE READ the lock cannot
/// help: the look-up reads the transaction's snapshot, which may be older than the other's
/// commit (it is taken before this statement waits), and the key can still end up in two
/// tables (checked: two rows in 9 of 10 races). Unrouted upserts need none of this: their one
/// `ON CONFLICT` statement on one table is atomic.
///
/// The lock is a 64-bit hash of the key's columns as text (PostgreSQL's `hashtextextended`)
/// seeded with a stable hash of the model's default table (FNV-1a, the same in every process,
/// unlike Rust's randomised `Hash`), so it serialises only upserts of the same key of models
/// sharing that table, whichever table each is routed to. Two keys whose hashes collide (or a
/// key that collides with another advisory lock of the database) only wait for each other.
async fn lock_routed_key<M, DB>(model: &M, tx: &mut TrackedTransaction<'_, DB>) -> Result<()>
where
    DB: Backend,
    M: TrackedRow<DB>,
{
    let keys = M::__SQL.get(DB::DIALECT).keys.len();
    let columns: Vec<String> = (1..=keys).map(|n| format!("${n}::text")).collect();
    // chr(31), the unit separator, between the columns of a composite key: ('a', 'bc') and
    // ('ab', 'c') get different locks (a collision would only serialise them).
    let statement = format!(
        "SELECT pg_advisory_xact_lock(hashtextextended(concat_ws(chr(31), {}), {}))",
        columns.join(", "),
        stable_hash(M::TABLE.as_bytes()) as i64,
    );
    let query = model.__bind_key(sqlx::query(sqlx::AssertSqlSafe(statement)));
    DB::execute(tx.connection(), query).await?;
    Ok(())
}

/// FNV-1a, 64 bits: a hash every process computes alike for the same bytes.
fn stable_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The upsert statement of `target`'s table, and whether it inserted the row (rather than
/// found one with its key and updated it).
async fn upsert_into<M, DB>(
    model: &M,
    target: &RowTable,
    tx: &mut TrackedTransaction<'_, DB>,
) -> Result<(DB::Row, bool)>
where
    DB: Backend,
    M: TrackedRow<DB>,
{
    let (sql, table) = (target.sql, target.table);
    let Some(statement) = sql.upsert else {
        return Err(Error::Unsupported {
            operation: format!("upsert into `{table}`"),
            backend: DB::DIALECT.name(),
            reason: sql
                .upsert_unsupported
                .unwrap_or("the model cannot be upserted"),
        });
    };
    match DB::DIALECT {
        Dialect::Postgres => {
            let query = model.__bind_insert(sqlx::query(statement));
            let row = DB::fetch_one(tx.connection(), query).await?;
            tx.wrote();
            // After every column: `xmax = 0`, a row version no transaction has touched since
            // it was inserted, i.e. this statement inserted it.
            let inserted = DB::int(&row, sql.columns.len())? == 1;
            Ok((row, inserted))
        }
        Dialect::Sqlite => {
            let query = model.__bind_insert(sqlx::query(statement));
            match DB::fetch_all(tx.connection(), query)
                .await?
                .into_iter()
                .next()
            {
                // DO NOTHING returned the row: it is new.
                Some(row) => {
                    tx.wrote();
                    Ok((row, true))
                }
                None => {
                    // It exists; this transaction holds the write lock since the INSERT.
                    let query = match sql.update_returning {
                        Some(update) => model.__bind_key(model.__bind_update(sqlx::query(update))),
                        None => model.__bind_key(sqlx::query(sql.select_for_update)),
                    };
                    let row = DB::fetch_all(tx.connection(), query)
                        .await?
                        .into_iter()
                        .next()
                        .ok_or(Error::RowNotFound { table })?;
                    tx.wrote();
                    Ok((row, false))
                }
            }
        }
        Dialect::MySql => {
            // No look-up first: a `SELECT ... FOR UPDATE` of a missing key takes a gap lock,
            // which every concurrent upsert of the same new key takes too, and then their
            // INSERTs wait on each other's gaps: InnoDB kills all but one with a deadlock,
            // which rolls back each victim's whole transaction (so no retry here could be
            // safe). `ON DUPLICATE KEY UPDATE` alone locks the existing row exclusively, so
            // concurrent upserts of one key queue behind each other instead. The affected
            // rows cannot tell an insert from an update (CLIENT_FOUND_ROWS counts a row left
            // as it was as 1, like an insert): the statement's first assignment sets the
            // insert id to UPSERT_FOUND exactly when the row existed.
            let insert = model.__bind_insert(sqlx::query(statement));
            let result = DB::execute(tx.connection(), insert).await?;
            tx.wrote();
            let inserted = DB::last_insert_id(&result) != Some(UPSERT_FOUND);
            let select = sql.select_inserted.ok_or(Error::RowNotFound { table })?;
            let query = model.__bind_key(sqlx::query(select));
            let Some(row) = DB::fetch_all(tx.connection(), query)
                .await?
                .into_iter()
                .next()
            else {
                // The statement neither inserted a row with the key nor found one with it: it
                // met another row on another unique key, and may have rewritten that row.
                return Err(Error::Unsupported {
                    operation: format!("upsert into `{table}`"),
                    backend: DB::DIALECT.name(),
                    reason: ANOTHER_UNIQUE_KEY,
                });
            };
            Ok((row, inserted))
        }
    }
}

/// MySQL/MariaDB, a flag-routed model: the upsert of `model`, whose route is `routed`, into
/// the table that holds its key, else into `routed`; with that table.
///
/// The row must stay in one of the model's tables (a key already in another table than the
/// routed one is updated there), so the other tables are looked up with `SELECT ... FOR
/// UPDATE`: a row found is locked, and a missing key's gap is locked, so that a concurrent
/// upsert routed to that table cannot insert the key there until this transaction ends (and
/// one whose look-up comes after this transaction's insert waits for its row, then finds it).
/// What the look-up must not lock is the gap of the routed table, the one this upsert
/// inserts into: every concurrent upsert of one new key would take that gap lock (gap locks
/// do not conflict), and then each one's INSERT waited on the others' gaps (InnoDB 1213). So
/// the routed table is not looked up first: its `ON DUPLICATE KEY UPDATE` alone finds or
/// inserts the row, locking it exclusively, and concurrent upserts of the key queue on that
/// lock. It is looked up only when another table holds the key, to write the routed table's
/// row when both do (as `update` does); the upsert then updates a row and inserts nothing.
///
/// Concurrent upserts of one new key routed to the same table therefore queue and cannot
/// deadlock: their look-ups lock gaps only in tables none of them inserts into. Two routed to
/// different tables can, each having locked the gap of the other's table before inserting
/// into its own: InnoDB rolls one back (1213), and the key still ends up in one table. No lock
/// order avoids that and keeps the key in one table. A missing key can only be locked by a
/// gap lock, which does not exclude another's, so one of the two must insert before it looks
/// in the other's table; and undoing that insert when the other table turns out to hold the
/// key turns the waiting locks of the upserts queued on it into gap locks, which deadlock
/// each other's INSERTs (tried: the tables in one fixed order, the insert undone to a
/// savepoint).
async fn upsert_routed_mysql<M, DB>(
    model: &M,
    routed: RowTable,
    tx: &mut TrackedTransaction<'_, DB>,
) -> Result<(DB::Row, bool, RowTable)>
where
    DB: Backend,
    M: TrackedRow<DB>,
{
    let mut found = None;
    for table in other_tables::<M, DB>(routed.table) {
        if holds_key(model, &table, tx).await? {
            found = Some(table);
            break;
        }
    }
    let target = match found {
        Some(found) if !holds_key(model, &routed, tx).await? => found,
        _ => routed,
    };
    let (row, inserted) = upsert_into(model, &target, tx).await?;
    Ok((row, inserted, target))
}

/// Whether `table` holds `model`'s key, locking the row (or, when there is none, the gap
/// where it would be) until the transaction ends.
async fn holds_key<M, DB>(
    model: &M,
    table: &RowTable,
    tx: &mut TrackedTransaction<'_, DB>,
) -> Result<bool>
where
    DB: Backend,
    M: TrackedRow<DB>,
{
    let query = model.__bind_key(sqlx::query(table.sql.select_for_update));
    Ok(!DB::fetch_all(tx.connection(), query).await?.is_empty())
}

#[cfg(test)]
mod tests {
    use super::stable_hash;

    /// The published FNV-1a test vectors: every process, build and platform locks a key
    /// under the same advisory lock.
    #[test]
    fn the_lock_seed_is_fnv1a() {
        assert_eq!(stable_hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(stable_hash(b"foobar"), 0x8594_4171_f739_67e8);
    }
}
