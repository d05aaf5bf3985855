//! The checkpoint table, `posthog_backfill`: how far each backfill got, kept in the database
//! the rows come from and moved in the same transaction as the events of each page, so a
//! page's events and its checkpoint commit together or not at all.

use sqlx::Pool;

use crate::backend::{Backend, Dialect};
use crate::error::{Error, Result};

/// Name of the checkpoint table.
pub const TABLE: &str = "posthog_backfill";

/// The checkpoint table's DDL from one dialect's column types: the column list is written
/// once, so the three dialects cannot drift apart.
#[rustfmt::skip] // one column a line, as in the DDL
macro_rules! checkpoint_table {
    (
        name: $name:literal,
        last_key: $last_key:literal,
        counter: $counter:literal,
        options: $options:literal,
    ) => {
        concat!(
            "CREATE TABLE IF NOT EXISTS posthog_backfill (",
            "name ", $name, ", ",
            "description TEXT NOT NULL, ",
            "last_key ", $last_key, ", ",
            "rows_done ", $counter, " NOT NULL DEFAULT 0, ",
            "events ", $counter, " NOT NULL DEFAULT 0, ",
            "done ", $counter, " NOT NULL DEFAULT 0, ",
            "generation ", $counter, " NOT NULL DEFAULT 0)",
            $options,
        )
    };
}

/// The DDL of the checkpoint table in `dialect`; the backfill runs it itself (idempotent).
///
/// `name` identifies a backfill (the model's table and a digest of its options), `last_key`
/// is the JSON of the last key done (`NULL` before the first page), `generation` counts the
/// pages committed and fences concurrent runs, `done` is 1 once every row was read.
pub fn create_table_sql(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Postgres => checkpoint_table!(
            name: "VARCHAR(255) PRIMARY KEY",
            last_key: "TEXT",
            counter: "BIGINT",
            options: "",
        ),
        Dialect::MySql => checkpoint_table!(
            name: "VARCHAR(255) NOT NULL PRIMARY KEY",
            last_key: "MEDIUMTEXT NULL",
            counter: "BIGINT",
            options: " DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin",
        ),
        Dialect::Sqlite => checkpoint_table!(
            name: "TEXT PRIMARY KEY",
            last_key: "TEXT",
            counter: "INTEGER",
            options: "",
        ),
    }
}

/// One backfill's progress, as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Checkpoint {
    pub last_key: Option<String>,
    pub rows: i64,
    pub events: i64,
    pub done: bool,
    pub generation: i64,
}

impl Checkpoint {
    /// The generation after this one. Read from the row, which may hold anything (edited by
    /// hand, copied from another database): at the top of BIGINT it wraps around, since a
    /// fence only has to change (`advance` and `reset` compare it for equality).
    pub(crate) fn next_generation(&self) -> i64 {
        self.generation.wrapping_add(1)
    }
}

/// A row when the search_path finds `posthog_backfill` on PostgreSQL (in whichever schema).
const POSTGRES_TABLE_FOUND: &str = "SELECT 1 WHERE to_regclass('posthog_backfill') IS NOT NULL";

/// Creates the table if needed and reads checkpoint `name`, creating it (empty) when it does
/// not exist yet. Safe when two processes start the same backfill at once: both read the
/// same checkpoint, and the generation fence of [`advance`] stops the one that commits second.
pub(crate) async fn load<DB: Backend>(
    pool: &Pool<DB>,
    name: &str,
    description: &str,
) -> Result<(Checkpoint, bool)> {
    let mut conn = pool.acquire().await?;
    if DB::DIALECT == Dialect::Postgres {
        // `CREATE TABLE IF NOT EXISTS` is not safe under concurrency on PostgreSQL: the
        // session that loses the race fails on `pg_type`'s unique index. A transaction-scoped
        // lock serialises the creations (released by the commit, or by the rollback when this
        // future is dropped half-way).
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        DB::execute(
            &mut tx,
            sqlx::query("SELECT pg_advisory_xact_lock(7135245020)"),
        )
        .await?;
        // Only when the search_path finds no checkpoint table: `CREATE TABLE IF NOT EXISTS`
        // looks in the first schema of the path alone, and would make an empty table there
        // that shadows the one in a later schema (every checkpoint lost, every row sent again).
        let found = DB::fetch_all(&mut tx, sqlx::query(POSTGRES_TABLE_FOUND)).await?;
        if found.is_empty() {
            DB::execute(&mut tx, sqlx::query(create_table_sql(DB::DIALECT))).await?;
        }
        tx.commit().await?;
    } else {
        DB::execute(&mut conn, sqlx::query(create_table_sql(DB::DIALECT))).await?;
    }
    let loaded = read_or_create::<DB>(&mut conn, name, description).await;
    end_session_transaction::<DB>(&mut conn, loaded.is_ok()).await?;
    loaded
}

/// On MySQL/MariaDB, ends the transaction that the statements just run on `conn` opened when
/// the session runs with autocommit off (`COMMIT` when they succeeded, else `ROLLBACK`; both
/// do nothing under autocommit). Without it, the connection would go back to the pool
/// holding the checkpoint row's lock, which the first page's advance (on another connection)
/// waits on until the lock wait timeout, or a snapshot older than the checkpoint.
async fn end_session_transaction<DB: Backend>(
    conn: &mut DB::Connection,
    succeeded: bool,
) -> Result<()> {
    if DB::DIALECT != Dialect::MySql {
        return Ok(());
    }
    if succeeded {
        DB::execute(conn, sqlx::query("COMMIT")).await?;
    } else {
        // The failure is what is reported.
        let _ = DB::execute(conn, sqlx::query("ROLLBACK")).await;
    }
    Ok(())
}

/// Reads checkpoint `name`, creating it (empty) when it does not exist yet; whether it
/// existed with progress.
async fn read_or_create<DB: Backend>(
    conn: &mut DB::Connection,
    name: &str,
    description: &str,
) -> Result<(Checkpoint, bool)> {
    if let Some(found) = read::<DB>(conn, name).await? {
        return Ok((found, true));
    }
    // Another run may insert the same checkpoint between the read and this insert: the row
    // is then left as that run made it, and read back.
    let mut sql = "INSERT INTO posthog_backfill (name, description) VALUES (".to_owned();
    DB::DIALECT.push_placeholders(&mut sql, 1, 2);
    sql.push_str(match DB::DIALECT {
        Dialect::MySql => ") ON DUPLICATE KEY UPDATE name = name",
        Dialect::Postgres | Dialect::Sqlite => ") ON CONFLICT (name) DO NOTHING",
    });
    let query = DB::bind_text(
        DB::bind_text(sqlx::query(sqlx::AssertSqlSafe(sql)), name),
        description,
    );
    DB::execute(conn, query).await?;
    match read::<DB>(conn, name).await? {
        Some(found) => {
            let existed = found != Checkpoint::default();
            Ok((found, existed))
        }
        None => Err(Error::Database(sqlx::Error::RowNotFound)),
    }
}

/// Reads checkpoint `name`, if the table and the row exist; never creates anything.
pub(crate) async fn peek<DB: Backend>(pool: &Pool<DB>, name: &str) -> Result<Option<Checkpoint>> {
    let mut conn = pool.acquire().await?;
    let exists = match DB::DIALECT {
        Dialect::Postgres => {
            "SELECT COUNT(*) FROM (SELECT to_regclass('posthog_backfill') AS found) AS t \
             WHERE found IS NOT NULL"
        }
        Dialect::MySql => {
            "SELECT COUNT(*) FROM information_schema.tables \
             WHERE table_schema = DATABASE() AND table_name = 'posthog_backfill'"
        }
        Dialect::Sqlite => {
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'posthog_backfill'"
        }
    };
    let row = DB::fetch_one(&mut conn, sqlx::query(exists)).await?;
    if DB::int(&row, 0)? == 0 {
        return Ok(None);
    }
    read::<DB>(&mut conn, name).await
}

async fn read<DB: Backend>(conn: &mut DB::Connection, name: &str) -> Result<Option<Checkpoint>> {
    let mut sql = "SELECT last_key, rows_done, events, done, generation FROM posthog_backfill \
                   WHERE name = "
        .to_owned();
    DB::DIALECT.push_placeholder(&mut sql, 1);
    let query = DB::bind_text(sqlx::query(sqlx::AssertSqlSafe(sql)), name);
    let rows = DB::fetch_all(conn, query).await?;
    let Some(row) = rows.first() else {
        return Ok(None);
    };
    Ok(Some(Checkpoint {
        last_key: DB::optional_text(row, 0)?,
        rows: DB::int(row, 1)?,
        events: DB::int(row, 2)?,
        done: DB::int(row, 3)? != 0,
        generation: DB::int(row, 4)?,
    }))
}

/// Starts checkpoint `name` over (for `restart`): no key done, not done.
pub(crate) async fn reset<DB: Backend>(
    pool: &Pool<DB>,
    name: &str,
    from: &Checkpoint,
) -> Result<Checkpoint> {
    let mut conn = pool.acquire().await?;
    let next = Checkpoint {
        generation: from.next_generation(),
        ..Checkpoint::default()
    };
    let mut sql = "UPDATE posthog_backfill SET last_key = NULL, rows_done = 0, events = 0, \
                   done = 0, generation = "
        .to_owned();
    DB::DIALECT.push_placeholder(&mut sql, 1);
    sql.push_str(" WHERE name = ");
    DB::DIALECT.push_placeholder(&mut sql, 2);
    sql.push_str(" AND generation = ");
    DB::DIALECT.push_placeholder(&mut sql, 3);
    let query = DB::bind_i64(
        DB::bind_text(
            DB::bind_i64(sqlx::query(sqlx::AssertSqlSafe(sql)), next.generation),
            name,
        ),
        from.generation,
    );
    let updated = DB::execute(&mut conn, query).await;
    // Committed whatever the session's autocommit, as in `load`.
    end_session_transaction::<DB>(&mut conn, updated.is_ok()).await?;
    let updated = updated?;
    if DB::rows_affected(&updated) == 0 {
        return Err(Error::BackfillConflict {
            checkpoint: name.to_owned(),
        });
    }
    Ok(next)
}

/// Moves checkpoint `name` from `from` to `to` inside the page's transaction. Fails with
/// [`Error::BackfillConflict`] when another run moved it since `from` was read.
pub(crate) async fn advance<DB: Backend>(
    conn: &mut DB::Connection,
    name: &str,
    from: &Checkpoint,
    to: &Checkpoint,
) -> Result<()> {
    let dialect = DB::DIALECT;
    // An empty table ends with no key at all: the key column is then left as it is.
    let mut sql = "UPDATE posthog_backfill SET ".to_owned();
    let mut n = 0;
    let mut next = |sql: &mut String| {
        n += 1;
        dialect.push_placeholder(sql, n);
    };
    if to.last_key.is_some() {
        sql.push_str("last_key = ");
        next(&mut sql);
        sql.push_str(", ");
    }
    for (i, column) in ["rows_done", "events", "done", "generation"]
        .iter()
        .enumerate()
    {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(column);
        sql.push_str(" = ");
        next(&mut sql);
    }
    sql.push_str(" WHERE name = ");
    next(&mut sql);
    sql.push_str(" AND generation = ");
    next(&mut sql);
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    if let Some(key) = &to.last_key {
        query = DB::bind_text(query, key);
    }
    query = DB::bind_i64(query, to.rows);
    query = DB::bind_i64(query, to.events);
    query = DB::bind_i64(query, i64::from(to.done));
    query = DB::bind_i64(query, to.generation);
    query = DB::bind_text(query, name);
    query = DB::bind_i64(query, from.generation);
    let result = match DB::execute(conn, query).await {
        Ok(result) => result,
        // A page at REPEATABLE READ (PostgreSQL) whose checkpoint another run moved after the
        // page's snapshot: the same conflict as an UPDATE that finds another generation.
        Err(sqlx::Error::Database(error)) if error.code().as_deref() == Some("40001") => {
            return Err(Error::BackfillConflict {
                checkpoint: name.to_owned(),
            });
        }
        Err(error) => return Err(error.into()),
    };
    if DB::rows_affected(&result) == 0 {
        return Err(Error::BackfillConflict {
            checkpoint: name.to_owned(),
        });
    }
    Ok(())
}
