//! `#[tracked(migrations = "migrations")]`: the model checked against the tables its SQL
//! migrations leave behind, so migrations, struct and event schema cannot drift apart.
//!
//! The files are read at compile time, in file-name order (the order sqlx and most tools run
//! them), skipping `*.down.sql`. The expansion includes every file it read, so Cargo rebuilds
//! the model when one of them changes; a *new* file needs the crate's build script to say
//! `cargo:rerun-if-changed=migrations`, which is how `sqlx::migrate!` handles it too.

mod schema;
pub mod types;

use std::path::{Path, PathBuf};

use proc_macro2::Span;

use super::ast::{Container, Field, unraw};
use super::attr::Spanned;
use super::case::did_you_mean;
use super::ctxt::Ctxt;
use super::dialect::{self, Dialect};
use schema::{Schema, Table};

/// Applies the migrations rules; returns the files read, for the rebuild trigger.
pub fn check(cx: &Ctxt, container: &Container) -> Vec<PathBuf> {
    let attrs = &container.attrs;
    let Some(directory) = &attrs.migrations else {
        if let Some(dialect) = &attrs.migrations_dialect {
            cx.error_at(
                dialect.span,
                "`migrations_dialect` goes with `migrations = \"...\"`, the directory of SQL \
                 migrations to check the model against",
            );
        }
        if let Some(column) = attrs.untracked_columns.first() {
            cx.error_at(
                column.span,
                "`untracked_columns` goes with `migrations = \"...\"`: it lists columns of the \
                 migrated table that the model leaves alone",
            );
        }
        return Vec::new();
    };
    let Some(dialect) = parse_dialect(cx, attrs.migrations_dialect.as_ref()) else {
        return Vec::new();
    };
    let Some((schema, files)) = load(cx, directory, dialect) else {
        return Vec::new();
    };
    let mut names = vec![attrs.table.as_ref()];
    names.extend(
        attrs
            .table_variants
            .iter()
            .map(|variant| Some(&variant.table)),
    );
    let mut tables = Vec::new();
    let mut all_found = true;
    for table_name in names.into_iter().flatten() {
        match schema.table(&table_name.value) {
            Some(table) => {
                check_table(cx, container, &table_name.value, table, dialect);
                tables.push((table_name.value.as_str(), table));
            }
            None => {
                all_found = false;
                let known = schema.tables.keys().map(String::as_str);
                let hint = match did_you_mean(&table_name.value, known) {
                    Some(name) => format!("; did you mean `{name}`?"),
                    None => "; add a migration that creates it".to_owned(),
                };
                cx.error_at(
                    table_name.span,
                    format!(
                        "no migration in `{}` creates table `{}`{hint}",
                        directory.value, table_name.value
                    ),
                );
            }
        }
    }
    check_untracked_columns(cx, container, &tables, all_found);
    files
}

/// `Some(None)` without `migrations_dialect` (the generic parser); `None` after reporting an
/// unknown name.
fn parse_dialect(cx: &Ctxt, name: Option<&Spanned<String>>) -> Option<Option<Dialect>> {
    let Some(name) = name else {
        return Some(None);
    };
    if let Some(dialect) = Dialect::from_name(&name.value) {
        return Some(Some(dialect));
    }
    let hint = match did_you_mean(&name.value, dialect::NAMES.iter().copied()) {
        Some(suggestion) => format!("did you mean `{suggestion}`? "),
        None => String::new(),
    };
    cx.error_at(
        name.span,
        format!(
            "unknown migrations dialect `{}`; {hint}expected one of `postgres`, `mysql`, `sqlite`",
            name.value
        ),
    );
    None
}

/// Reads and replays every migration; `None` after reporting why it could not.
fn load(
    cx: &Ctxt,
    directory: &Spanned<String>,
    dialect: Option<Dialect>,
) -> Option<(Schema, Vec<PathBuf>)> {
    let Some(path) = resolve(directory) else {
        cx.error_at(
            directory.span,
            format!(
                "migrations directory `{}` not found: the path is relative to the crate's \
                 Cargo.toml (or, failing that, to this file)",
                directory.value
            ),
        );
        return None;
    };
    let files = match migration_files(&path) {
        Ok(files) if files.is_empty() => {
            cx.error_at(
                directory.span,
                format!(
                    "migrations directory `{}` has no `.sql` files",
                    directory.value
                ),
            );
            return None;
        }
        Ok(files) => files,
        Err(error) => {
            cx.error_at(
                directory.span,
                format!(
                    "cannot read migrations directory `{}`: {error}",
                    directory.value
                ),
            );
            return None;
        }
    };
    let mut schema = Schema::new(dialect);
    for file in &files {
        let name = file_name(file);
        let sql = match std::fs::read_to_string(file) {
            Ok(sql) => sql,
            Err(error) => {
                cx.error_at(
                    directory.span,
                    format!("cannot read migration `{name}`: {error}"),
                );
                return None;
            }
        };
        match sqlparser::parser::Parser::parse_sql(&*Dialect::parser(dialect), &sql) {
            Ok(statements) => schema.apply(statements, &name),
            Err(error) => {
                cx.error_at(
                    directory.span,
                    format!(
                        "migration `{name}` does not parse as {} SQL: {error}",
                        dialect_label(dialect)
                    ),
                );
                return None;
            }
        }
    }
    Some((schema, files))
}

/// Relative to the crate, like `sqlx::migrate!`; failing that, relative to the file that
/// declares the model, like `include_str!` (which is also what makes them testable with
/// trybuild, whose crate directory is a scratch one).
fn resolve(directory: &Spanned<String>) -> Option<PathBuf> {
    let relative = Path::new(&directory.value);
    let from_crate = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(|root| Path::new(&root).join(relative))
        .filter(|path| path.is_dir());
    from_crate.or_else(|| {
        proc_macro::is_available()
            .then(|| proc_macro::Span::call_site().local_file())
            .flatten()
            .and_then(|file| Some(file.parent()?.join(relative)))
            .filter(|path| path.is_dir())
    })
}

fn migration_files(directory: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(directory)? {
        let path = entry?.path();
        let name = file_name(&path);
        if path.is_file() && name.ends_with(".sql") && !name.ends_with(".down.sql") {
            files.push(path.canonicalize()?);
        }
    }
    files.sort_by_key(|path| file_name(path));
    Ok(files)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn dialect_label(dialect: Option<Dialect>) -> &'static str {
    match dialect {
        Some(dialect) => dialect.label(),
        None => "generic (set `migrations_dialect` for your database's syntax)",
    }
}

fn check_table(
    cx: &Ctxt,
    container: &Container,
    name: &str,
    table: &Table,
    dialect: Option<Dialect>,
) {
    for field in &container.fields {
        check_field(cx, name, table, field, dialect);
    }
    check_unaccounted_columns(cx, container, name, table);
    check_primary_key(cx, container, name, table);
}

fn check_field(
    cx: &Ctxt,
    table_name: &str,
    table: &Table,
    field: &Field,
    dialect: Option<Dialect>,
) {
    let column_name = field.column();
    let Some(column) = table.column(&column_name) else {
        let known = table.columns.iter().map(|column| column.name.as_str());
        let hint = match did_you_mean(&column_name, known) {
            Some(name) => format!("did you mean `#[tracked(column = \"{name}\")]`? Otherwise add"),
            None => "add".to_owned(),
        };
        cx.error_at(
            field.ident.span(),
            format!(
                "field `{}` has no column `{column_name}` in table `{table_name}` once every \
                 migration has run; {hint} it with a migration \
                 (`ALTER TABLE {table_name} ADD COLUMN {column_name} ...`)",
                unraw(field.ident)
            ),
        );
        return;
    };
    let described = format!(
        "column `{table_name}.{}` ({}, from `{}`)",
        column.name, column.sql_type, column.origin
    );
    let ty = field.ty;
    let type_text = quote::ToTokens::to_token_stream(ty)
        .to_string()
        .replace(' ', "");
    let optional = !column.not_null || types::option_inner(ty).is_some();
    if let Some(instead) = types::incompatibility(ty, column.kind, dialect, optional) {
        cx.error_spanned_by(
            ty,
            format!(
                "`{}: {type_text}` cannot hold {described}; use {instead}",
                unraw(field.ident)
            ),
        );
    } else if !column.not_null && types::option_inner(ty).is_none() {
        cx.error_spanned_by(
            ty,
            format!(
                "{described} may be NULL, which `{}: {type_text}` cannot hold; make the field \
                 `Option<{type_text}>`, or declare the column NOT NULL",
                unraw(field.ident)
            ),
        );
    }
    if let Some(generated) = field.attrs.generated
        && column.not_null
        && !column.has_default
    {
        cx.error_at(
            generated,
            format!(
                "`{}` is `generated`, so INSERT leaves it to the database, but {described} is \
                 NOT NULL with no DEFAULT; give the column a DEFAULT, or remove `generated`",
                unraw(field.ident)
            ),
        );
    }
    if let Some(generated) = field.attrs.generated
        && field.is_key()
        && dialect == Some(Dialect::MySql)
        && !column.auto_increment
    {
        cx.error_at(
            generated,
            format!(
                "`{}` is a `generated` key, which MySQL and MariaDB (no RETURNING) can only \
                 read back as the insert's AUTO_INCREMENT id, but {described} is not \
                 AUTO_INCREMENT; make it an integer AUTO_INCREMENT column, or give the key its \
                 value in Rust (e.g. `Uuid::now_v7()`) and remove `generated`",
                unraw(field.ident)
            ),
        );
    }
}

/// Every column of the table is a field, or is declared untracked.
fn check_unaccounted_columns(cx: &Ctxt, container: &Container, table_name: &str, table: &Table) {
    let fields: Vec<String> = container
        .fields
        .iter()
        .map(|field| table.column_key(&field.column()))
        .collect();
    let untracked = &container.attrs.untracked_columns;
    for column in &table.columns {
        if fields.contains(&column.name) {
            continue;
        }
        let declared = untracked
            .iter()
            .find(|name| table.column_key(&name.value) == column.name);
        if column.not_null && !column.has_default {
            let span = declared.map_or_else(|| container.ident.span(), |name| name.span);
            cx.error_at(
                span,
                format!(
                    "column `{table_name}.{}` ({}, from `{}`) is NOT NULL with no DEFAULT, so \
                     every INSERT must give it, but `{}` has no field for it; add the field with \
                     its analytics decision, e.g. `#[tracked(property)] pub {}: ...`",
                    column.name, column.sql_type, column.origin, container.ident, column.name
                ),
            );
        } else if declared.is_none() {
            cx.error_at(
                container.ident.span(),
                format!(
                    "column `{table_name}.{}` ({}, from `{}`) is not accounted for by `{}`; add a \
                     field for it with its analytics decision, or, if this model never writes it, \
                     declare it with `#[tracked(untracked_columns(\"{}\"))]`",
                    column.name, column.sql_type, column.origin, container.ident, column.name
                ),
            );
        }
    }
}

/// Each `untracked_columns` name is a column of the model's table or of one of its
/// flag-routed tables (a routed table may have columns the others lack), and is not a field.
fn check_untracked_columns(
    cx: &Ctxt,
    container: &Container,
    tables: &[(&str, &Table)],
    all_found: bool,
) {
    for name in &container.attrs.untracked_columns {
        // A field's column, by the rules of every table it is found in (PostgreSQL's
        // `"Email"` is not `email`); before any table is known, as the name is written.
        let is_field = |field: &Field| match tables {
            [] => field.column() == name.value,
            _ => tables.iter().any(|(_, table)| {
                table.column_key(&field.column()) == table.column_key(&name.value)
            }),
        };
        if container.fields.iter().any(is_field) {
            cx.error_at(
                name.span,
                format!(
                    "`{}` is listed in `untracked_columns` but is a field of `{}`; remove it from \
                     the list",
                    name.value, container.ident
                ),
            );
            continue;
        }
        // A table that no migration creates was reported; its columns are unknown.
        if !all_found
            || tables
                .iter()
                .any(|(_, table)| table.column(&name.value).is_some())
        {
            continue;
        }
        let which = match tables {
            [(table, _)] => format!("table `{table}` does not have"),
            _ => {
                let names: Vec<String> = tables
                    .iter()
                    .map(|(table, _)| format!("`{table}`"))
                    .collect();
                format!("none of the tables {} has", names.join(", "))
            }
        };
        cx.error_at(
            name.span,
            format!(
                "`untracked_columns` names `{}`, which {which} once every migration has run; \
                 remove it from the list",
                name.value
            ),
        );
    }
}

fn check_primary_key(cx: &Ctxt, container: &Container, table_name: &str, table: &Table) {
    let keys: Vec<&Field> = container.fields.iter().filter(|f| f.is_key()).collect();
    if keys.is_empty() {
        // `check` already asked for a key.
        return;
    }
    let mut key_columns: Vec<String> = keys.iter().map(|f| table.column_key(&f.column())).collect();
    let mut primary_key: Vec<String> = table.primary_key.clone();
    key_columns.sort();
    primary_key.sort();
    if key_columns == primary_key {
        return;
    }
    let span = keys[0].attrs.key.unwrap_or_else(Span::call_site);
    let marked = keys
        .iter()
        .map(|field| format!("`{}`", unraw(field.ident)))
        .collect::<Vec<_>>()
        .join(", ");
    let message = if table.primary_key.is_empty() {
        format!(
            "`key` marks {marked}, but table `{table_name}` has no primary key in its migrations; \
             update and delete find the row by the key, so declare it PRIMARY KEY"
        )
    } else {
        let actual = table
            .primary_key
            .iter()
            .map(|column| format!("`{column}`"))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "`key` marks {marked}, but the primary key of `{table_name}` is {actual} (from `{}`); \
             mark exactly the primary key column(s) with `#[tracked(key)]`",
            table.origin
        )
    };
    cx.error_at(span, message);
}

#[cfg(test)]
mod tests {
    use super::super::dialect::Dialect;
    use super::schema::Schema;
    use super::types::SqlKind;

    fn replay(dialect: Dialect, files: &[&str]) -> Schema {
        let mut schema = Schema::new(Some(dialect));
        for (index, sql) in files.iter().enumerate() {
            let statements =
                sqlparser::parser::Parser::parse_sql(&*Dialect::parser(Some(dialect)), sql)
                    .unwrap_or_else(|error| panic!("{sql}: {error}"));
            schema.apply(statements, &format!("{index:04}.sql"));
        }
        schema
    }

    const USERS_PG: &str = "CREATE TABLE users (
        id BIGSERIAL PRIMARY KEY,
        email TEXT NOT NULL,
        plan TEXT NOT NULL DEFAULT 'free',
        nickname TEXT
    );";

    #[test]
    fn serial_and_identity_columns_are_not_null_and_computed_ones_may_be_null() {
        let schema = replay(
            Dialect::Postgres,
            &[
                "CREATE TABLE events (id BIGSERIAL, seq BIGINT GENERATED ALWAYS AS IDENTITY, \
                 body TEXT NOT NULL, half BIGINT GENERATED ALWAYS AS (seq / 2) STORED, \
                 later BIGINT NOT NULL, PRIMARY KEY (body));",
                "ALTER TABLE events ALTER COLUMN later ADD GENERATED BY DEFAULT AS IDENTITY;",
            ],
        );
        let table = schema.table("events").unwrap();
        for name in ["id", "seq", "later"] {
            let column = table.column(name).unwrap();
            assert!(column.not_null && column.has_default, "{name}: {column:?}");
        }
        let half = table.column("half").unwrap();
        assert!(!half.not_null && half.has_default, "{half:?}");
    }

    #[test]
    fn postgres_create_then_alter_add_column() {
        let schema = replay(
            Dialect::Postgres,
            &[
                USERS_PG,
                "ALTER TABLE users ADD COLUMN trial_ends_at TIMESTAMPTZ NOT NULL DEFAULT now();",
            ],
        );
        let users = schema.table("users").unwrap();
        assert_eq!(users.primary_key, ["id"]);
        let id = users.column("id").unwrap();
        assert!(id.not_null && id.has_default, "{id:?}");
        let email = users.column("email").unwrap();
        assert!(email.not_null && !email.has_default);
        assert!(!users.column("nickname").unwrap().not_null);
        let trial = users.column("trial_ends_at").unwrap();
        assert_eq!(trial.kind, SqlKind::Timestamp { time_zone: true });
        assert_eq!(trial.origin, "0001.sql");
        assert!(trial.not_null && trial.has_default);
        assert!(schema.table("public.users").is_some());
    }

    #[test]
    fn postgres_alter_column_rename_drop_and_drop_table() {
        let schema = replay(
            Dialect::Postgres,
            &[
                USERS_PG,
                "ALTER TABLE users ALTER COLUMN nickname SET NOT NULL;
                 ALTER TABLE users ALTER COLUMN plan DROP DEFAULT;
                 ALTER TABLE users ALTER COLUMN plan TYPE VARCHAR(20);
                 ALTER TABLE users RENAME COLUMN email TO email_address;
                 ALTER TABLE users DROP COLUMN nickname;
                 CREATE TABLE scratch (x INT); DROP TABLE scratch;
                 CREATE INDEX users_email ON users (email_address);",
            ],
        );
        let users = schema.table("users").unwrap();
        let names: Vec<_> = users.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["id", "email_address", "plan"]);
        let plan = users.column("plan").unwrap();
        assert!(!plan.has_default);
        assert_eq!(plan.sql_type, "VARCHAR(20)");
        assert!(schema.table("scratch").is_none());
    }

    #[test]
    fn mysql_auto_increment_change_modify_and_table_primary_key() {
        let schema = replay(
            Dialect::MySql,
            &[
                "CREATE TABLE `orders` (
                    `id` BIGINT NOT NULL AUTO_INCREMENT,
                    `total` DECIMAL(10,2) NOT NULL,
                    `note` VARCHAR(100),
                    PRIMARY KEY (`id`)
                 ) ENGINE=InnoDB;",
                "ALTER TABLE orders MODIFY COLUMN note VARCHAR(200) NOT NULL;
                 ALTER TABLE orders CHANGE COLUMN total amount_cents BIGINT NOT NULL;
                 ALTER TABLE orders ADD COLUMN trial_ends_at DATETIME NULL;
                 RENAME TABLE orders TO purchases;",
            ],
        );
        assert!(schema.table("orders").is_none());
        let purchases = schema.table("purchases").unwrap();
        assert_eq!(purchases.primary_key, ["id"]);
        let id = purchases.column("id").unwrap();
        assert!(id.has_default && id.not_null);
        assert!(purchases.column("note").unwrap().not_null);
        let amount = purchases.column("amount_cents").unwrap();
        assert_eq!(
            amount.kind,
            SqlKind::Int {
                bits: 64,
                unsigned: false
            }
        );
        assert!(purchases.column("total").is_none());
        assert!(!purchases.column("trial_ends_at").unwrap().not_null);
    }

    #[test]
    fn sqlite_rowid_alias_and_composite_keys() {
        let schema = replay(
            Dialect::Sqlite,
            &[
                "CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT NOT NULL);
                 CREATE TABLE counters (id INTEGER PRIMARY KEY, n INTEGER NOT NULL);
                 CREATE TABLE memberships (
                    org TEXT NOT NULL, member TEXT NOT NULL, PRIMARY KEY (org, member));
                 CREATE TABLE IF NOT EXISTS counters (other TEXT);",
                "ALTER TABLE events ADD COLUMN trial_ends_at TEXT;",
            ],
        );
        assert!(
            schema
                .table("events")
                .unwrap()
                .column("id")
                .unwrap()
                .has_default
        );
        let counters = schema.table("counters").unwrap();
        assert!(counters.column("id").unwrap().has_default);
        assert!(
            counters.column("other").is_none(),
            "IF NOT EXISTS kept the first table"
        );
        assert_eq!(
            schema.table("memberships").unwrap().primary_key,
            ["org", "member"]
        );
        assert!(
            schema
                .table("events")
                .unwrap()
                .column("trial_ends_at")
                .is_some()
        );
    }

    #[test]
    fn quoted_names_keep_their_case_and_unquoted_fold() {
        let schema = replay(
            Dialect::Postgres,
            &["CREATE TABLE Users (ID TEXT PRIMARY KEY, \"Email\" TEXT NOT NULL);"],
        );
        let users = schema.table("users").unwrap();
        assert!(users.column("id").is_some());
        assert_eq!(users.columns[1].name, "Email");
    }
}
