//! Writing rows: one row as [`TrackedModel::insert`] writes it, and many rows with one
//! multi-row `INSERT` per chunk, as [`TrackedModel::insert_all`] writes them. Both read every
//! row back as the database stored it, generated columns included.
//!
//! How a chunk's rows come back, per backend:
//! - PostgreSQL, SQLite and MariaDB 10.5+: `INSERT ... VALUES (...), (...) RETURNING` every
//!   column, one returned row per inserted row, in the order of the `VALUES`.
//! - MySQL (no `RETURNING`), with a key written from Rust: `SELECT ... WHERE key IN (...)`
//!   after the insert, each row matched to its input by its key (when a key comes back
//!   otherwise than given, each row is read back by its own key, as `insert` reads it).
//! - MySQL with a `generated` (`AUTO_INCREMENT`) key: `LAST_INSERT_ID()` is the id of the
//!   chunk's FIRST row, and the others follow it by `@@auto_increment_increment` only when
//!   InnoDB allocated them together. It does for a multi-row `INSERT ... VALUES` under
//!   `innodb_autoinc_lock_mode` 0 ("traditional") and 1 ("consecutive", MariaDB's default);
//!   MySQL 8's default, 2 ("interleaved"), may interleave the ids of concurrent statements, so
//!   there the rows are inserted one at a time, each read back by its own id. The rows read
//!   back by id range are checked to be exactly the chunk's.
//!
//! [`TrackedModel::insert`]: super::TrackedModel::insert
//! [`TrackedModel::insert_all`]: super::TrackedModel::insert_all

use std::sync::atomic::{AtomicBool, Ordering};

use super::auto_increment::{NOT_AUTO_INCREMENT, is_auto_increment};
use super::codegen::ModelSql;
use super::route::route;
use super::stage::stage_inserted;
use super::traits::{TrackedModel, TrackedRow};
use crate::backend::{Backend, BoundQuery, Dialect};
use crate::error::{Error, Result};
use crate::event::Stamp;
use crate::transaction::TrackedTransaction;

/// Tests only: behave as MySQL, which has no `RETURNING`, on MariaDB as well, so the MySQL
/// paths run against the MariaDB the tests have.
static IGNORE_MARIADB_RETURNING: AtomicBool = AtomicBool::new(false);

/// Makes [`TrackedModel::insert_all`](super::TrackedModel::insert_all) read rows back as on
/// MySQL (without `RETURNING`) on MariaDB too. For the test suite; not public API.
#[doc(hidden)]
pub fn ignore_mariadb_returning(ignore: bool) {
    IGNORE_MARIADB_RETURNING.store(ignore, Ordering::SeqCst);
}

/// An `Error::Unsupported` for writing into `table`.
fn unsupported<DB: Backend>(operation: &str, table: &str, reason: &'static str) -> Error {
    Error::Unsupported {
        operation: format!("{operation} into `{table}`"),
        backend: DB::DIALECT.name(),
        reason,
    }
}

/// Refuses, before anything is written, a model that `sql` cannot insert into `table`
/// (on MySQL: a generated key that is not `AUTO_INCREMENT`).
pub(super) async fn check_insertable<DB: Backend>(
    sql: &ModelSql,
    table: &'static str,
    connection: &mut DB::Connection,
) -> Result<()> {
    if let Some(reason) = sql.insert_unsupported {
        return Err(unsupported::<DB>("insert", table, reason));
    }
    if let Some(column) = sql.auto_increment_key
        && !is_auto_increment::<DB>(connection, table, column).await?
    {
        return Err(unsupported::<DB>("insert", table, NOT_AUTO_INCREMENT));
    }
    Ok(())
}

/// Inserts one row with `sql` and reads it back as stored, once [`check_insertable`] passed.
pub(super) async fn write_one<M, DB>(
    model: &M,
    sql: &ModelSql,
    table: &'static str,
    tx: &mut TrackedTransaction<'_, DB>,
) -> Result<M>
where
    DB: Backend,
    M: TrackedRow<DB>,
{
    let query = model.__bind_insert(sqlx::query(sql.insert));
    let row = if sql.insert_returns_row {
        let row = DB::fetch_one(tx.connection(), query).await?;
        tx.wrote();
        row
    } else {
        let result = DB::execute(tx.connection(), query).await?;
        tx.wrote();
        let Some(select) = sql.select_inserted else {
            // Only a model with `insert_unsupported` has neither; refused before.
            return Err(unsupported::<DB>(
                "insert",
                table,
                "the inserted row cannot be read back",
            ));
        };
        let mut query = sqlx::query(select);
        if sql.select_inserted_by_insert_id {
            // The id this INSERT generated (0 when it generated none), not the connection's
            // LAST_INSERT_ID(), which an earlier insert set.
            let id = DB::last_insert_id(&result)
                .filter(|id| *id != 0)
                .and_then(|id| i64::try_from(id).ok())
                .ok_or_else(|| unsupported::<DB>("insert", table, NOT_AUTO_INCREMENT))?;
            query = DB::bind_i64(query, id);
        } else {
            query = model.__bind_key(query);
        }
        DB::fetch_one(tx.connection(), query).await?
    };
    Ok(M::__from_row(&row)?)
}

/// How a chunk of rows is read back on this server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadBack {
    /// `RETURNING`, in the order of the `VALUES`.
    Returning,
    /// MySQL, key written from Rust: `SELECT ... WHERE key IN (...)`.
    ByKeys,
    /// MySQL, `AUTO_INCREMENT` key allocated consecutively: the ids from `LAST_INSERT_ID()`.
    ByIdRange { increment: i64 },
    /// MySQL, ids possibly interleaved with other statements': one row at a time.
    OneByOne,
}

/// What MySQL or MariaDB can do: `RETURNING` (MariaDB 10.5+), and whether a multi-row INSERT
/// gets consecutive `AUTO_INCREMENT` ids.
async fn mysql_read_back<DB: Backend>(
    sql: &ModelSql,
    connection: &mut DB::Connection,
) -> Result<ReadBack> {
    let row = DB::fetch_one(
        connection,
        sqlx::query(
            "SELECT CAST(VERSION() AS CHAR), CAST(@@innodb_autoinc_lock_mode AS SIGNED), \
             CAST(@@auto_increment_increment AS SIGNED)",
        ),
    )
    .await?;
    let version = DB::text(&row, 0)?;
    if mariadb_has_returning(&version) && !IGNORE_MARIADB_RETURNING.load(Ordering::SeqCst) {
        return Ok(ReadBack::Returning);
    }
    if !sql.select_inserted_by_insert_id {
        return Ok(ReadBack::ByKeys);
    }
    let lock_mode = DB::int(&row, 1)?;
    let increment = DB::int(&row, 2)?;
    Ok(if matches!(lock_mode, 0 | 1) && increment >= 1 {
        ReadBack::ByIdRange { increment }
    } else {
        ReadBack::OneByOne
    })
}

/// `VERSION()` of MariaDB 10.5 or later, the first with `INSERT ... RETURNING`.
fn mariadb_has_returning(version: &str) -> bool {
    if !version.contains("MariaDB") {
        return false;
    }
    // MariaDB may prefix "5.5.5-" for old clients; VERSION() itself does not.
    let version = version.strip_prefix("5.5.5-").unwrap_or(version);
    let mut parts = version.split(|c: char| !c.is_ascii_digit());
    let major = parts.next().and_then(|p| p.parse::<u32>().ok());
    let minor = parts.next().and_then(|p| p.parse::<u32>().ok());
    matches!((major, minor), (Some(major), Some(minor)) if (major, minor) >= (10, 5))
}

/// Rows per statement: as many as the backend's limit on bound parameters allows.
fn rows_per_statement(dialect: Dialect, width: usize) -> usize {
    (dialect.max_binds() / width.max(1)).max(1)
}

/// `INSERT ... VALUES (...), (...)` of `rows` rows.
fn multi_row_insert(sql: &ModelSql, dialect: Dialect, rows: usize, returning: bool) -> String {
    let width = sql.insert_width;
    let mut statement = String::with_capacity(sql.insert_head.len() + rows * (width * 4 + 4) + 64);
    statement.push_str(sql.insert_head);
    for row in 0..rows {
        statement.push_str(if row == 0 { "(" } else { ", (" });
        dialect.push_placeholders(&mut statement, row * width + 1, width);
        statement.push(')');
    }
    if returning {
        statement.push_str(sql.returning);
    }
    statement
}

/// `SELECT` every column `WHERE (keys) IN ((...), ...)` of `rows` rows (MySQL).
fn select_by_keys(sql: &ModelSql, rows: usize) -> String {
    let keys = sql.keys.len();
    let mut statement = String::with_capacity(sql.select_head.len() + rows * (keys * 3 + 4) + 64);
    statement.push_str(sql.select_head);
    let tuple = keys > 1;
    if tuple {
        statement.push('(');
    }
    statement.push_str(&sql.keys.join(", "));
    if tuple {
        statement.push(')');
    }
    statement.push_str(" IN (");
    for row in 0..rows {
        if row > 0 {
            statement.push_str(", ");
        }
        if tuple {
            statement.push('(');
        }
        Dialect::MySql.push_placeholders(&mut statement, 1, keys);
        if tuple {
            statement.push(')');
        }
    }
    statement.push(')');
    statement
}

/// `SELECT` every column `WHERE key IN (ids) ORDER BY key` (MySQL, `AUTO_INCREMENT` key).
fn select_by_ids(sql: &ModelSql, ids: usize) -> String {
    let key = sql.keys.first().copied().unwrap_or_default();
    let mut statement = String::with_capacity(sql.select_head.len() + ids * 3 + 64);
    statement.push_str(sql.select_head);
    statement.push_str(key);
    statement.push_str(" IN (");
    Dialect::MySql.push_placeholders(&mut statement, 1, ids);
    statement.push_str(") ORDER BY ");
    statement.push_str(key);
    statement
}

/// `stored` in the order of `inputs`: the same order when every key matches in place (the
/// usual case), else each input's row found by its key. Only for keys written from Rust.
///
/// `in_values_order` says that `stored` came back from the INSERT's `RETURNING`, in the order
/// of its VALUES (what generated keys rely on too): then a key the database stored otherwise
/// than given (a timestamp cut to microseconds, a `CHAR(n)` padded) matches by position.
fn in_input_order<M: TrackedModel>(
    inputs: &[&M],
    mut stored: Vec<M>,
    table: &'static str,
    in_values_order: bool,
) -> Result<Vec<M>> {
    let in_place = stored.len() == inputs.len()
        && inputs
            .iter()
            .zip(&stored)
            .all(|(input, row)| input.__same_key(row));
    if in_place {
        return Ok(stored);
    }
    let every_key_found = inputs
        .iter()
        .all(|input| stored.iter().any(|row| input.__same_key(row)));
    if !every_key_found && in_values_order && stored.len() == inputs.len() {
        return Ok(stored);
    }
    let mut ordered = Vec::with_capacity(inputs.len());
    for input in inputs {
        let position = stored
            .iter()
            .position(|row| input.__same_key(row))
            .ok_or(Error::RowNotFound { table })?;
        ordered.push(stored.swap_remove(position));
    }
    Ok(ordered)
}

/// Binds `rows` for a multi-row insert.
fn bind_rows<M, DB>(rows: &[&M], mut query: BoundQuery<DB>) -> BoundQuery<DB>
where
    DB: Backend,
    M: TrackedRow<DB>,
{
    for row in rows {
        query = row.__bind_insert(query);
    }
    query
}

/// Inserts the chunk `rows` into `table` with one statement (and, on MySQL, one read back),
/// and returns them as stored, in order.
async fn write_chunk<M, DB>(
    rows: &[&M],
    sql: &ModelSql,
    table: &'static str,
    read_back: ReadBack,
    tx: &mut TrackedTransaction<'_, DB>,
) -> Result<Vec<M>>
where
    DB: Backend,
    M: TrackedRow<DB>,
{
    let decode = |stored: Vec<DB::Row>| -> Result<Vec<M>> {
        stored
            .iter()
            .map(|row| M::__from_row(row).map_err(Error::from))
            .collect()
    };
    match read_back {
        ReadBack::OneByOne => {
            let mut stored = Vec::with_capacity(rows.len());
            for row in rows {
                stored.push(write_one(*row, sql, table, tx).await?);
            }
            Ok(stored)
        }
        ReadBack::Returning => {
            let statement = multi_row_insert(sql, DB::DIALECT, rows.len(), true);
            let query = bind_rows(rows, sqlx::query(sqlx::AssertSqlSafe(statement)));
            let rows_stored = DB::fetch_all(tx.connection(), query).await?;
            tx.wrote();
            let stored = decode(rows_stored)?;
            if sql.key_generated {
                // Nothing to match by: the rows come back in the order of the VALUES.
                if stored.len() != rows.len() {
                    return Err(Error::RowNotFound { table });
                }
                Ok(stored)
            } else {
                in_input_order(rows, stored, table, true)
            }
        }
        ReadBack::ByKeys => {
            let statement = multi_row_insert(sql, DB::DIALECT, rows.len(), false);
            let query = bind_rows(rows, sqlx::query(sqlx::AssertSqlSafe(statement)));
            DB::execute(tx.connection(), query).await?;
            tx.wrote();
            // The keys are at most the inserted columns, so this SELECT binds no more.
            let mut query = sqlx::query(sqlx::AssertSqlSafe(select_by_keys(sql, rows.len())));
            for row in rows {
                query = row.__bind_key(query);
            }
            let stored = decode(DB::fetch_all(tx.connection(), query).await?)?;
            match in_input_order(rows, stored, table, false) {
                Err(Error::RowNotFound { .. }) => {
                    // A key the database stores otherwise than given (a timestamp cut to
                    // microseconds, a `CHAR(n)` padded): each row read back by its own key,
                    // as `insert` reads it.
                    let select = sql.select_inserted.ok_or(Error::RowNotFound { table })?;
                    let mut stored = Vec::with_capacity(rows.len());
                    for row in rows {
                        let query = row.__bind_key(sqlx::query(select));
                        stored.push(M::__from_row(
                            &DB::fetch_one(tx.connection(), query).await?,
                        )?);
                    }
                    Ok(stored)
                }
                ordered => ordered,
            }
        }
        ReadBack::ByIdRange { increment } => {
            let statement = multi_row_insert(sql, DB::DIALECT, rows.len(), false);
            let query = bind_rows(rows, sqlx::query(sqlx::AssertSqlSafe(statement)));
            let result = DB::execute(tx.connection(), query).await?;
            tx.wrote();
            let first = DB::last_insert_id(&result)
                .filter(|id| *id != 0)
                .and_then(|id| i64::try_from(id).ok())
                .ok_or_else(|| unsupported::<DB>("insert", table, NOT_AUTO_INCREMENT))?;
            let mut query = sqlx::query(sqlx::AssertSqlSafe(select_by_ids(sql, rows.len())));
            for n in 0..rows.len() {
                let offset = i64::try_from(n)
                    .unwrap_or(i64::MAX)
                    .saturating_mul(increment);
                query = DB::bind_i64(query, first.saturating_add(offset));
            }
            let stored = decode(DB::fetch_all(tx.connection(), query).await?)?;
            if stored.len() != rows.len() {
                // The ids were not this statement's alone: never return (or send) others' rows.
                return Err(unsupported::<DB>(
                    "insert_all",
                    table,
                    "the AUTO_INCREMENT ids of a multi-row INSERT were not consecutive; set \
                     innodb_autoinc_lock_mode to 1 or insert the rows one at a time",
                ));
            }
            Ok(stored)
        }
    }
}

/// The rows of one table, by their index in the caller's slice.
struct TableRows<'a, M> {
    sql: &'static ModelSql,
    table: &'static str,
    indices: Vec<usize>,
    rows: Vec<&'a M>,
}

/// [`TrackedModel::insert_all`](super::TrackedModel::insert_all).
pub(super) async fn insert_all<M, DB>(
    rows: &[M],
    tx: &mut TrackedTransaction<'_, DB>,
) -> Result<Vec<M>>
where
    DB: Backend,
    M: TrackedRow<DB> + Clone,
{
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    tx.begin_write(M::TABLE)?;
    let inserted = write_all(rows, tx).await;
    tx.end_write(&inserted);
    inserted
}

/// [`insert_all`] of at least one row, within its `begin_write` / `end_write`.
async fn write_all<M, DB>(rows: &[M], tx: &mut TrackedTransaction<'_, DB>) -> Result<Vec<M>>
where
    DB: Backend,
    M: TrackedRow<DB> + Clone,
{
    // `context` fields are filled from the request, as `insert` fills them: on copies, since
    // the rows are borrowed.
    let filled: Option<Vec<M>> = M::__CONTEXT_FIELDS.then(|| {
        rows.iter()
            .map(|row| {
                let mut row = row.clone();
                row.__fill_from_context(tx.context());
                row
            })
            .collect()
    });
    let rows = filled.as_deref().unwrap_or(rows);

    // Where each row goes (a flag-routed model may write to several tables).
    let mut groups: Vec<TableRows<'_, M>> = Vec::new();
    let mut stamps: Vec<Vec<Stamp>> = Vec::with_capacity(rows.len());
    for (index, row) in rows.iter().enumerate() {
        let (sql, table, row_stamps) = if M::__TABLE_VARIANTS.is_empty() {
            (M::__SQL.get(DB::DIALECT), M::TABLE, Vec::new())
        } else {
            route(row, tx).await
        };
        stamps.push(row_stamps);
        match groups.iter_mut().find(|group| group.table == table) {
            Some(group) => {
                group.indices.push(index);
                group.rows.push(row);
            }
            None => groups.push(TableRows {
                sql,
                table,
                indices: vec![index],
                rows: vec![row],
            }),
        }
    }

    let mut stored: Vec<Option<M>> = std::iter::repeat_with(|| None).take(rows.len()).collect();
    let mut mysql: Option<ReadBack> = None;
    for group in &groups {
        let (sql, table) = (group.sql, group.table);
        check_insertable::<DB>(sql, table, tx.connection()).await?;
        let read_back = if sql.insert_width == 0 {
            // Every column is generated: there are no VALUES to repeat.
            ReadBack::OneByOne
        } else {
            match DB::DIALECT {
                Dialect::Postgres | Dialect::Sqlite => ReadBack::Returning,
                Dialect::MySql => match mysql {
                    Some(read_back) => read_back,
                    None => {
                        let read_back = mysql_read_back::<DB>(sql, tx.connection()).await?;
                        mysql = Some(read_back);
                        read_back
                    }
                },
            }
        };
        let per_statement = rows_per_statement(DB::DIALECT, sql.insert_width);
        for (chunk, indices) in group
            .rows
            .chunks(per_statement)
            .zip(group.indices.chunks(per_statement))
        {
            let written = write_chunk(chunk, sql, table, read_back, tx).await?;
            for (index, row) in indices.iter().zip(written) {
                stored[*index] = Some(row);
            }
        }
    }
    let stored: Vec<M> = stored
        .into_iter()
        .map(|row| row.ok_or(Error::RowNotFound { table: M::TABLE }))
        .collect::<Result<_>>()?;

    // The events, in the order of the rows, exactly as one `insert` per row stages them; all
    // or none.
    tx.stage_all(|tx| {
        stored
            .iter()
            .zip(stamps)
            .try_for_each(|(row, stamps)| stage_inserted(row, stamps, tx))
    })?;
    Ok(stored)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mariadb_returning_from_10_5() {
        assert!(mariadb_has_returning("10.11.6-MariaDB-0+deb12u1"));
        assert!(mariadb_has_returning("5.5.5-10.5.2-MariaDB"));
        assert!(mariadb_has_returning("11.4.2-MariaDB"));
        assert!(!mariadb_has_returning("10.4.32-MariaDB"));
        assert!(!mariadb_has_returning("8.0.36"));
        assert!(!mariadb_has_returning("8.4.0-MySQL"));
    }

    #[test]
    fn statements_stay_within_the_bind_limits() {
        assert_eq!(rows_per_statement(Dialect::Sqlite, 7), 32766 / 7);
        assert_eq!(rows_per_statement(Dialect::Postgres, 7), 65535 / 7);
        assert_eq!(rows_per_statement(Dialect::MySql, 100_000), 1);
    }

    #[test]
    fn multi_row_sql() {
        let sql = ModelSql {
            insert_head: "INSERT INTO \"t\" (\"a\", \"b\") VALUES ",
            insert_width: 2,
            returning: " RETURNING \"id\", \"a\", \"b\"",
            select_head: "SELECT `id`, `a`, `b` FROM `t` WHERE ",
            keys: &["`a`", "`b`"],
            ..ModelSql::UNUSABLE
        };
        assert_eq!(
            multi_row_insert(&sql, Dialect::Postgres, 2, true),
            "INSERT INTO \"t\" (\"a\", \"b\") VALUES ($1, $2), ($3, $4) RETURNING \"id\", \"a\", \"b\""
        );
        assert_eq!(
            select_by_keys(&sql, 2),
            "SELECT `id`, `a`, `b` FROM `t` WHERE (`a`, `b`) IN ((?, ?), (?, ?))"
        );
        assert_eq!(
            select_by_ids(&sql, 3),
            "SELECT `id`, `a`, `b` FROM `t` WHERE `a` IN (?, ?, ?) ORDER BY `a`"
        );
    }
}
