//! The three sqlx databases the toolkit supports, behind one sealed trait.
//!
//! Generated code never names a concrete database: it binds values on a generic
//! `sqlx::query::Query` and hands the query to [`Backend`], whose implementations are
//! concrete. That keeps the higher-ranked `Executor` bounds out of every user signature.

use std::fmt::Write as _;
use std::future::Future;

use sqlx::query::Query;
use sqlx::{Decode, Type};

/// SQL dialect of a backend. Chooses the SQL text that the derive fixed at compile time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// PostgreSQL: `"ident"`, `$1` placeholders, `RETURNING`.
    Postgres,
    /// MySQL and MariaDB: `` `ident` ``, `?` placeholders, `LAST_INSERT_ID()`.
    MySql,
    /// SQLite: `"ident"`, `?` placeholders, `RETURNING`.
    Sqlite,
}

impl Dialect {
    /// Human name, for messages.
    pub const fn name(self) -> &'static str {
        match self {
            Dialect::Postgres => "PostgreSQL",
            Dialect::MySql => "MySQL/MariaDB",
            Dialect::Sqlite => "SQLite",
        }
    }

    /// Appends the placeholder for the `n`th (1-based) bound parameter: `$n` on PostgreSQL,
    /// `?` elsewhere. For your own SQL in code that is generic over [`Backend`].
    pub fn push_placeholder(self, sql: &mut String, n: usize) {
        match self {
            Dialect::Postgres => {
                // Writing to a String cannot fail.
                let _ = write!(sql, "${n}");
            }
            Dialect::MySql | Dialect::Sqlite => sql.push('?'),
        }
    }

    /// `sql` with each `?` replaced by this dialect's placeholder, numbered from `first` (`$1`,
    /// `$2`, ... on PostgreSQL). For statements this crate writes, which have no `?` in them
    /// otherwise.
    pub(crate) fn numbered(self, sql: &str, first: usize) -> String {
        let mut out = String::with_capacity(sql.len() + 8);
        for (n, part) in sql.split('?').enumerate() {
            if n > 0 {
                self.push_placeholder(&mut out, first + n - 1);
            }
            out.push_str(part);
        }
        out
    }

    /// The database clock in milliseconds since the Unix epoch, as an SQL expression. Leases
    /// and retry times are computed by the database, so every relay agrees on them whatever
    /// its host's clock says.
    ///
    /// On MySQL/MariaDB not `UNIX_TIMESTAMP(NOW(3))`, which turns the session's local time
    /// back into an instant: in a time zone with daylight saving time, the hour repeated when
    /// the clocks go back reads an hour early. `UTC_TIMESTAMP` is the same in every session
    /// time zone.
    pub(crate) const fn now_millis_sql(self) -> &'static str {
        match self {
            Dialect::Postgres => "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT",
            Dialect::MySql => MYSQL_NOW_MILLIS,
            Dialect::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
        }
    }

    /// The most parameters one statement may bind: 65,535 on PostgreSQL (the protocol's
    /// 16-bit count) and MySQL/MariaDB (the prepared-statement limit), 32,766 on SQLite (its
    /// default `SQLITE_MAX_VARIABLE_NUMBER` since 3.32; the bundled SQLite is 3.51).
    pub(crate) const fn max_binds(self) -> usize {
        match self {
            Dialect::Postgres | Dialect::MySql => 65_535,
            Dialect::Sqlite => 32_766,
        }
    }

    /// Appends `count` comma-separated placeholders, numbered from `first` (1-based).
    pub(crate) fn push_placeholders(self, sql: &mut String, first: usize, count: usize) {
        for n in first..first + count {
            if n > first {
                sql.push_str(", ");
            }
            self.push_placeholder(sql, n);
        }
    }
}

/// MySQL/MariaDB's clock in milliseconds since the Unix epoch, whatever the session's
/// `time_zone` (see [`Dialect::now_millis_sql`]).
pub(crate) const MYSQL_NOW_MILLIS: &str =
    "(TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', UTC_TIMESTAMP(3)) DIV 1000)";

/// A query as generated code builds it: owned SQL text, arguments encoded on bind. (The
/// [`Backend`] trait spells it out, so its public signatures name only sqlx types.)
pub type BoundQuery<DB> = Query<'static, DB, <DB as sqlx::Database>::Arguments>;

mod sealed {
    pub trait Sealed {}
}

/// A sqlx database that posthog-track can write models and outbox events to.
///
/// Implemented for `sqlx::Postgres`, `sqlx::MySql` and `sqlx::Sqlite` behind the cargo
/// features of the same names (`postgres`, `mysql`, `sqlite`; only `sqlite` is on by default).
/// Sealed: the SQL the derive generates is only known to be right for these three.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a posthog-track backend",
    label = "posthog-track cannot write to `{Self}`",
    note = "each database is behind a cargo feature of posthog-track: `postgres` for \
            `sqlx::Postgres`, `mysql` for `sqlx::MySql` (MySQL and MariaDB), `sqlite` for \
            `sqlx::Sqlite`; enable it, e.g. \
            `features = [\"postgres\"]` on the posthog-track dependency in Cargo.toml"
)]
pub trait Backend: sqlx::Database + sealed::Sealed {
    /// Which SQL text to use.
    const DIALECT: Dialect;

    /// Runs a statement that returns no rows.
    fn execute<'c>(
        conn: &'c mut Self::Connection,
        query: Query<'static, Self, <Self as sqlx::Database>::Arguments>,
    ) -> impl Future<Output = Result<Self::QueryResult, sqlx::Error>> + Send + 'c;

    /// Runs a statement that returns exactly one row.
    fn fetch_one<'c>(
        conn: &'c mut Self::Connection,
        query: Query<'static, Self, <Self as sqlx::Database>::Arguments>,
    ) -> impl Future<Output = Result<Self::Row, sqlx::Error>> + Send + 'c;

    /// Runs a query and collects every row.
    fn fetch_all<'c>(
        conn: &'c mut Self::Connection,
        query: Query<'static, Self, <Self as sqlx::Database>::Arguments>,
    ) -> impl Future<Output = Result<Vec<Self::Row>, sqlx::Error>> + Send + 'c;

    /// Rows matched by an UPDATE or DELETE.
    fn rows_affected(result: &Self::QueryResult) -> u64;

    /// The AUTO_INCREMENT id an INSERT generated, where the database reports one (MySQL: 0
    /// when it generated none); `None` on PostgreSQL.
    fn last_insert_id(result: &Self::QueryResult) -> Option<u64>;

    /// Decodes column `index` of `row`.
    fn decode<'r, T>(row: &'r Self::Row, index: usize) -> Result<T, sqlx::Error>
    where
        T: Decode<'r, Self> + Type<Self>;

    // Rust does not carry `where String: Encode<Self>`-style bounds from a trait to its users,
    // so the few concrete types the runtime itself binds and reads get a method each.

    /// Binds a text parameter.
    fn bind_text(
        query: Query<'static, Self, <Self as sqlx::Database>::Arguments>,
        value: &str,
    ) -> Query<'static, Self, <Self as sqlx::Database>::Arguments>;
    /// Binds a 64-bit integer parameter.
    fn bind_i64(
        query: Query<'static, Self, <Self as sqlx::Database>::Arguments>,
        value: i64,
    ) -> Query<'static, Self, <Self as sqlx::Database>::Arguments>;
    /// Reads a text column.
    fn text(row: &Self::Row, index: usize) -> Result<String, sqlx::Error>;
    /// Reads a nullable text column.
    fn optional_text(row: &Self::Row, index: usize) -> Result<Option<String>, sqlx::Error>;
    /// Reads a 64-bit integer column.
    fn int(row: &Self::Row, index: usize) -> Result<i64, sqlx::Error>;
    /// The database's name for the type of column `index` of `row` (`TIMESTAMPTZ`, `INT8`).
    fn column_type(row: &Self::Row, index: usize) -> Option<String>;
}

/// A database that can bind a `T` as a query parameter. Generated code bounds the database,
/// not the field type (`DB: Binds<T>`, not `T: Encode<DB>`): with the latter, a type only one
/// database can encode makes rustc infer that database from the bound and report a
/// bewildering "expected `TrackedTransaction<Postgres>`, found `TrackedTransaction<Sqlite>`";
/// this way the error names the field's type and the database.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "a field of type `{T}` cannot be a column on {Self}",
    label = "sqlx cannot bind `{T}` for {Self}",
    note = "a column's type must implement `sqlx::Type<{Self}>` and `sqlx::Encode<'_, {Self}>`; \
            use a type the {Self} driver supports: `i64` for an unsigned integer (PostgreSQL has \
            no unsigned columns and SQLite binds no `u64`; PostHog receives a number either way), \
            or `sqlx::types::Json<{T}>` for a JSON column"
)]
pub trait Binds<T>: Backend {
    /// Binds `value` as the next parameter.
    fn bind_column(query: BoundQuery<Self>, value: &T) -> BoundQuery<Self>;
}

#[diagnostic::do_not_recommend]
impl<DB: Backend, T> Binds<T> for DB
where
    T: for<'q> sqlx::Encode<'q, DB> + Type<DB>,
{
    fn bind_column(query: BoundQuery<DB>, value: &T) -> BoundQuery<DB> {
        query.bind(value)
    }
}

/// A database that can bind a `T` and read it back: what a column that is written needs, since
/// `insert` reads every column back. One bound per field, so one error per field.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "a field of type `{T}` cannot be a column on {Self}",
    label = "sqlx cannot bind and read back `{T}` for {Self}",
    note = "a column's type must implement `sqlx::Type<{Self}>`, `sqlx::Encode<'_, {Self}>` and \
            `sqlx::Decode<'_, {Self}>` (insert reads the row back); use a type the {Self} driver \
            supports: `i64` for an unsigned integer (PostgreSQL has no unsigned columns and SQLite \
            binds no `u64`; PostHog receives a number either way), or `sqlx::types::Json<{T}>` \
            for a JSON column"
)]
pub trait Column<T>: Binds<T> + Reads<T> {}

#[diagnostic::do_not_recommend]
impl<DB: Binds<T> + Reads<T>, T> Column<T> for DB {}

/// A database that can decode a `T` from a column; see [`Binds`].
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "a `generated` field of type `{T}` cannot be read back from {Self}",
    label = "sqlx cannot decode `{T}` from {Self}",
    note = "a generated column's type must implement `sqlx::Type<{Self}>` and \
            `sqlx::Decode<'_, {Self}>`; use a type the {Self} driver supports"
)]
pub trait Reads<T>: Backend {
    /// Decodes column `index` of `row`.
    fn read_column(row: &Self::Row, index: usize) -> Result<T, sqlx::Error>;
}

#[diagnostic::do_not_recommend]
impl<DB: Backend, T> Reads<T> for DB
where
    T: for<'r> Decode<'r, DB> + Type<DB>,
{
    fn read_column(row: &DB::Row, index: usize) -> Result<T, sqlx::Error> {
        // sqlx's decoders panic on some values a database holds: PostgreSQL's `infinity` and
        // `-infinity` in a TIMESTAMP, TIMESTAMPTZ or DATE column overflow the epoch arithmetic
        // of the chrono (and time) decoders ("`NaiveDateTime + TimeDelta` overflowed"). A
        // row is input, and a model read back (an insert's RETURNING, `load_for_update`, a
        // backfill's page) must not take the process down: the panic becomes the decode
        // error of any value the field's type cannot hold, naming the column. (The panic
        // hook still prints sqlx's message; with `panic = "abort"` nothing can be caught.)
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| DB::decode(row, index)))
            .unwrap_or_else(|panic| Err(undecodable::<DB, T>(row, index, panic.as_ref())))
            .map_err(|error| match error {
                // sqlx names the column by its position in a statement the user never wrote
                // ("error occurred while decoding column 3: mismatched types; ..."): the
                // column's name says which field does not fit.
                sqlx::Error::ColumnDecode { index: at, source } if at == index.to_string() => {
                    sqlx::Error::ColumnDecode {
                        index: format!("{:?}", column_name::<DB>(row, index)),
                        source,
                    }
                }
                other => other,
            })
    }
}

/// The name of column `index` of `row`, or its position when the row does not say.
fn column_name<DB: Backend>(row: &DB::Row, index: usize) -> String {
    sqlx::Row::columns(row).get(index).map_or_else(
        || index.to_string(),
        |column| sqlx::Column::name(column).to_owned(),
    )
}

/// The decode error for column `index` of `row`, whose decoder panicked with `panic`.
fn undecodable<DB: Backend, T>(
    row: &DB::Row,
    index: usize,
    panic: &(dyn std::any::Any + Send),
) -> sqlx::Error {
    let why = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("the decoder panicked");
    sqlx::Error::ColumnDecode {
        index: format!("{:?}", column_name::<DB>(row, index)),
        source: format!(
            "the value is out of the range of `{}` (PostgreSQL's infinity?): {why}",
            std::any::type_name::<T>()
        )
        .into(),
    }
}

macro_rules! impl_backend {
    ($feature:literal, $db:ty, $dialect:expr, $last_insert_id:expr) => {
        #[cfg(feature = $feature)]
        impl sealed::Sealed for $db {}

        #[cfg(feature = $feature)]
        impl Backend for $db {
            const DIALECT: Dialect = $dialect;

            fn execute<'c>(
                conn: &'c mut Self::Connection,
                query: Query<'static, Self, <Self as sqlx::Database>::Arguments>,
            ) -> impl Future<Output = Result<Self::QueryResult, sqlx::Error>> + Send + 'c {
                query.execute(conn)
            }

            fn fetch_one<'c>(
                conn: &'c mut Self::Connection,
                query: Query<'static, Self, <Self as sqlx::Database>::Arguments>,
            ) -> impl Future<Output = Result<Self::Row, sqlx::Error>> + Send + 'c {
                query.fetch_one(conn)
            }

            fn fetch_all<'c>(
                conn: &'c mut Self::Connection,
                query: Query<'static, Self, <Self as sqlx::Database>::Arguments>,
            ) -> impl Future<Output = Result<Vec<Self::Row>, sqlx::Error>> + Send + 'c {
                query.fetch_all(conn)
            }

            fn rows_affected(result: &Self::QueryResult) -> u64 {
                result.rows_affected()
            }

            fn last_insert_id(result: &Self::QueryResult) -> Option<u64> {
                let last_insert_id: fn(&Self::QueryResult) -> Option<u64> = $last_insert_id;
                last_insert_id(result)
            }

            fn decode<'r, T>(row: &'r Self::Row, index: usize) -> Result<T, sqlx::Error>
            where
                T: Decode<'r, Self> + Type<Self>,
            {
                sqlx::Row::try_get(row, index)
            }

            fn bind_text(
                query: Query<'static, Self, <Self as sqlx::Database>::Arguments>,
                value: &str,
            ) -> Query<'static, Self, <Self as sqlx::Database>::Arguments> {
                query.bind(value)
            }

            fn bind_i64(
                query: Query<'static, Self, <Self as sqlx::Database>::Arguments>,
                value: i64,
            ) -> Query<'static, Self, <Self as sqlx::Database>::Arguments> {
                query.bind(value)
            }

            fn text(row: &Self::Row, index: usize) -> Result<String, sqlx::Error> {
                sqlx::Row::try_get(row, index)
            }

            fn optional_text(row: &Self::Row, index: usize) -> Result<Option<String>, sqlx::Error> {
                sqlx::Row::try_get(row, index)
            }

            fn int(row: &Self::Row, index: usize) -> Result<i64, sqlx::Error> {
                sqlx::Row::try_get(row, index)
            }

            fn column_type(row: &Self::Row, index: usize) -> Option<String> {
                let column = sqlx::Row::columns(row).get(index)?;
                Some(sqlx::TypeInfo::name(sqlx::Column::type_info(column)).to_owned())
            }
        }
    };
}

impl_backend!("postgres", sqlx::Postgres, Dialect::Postgres, |_| None);
impl_backend!("mysql", sqlx::MySql, Dialect::MySql, |result| Some(
    result.last_insert_id()
));
impl_backend!("sqlite", sqlx::Sqlite, Dialect::Sqlite, |result| {
    u64::try_from(result.last_insert_rowid()).ok()
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_placeholders_follow_each_dialect() {
        let sql = "UPDATE t SET a = ? WHERE b = ? AND c = ?";
        assert_eq!(
            Dialect::Postgres.numbered(sql, 4),
            "UPDATE t SET a = $4 WHERE b = $5 AND c = $6"
        );
        assert_eq!(Dialect::MySql.numbered(sql, 4), sql);
        assert_eq!(Dialect::Sqlite.numbered(sql, 1), sql);
        assert_eq!(Dialect::Postgres.numbered("SELECT 1", 1), "SELECT 1");
    }
}
