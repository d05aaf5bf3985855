//! The SQL text of a model, for each dialect, as string constants.

use proc_macro2::TokenStream;
use quote::quote;

use crate::internals::ast::{Container, Field};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dialect {
    Postgres,
    MySql,
    Sqlite,
}

impl Dialect {
    /// Quotes an identifier; a dotted name (`schema.table`) is quoted part by part.
    fn quote(self, name: &str) -> String {
        let (open, close) = match self {
            Dialect::MySql => ('`', "``"),
            Dialect::Postgres | Dialect::Sqlite => ('"', "\"\""),
        };
        name.split('.')
            .map(|part| format!("{open}{}{open}", part.replace(open, close)))
            .collect::<Vec<_>>()
            .join(".")
    }

    fn placeholder(self, n: usize) -> String {
        match self {
            Dialect::Postgres => format!("${n}"),
            Dialect::MySql | Dialect::Sqlite => "?".to_owned(),
        }
    }
}

/// `&SqlSet { postgres, mysql, sqlite }` for the model's own table.
pub fn sql_set(container: &Container) -> TokenStream {
    let table = container
        .attrs
        .table
        .as_ref()
        .map_or("", |table| table.value.as_str());
    sql_set_for(container, table)
}

/// `&SqlSet { postgres, mysql, sqlite }` writing the model's columns to `table`.
pub fn sql_set_for(container: &Container, table: &str) -> TokenStream {
    let postgres = model_sql(container, table, Dialect::Postgres);
    let mysql = model_sql(container, table, Dialect::MySql);
    let sqlite = model_sql(container, table, Dialect::Sqlite);
    quote! {
        &::posthog_track::__private::SqlSet {
            postgres: #postgres,
            mysql: #mysql,
            sqlite: #sqlite,
        }
    }
}

fn model_sql(container: &Container, table: &str, dialect: Dialect) -> TokenStream {
    let table = dialect.quote(table);
    let fields = &container.fields;
    let column = |field: &&Field| dialect.quote(&field.column());
    let inserted: Vec<&Field> = fields.iter().filter(|f| !f.is_generated()).collect();
    let generated: Vec<&Field> = fields.iter().filter(|f| f.is_generated()).collect();
    let keys: Vec<&Field> = fields.iter().filter(|f| f.is_key()).collect();
    let updatable: Vec<&Field> = fields.iter().filter(|f| f.is_updatable()).collect();

    let mut insert = if inserted.is_empty() {
        match dialect {
            Dialect::MySql => format!("INSERT INTO {table} () VALUES ()"),
            Dialect::Postgres | Dialect::Sqlite => format!("INSERT INTO {table} DEFAULT VALUES"),
        }
    } else {
        let columns: Vec<String> = inserted.iter().map(&column).collect();
        let values: Vec<String> = (1..=inserted.len())
            .map(|n| dialect.placeholder(n))
            .collect();
        format!(
            "INSERT INTO {table} ({}) VALUES ({})",
            columns.join(", "),
            values.join(", ")
        )
    };
    let generated_columns: Vec<String> = generated.iter().map(&column).collect();

    let mut insert_returns_generated = false;
    let mut select_generated = None;
    let mut select_generated_binds_key = false;
    let mut insert_unsupported = None;
    if !generated.is_empty() {
        if dialect == Dialect::MySql {
            // MySQL has no RETURNING: find the row again, by the AUTO_INCREMENT value when the
            // key is generated, otherwise by the key we just wrote.
            let generated_keys = keys.iter().filter(|f| f.is_generated()).count();
            let select = format!(
                "SELECT {} FROM {table} WHERE ",
                generated_columns.join(", ")
            );
            if generated_keys == 0 {
                let conditions: Vec<String> = keys
                    .iter()
                    .enumerate()
                    .map(|(i, f)| format!("{} = {}", column(f), dialect.placeholder(i + 1)))
                    .collect();
                select_generated = Some(select + &conditions.join(" AND "));
                select_generated_binds_key = true;
            } else if keys.len() == 1 {
                select_generated = Some(format!("{select}{} = LAST_INSERT_ID()", column(&keys[0])));
            } else {
                insert_unsupported = Some(
                    "MySQL can only read back generated columns when the key is a single \
                     AUTO_INCREMENT column or is not generated at all",
                );
            }
        } else {
            insert = format!("{insert} RETURNING {}", generated_columns.join(", "));
            insert_returns_generated = true;
        }
    }

    let where_keys = |first: usize| -> String {
        keys.iter()
            .enumerate()
            .map(|(i, f)| format!("{} = {}", column(f), dialect.placeholder(first + i)))
            .collect::<Vec<_>>()
            .join(" AND ")
    };
    let update = if updatable.is_empty() {
        None
    } else {
        let assignments: Vec<String> = updatable
            .iter()
            .enumerate()
            .map(|(i, f)| format!("{} = {}", column(f), dialect.placeholder(i + 1)))
            .collect();
        Some(format!(
            "UPDATE {table} SET {} WHERE {}",
            assignments.join(", "),
            where_keys(updatable.len() + 1)
        ))
    };
    let delete = format!("DELETE FROM {table} WHERE {}", where_keys(1));
    let update_prefix = format!("UPDATE {table} SET ");
    let columns: Vec<String> = fields.iter().map(|f| column(&f)).collect();
    let key_columns: Vec<String> = keys.iter().map(&column).collect();

    let select_generated = option(select_generated.as_deref());
    let insert_unsupported = option(insert_unsupported);
    let update = option(update.as_deref());
    quote! {
        ::posthog_track::__private::ModelSql {
            insert: #insert,
            insert_returns_generated: #insert_returns_generated,
            select_generated: #select_generated,
            select_generated_binds_key: #select_generated_binds_key,
            insert_unsupported: #insert_unsupported,
            update: #update,
            delete: #delete,
            update_prefix: #update_prefix,
            columns: &[#(#columns),*],
            keys: &[#(#key_columns),*],
        }
    }
}

fn option(value: Option<&str>) -> TokenStream {
    match value {
        Some(value) => quote!(::posthog_track::__private::Some(#value)),
        None => quote!(::posthog_track::__private::None),
    }
}

#[cfg(test)]
mod tests {
    use super::Dialect;

    #[test]
    fn quoting_doubles_the_quote_character() {
        assert_eq!(Dialect::Postgres.quote("user\"s"), "\"user\"\"s\"");
        assert_eq!(Dialect::MySql.quote("user`s"), "`user``s`");
        assert_eq!(Dialect::Sqlite.quote("app.users"), "\"app\".\"users\"");
    }

    #[test]
    fn placeholders() {
        assert_eq!(Dialect::Postgres.placeholder(3), "$3");
        assert_eq!(Dialect::MySql.placeholder(3), "?");
    }
}
