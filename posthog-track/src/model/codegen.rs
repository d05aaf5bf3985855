//! What generated code builds on: the SQL of a model for every dialect ([`SqlSet`],
//! [`ModelSql`]), the set of changed fields ([`ChangeMask`]) and the typing of milestone
//! conditions ([`milestone_condition`]). Not public API.

use std::fmt::Write as _;

use crate::backend::Dialect;

/// One value for each dialect, fixed at compile time by the derive; [`Dialect`] chooses at
/// run time.
#[doc(hidden)]
#[derive(Debug)]
pub struct PerDialect<T> {
    pub postgres: T,
    pub mysql: T,
    pub sqlite: T,
}

impl<T> PerDialect<T> {
    /// The value for `dialect`.
    pub const fn get(&self, dialect: Dialect) -> &T {
        match dialect {
            Dialect::Postgres => &self.postgres,
            Dialect::MySql => &self.mysql,
            Dialect::Sqlite => &self.sqlite,
        }
    }
}

/// The SQL of one model for every dialect, fixed at compile time.
#[doc(hidden)]
pub type SqlSet = PerDialect<ModelSql>;

impl SqlSet {
    /// Stands in for the SQL of a model whose derive failed; never executed, because the crate
    /// that holds such a model does not compile.
    pub const UNUSABLE: SqlSet = PerDialect {
        postgres: ModelSql::UNUSABLE,
        mysql: ModelSql::UNUSABLE,
        sqlite: ModelSql::UNUSABLE,
    };
}

/// The SQL of one model in one dialect.
#[doc(hidden)]
#[derive(Debug)]
pub struct ModelSql {
    pub insert: &'static str,
    /// `insert` ends in `RETURNING` every column.
    pub insert_returns_row: bool,
    /// MySQL: reads the inserted row back after the INSERT.
    pub select_inserted: Option<&'static str>,
    /// `select_inserted` takes the insert's AUTO_INCREMENT id (otherwise the key fields).
    pub select_inserted_by_insert_id: bool,
    /// Why this dialect cannot insert the model, if it cannot.
    pub insert_unsupported: Option<&'static str>,
    /// MySQL: the (unquoted) column of a generated key, which must be AUTO_INCREMENT.
    pub auto_increment_key: Option<&'static str>,
    /// Every column of the row with the key's values, locked where the dialect can.
    pub select_for_update: &'static str,
    /// `None` when every column is a key or generated.
    pub update: Option<&'static str>,
    pub delete: &'static str,
    /// `UPDATE "table" SET `
    pub update_prefix: &'static str,
    /// Quoted column of each field, by field index.
    pub columns: &'static [&'static str],
    /// Quoted key columns, in key order.
    pub keys: &'static [&'static str],
    /// `INSERT INTO "table" (inserted columns) VALUES `, for `insert_all`'s multi-row inserts;
    /// empty when every column is generated.
    pub insert_head: &'static str,
    /// Parameters bound per row by `__bind_insert`.
    pub insert_width: usize,
    /// A key field is `generated`: an inserted row cannot be matched to its input by key.
    pub key_generated: bool,
    /// ` RETURNING` every column (on MySQL, for MariaDB only).
    pub returning: &'static str,
    /// `SELECT` every column `FROM "table" WHERE `.
    pub select_head: &'static str,
    /// The upsert statement; `None` when the model cannot be upserted (`upsert_unsupported`).
    pub upsert: Option<&'static str>,
    /// Why the model cannot be upserted, if it cannot.
    pub upsert_unsupported: Option<&'static str>,
    /// SQLite: `update` with ` RETURNING` every column, for an upsert that found its row.
    pub update_returning: Option<&'static str>,
}

impl ModelSql {
    pub(crate) const UNUSABLE: ModelSql = ModelSql {
        insert: "",
        insert_returns_row: false,
        select_inserted: None,
        select_inserted_by_insert_id: false,
        insert_unsupported: Some("the model's derive failed"),
        auto_increment_key: None,
        select_for_update: "",
        update: None,
        delete: "",
        update_prefix: "",
        columns: &[],
        keys: &[],
        insert_head: "",
        insert_width: 0,
        key_generated: false,
        returning: "",
        select_head: "",
        upsert: None,
        upsert_unsupported: Some("the model's derive failed"),
        update_returning: None,
    };

    /// `UPDATE ... SET` of just the changed columns. Built at run time because the set of
    /// changed columns is only known then; every fragment is a compile-time constant.
    pub fn update_changed_statement(&self, dialect: Dialect, changed: ChangeMask) -> String {
        let mut sql = String::with_capacity(self.update_prefix.len() + 24 * (changed.len() + 2));
        sql.push_str(self.update_prefix);
        let mut n = 0;
        for (index, column) in self.columns.iter().enumerate() {
            if changed.contains(index) {
                if n > 0 {
                    sql.push_str(", ");
                }
                n += 1;
                let _ = write!(sql, "{column} = ");
                dialect.push_placeholder(&mut sql, n);
            }
        }
        sql.push_str(" WHERE ");
        for (i, key) in self.keys.iter().enumerate() {
            if i > 0 {
                sql.push_str(" AND ");
            }
            n += 1;
            let _ = write!(sql, "{key} = ");
            dialect.push_placeholder(&mut sql, n);
        }
        sql
    }
}

/// Gives a milestone's `when` function its expected type, so that a function of the wrong
/// signature is reported at the `when = ...` attribute.
#[doc(hidden)]
pub fn milestone_condition<T: ?Sized, F: Fn(&T, &T) -> bool>(condition: F) -> F {
    condition
}

/// Which fields of a model changed, by field index. Models have at most 128 fields.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChangeMask(u128);

impl ChangeMask {
    /// No field.
    pub const EMPTY: ChangeMask = ChangeMask(0);

    /// The mask with exactly these bits.
    pub const fn from_bits(bits: u128) -> Self {
        ChangeMask(bits)
    }

    /// Adds field `index`.
    pub fn insert(&mut self, index: usize) {
        self.0 |= 1 << index;
    }

    /// Whether field `index` is in the mask.
    pub const fn contains(self, index: usize) -> bool {
        self.0 & (1 << index) != 0
    }

    /// Fields in both masks.
    pub const fn intersection(self, other: ChangeMask) -> ChangeMask {
        ChangeMask(self.0 & other.0)
    }

    /// No field at all.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// How many fields.
    pub const fn len(self) -> usize {
        self.0.count_ones() as usize
    }
}
