//! What `#[derive(TrackedModel)]` generates for backfills: the description of the model's
//! fields, its keyset-paginated `SELECT`s, timestamps of named columns, and the key of a row
//! read back. Not public API.

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};

use crate::backend::{Backend, BoundQuery, Dialect};
use crate::model::{PerDialect, TrackedModel, TrackedRow};

/// A model's backfill side, independent of the database.
#[doc(hidden)]
pub trait BackfillModel: TrackedModel {
    /// Fields and page queries.
    const __BACKFILL: &'static BackfillSpec;

    /// The value of field `index` as an event timestamp.
    fn __timestamp_of(&self, index: usize) -> BackfillTimestamp;

    /// Whether field `index`'s type is a timestamp (an [`EventTimestamp`]), known before any
    /// row is read.
    fn __is_timestamp(index: usize) -> bool;
}

/// A model's backfill side on one database.
#[doc(hidden)]
pub trait BackfillRow<DB: Backend>: BackfillModel + TrackedRow<DB> {
    /// The key of a row of every column, in field order (what the page queries select).
    fn __key_from_row(row: &DB::Row) -> std::result::Result<Self::Key, sqlx::Error>;

    /// Binds the first `len` values of `key`, in key order: MySQL's page after a composite
    /// key spells the comparison out, and takes the key's first 1, 2, ... n values in turn.
    fn __bind_key_prefix(key: &Self::Key, len: usize, query: BoundQuery<DB>) -> BoundQuery<DB>;
}

/// Fields and page queries of a model.
#[doc(hidden)]
#[derive(Debug)]
pub struct BackfillSpec {
    pub fields: &'static [BackfillField],
    pub page_sql: PerDialect<PageSql>,
    /// The model names a `distinct_id` field (otherwise no person update or insert event of a
    /// backfill can be attributed).
    pub distinct_id: bool,
}

impl BackfillSpec {
    /// Stands in for a model whose derive failed; never used, the crate does not compile.
    pub const UNUSABLE: BackfillSpec = BackfillSpec {
        fields: &[],
        page_sql: PerDialect {
            postgres: PageSql::UNUSABLE,
            mysql: PageSql::UNUSABLE,
            sqlite: PageSql::UNUSABLE,
        },
        distinct_id: false,
    };

    /// The page queries of `dialect`.
    pub const fn pages(&self, dialect: Dialect) -> &PageSql {
        self.page_sql.get(dialect)
    }
}

/// Keyset pagination in key order: every column of the first `$1` rows, and of the `$n` rows
/// after a key (the key's placeholders first, the page size last). On MySQL, the page after a
/// composite key of n columns takes its first 1, 2, ... n values in turn.
#[doc(hidden)]
#[derive(Debug)]
pub struct PageSql {
    pub first: &'static str,
    pub after: &'static str,
    /// A row (`SELECT 1 ... LIMIT 1`) with a NULL in a key column, if any: keyset pagination
    /// never reads one (`key > last` is not true of a NULL).
    pub null_key: &'static str,
}

impl PageSql {
    const UNUSABLE: PageSql = PageSql {
        first: "",
        after: "",
        null_key: "",
    };
}

/// One field of a model, as a backfill names it.
#[doc(hidden)]
#[derive(Debug)]
pub struct BackfillField {
    pub field: &'static str,
    pub column: &'static str,
    /// `None` for a skipped field.
    pub property: Option<&'static str>,
    pub person: BackfillPerson,
    pub key: bool,
}

/// Whether a field is a person property.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackfillPerson {
    No,
    Set,
    SetOnce,
}

/// A field's value as an event timestamp.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackfillTimestamp {
    /// The field's type is no timestamp.
    NotATimestamp,
    /// A timestamp field without a value (`None`).
    Missing,
    At(DateTime<Utc>),
}

/// A type that can date an event: chrono's `DateTime` (any time zone: `Utc`, `Local`, which
/// sqlx also reads, or a fixed offset), `NaiveDateTime` (taken as UTC, which is how sqlx
/// reads `TIMESTAMP WITHOUT TIME ZONE`), and `Option` of those.
#[doc(hidden)]
pub trait EventTimestamp {
    fn event_timestamp(&self) -> Option<DateTime<Utc>>;
}

impl<Tz: TimeZone> EventTimestamp for DateTime<Tz> {
    fn event_timestamp(&self) -> Option<DateTime<Utc>> {
        Some(self.with_timezone(&Utc))
    }
}

impl EventTimestamp for NaiveDateTime {
    fn event_timestamp(&self) -> Option<DateTime<Utc>> {
        Some(self.and_utc())
    }
}

impl<T: EventTimestamp> EventTimestamp for Option<T> {
    fn event_timestamp(&self) -> Option<DateTime<Utc>> {
        self.as_ref().and_then(EventTimestamp::event_timestamp)
    }
}

/// Wraps a field for the autoref specialisation in generated code:
/// `(&BackfillTimestampProbe(&self.f)).__backfill_timestamp()` finds [`BackfillIsTimestamp`]
/// when the field's type is an [`EventTimestamp`], and [`BackfillNotTimestamp`] otherwise.
#[doc(hidden)]
pub struct BackfillTimestampProbe<'a, T: ?Sized>(pub &'a T);

#[doc(hidden)]
pub trait BackfillIsTimestamp {
    fn __backfill_timestamp(&self) -> BackfillTimestamp;
}

impl<T: EventTimestamp + ?Sized> BackfillIsTimestamp for BackfillTimestampProbe<'_, T> {
    fn __backfill_timestamp(&self) -> BackfillTimestamp {
        match self.0.event_timestamp() {
            Some(at) => BackfillTimestamp::At(at),
            None => BackfillTimestamp::Missing,
        }
    }
}

#[doc(hidden)]
pub trait BackfillNotTimestamp {
    fn __backfill_timestamp(&self) -> BackfillTimestamp {
        BackfillTimestamp::NotATimestamp
    }
}

impl<T: ?Sized> BackfillNotTimestamp for &BackfillTimestampProbe<'_, T> {}

/// [`BackfillTimestampProbe`] for a field's type rather than its value:
/// `(&BackfillTimestampType::<T>::NEW).__backfill_is_timestamp()` is true when `T` is an
/// [`EventTimestamp`], so a `with_events` column is checked before any row is read.
#[doc(hidden)]
pub struct BackfillTimestampType<T: ?Sized>(std::marker::PhantomData<fn() -> *const T>);

impl<T: ?Sized> BackfillTimestampType<T> {
    pub const NEW: Self = BackfillTimestampType(std::marker::PhantomData);
}

#[doc(hidden)]
pub trait BackfillIsTimestampType {
    fn __backfill_is_timestamp(&self) -> bool {
        true
    }
}

impl<T: EventTimestamp + ?Sized> BackfillIsTimestampType for BackfillTimestampType<T> {}

#[doc(hidden)]
pub trait BackfillNotTimestampType {
    fn __backfill_is_timestamp(&self) -> bool {
        false
    }
}

impl<T: ?Sized> BackfillNotTimestampType for &BackfillTimestampType<T> {}
