//! The three SQL dialects: the SQL the derive writes for each, and the syntax and type rules
//! its migrations are read with.

use sqlparser::dialect::{GenericDialect, MySqlDialect, PostgreSqlDialect, SQLiteDialect};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    MySql,
    Sqlite,
}

/// The names `migrations_dialect` accepts.
pub const NAMES: &[&str] = &["postgres", "mysql", "sqlite"];

impl Dialect {
    pub const ALL: [Dialect; 3] = [Dialect::Postgres, Dialect::MySql, Dialect::Sqlite];

    /// `migrations_dialect = "..."`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "postgres" => Some(Dialect::Postgres),
            "mysql" => Some(Dialect::MySql),
            "sqlite" => Some(Dialect::Sqlite),
            _ => None,
        }
    }

    /// For messages.
    pub fn label(self) -> &'static str {
        match self {
            Dialect::Postgres => "PostgreSQL",
            Dialect::MySql => "MySQL",
            Dialect::Sqlite => "SQLite",
        }
    }

    /// Quotes one identifier whole, a column: a dot is part of the name (`"app.version"`).
    pub fn quote_ident(self, name: &str) -> String {
        let (open, close) = match self {
            Dialect::MySql => ('`', "``"),
            Dialect::Postgres | Dialect::Sqlite => ('"', "\"\""),
        };
        format!("{open}{}{open}", name.replace(open, close))
    }

    /// Quotes a table name, which may be qualified: `schema.table` is quoted part by part
    /// (`"schema"."table"`), so a table's own name cannot contain a dot.
    pub fn quote_table(self, name: &str) -> String {
        name.split('.')
            .map(|part| self.quote_ident(part))
            .collect::<Vec<_>>()
            .join(".")
    }

    /// The placeholder of the `n`th (1-based) parameter.
    pub fn placeholder(self, n: usize) -> String {
        match self {
            Dialect::Postgres => format!("${n}"),
            Dialect::MySql | Dialect::Sqlite => "?".to_owned(),
        }
    }

    /// The parser for migrations in `dialect`; `None` is the generic parser, for what the
    /// three have in common.
    pub fn parser(dialect: Option<Dialect>) -> Box<dyn sqlparser::dialect::Dialect> {
        match dialect {
            Some(Dialect::Postgres) => Box::new(PostgreSqlDialect {}),
            Some(Dialect::MySql) => Box::new(MySqlDialect {}),
            Some(Dialect::Sqlite) => Box::new(SQLiteDialect {}),
            None => Box::new(GenericDialect {}),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Dialect;

    #[test]
    fn quoting_doubles_the_quote_character() {
        assert_eq!(Dialect::Postgres.quote_ident("user\"s"), "\"user\"\"s\"");
        assert_eq!(Dialect::MySql.quote_ident("user`s"), "`user``s`");
        assert_eq!(Dialect::MySql.quote_table("app.user`s"), "`app`.`user``s`");
        assert_eq!(
            Dialect::Sqlite.quote_table("app.users"),
            "\"app\".\"users\""
        );
    }

    #[test]
    fn a_column_is_one_identifier_dots_and_all() {
        assert_eq!(
            Dialect::Postgres.quote_ident("app.version"),
            "\"app.version\""
        );
        assert_eq!(Dialect::MySql.quote_ident("app.version"), "`app.version`");
        assert_eq!(Dialect::Sqlite.quote_ident("a.\"b\""), "\"a.\"\"b\"\"\"");
    }

    #[test]
    fn placeholders() {
        assert_eq!(Dialect::Postgres.placeholder(3), "$3");
        assert_eq!(Dialect::MySql.placeholder(3), "?");
    }
}
