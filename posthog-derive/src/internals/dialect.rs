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

    /// Quotes an identifier; a dotted name (`schema.table`) is quoted part by part.
    pub fn quote(self, name: &str) -> String {
        let (open, close) = match self {
            Dialect::MySql => ('`', "``"),
            Dialect::Postgres | Dialect::Sqlite => ('"', "\"\""),
        };
        name.split('.')
            .map(|part| format!("{open}{}{open}", part.replace(open, close)))
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
