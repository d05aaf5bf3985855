//! Which Rust types can hold which SQL column types, per database, as sqlx decodes them.
//!
//! Only the types sqlx itself maps are judged; a type the derive does not recognize (a
//! newtype, an enum with its own `sqlx::Type`) is trusted, since its impl decides.

use super::super::dialect::Dialect;
use sqlparser::ast::DataType;

/// What a column holds, as far as decoding into Rust is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlKind {
    Int {
        bits: u8,
        unsigned: bool,
    },
    Float {
        bits: u8,
    },
    Decimal,
    Bool,
    Text,
    Bytes,
    Uuid,
    Json,
    Timestamp {
        time_zone: bool,
    },
    Date,
    Time,
    /// No declared type (SQLite), a custom type, an enum, an array: not judged.
    Other,
}

/// What a field's Rust type decodes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RustKind {
    Int { bits: u8, unsigned: bool },
    Float { bits: u8 },
    Decimal,
    Bool,
    String,
    Bytes,
    Uuid,
    Json,
    Timestamp { time_zone: bool },
    Date,
    Time,
}

impl SqlKind {
    pub fn classify(data_type: &DataType, dialect: Option<Dialect>) -> SqlKind {
        let text = data_type.to_string().to_uppercase();
        if dialect == Some(Dialect::Sqlite) {
            return classify_sqlite(&text);
        }
        let unsigned = text.contains("UNSIGNED");
        let word = text
            .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
            .next()
            .unwrap_or("");
        let int = |bits| SqlKind::Int { bits, unsigned };
        match word {
            "BOOL" | "BOOLEAN" => SqlKind::Bool,
            // MySQL spells BOOLEAN as TINYINT(1).
            "TINYINT" if text.starts_with("TINYINT(1)") => SqlKind::Bool,
            "TINYINT" => int(8),
            "SMALLINT" | "INT2" | "SMALLSERIAL" => int(16),
            "MEDIUMINT" | "INT" | "INTEGER" | "INT4" | "SERIAL" => int(32),
            "BIGINT" | "INT8" | "BIGSERIAL" => int(64),
            "REAL" if dialect == Some(Dialect::Postgres) => SqlKind::Float { bits: 32 },
            "FLOAT4" => SqlKind::Float { bits: 32 },
            "FLOAT" if dialect != Some(Dialect::Postgres) => SqlKind::Float { bits: 32 },
            "FLOAT" | "REAL" | "FLOAT8" | "DOUBLE" => SqlKind::Float { bits: 64 },
            "NUMERIC" | "DECIMAL" | "DEC" => SqlKind::Decimal,
            "CHAR" | "CHARACTER" | "VARCHAR" | "NVARCHAR" | "NCHAR" | "TEXT" | "TINYTEXT"
            | "MEDIUMTEXT" | "LONGTEXT" | "CITEXT" | "CLOB" | "STRING" | "ENUM" => SqlKind::Text,
            "BYTEA" | "BLOB" | "TINYBLOB" | "MEDIUMBLOB" | "LONGBLOB" | "BINARY" | "VARBINARY" => {
                SqlKind::Bytes
            }
            "UUID" => SqlKind::Uuid,
            "JSON" | "JSONB" => SqlKind::Json,
            "TIMESTAMPTZ" => SqlKind::Timestamp { time_zone: true },
            "TIMESTAMP" => SqlKind::Timestamp {
                time_zone: text.contains("WITH TIME ZONE") && !text.contains("WITHOUT"),
            },
            "DATETIME" => SqlKind::Timestamp { time_zone: false },
            "DATE" => SqlKind::Date,
            "TIME" | "TIMETZ" => SqlKind::Time,
            _ => SqlKind::Other,
        }
    }
}

/// SQLite judges a declared type by its affinity (<https://sqlite.org/datatype3.html>), and
/// sqlx decodes dates from TEXT, INTEGER or REAL.
fn classify_sqlite(text: &str) -> SqlKind {
    if text.is_empty() {
        SqlKind::Other
    } else if text.starts_with("BOOL") {
        SqlKind::Bool
    } else if text.contains("INT") {
        SqlKind::Int {
            bits: 64,
            unsigned: false,
        }
    } else if text.contains("CHAR") || text.contains("CLOB") || text.contains("TEXT") {
        SqlKind::Text
    } else if text.contains("BLOB") {
        SqlKind::Bytes
    } else if text.contains("REAL") || text.contains("FLOA") || text.contains("DOUB") {
        SqlKind::Float { bits: 64 }
    } else if text.starts_with("DATETIME") || text.starts_with("TIMESTAMP") {
        SqlKind::Timestamp { time_zone: false }
    } else if text.starts_with("DATE") {
        SqlKind::Date
    } else if text.starts_with("TIME") {
        SqlKind::Time
    } else if text.starts_with("JSON") {
        SqlKind::Json
    } else {
        SqlKind::Other
    }
}

/// Why `ty` cannot hold a column of `kind`, with the type to use instead; `None` when it can,
/// or when the derive cannot tell.
pub fn incompatibility(
    ty: &syn::Type,
    kind: SqlKind,
    dialect: Option<Dialect>,
    optional: bool,
) -> Option<String> {
    let rust = rust_kind(ty)?;
    if kind == SqlKind::Other || holds(rust, kind, dialect) {
        return None;
    }
    Some(suggestion(kind, dialect, optional))
}

fn holds(rust: RustKind, column: SqlKind, dialect: Option<Dialect>) -> bool {
    const SQLITE: Option<Dialect> = Some(Dialect::Sqlite);
    const POSTGRES: Option<Dialect> = Some(Dialect::Postgres);
    match (rust, column) {
        // SQLite stores every integer in 64 bits and sqlx narrows on decode; booleans and
        // dates may live in integer columns too.
        (RustKind::Int { .. } | RustKind::Bool, SqlKind::Int { .. }) if dialect == SQLITE => true,
        (RustKind::Timestamp { .. } | RustKind::Date | RustKind::Time, kind)
            if dialect == SQLITE =>
        {
            matches!(
                kind,
                SqlKind::Text
                    | SqlKind::Int { .. }
                    | SqlKind::Float { .. }
                    | SqlKind::Timestamp { .. }
                    | SqlKind::Date
                    | SqlKind::Time
            )
        }
        (RustKind::Json | RustKind::String, SqlKind::Json) => true,
        (RustKind::Json, SqlKind::Text) => dialect == SQLITE,
        (
            RustKind::Int { bits, unsigned },
            SqlKind::Int {
                bits: column_bits,
                unsigned: column_unsigned,
            },
        ) => {
            if dialect == POSTGRES {
                // sqlx decodes PostgreSQL integers only into the Rust type of the same width.
                bits == column_bits && !unsigned
            } else if column_unsigned {
                (unsigned && bits >= column_bits) || (!unsigned && bits > column_bits)
            } else {
                !unsigned && bits >= column_bits
            }
        }
        (RustKind::Bool, SqlKind::Bool) => true,
        (RustKind::Bool, SqlKind::Int { bits: 8, .. }) => dialect != POSTGRES,
        (RustKind::Float { bits }, SqlKind::Float { bits: column_bits }) => {
            if dialect == POSTGRES {
                bits == column_bits
            } else {
                bits >= column_bits
            }
        }
        (RustKind::Decimal, SqlKind::Decimal) => true,
        (RustKind::String, SqlKind::Text) => true,
        (RustKind::Bytes, SqlKind::Bytes) => true,
        (RustKind::Uuid, SqlKind::Uuid) => true,
        // MySQL and SQLite have no UUID type; sqlx stores `Uuid` as 16 bytes there.
        (RustKind::Uuid, SqlKind::Bytes) => dialect != POSTGRES,
        (
            RustKind::Timestamp { time_zone },
            SqlKind::Timestamp {
                time_zone: column_zone,
            },
        ) => {
            // PostgreSQL keeps the two apart: `DateTime<Utc>` is TIMESTAMPTZ and
            // `NaiveDateTime` is TIMESTAMP. MySQL's DATETIME and TIMESTAMP decode into both.
            dialect != POSTGRES || time_zone == column_zone
        }
        (RustKind::Date, SqlKind::Date) => true,
        (RustKind::Time, SqlKind::Time) => true,
        _ => false,
    }
}

/// The Rust type that holds `kind`, in an `Option` when the column is `optional` (nullable,
/// or the field is an `Option` already): the whole fix in one message, not one per build.
fn suggestion(kind: SqlKind, dialect: Option<Dialect>, optional: bool) -> String {
    let text = match kind {
        SqlKind::Int { bits, unsigned } if dialect != Some(Dialect::Postgres) && unsigned => {
            format!("u{}", bits.max(8))
        }
        SqlKind::Int { bits: 8, .. } => "i8".into(),
        SqlKind::Int { bits, .. } => format!("i{bits}"),
        SqlKind::Float { bits } => format!("f{bits}"),
        SqlKind::Decimal => "rust_decimal::Decimal".into(),
        SqlKind::Bool => "bool".into(),
        SqlKind::Text => "String".into(),
        SqlKind::Bytes => "Vec<u8>".into(),
        SqlKind::Uuid => "uuid::Uuid".into(),
        SqlKind::Json => "serde_json::Value".into(),
        SqlKind::Timestamp { time_zone: false } if dialect == Some(Dialect::Postgres) => {
            "chrono::NaiveDateTime".into()
        }
        SqlKind::Timestamp { .. } => "chrono::DateTime<Utc>".into(),
        SqlKind::Date => "chrono::NaiveDate".into(),
        SqlKind::Time => "chrono::NaiveTime".into(),
        SqlKind::Other => unreachable!("`Other` columns are not judged"),
    };
    if optional {
        format!("`Option<{text}>`")
    } else {
        format!("`{text}`")
    }
}

/// Whether `ty` is an integer type: `None` for a type the derive does not know (a newtype, an
/// alias), whose `sqlx::Type` decides.
pub fn is_integer(ty: &syn::Type) -> Option<bool> {
    rust_kind(ty).map(|kind| matches!(kind, RustKind::Int { .. }))
}

/// `Some(inner)` for `Option<inner>`.
pub fn option_inner(ty: &syn::Type) -> Option<&syn::Type> {
    let segment = last_segment(ty)?;
    if segment.ident != "Option" {
        return None;
    }
    first_type_argument(segment)
}

fn rust_kind(ty: &syn::Type) -> Option<RustKind> {
    let ty = option_inner(ty).unwrap_or(ty);
    let segment = last_segment(ty)?;
    let int = |bits, unsigned| RustKind::Int { bits, unsigned };
    Some(match segment.ident.to_string().as_str() {
        "i8" => int(8, false),
        "i16" => int(16, false),
        "i32" => int(32, false),
        "i64" => int(64, false),
        "u8" => int(8, true),
        "u16" => int(16, true),
        "u32" => int(32, true),
        "u64" => int(64, true),
        "f32" => RustKind::Float { bits: 32 },
        "f64" => RustKind::Float { bits: 64 },
        "bool" => RustKind::Bool,
        "String" => RustKind::String,
        "Decimal" | "BigDecimal" => RustKind::Decimal,
        "Uuid" => RustKind::Uuid,
        "Value" | "Json" | "JsonValue" => RustKind::Json,
        "DateTime" | "OffsetDateTime" => RustKind::Timestamp { time_zone: true },
        "NaiveDateTime" | "PrimitiveDateTime" => RustKind::Timestamp { time_zone: false },
        "NaiveDate" | "Date" => RustKind::Date,
        "NaiveTime" | "Time" => RustKind::Time,
        "Vec" => match first_type_argument(segment).and_then(last_segment) {
            Some(inner) if inner.ident == "u8" => RustKind::Bytes,
            _ => return None,
        },
        _ => return None,
    })
}

fn last_segment(ty: &syn::Type) -> Option<&syn::PathSegment> {
    match ty {
        syn::Type::Path(path) if path.qself.is_none() => path.path.segments.last(),
        _ => None,
    }
}

fn first_type_argument(segment: &syn::PathSegment) -> Option<&syn::Type> {
    match &segment.arguments {
        syn::PathArguments::AngleBracketed(arguments) => {
            arguments.args.iter().find_map(|argument| match argument {
                syn::GenericArgument::Type(ty) => Some(ty),
                _ => None,
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(sql: &str, dialect: Option<Dialect>) -> SqlKind {
        let statement = format!("CREATE TABLE t (c {sql})");
        let parsed =
            sqlparser::parser::Parser::parse_sql(&*Dialect::parser(dialect), &statement).unwrap();
        let sqlparser::ast::Statement::CreateTable(create) = &parsed[0] else {
            panic!("not a CREATE TABLE");
        };
        SqlKind::classify(&create.columns[0].data_type, dialect)
    }

    fn fits(rust: &str, sql: &str, dialect: Dialect) -> bool {
        let dialect = Some(dialect);
        let ty: syn::Type = syn::parse_str(rust).unwrap();
        incompatibility(&ty, column(sql, dialect), dialect, false).is_none()
    }

    /// Every case of `type_cases.txt`: whether a column of the SQL type decodes into the Rust
    /// type on the dialect.
    #[test]
    fn column_types_fit_the_field_types_they_decode_into() {
        let mut cases = 0;
        for line in include_str!("type_cases.txt").lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let [dialect, rust, sql, expected] = cells[..] else {
                panic!("a case has four cells: {line}");
            };
            let dialect = match dialect {
                "postgres" => Dialect::Postgres,
                "mysql" => Dialect::MySql,
                "sqlite" => Dialect::Sqlite,
                other => panic!("unknown dialect {other}"),
            };
            let expected = match expected {
                "yes" => true,
                "no" => false,
                other => panic!("fits is yes or no, not {other}"),
            };
            assert_eq!(fits(rust, sql, dialect), expected, "{line}");
            cases += 1;
        }
        assert_ne!(cases, 0, "type_cases.txt holds cases");
    }

    #[test]
    fn types_the_derive_does_not_know_are_trusted() {
        assert!(fits("PlanTier", "TEXT", Dialect::Postgres));
        assert!(fits("String", "my_enum", Dialect::Postgres));
    }
}
