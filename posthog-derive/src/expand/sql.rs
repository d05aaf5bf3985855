//! The SQL text of a model, for each dialect, as string constants.

use proc_macro2::TokenStream;
use quote::quote;

use super::private::Private;
use crate::internals::ast::{Container, Field};
use crate::internals::dialect::Dialect;
use crate::internals::migrations::types;

/// `&SqlSet { postgres, mysql, sqlite }` for the model's own table.
pub fn sql_set(container: &Container) -> TokenStream {
    sql_set_for(container, container.table())
}

/// `&SqlSet { postgres, mysql, sqlite }` writing the model's columns to `table`.
pub fn sql_set_for(container: &Container, table: &str) -> TokenStream {
    let [postgres, mysql, sqlite] =
        Dialect::ALL.map(|dialect| model_sql(container, table, dialect));
    quote! {
        &#Private::SqlSet {
            postgres: #postgres,
            mysql: #mysql,
            sqlite: #sqlite,
        }
    }
}

/// Why MySQL cannot read back a generated key of this type: LAST_INSERT_ID() only reports an
/// AUTO_INCREMENT value, and only integer columns are AUTO_INCREMENT.
const NOT_AUTO_INCREMENT: &str = "a generated key is read back with the insert's \
    AUTO_INCREMENT id (MySQL has no RETURNING), and only an integer AUTO_INCREMENT column has \
    one; make the key an integer AUTO_INCREMENT column, or give it its value in Rust (e.g. \
    `Uuid::now_v7()`) and remove `generated`";

fn model_sql(container: &Container, table: &str, dialect: Dialect) -> TokenStream {
    let table = dialect.quote_table(table);
    let fields = &container.fields;
    let column = |field: &Field| dialect.quote_ident(&field.column());
    let inserted: Vec<&Field> = fields.iter().filter(|f| !f.is_generated()).collect();
    let keys: Vec<&Field> = container.keys().collect();
    let updatable: Vec<&Field> = fields.iter().filter(|f| f.is_updatable()).collect();
    let columns: Vec<String> = fields.iter().map(column).collect();
    let all_columns = columns.join(", ");

    let where_keys = |first: usize| -> String {
        keys.iter()
            .enumerate()
            .map(|(i, f)| format!("{} = {}", column(f), dialect.placeholder(first + i)))
            .collect::<Vec<_>>()
            .join(" AND ")
    };

    let mut insert = if inserted.is_empty() {
        match dialect {
            Dialect::MySql => format!("INSERT INTO {table} () VALUES ()"),
            Dialect::Postgres | Dialect::Sqlite => format!("INSERT INTO {table} DEFAULT VALUES"),
        }
    } else {
        let names: Vec<String> = inserted.iter().map(|f| column(f)).collect();
        let values: Vec<String> = (1..=inserted.len())
            .map(|n| dialect.placeholder(n))
            .collect();
        format!(
            "INSERT INTO {table} ({}) VALUES ({})",
            names.join(", "),
            values.join(", ")
        )
    };

    // The row comes back as the database stored it: every column, not just the generated ones
    // (a timestamp keeps the database's precision, a string its collation's padding).
    let mut insert_returns_row = false;
    let mut select_inserted = None;
    let mut select_inserted_by_insert_id = false;
    let mut insert_unsupported = None;
    let mut auto_increment_key = None;
    if dialect == Dialect::MySql {
        // No RETURNING: find the row again, by the insert's AUTO_INCREMENT id when the key is
        // generated, otherwise by the key just written.
        let select = format!("SELECT {all_columns} FROM {table} WHERE ");
        let generated_keys = keys.iter().filter(|f| f.is_generated()).count();
        match container.generated_key() {
            _ if generated_keys == 0 => select_inserted = Some(select + &where_keys(1)),
            Some(key) if types::is_integer(key.ty) == Some(false) => {
                insert_unsupported = Some(NOT_AUTO_INCREMENT);
            }
            Some(key) => {
                select_inserted = Some(format!("{select}{} = ?", column(key)));
                select_inserted_by_insert_id = true;
                auto_increment_key = Some(key.column());
            }
            None => {
                insert_unsupported = Some(
                    "MySQL can only read back an inserted row when the key is a single \
                     AUTO_INCREMENT column or is not generated at all",
                );
            }
        }
    } else {
        insert = format!("{insert} RETURNING {all_columns}");
        insert_returns_row = true;
    }

    let update = (!updatable.is_empty()).then(|| {
        let assignments: Vec<String> = updatable
            .iter()
            .enumerate()
            .map(|(i, f)| format!("{} = {}", column(f), dialect.placeholder(i + 1)))
            .collect();
        format!(
            "UPDATE {table} SET {} WHERE {}",
            assignments.join(", "),
            where_keys(updatable.len() + 1)
        )
    });
    let delete = format!("DELETE FROM {table} WHERE {}", where_keys(1));
    let lock = match dialect {
        Dialect::Postgres | Dialect::MySql => " FOR UPDATE",
        // SQLite locks the whole database when the transaction first writes.
        Dialect::Sqlite => "",
    };
    let select_for_update = format!(
        "SELECT {all_columns} FROM {table} WHERE {}{lock}",
        where_keys(1)
    );
    let update_prefix = format!("UPDATE {table} SET ");
    let key_columns: Vec<String> = keys.iter().map(|f| column(f)).collect();

    // Bulk inserts: the statement up to `VALUES `, to which `insert_all` appends one group of
    // `insert_width` placeholders per row, and the `RETURNING` clause (used on MySQL only by
    // MariaDB, which has it).
    let insert_head = if inserted.is_empty() {
        String::new()
    } else {
        let names: Vec<String> = inserted.iter().map(|f| column(f)).collect();
        format!("INSERT INTO {table} ({}) VALUES ", names.join(", "))
    };
    let insert_width = inserted.len();
    let key_generated = keys.iter().any(|f| f.is_generated());
    let returning = format!(" RETURNING {all_columns}");
    let select_head = format!("SELECT {all_columns} FROM {table} WHERE ");
    let upsert = upsert_sql(container, &table, dialect);
    let (upsert, upsert_unsupported) = match &upsert {
        Ok(sql) => (Some(sql.as_str()), None),
        Err(reason) => (None, Some(*reason)),
    };
    // SQLite's upsert updates an existing row with a statement of its own (see `upsert_sql`).
    let update_returning = match (dialect, &update) {
        (Dialect::Sqlite, Some(update)) => Some(format!("{update}{returning}")),
        _ => None,
    };

    let select_inserted = option(select_inserted.as_deref());
    let insert_unsupported = option(insert_unsupported);
    let auto_increment_key = option(auto_increment_key.as_deref());
    let update = option(update.as_deref());
    let upsert = option(upsert);
    let upsert_unsupported = option(upsert_unsupported);
    let update_returning = option(update_returning.as_deref());
    quote! {
        #Private::ModelSql {
            insert: #insert,
            insert_returns_row: #insert_returns_row,
            select_inserted: #select_inserted,
            select_inserted_by_insert_id: #select_inserted_by_insert_id,
            insert_unsupported: #insert_unsupported,
            auto_increment_key: #auto_increment_key,
            select_for_update: #select_for_update,
            update: #update,
            delete: #delete,
            update_prefix: #update_prefix,
            columns: &[#(#columns),*],
            keys: &[#(#key_columns),*],
            insert_head: #insert_head,
            insert_width: #insert_width,
            key_generated: #key_generated,
            returning: #returning,
            select_head: #select_head,
            upsert: #upsert,
            upsert_unsupported: #upsert_unsupported,
            update_returning: #update_returning,
        }
    }
}

/// Why a model whose key the database generates cannot be upserted.
const GENERATED_KEY_UPSERT: &str = "an upsert finds the existing row by its key, and a \
    `generated` key is not written by the INSERT, so no row could ever conflict; insert such \
    rows with `insert`, or give the key its value in Rust and remove `generated`";

/// The upsert statement of `dialect`:
/// - PostgreSQL: `INSERT ... ON CONFLICT (key) DO UPDATE SET c = EXCLUDED.c ... RETURNING`
///   every column, then whether the row is new (`xmax = 0`: the row version has never been
///   locked or updated, so this statement inserted it).
/// - SQLite: `INSERT ... ON CONFLICT (key) DO NOTHING RETURNING` every column: a row comes
///   back exactly when it was inserted (the probe); otherwise the runtime updates the row
///   with `update_returning`. The INSERT takes SQLite's single write lock, so nothing can
///   come between the two statements.
/// - MySQL/MariaDB: `INSERT ... ON DUPLICATE KEY UPDATE k = IF(LAST_INSERT_ID(<marker>), k,
///   k), c = VALUES(c)` (`VALUES()` rather than MySQL 8's row alias, which MariaDB lacks). The
///   first assignment leaves the key as it is and, only when the row existed, sets the
///   statement's insert id to [`UPSERT_FOUND`]: the runtime tells an update (even of a row
///   left unchanged, which `CLIENT_FOUND_ROWS` reports as 1 affected row, like an insert) from
///   an insert by it, with no look-up before the statement (whose gap locks deadlocked
///   concurrent upserts of one new key), and reads the row back by its key.
///
/// With no column to update, PostgreSQL's sets the key to itself, so an existing row still
/// comes back.
/// The insert id a MySQL/MariaDB upsert reports when its row existed: no AUTO_INCREMENT column
/// reaches it. `posthog_track::model::upsert` reads it; the two must agree.
const UPSERT_FOUND: u64 = u64::MAX;

fn upsert_sql(
    container: &Container,
    table: &str,
    dialect: Dialect,
) -> Result<String, &'static str> {
    if container.keys().any(Field::is_generated) {
        return Err(GENERATED_KEY_UPSERT);
    }
    let column = |field: &Field| dialect.quote_ident(&field.column());
    let inserted: Vec<&Field> = container
        .fields
        .iter()
        .filter(|f| !f.is_generated())
        .collect();
    let names: Vec<String> = inserted.iter().map(|f| column(f)).collect();
    let values: Vec<String> = (1..=inserted.len())
        .map(|n| dialect.placeholder(n))
        .collect();
    let head = format!(
        "INSERT INTO {table} ({}) VALUES ({})",
        names.join(", "),
        values.join(", ")
    );
    let updatable: Vec<String> = container
        .fields
        .iter()
        .filter(|f| f.is_updatable())
        .map(column)
        .collect();
    let mut updated = updatable.clone();
    if updated.is_empty() {
        updated.extend(container.keys().next().map(column));
    }
    let keys: Vec<String> = container.keys().map(column).collect();
    let all_columns: Vec<String> = container.fields.iter().map(column).collect();
    let all_columns = all_columns.join(", ");
    Ok(match dialect {
        Dialect::Postgres => {
            let set: Vec<String> = updated
                .iter()
                .map(|c| format!("{c} = EXCLUDED.{c}"))
                .collect();
            format!(
                "{head} ON CONFLICT ({}) DO UPDATE SET {} RETURNING {all_columns}, \
                 CAST(CASE WHEN xmax = 0 THEN 1 ELSE 0 END AS BIGINT)",
                keys.join(", "),
                set.join(", ")
            )
        }
        Dialect::Sqlite => format!(
            "{head} ON CONFLICT ({}) DO NOTHING RETURNING {all_columns}",
            keys.join(", ")
        ),
        Dialect::MySql => {
            // Keys are never generated here (refused above), and a model has at least one.
            let key = keys.first().ok_or(GENERATED_KEY_UPSERT)?;
            let set: Vec<String> = std::iter::once(format!(
                "{key} = IF(LAST_INSERT_ID({UPSERT_FOUND}), {key}, {key})"
            ))
            .chain(updatable.iter().map(|c| format!("{c} = VALUES({c})")))
            .collect();
            format!("{head} ON DUPLICATE KEY UPDATE {}", set.join(", "))
        }
    })
}

fn option(value: Option<&str>) -> TokenStream {
    match value {
        Some(value) => quote!(#Private::Some(#value)),
        None => quote!(#Private::None),
    }
}
