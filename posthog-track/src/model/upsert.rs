//! [`TrackedModel::upsert`](super::TrackedModel::upsert): insert the row or update the one
//! with its key, in one atomic statement, and stage the events of whichever happened.

use super::codegen::ModelSql;
use super::route::{RowTable, find_row, route, tables_from};
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
    let (mut sql, mut table, mut stamps) = route(&model, tx).await;
    // A row stays in the table it was written to when its user's route changes: an existing
    // row in another of the model's tables is updated there, not inserted again here. The
    // routed table is asked first, as `update` does: a row there is the one to write.
    if !M::__TABLE_VARIANTS.is_empty() {
        let routed = RowTable {
            sql,
            table,
            stamps: stamps.clone(),
        };
        let select = |sql: &'static ModelSql| model.__bind_key(sqlx::query(sql.select_for_update));
        if let Some((_, found)) = find_row(tx, tables_from::<M, DB>(routed), select).await? {
            (sql, table, stamps) = (found.sql, found.table, found.stamps);
        }
    }
    let Some(statement) = sql.upsert else {
        return Err(Error::Unsupported {
            operation: format!("upsert into `{table}`"),
            backend: DB::DIALECT.name(),
            reason: sql
                .upsert_unsupported
                .unwrap_or("the model cannot be upserted"),
        });
    };
    let (row, inserted) = match DB::DIALECT {
        Dialect::Postgres => {
            let query = model.__bind_insert(sqlx::query(statement));
            let row = DB::fetch_one(tx.connection(), query).await?;
            tx.wrote();
            // After every column: `xmax = 0`, a row version no transaction has touched since
            // it was inserted, i.e. this statement inserted it.
            let inserted = DB::int(&row, sql.columns.len())? == 1;
            (row, inserted)
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
                    (row, true)
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
                    (row, false)
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
            (row, inserted)
        }
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
