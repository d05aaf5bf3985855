//! Replays migrations into the tables they leave behind: CREATE TABLE, ALTER TABLE and DROP
//! TABLE, applied in file order, as the database would.

use std::collections::BTreeMap;

use sqlparser::ast::{
    AlterColumnOperation, AlterTableOperation, ColumnDef, ColumnOption, CreateTable, DataType,
    Expr, Ident, ObjectName, ObjectType, RenameTableNameKind, Statement, TableConstraint,
};

use super::super::dialect::Dialect;
use super::types::SqlKind;

/// The tables after every migration ran.
#[derive(Debug, Default)]
pub struct Schema {
    /// By name, resolved as the dialect resolves it (see [`name_key`]).
    pub tables: BTreeMap<String, Table>,
    dialect: Option<Dialect>,
}

/// What a name is the name of: MySQL compares table names with their case (as on Linux, its
/// default `lower_case_table_names = 0`) and column names without.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Table,
    Column,
}

/// The form of a name the database finds objects by, so that two names are the same object
/// exactly when their forms are equal:
/// - PostgreSQL (and the generic dialect): an unquoted name folds to lower case, a quoted one
///   is exact;
/// - MySQL/MariaDB: a table's name is exact, quoted or not (a table is a file; Linux compares
///   file names with their case); a column's name is compared without case;
/// - SQLite: every name is compared without ASCII case, quoted or not.
fn name_key(dialect: Option<Dialect>, kind: Kind, ident: &Ident) -> String {
    match (dialect, kind) {
        (None | Some(Dialect::Postgres), _) => match ident.quote_style {
            Some(_) => ident.value.clone(),
            None => ident.value.to_ascii_lowercase(),
        },
        (Some(Dialect::MySql), Kind::Table) => ident.value.clone(),
        (Some(Dialect::MySql), Kind::Column) => ident.value.to_lowercase(),
        (Some(Dialect::Sqlite), _) => ident.value.to_ascii_lowercase(),
    }
}

/// A name from the model, which the derive quotes as written.
fn model_name_key(dialect: Option<Dialect>, kind: Kind, name: &str) -> String {
    name_key(dialect, kind, &Ident::with_quote('"', name))
}

#[derive(Debug, Clone)]
pub struct Table {
    /// In the order the migrations gave them.
    pub columns: Vec<Column>,
    /// Normalized column names, in key order.
    pub primary_key: Vec<String>,
    /// The migration file that created the table.
    pub origin: String,
    dialect: Option<Dialect>,
}

#[derive(Debug, Clone)]
pub struct Column {
    /// Normalized: the form the dialect finds the column by (see [`name_key`]).
    pub name: String,
    /// The type as written, for messages: `BIGINT`, `VARCHAR(255)`.
    pub sql_type: String,
    pub kind: SqlKind,
    pub not_null: bool,
    /// The database fills it when an INSERT leaves it out: DEFAULT, GENERATED, IDENTITY,
    /// SERIAL, AUTO_INCREMENT, or SQLite's `INTEGER PRIMARY KEY`.
    pub has_default: bool,
    /// MySQL's `AUTO_INCREMENT` (or `SERIAL`): the one default that `LAST_INSERT_ID()` reports.
    pub auto_increment: bool,
    /// The migration file that last defined or changed the column.
    pub origin: String,
}

impl Table {
    /// A column the model names, found as the database finds it: the derive quotes names as
    /// written, so on PostgreSQL `email` is not a column created as `"Email"`, while MySQL
    /// and SQLite compare column names without case.
    pub fn column(&self, name: &str) -> Option<&Column> {
        let key = self.column_key(name);
        self.columns.iter().find(|column| column.name == key)
    }

    /// The normalized form of a column name from the model, to compare with
    /// [`Column::name`] and [`Table::primary_key`].
    pub fn column_key(&self, name: &str) -> String {
        model_name_key(self.dialect, Kind::Column, name)
    }

    fn column_mut(&mut self, name: &str) -> Option<&mut Column> {
        self.columns.iter_mut().find(|column| column.name == name)
    }
}

impl Schema {
    /// The tables the migrations of `dialect` (`None`: the generic parser) leave behind.
    pub fn new(dialect: Option<Dialect>) -> Self {
        Schema {
            tables: BTreeMap::new(),
            dialect,
        }
    }

    /// The table a model names, `users` or `public.users`, found as the database finds it:
    /// the derive quotes the name as written, so on PostgreSQL `Accounts` is the table created
    /// as `"Accounts"`, not one created as `Accounts` (which is `accounts`).
    pub fn table(&self, name: &str) -> Option<&Table> {
        let last = name.rsplit('.').next().unwrap_or(name);
        self.tables
            .get(&model_name_key(self.dialect, Kind::Table, last))
    }

    /// Applies one migration file's statements.
    pub fn apply(&mut self, statements: Vec<Statement>, origin: &str) {
        let dialect = self.dialect;
        for statement in statements {
            match statement {
                Statement::CreateTable(create) => self.create_table(create, origin, dialect),
                Statement::AlterTable(alter) => {
                    let name = self.table_name(&alter.name);
                    for operation in alter.operations {
                        self.alter_table(&name, operation, origin, dialect);
                    }
                }
                Statement::Drop {
                    object_type: ObjectType::Table,
                    names,
                    ..
                } => {
                    for name in names {
                        let name = self.table_name(&name);
                        self.tables.remove(&name);
                    }
                }
                Statement::RenameTable(renames) => {
                    for rename in renames {
                        let old = self.table_name(&rename.old_name);
                        self.rename_table(&old, &rename.new_name);
                    }
                }
                // Data changes, indexes, views, functions: they do not change a table's shape.
                _ => {}
            }
        }
    }

    fn create_table(&mut self, create: CreateTable, origin: &str, dialect: Option<Dialect>) {
        let name = self.table_name(&create.name);
        if create.if_not_exists && self.tables.contains_key(&name) {
            return;
        }
        let mut table = Table {
            columns: Vec::new(),
            primary_key: Vec::new(),
            origin: origin.to_owned(),
            dialect,
        };
        for column in &create.columns {
            if is_primary_key(&column.options.iter().map(|o| &o.option).collect::<Vec<_>>()) {
                table.primary_key = vec![normalize(dialect, &column.name)];
            }
            table.columns.push(column_from_def(column, origin, dialect));
        }
        for constraint in &create.constraints {
            apply_constraint(&mut table, constraint);
        }
        mark_rowid_alias(&mut table, dialect);
        self.tables.insert(name, table);
    }

    fn alter_table(
        &mut self,
        name: &str,
        operation: AlterTableOperation,
        origin: &str,
        dialect: Option<Dialect>,
    ) {
        if let AlterTableOperation::RenameTable { table_name } = &operation {
            let new_name = match table_name {
                RenameTableNameKind::As(name) | RenameTableNameKind::To(name) => name,
            };
            self.rename_table(name, new_name);
            return;
        }
        // ALTER on a table the migrations never created (made by hand, or by another tool):
        // nothing to check against, so nothing to track.
        let Some(table) = self.tables.get_mut(name) else {
            return;
        };
        match operation {
            AlterTableOperation::AddColumn { column_def, .. } => {
                let column = column_from_def(&column_def, origin, dialect);
                let options: Vec<_> = column_def.options.iter().map(|o| &o.option).collect();
                if is_primary_key(&options) {
                    table.primary_key = vec![column.name.clone()];
                }
                table
                    .columns
                    .retain(|existing| existing.name != column.name);
                table.columns.push(column);
            }
            AlterTableOperation::DropColumn { column_names, .. } => {
                for dropped in column_names {
                    let dropped = normalize(dialect, &dropped);
                    table.columns.retain(|column| column.name != dropped);
                    table.primary_key.retain(|column| *column != dropped);
                }
            }
            AlterTableOperation::RenameColumn {
                old_column_name,
                new_column_name,
            } => rename_column(table, &old_column_name, &new_column_name, origin),
            AlterTableOperation::ChangeColumn {
                old_name,
                new_name,
                data_type,
                options,
                ..
            } => {
                rename_column(table, &old_name, &new_name, origin);
                redefine_column(table, &new_name, &data_type, &options, origin, dialect);
            }
            AlterTableOperation::ModifyColumn {
                col_name,
                data_type,
                options,
                ..
            } => redefine_column(table, &col_name, &data_type, &options, origin, dialect),
            AlterTableOperation::AlterColumn { column_name, op } => {
                let Some(column) = table.column_mut(&normalize(dialect, &column_name)) else {
                    return;
                };
                column.origin = origin.to_owned();
                match op {
                    AlterColumnOperation::SetNotNull => column.not_null = true,
                    AlterColumnOperation::DropNotNull => column.not_null = false,
                    AlterColumnOperation::SetDefault { .. } => column.has_default = true,
                    AlterColumnOperation::DropDefault => column.has_default = false,
                    AlterColumnOperation::SetDataType { data_type, .. } => {
                        column.sql_type = data_type.to_string();
                        column.kind = SqlKind::classify(&data_type, dialect);
                    }
                    // An identity column is NOT NULL (PostgreSQL requires it already).
                    AlterColumnOperation::AddGenerated { .. } => {
                        column.has_default = true;
                        column.not_null = true;
                    }
                }
            }
            AlterTableOperation::AddConstraint { constraint, .. } => {
                apply_constraint(table, &constraint);
            }
            AlterTableOperation::DropPrimaryKey { .. } => table.primary_key.clear(),
            _ => {}
        }
    }

    fn rename_table(&mut self, old: &str, new_name: &ObjectName) {
        if let Some(table) = self.tables.remove(old) {
            let new_name = self.table_name(new_name);
            self.tables.insert(new_name, table);
        }
    }

    /// The last part of a possibly schema-qualified name, normalized.
    fn table_name(&self, name: &ObjectName) -> String {
        name.0
            .last()
            .and_then(|part| part.as_ident())
            .map(|ident| name_key(self.dialect, Kind::Table, ident))
            .unwrap_or_default()
    }
}

/// A column's name from a migration, normalized.
fn normalize(dialect: Option<Dialect>, ident: &Ident) -> String {
    name_key(dialect, Kind::Column, ident)
}

fn column_from_def(def: &ColumnDef, origin: &str, dialect: Option<Dialect>) -> Column {
    let options: Vec<&ColumnOption> = def.options.iter().map(|o| &o.option).collect();
    let mut column = Column {
        name: normalize(dialect, &def.name),
        sql_type: def.data_type.to_string(),
        kind: SqlKind::classify(&def.data_type, dialect),
        // SERIAL types are NOT NULL (PostgreSQL's, and MySQL's `SERIAL` alias).
        not_null: is_serial(&def.data_type),
        has_default: is_serial(&def.data_type),
        auto_increment: is_serial(&def.data_type),
        origin: origin.to_owned(),
    };
    apply_options(&mut column, &options);
    column
}

fn redefine_column(
    table: &mut Table,
    name: &Ident,
    data_type: &DataType,
    options: &[ColumnOption],
    origin: &str,
    dialect: Option<Dialect>,
) {
    let Some(column) = table.column_mut(&normalize(dialect, name)) else {
        return;
    };
    // MySQL's CHANGE/MODIFY restate the whole definition: what is not written is gone.
    column.sql_type = data_type.to_string();
    column.kind = SqlKind::classify(data_type, dialect);
    column.not_null = is_serial(data_type);
    column.has_default = is_serial(data_type);
    column.auto_increment = is_serial(data_type);
    column.origin = origin.to_owned();
    apply_options(column, &options.iter().collect::<Vec<_>>());
}

fn rename_column(table: &mut Table, old: &Ident, new: &Ident, origin: &str) {
    let (old, new) = (normalize(table.dialect, old), normalize(table.dialect, new));
    if let Some(column) = table.column_mut(&old) {
        column.name = new.clone();
        column.origin = origin.to_owned();
    }
    for key in &mut table.primary_key {
        if *key == old {
            *key = new.clone();
        }
    }
}

fn apply_options(column: &mut Column, options: &[&ColumnOption]) {
    for option in options {
        match option {
            ColumnOption::NotNull => column.not_null = true,
            ColumnOption::Null => column.not_null = false,
            ColumnOption::PrimaryKey(_) => column.not_null = true,
            // An identity column (`GENERATED ... AS IDENTITY`, which has no expression, or
            // `IDENTITY(1, 1)`) is NOT NULL; a computed one (`GENERATED ALWAYS AS (expr)`)
            // is NULL when its expression is.
            ColumnOption::Generated {
                generation_expr: None,
                ..
            }
            | ColumnOption::Identity(_) => {
                column.has_default = true;
                column.not_null = true;
            }
            ColumnOption::Default(_)
            | ColumnOption::Generated { .. }
            | ColumnOption::Materialized(_)
            | ColumnOption::Alias(_) => column.has_default = true,
            ColumnOption::DialectSpecific(tokens) => {
                let text = tokens
                    .iter()
                    .map(ToString::to_string)
                    .collect::<String>()
                    .to_uppercase();
                if text.contains("AUTO_INCREMENT") || text.contains("AUTOINCREMENT") {
                    column.has_default = true;
                    column.auto_increment = true;
                }
            }
            _ => {}
        }
    }
}

fn is_primary_key(options: &[&ColumnOption]) -> bool {
    options
        .iter()
        .any(|option| matches!(option, ColumnOption::PrimaryKey(_)))
}

fn apply_constraint(table: &mut Table, constraint: &TableConstraint) {
    if let TableConstraint::PrimaryKey(primary_key) = constraint {
        table.primary_key = primary_key
            .columns
            .iter()
            .filter_map(|column| match &column.column.expr {
                Expr::Identifier(ident) => Some(normalize(table.dialect, ident)),
                Expr::CompoundIdentifier(parts) => {
                    parts.last().map(|ident| normalize(table.dialect, ident))
                }
                // An expression key (a function of columns) matches no field.
                _ => None,
            })
            .collect();
        for key in table.primary_key.clone() {
            if let Some(column) = table.column_mut(&key) {
                column.not_null = true;
            }
        }
    }
}

/// `SERIAL`, `BIGSERIAL`, `SMALLSERIAL`: PostgreSQL fills them from a sequence.
fn is_serial(data_type: &DataType) -> bool {
    data_type.to_string().to_uppercase().ends_with("SERIAL")
}

/// SQLite fills a single-column `INTEGER PRIMARY KEY` with the rowid.
fn mark_rowid_alias(table: &mut Table, dialect: Option<Dialect>) {
    if dialect != Some(Dialect::Sqlite) || table.primary_key.len() != 1 {
        return;
    }
    let key = table.primary_key[0].clone();
    if let Some(column) = table.column_mut(&key)
        && column.sql_type.eq_ignore_ascii_case("INTEGER")
    {
        column.has_default = true;
    }
}
