//! The traits that `#[derive(TrackedModel)]` and `#[derive(EventSchema)]` implement, and the
//! tracked writes built on them.

use std::fmt::Write as _;
use std::future::Future;
use std::sync::{Mutex, PoisonError};

use crate::backend::{Backend, BoundQuery, Dialect};
use crate::context::TrackingContext;
use crate::error::{Error, Result};
use crate::event::{EventWriter, Section, StagedEvent, Stager, Stamp, properties_object};
use crate::flags::route;
use crate::flags::routing::TableVariant;
use crate::transaction::TrackedTransaction;

/// A struct whose rows are written through sqlx and whose writes become PostHog events.
///
/// Derive it; don't implement it by hand. The derive fixes the SQL for every dialect and the
/// column-to-property mapping at compile time, and refuses to compile a field that has no
/// analytics decision.
///
/// The write methods take a [`TrackedTransaction`] on any [`Backend`]: the same model works on
/// PostgreSQL, MySQL/MariaDB and SQLite unchanged. Each one stages its events in the
/// transaction; they reach the outbox when the transaction commits, and vanish with it when it
/// rolls back.
pub trait TrackedModel: Sized + Send + Sync {
    /// The primary key, as [`load_for_update`](TrackedModel::load_for_update) takes it: the
    /// type of the `#[tracked(key)]` field, or a tuple of the key fields' types, in field order,
    /// for a composite key.
    type Key: Send + Sync;

    /// The table rows are written to.
    const TABLE: &'static str;
    /// Event staged by [`insert`](TrackedModel::insert).
    const INSERT_EVENT: &'static str;
    /// Event staged by [`update`](TrackedModel::update) and
    /// [`update_changed`](TrackedModel::update_changed).
    const UPDATE_EVENT: &'static str;
    /// Event staged by [`delete`](TrackedModel::delete).
    const DELETE_EVENT: &'static str;

    #[doc(hidden)]
    const __SQL: &'static SqlSet;

    /// Tables that rows go to instead of `TABLE` when a feature flag puts their user in a
    /// variant (`#[tracked(table_variant(flag = ..., variant = ..., table = ...))]`).
    #[doc(hidden)]
    const __TABLE_VARIANTS: &'static [TableVariant] = &[];

    /// Fields that are written by UPDATE and sent as event properties: a change to any of them
    /// is worth an update event.
    #[doc(hidden)]
    const __TRACKED_UPDATABLE: ChangeMask;

    /// The PostHog distinct id of this row, from the field named by `distinct_id`; `None`
    /// means the transaction's distinct id is used.
    fn distinct_id(&self) -> Option<String>;

    /// `#[tracked(identify)]`: inserts and person-property changes send `$identify`.
    #[doc(hidden)]
    const __IDENTIFY: bool = false;
    /// The `person` and `person_once` fields.
    #[doc(hidden)]
    const __PERSON: ChangeMask = ChangeMask::EMPTY;
    /// `#[tracked(group_type = "...")]`: writes send `$groupidentify` for the row's group.
    #[doc(hidden)]
    const __GROUP_TYPE: Option<&'static str> = None;

    /// The row's key as a group, from the field named by `group_key`.
    #[doc(hidden)]
    fn __group_key(&self) -> Option<String> {
        None
    }
    /// `(group type, key)` of each `#[tracked(group = "...")]` field, for `$groups`.
    #[doc(hidden)]
    fn __groups(&self) -> Vec<(&'static str, Option<String>)> {
        Vec::new()
    }
    #[doc(hidden)]
    fn __write_person_properties(&self, _writer: &mut EventWriter) -> Result<()> {
        Ok(())
    }
    #[doc(hidden)]
    fn __write_changed_person_properties(
        &self,
        _changed: ChangeMask,
        _writer: &mut EventWriter,
    ) -> Result<()> {
        Ok(())
    }
    /// Fills the `#[tracked(context = "...")]` fields.
    #[doc(hidden)]
    fn __fill_from_context(&mut self, _context: &TrackingContext) {}

    #[doc(hidden)]
    fn __write_properties(&self, writer: &mut EventWriter) -> Result<()>;
    #[doc(hidden)]
    fn __write_key_properties(&self, writer: &mut EventWriter) -> Result<()>;
    #[doc(hidden)]
    fn __write_changed_properties(
        &self,
        changed: ChangeMask,
        writer: &mut EventWriter,
    ) -> Result<()>;
    #[doc(hidden)]
    fn __changed(&self, before: &Self) -> ChangeMask;
    #[doc(hidden)]
    fn __same_key(&self, other: &Self) -> bool;
    #[doc(hidden)]
    fn __stage_milestones(
        &self,
        before: &Self,
        changed: ChangeMask,
        stager: &mut Stager<'_>,
    ) -> Result<()>;

    /// Inserts the row and stages `INSERT_EVENT` with every tracked property.
    ///
    /// Returns the row as stored, and the event carries the stored values: every column is
    /// read back from the database (`RETURNING` on PostgreSQL and SQLite; a `SELECT` by the
    /// key, or by the insert's `AUTO_INCREMENT` id for a `generated` key, on MySQL), so
    /// `generated` columns are filled in and a value the column keeps with less precision (a
    /// `DateTime` with nanoseconds in a microsecond column) comes back as the column holds it.
    ///
    /// On MySQL/MariaDB a `generated` key must be an integer `AUTO_INCREMENT` column, the only
    /// generated value MySQL reports: otherwise the insert fails with [`Error::Unsupported`]
    /// before anything is written (and at compile time when the type or the migrations show it).
    fn insert<'t, 'c, DB>(
        mut self,
        tx: &'t mut TrackedTransaction<'c, DB>,
    ) -> impl Future<Output = Result<Self>> + Send + 't
    where
        DB: Backend,
        Self: TrackedRow<DB> + 't,
    {
        async move {
            self.__fill_from_context(tx.context());
            let (sql, table, stamps) = route(&self, tx).await;
            let unsupported = |reason| Error::Unsupported {
                operation: format!("insert into `{table}`"),
                backend: DB::DIALECT.name(),
                reason,
            };
            if let Some(reason) = sql.insert_unsupported {
                return Err(unsupported(reason));
            }
            if let Some(column) = sql.auto_increment_key
                && !is_auto_increment::<DB>(tx.connection(), table, column).await?
            {
                return Err(unsupported(NOT_AUTO_INCREMENT));
            }
            let query = self.__bind_insert(sqlx::query(sql.insert));
            let row = if sql.insert_returns_row {
                Some(DB::fetch_one(tx.connection(), query).await?)
            } else {
                let result = DB::execute(tx.connection(), query).await?;
                match sql.select_inserted {
                    Some(select) => {
                        let mut query = sqlx::query(select);
                        if sql.select_inserted_by_insert_id {
                            // The id this INSERT generated (0 when it generated none), not
                            // the connection's LAST_INSERT_ID(), which an earlier insert set.
                            let id = DB::last_insert_id(&result)
                                .filter(|id| *id != 0)
                                .and_then(|id| i64::try_from(id).ok())
                                .ok_or_else(|| unsupported(NOT_AUTO_INCREMENT))?;
                            query = DB::bind_i64(query, id);
                        } else {
                            query = self.__bind_key(query);
                        }
                        Some(DB::fetch_one(tx.connection(), query).await?)
                    }
                    None => None,
                }
            };
            if let Some(row) = row {
                self = Self::__from_row(&row)?;
            }
            let anonymous_id = tx.context().anonymous_id().map(str::to_owned);
            let stamps = with_groups(&self, stamps);
            let mut stager = tx.stager_with(self.distinct_id(), Self::INSERT_EVENT, stamps)?;
            stage_insert_event(&self, &mut stager)?;
            if Self::__IDENTIFY {
                stage_identify(&self, anonymous_id, &mut stager, None)?;
            }
            stage_group_identify(&self, &mut stager, None)?;
            Ok(self)
        }
    }

    /// Reads the row with this key in the transaction, locking it until the transaction ends
    /// (`SELECT ... FOR UPDATE` on PostgreSQL and MySQL/MariaDB; SQLite locks the whole
    /// database when the transaction first writes). `None` when no row has the key.
    ///
    /// This is the `before` that [`update_changed`](TrackedModel::update_changed) needs: a copy
    /// read earlier, outside the transaction, may be stale, and then the update sends the
    /// wrong changes and milestones (a `previous_plan` of an older state):
    ///
    /// ```no_run
    /// # use posthog_track::{TrackedModel, Tracker};
    /// # #[derive(Clone, TrackedModel)]
    /// # #[tracked(table = "users", distinct_id = id)]
    /// # struct User {
    /// #     #[tracked(key, property)] id: String,
    /// #     #[tracked(property)] plan: String,
    /// # }
    /// # async fn upgrade(tracker: &Tracker, pool: &sqlx::SqlitePool) -> posthog_track::Result<()> {
    /// let mut tx = tracker.begin(pool).await?;
    /// let Some(before) = User::load_for_update(&"u1".to_owned(), &mut tx).await? else {
    ///     return Ok(());
    /// };
    /// let mut after = before.clone();
    /// after.plan = "pro".into();
    /// after.update_changed(&before, &mut tx).await?;
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    ///
    /// A flag-routed model (`table_variant`) is read from its own `TABLE`.
    fn load_for_update<'t, 'c, DB>(
        key: &'t Self::Key,
        tx: &'t mut TrackedTransaction<'c, DB>,
    ) -> impl Future<Output = Result<Option<Self>>> + Send + 't
    where
        DB: Backend,
        Self: TrackedRow<DB>,
    {
        async move {
            let sql = Self::__SQL.get(DB::DIALECT);
            let query = Self::__bind_key_value(key, sqlx::query(sql.select_for_update));
            let rows = DB::fetch_all(tx.connection(), query).await?;
            match rows.first() {
                Some(row) => Ok(Some(Self::__from_row(row)?)),
                None => Ok(None),
            }
        }
    }

    /// Writes every non-key, non-generated column and stages `UPDATE_EVENT` with every tracked
    /// property. Fails with [`Error::RowNotFound`] when no row has this key.
    fn update<'t, 'c, DB>(
        &'t self,
        tx: &'t mut TrackedTransaction<'c, DB>,
    ) -> impl Future<Output = Result<()>> + Send + 't
    where
        DB: Backend,
        Self: TrackedRow<DB>,
    {
        async move {
            let (sql, table, stamps) = route(self, tx).await;
            if let Some(update) = sql.update {
                let query = self.__bind_key(self.__bind_update(sqlx::query(update)));
                let result = DB::execute(tx.connection(), query).await?;
                if DB::rows_affected(&result) == 0 {
                    return Err(Error::RowNotFound { table });
                }
            }
            let stamps = with_groups(self, stamps);
            let mut stager = tx.stager_with(self.distinct_id(), Self::UPDATE_EVENT, stamps)?;
            let mut writer = stager.event(Self::UPDATE_EVENT);
            self.__write_properties(&mut writer)?;
            stager.push(writer)?;
            if Self::__IDENTIFY && !Self::__PERSON.is_empty() {
                stage_identify(self, None, &mut stager, None)?;
            }
            stage_group_identify(self, &mut stager, None)?;
            Ok(())
        }
    }

    /// Writes only the columns whose values differ from `before`, and stages events for them:
    /// `UPDATE_EVENT` with the key properties and the changed tracked properties (when a
    /// tracked property changed), and each milestone whose condition holds.
    ///
    /// `before` must be the row as it is in the database: the events describe the difference
    /// from it. Read it in the same transaction with
    /// [`load_for_update`](TrackedModel::load_for_update), which also locks the row so that a
    /// concurrent writer cannot change it in between.
    ///
    /// Returns how many columns were written. When nothing changed no statement is sent and no
    /// event is staged.
    fn update_changed<'t, 'c, DB>(
        &'t self,
        before: &'t Self,
        tx: &'t mut TrackedTransaction<'c, DB>,
    ) -> impl Future<Output = Result<usize>> + Send + 't
    where
        DB: Backend,
        Self: TrackedRow<DB>,
    {
        async move {
            if !self.__same_key(before) {
                return Err(Error::KeyChanged { table: Self::TABLE });
            }
            let changed = self.__changed(before);
            if changed.is_empty() {
                return Ok(0);
            }
            let (sql, table, stamps) = route(self, tx).await;
            let statement = sql.update_changed_statement(DB::DIALECT, changed);
            let query = sqlx::query(sqlx::AssertSqlSafe(statement));
            let query = self.__bind_key(self.__bind_changed(changed, query));
            let result = DB::execute(tx.connection(), query).await?;
            if DB::rows_affected(&result) == 0 {
                return Err(Error::RowNotFound { table });
            }
            let stamps = with_groups(self, stamps);
            let mut stager = tx.stager_with(self.distinct_id(), Self::UPDATE_EVENT, stamps)?;
            let tracked = changed.intersection(Self::__TRACKED_UPDATABLE);
            if !tracked.is_empty() {
                let mut writer = stager.event(Self::UPDATE_EVENT);
                self.__write_key_properties(&mut writer)?;
                self.__write_changed_properties(tracked, &mut writer)?;
                stager.push(writer)?;
                stage_group_identify(self, &mut stager, Some(tracked))?;
            }
            let person = changed.intersection(Self::__PERSON);
            if Self::__IDENTIFY && !person.is_empty() {
                stage_identify(self, None, &mut stager, Some(person))?;
            }
            self.__stage_milestones(before, changed, &mut stager)?;
            Ok(changed.len())
        }
    }

    /// Deletes the row and stages `DELETE_EVENT` with the key properties. Fails with
    /// [`Error::RowNotFound`] when no row has this key.
    fn delete<'t, 'c, DB>(
        &'t self,
        tx: &'t mut TrackedTransaction<'c, DB>,
    ) -> impl Future<Output = Result<()>> + Send + 't
    where
        DB: Backend,
        Self: TrackedRow<DB>,
    {
        async move {
            let (sql, table, stamps) = route(self, tx).await;
            let query = self.__bind_key(sqlx::query(sql.delete));
            let result = DB::execute(tx.connection(), query).await?;
            if DB::rows_affected(&result) == 0 {
                return Err(Error::RowNotFound { table });
            }
            let stamps = with_groups(self, stamps);
            let mut stager = tx.stager_with(self.distinct_id(), Self::DELETE_EVENT, stamps)?;
            let mut writer = stager.event(Self::DELETE_EVENT);
            self.__write_key_properties(&mut writer)?;
            stager.push(writer)?;
            Ok(())
        }
    }
}

/// `stamps` plus `$groups` with the row's `#[tracked(group = "...")]` fields (and the row's
/// own group, for a group model), so every event of the write is attributed to them.
fn with_groups<M: TrackedModel>(model: &M, mut stamps: Vec<Stamp>) -> Vec<Stamp> {
    let mut groups = serde_json::Map::new();
    if let (Some(group_type), Some(key)) = (M::__GROUP_TYPE, model.__group_key()) {
        groups.insert(group_type.to_owned(), key.into());
    }
    for (group_type, key) in model.__groups() {
        if let Some(key) = key {
            groups.insert(group_type.to_owned(), key.into());
        }
    }
    if !groups.is_empty() {
        stamps.push(Stamp::new("$groups".into(), &groups.into()));
    }
    stamps
}

/// `$identify` for an `identify` model: its person properties in `$set` / `$set_once` (only
/// the `changed` ones on an update), and `$anon_distinct_id` when the request's anonymous
/// visitor is someone else, which merges that visitor into the person.
fn stage_identify<M: TrackedModel>(
    model: &M,
    anonymous_id: Option<String>,
    stager: &mut Stager<'_>,
    changed: Option<ChangeMask>,
) -> Result<()> {
    let mut writer = stager.event("$identify");
    if let Some(anonymous_id) = anonymous_id.filter(|id| id != stager.distinct_id()) {
        writer.dynamic_property(
            Section::Properties,
            "$anon_distinct_id",
            &anonymous_id.into(),
        )?;
    }
    match changed {
        Some(changed) => model.__write_changed_person_properties(changed, &mut writer)?,
        None => model.__write_person_properties(&mut writer)?,
    }
    stager.push(writer)
}

/// `$groupidentify` for a group model: the row's tracked properties (only the `changed` ones
/// on an update) become the group's. PostHog's SDKs send it as `$<type>_<key>`.
fn stage_group_identify<M: TrackedModel>(
    model: &M,
    stager: &mut Stager<'_>,
    changed: Option<ChangeMask>,
) -> Result<()> {
    let (Some(group_type), Some(group_key)) = (M::__GROUP_TYPE, model.__group_key()) else {
        return Ok(());
    };
    let group_set = properties_object("$groupidentify", |writer| match changed {
        Some(changed) => model.__write_changed_properties(changed, writer),
        None => model.__write_properties(writer),
    })?;
    let mut writer = stager.event_for("$groupidentify", format!("${group_type}_{group_key}"));
    writer.dynamic_property(Section::Properties, "$group_type", &group_type.into())?;
    writer.dynamic_property(Section::Properties, "$group_key", &group_key.into())?;
    writer.dynamic_property(Section::Properties, "$group_set", &group_set)?;
    stager.push(writer)
}

fn stage_insert_event<M: TrackedModel>(model: &M, stager: &mut Stager<'_>) -> Result<()> {
    let mut writer = stager.event(M::INSERT_EVENT);
    model.__write_properties(&mut writer)?;
    stager.push(writer)
}

/// Why MySQL cannot insert a model whose generated key is not AUTO_INCREMENT.
const NOT_AUTO_INCREMENT: &str = "a generated key is read back with the insert's \
    AUTO_INCREMENT id (MySQL has no RETURNING), and only an integer AUTO_INCREMENT column has \
    one; make the key an integer AUTO_INCREMENT column, or give it its value in Rust (e.g. \
    `Uuid::now_v7()`) and remove `generated`";

/// `(table, column)` pairs already found to be AUTO_INCREMENT, so each is asked about once
/// per process.
static AUTO_INCREMENT: Mutex<Vec<(&str, &str)>> = Mutex::new(Vec::new());

/// Whether MySQL's `table.column` is AUTO_INCREMENT, asked of `information_schema` before the
/// first insert so that a key it is not fails before anything is written. A table or column
/// the database does not know counts as AUTO_INCREMENT: the INSERT then reports it.
async fn is_auto_increment<DB: Backend>(
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

/// Stages `model`'s insert event exactly as [`TrackedModel::insert`] does, without a database:
/// the event mapping alone, for benchmarks.
#[doc(hidden)]
pub fn stage_insert_event_detached<M: TrackedModel>(
    model: &M,
    fallback_distinct_id: &str,
    events: &mut Vec<StagedEvent>,
) -> Result<()> {
    let distinct_id = model
        .distinct_id()
        .unwrap_or_else(|| fallback_distinct_id.to_owned());
    stage_insert_event(model, &mut Stager::new(events, distinct_id))
}

/// The sqlx side of a [`TrackedModel`] on one database: binding fields and decoding generated
/// columns. The derive implements it for every [`Backend`] whose sqlx types can hold each field.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be written to {DB}",
    label = "a field of `{Self}` has a type that sqlx cannot encode or decode for {DB}",
    note = "every field type must implement `sqlx::Type<{DB}>`, `sqlx::Encode<{DB}>` and \
            `sqlx::Decode<{DB}>`"
)]
pub trait TrackedRow<DB: Backend>: TrackedModel {
    #[doc(hidden)]
    fn __bind_insert(&self, query: BoundQuery<DB>) -> BoundQuery<DB>;
    #[doc(hidden)]
    fn __bind_update(&self, query: BoundQuery<DB>) -> BoundQuery<DB>;
    #[doc(hidden)]
    fn __bind_changed(&self, changed: ChangeMask, query: BoundQuery<DB>) -> BoundQuery<DB>;
    #[doc(hidden)]
    fn __bind_key(&self, query: BoundQuery<DB>) -> BoundQuery<DB>;
    #[doc(hidden)]
    fn __bind_key_value(key: &Self::Key, query: BoundQuery<DB>) -> BoundQuery<DB>;
    /// The model from a row of every column, in field order.
    #[doc(hidden)]
    fn __from_row(row: &DB::Row) -> std::result::Result<Self, sqlx::Error>;
}

/// A struct owned by the analytics side that lists exactly the properties a model's events
/// carry. Name it with `#[tracked(schema = Type)]` on a model: the build then fails until every
/// tracked field of the model is in the schema with the same type and every schema field is fed.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an event schema",
    note = "add `#[derive(posthog_track::EventSchema)]` to `{Self}`"
)]
pub trait EventSchema {
    /// The schema's property names, in declaration order.
    const PROPERTIES: &'static [&'static str];
}

/// The SQL of one model for every dialect, fixed at compile time.
#[doc(hidden)]
#[derive(Debug)]
pub struct SqlSet {
    pub postgres: ModelSql,
    pub mysql: ModelSql,
    pub sqlite: ModelSql,
}

impl SqlSet {
    /// Stands in for the SQL of a model whose derive failed; never executed, because the crate
    /// that holds such a model does not compile.
    pub const UNUSABLE: SqlSet = SqlSet {
        postgres: ModelSql::UNUSABLE,
        mysql: ModelSql::UNUSABLE,
        sqlite: ModelSql::UNUSABLE,
    };

    /// The statements for `dialect`.
    pub const fn get(&self, dialect: Dialect) -> &ModelSql {
        match dialect {
            Dialect::Postgres => &self.postgres,
            Dialect::MySql => &self.mysql,
            Dialect::Sqlite => &self.sqlite,
        }
    }
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
}

impl ModelSql {
    const UNUSABLE: ModelSql = ModelSql {
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
