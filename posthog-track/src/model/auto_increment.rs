//! MySQL's `generated` keys: an insert reads its row back by the AUTO_INCREMENT id, so the key
//! column must be AUTO_INCREMENT; this is checked before the first insert writes anything.

use std::sync::{Mutex, PoisonError};

use crate::backend::Backend;
use crate::error::Result;

/// Why MySQL cannot insert a model whose generated key is not AUTO_INCREMENT.
pub(super) const NOT_AUTO_INCREMENT: &str = "a generated key is read back with the insert's \
    AUTO_INCREMENT id (MySQL has no RETURNING), and only an integer AUTO_INCREMENT column has \
    one; make the key an integer AUTO_INCREMENT column, or give it its value in Rust (e.g. \
    `Uuid::now_v7()`) and remove `generated`";

/// `(table, column)` pairs already found to be AUTO_INCREMENT, so each is asked about once
/// per process.
static AUTO_INCREMENT: Mutex<Vec<(&str, &str)>> = Mutex::new(Vec::new());

/// Whether MySQL's `table.column` is AUTO_INCREMENT, asked of `information_schema` before the
/// first insert so that a key it is not fails before anything is written. A table or column
/// the database does not know counts as AUTO_INCREMENT: the INSERT then reports it.
pub(super) async fn is_auto_increment<DB: Backend>(
    connection: &mut DB::Connection,
    table: &'static str,
    column: &'static str,
) -> Result<bool> {
    let known = |pair: &(&str, &str)| *pair == (table, column);
    if AUTO_INCREMENT
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .any(known)
    {
        return Ok(true);
    }
    let (schema, name) = match table.rsplit_once('.') {
        Some((schema, name)) => (Some(schema), name),
        None => (None, table),
    };
    let mut query = sqlx::query(if schema.is_some() {
        "SELECT CAST(EXTRA LIKE '%auto_increment%' AS SIGNED) FROM information_schema.COLUMNS \
         WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND COLUMN_NAME = ?"
    } else {
        "SELECT CAST(EXTRA LIKE '%auto_increment%' AS SIGNED) FROM information_schema.COLUMNS \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND COLUMN_NAME = ?"
    });
    if let Some(schema) = schema {
        query = DB::bind_text(query, schema);
    }
    query = DB::bind_text(DB::bind_text(query, name), column);
    let rows = DB::fetch_all(connection, query).await?;
    let auto_increment = match rows.first() {
        Some(row) => DB::int(row, 0)? != 0,
        None => true,
    };
    if auto_increment && !rows.is_empty() {
        let mut known_pairs = AUTO_INCREMENT
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !known_pairs.iter().any(known) {
            known_pairs.push((table, column));
        }
    }
    Ok(auto_increment)
}
