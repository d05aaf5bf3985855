//! The traits `#[derive(TrackedModel)]` and `#[derive(EventSchema)]` implement:
//! [`TrackedModel`] with the tracked writes built on it, [`TrackedRow`] (its sqlx side on one
//! database) and [`EventSchema`].

use std::future::Future;
use std::pin::Pin;

use super::bulk::{check_insertable, insert_all};
use super::codegen::ModelSql;
use super::codegen::{ChangeMask, SqlSet};
use super::fold;
use super::route::{RowTable, find_row, other_tables, route, tables_from};
use super::stage::{
    Written, require_distinct_id, stage_group_identify, stage_identify, stage_updated, with_groups,
};
use super::upsert::{Upserted, upsert};
use crate::backend::{Backend, BoundQuery};
use crate::context::TrackingContext;
use crate::error::{Error, Result};
use crate::event::{EventWriter, Stager, Stamp};
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
    const __TABLE_VARIANTS: &'static [TableVariant<SqlSet>] = &[];

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
    /// `(property name, field index)` of each tracked `generated` field: values the database
    /// fills in at insert.
    #[doc(hidden)]
    const __GENERATED_PROPERTIES: &'static [(&'static str, usize)] = &[];
    /// A tracked `generated` field is not a key: the database may compute it again on an
    /// update, so `update` stages its event from the row read back.
    #[doc(hidden)]
    const __UPDATE_READS_BACK: bool = false;
    /// The distinct id, the group key or a `group` field is `generated`.
    #[doc(hidden)]
    const __IDENTITY_GENERATED: bool = false;
    /// The model has `#[tracked(context = "...")]` fields.
    #[doc(hidden)]
    const __CONTEXT_FIELDS: bool = false;
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
    /// A row whose events would have no distinct id (blank in the row, and none set on the
    /// transaction or its context) fails with [`Error::MissingDistinctId`] before anything is
    /// written, so the transaction can still commit its other writes.
    ///
    /// On MySQL/MariaDB a `generated` key must be an integer `AUTO_INCREMENT` column, the only
    /// generated value MySQL reports: otherwise the insert fails with [`Error::Unsupported`]
    /// before anything is written (and at compile time when the type or the migrations show it).
    ///
    /// On PostgreSQL the events usually reach the outbox with the row, in the same statement
    /// (a data-modifying `WITH`), rather than at commit: one statement fewer per write, which
    /// is most of a tracked write's extra cost under many concurrent writers. The outbox ends up
    /// holding exactly the events [`staged`](TrackedTransaction::staged) shows, as at commit,
    /// and a rollback removes both. This happens while everything staged earlier in the
    /// transaction went the same way (so the outbox keeps the staging order) and there is no
    /// `before_send` hook or `$geoip_disable`, and not for group models or models whose distinct
    /// id is `generated`; a model's first insert in a process takes the usual path.
    ///
    /// A flag-routed model (`table_variant`) inserts into its routed table only, without
    /// looking in its other tables: the database refuses a key already in that table, but not
    /// one another of the model's tables holds (a row written before its user's route
    /// changed), which then ends up in both. A new key (generated, a UUID) cannot be there;
    /// when the key may exist under another route, [`upsert`](TrackedModel::upsert) finds it
    /// where it is. (Looking there on every insert would cost a statement per table, and on
    /// MySQL/MariaDB take gap locks there, the kind concurrent upserts deadlocked on.)
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
            require_distinct_id(&self, Self::INSERT_EVENT, tx)?;
            let (sql, table, stamps) = route(&self, tx).await;
            check_insertable::<DB>(sql, table, tx.connection()).await?;
            tx.begin_write(table)?;
            let inserted = fold::insert(&self, sql, table, stamps, tx).await;
            tx.end_write(&inserted);
            inserted
        }
    }

    /// Inserts `rows` and stages, for each, exactly the events [`insert`](TrackedModel::insert)
    /// stages, in the same order; returns the rows as stored, in the order given.
    ///
    /// The rows go in one multi-row `INSERT` per chunk, each chunk as large as the backend's
    /// limit on bound parameters allows (65,535 on PostgreSQL and MySQL/MariaDB, 32,766 on
    /// SQLite, divided by the columns written per row), and the events reach the outbox at
    /// commit in multi-row inserts as well. Every row is read back as stored, `generated`
    /// columns included: `RETURNING` on PostgreSQL, SQLite and MariaDB 10.5+; on MySQL a
    /// `SELECT` by the keys, or for an `AUTO_INCREMENT` key by the ids `LAST_INSERT_ID()` and
    /// `@@auto_increment_increment` give, which are the chunk's own only when InnoDB allocates
    /// them consecutively (`innodb_autoinc_lock_mode` 0 or 1): under mode 2 (MySQL 8's
    /// default) such rows are inserted one at a time.
    ///
    /// On MySQL/MariaDB a chunk can exceed `max_allowed_packet` when rows are large (many KB
    /// each): pass smaller slices then. A row with `context` fields is copied to fill them,
    /// hence `Clone`. When the call fails nothing it staged remains, but the rows it wrote
    /// stay in the transaction: roll it back (a `commit` rolls back and fails with
    /// [`Error::IncompleteWrite`], as after any tracked write that failed or was cancelled
    /// after writing).
    ///
    /// ```no_run
    /// # use posthog_track::{TrackedModel, Tracker};
    /// # #[derive(Clone, TrackedModel)]
    /// # #[tracked(table = "users", distinct_id = id)]
    /// # struct User {
    /// #     #[tracked(key, property)] id: String,
    /// #     #[tracked(property)] plan: String,
    /// # }
    /// # async fn import(tracker: &Tracker, pool: &sqlx::SqlitePool, users: Vec<User>) -> posthog_track::Result<()> {
    /// let mut tx = tracker.begin(pool).await?;
    /// let stored = User::insert_all(&users, &mut tx).await?;
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    fn insert_all<'t, 'c, DB>(
        rows: &'t [Self],
        tx: &'t mut TrackedTransaction<'c, DB>,
    ) -> impl Future<Output = Result<Vec<Self>>> + Send + 't
    where
        DB: Backend,
        Self: TrackedRow<DB> + Clone + 't,
    {
        insert_all(rows, tx)
    }

    /// Inserts the row, or when a row with its key exists, writes every non-key,
    /// non-generated column of it, with no window for a concurrent writer of the same key in
    /// between; stages what the equivalent write
    /// stages (those of [`insert`](TrackedModel::insert) when the row was created, those of
    /// [`update`](TrackedModel::update) when it existed) and returns which it was, with the
    /// row as stored.
    ///
    /// `INSERT ... ON CONFLICT (key) DO UPDATE` on PostgreSQL, which tells a new row by
    /// `xmax = 0`; on SQLite `INSERT ... ON CONFLICT (key) DO NOTHING RETURNING` as the probe,
    /// then the `UPDATE` when no row came back (the INSERT holds SQLite's only write lock, so
    /// nothing comes between); `INSERT ... ON DUPLICATE KEY UPDATE` on MySQL/MariaDB, which
    /// reports 1 affected row for an insert and 2 for an update, but also 1 for an existing
    /// row left as it was (sqlx connects with `CLIENT_FOUND_ROWS`), so its update clause
    /// marks an existing row by setting the statement's insert id (`LAST_INSERT_ID(expr)`);
    /// nothing is looked up first, so concurrent upserts of one new key wait for each other
    /// instead of deadlocking on gap locks. A flag-routed model (`table_variant`) looks the
    /// key up in its other tables first, locking it there (a row stays in the table it was
    /// written to), but not in the table it is routed to, the one it may insert into: upserts
    /// of one new key routed to one table wait for each other there too, while two routed to
    /// different tables (an owner changing meanwhile) may deadlock, one rolled back, rather
    /// than leave the key in both tables. On PostgreSQL a routed upsert first takes a
    /// transaction-scoped advisory lock on a hash of its model's default table and key
    /// (`pg_advisory_xact_lock`), so concurrent upserts of one key queue whichever table each
    /// is routed to, and one that waited finds the row the other committed (at READ COMMITTED,
    /// the default; under SERIALIZABLE PostgreSQL rolls one back instead, 40001). Under
    /// REPEATABLE READ the key can still end up in two tables: a snapshot older than the other
    /// transaction's commit does not see its row, and only the routed table's unique key
    /// guards the insert. [`insert`](TrackedModel::insert) does not look in the other tables.
    /// On MySQL/MariaDB `ON DUPLICATE KEY` also fires on any other unique key of the table: an
    /// upsert that meets another row there fails with [`Error::Unsupported`] (PostgreSQL and
    /// SQLite fail with the unique violation), and its transaction cannot commit.
    ///
    /// An existing row gets `UPDATE_EVENT` with every tracked property, as `update` sends it,
    /// and no milestone: a milestone compares the row before and after, and the upsert has no
    /// before. When milestones matter, read the row with
    /// [`load_for_update`](TrackedModel::load_for_update) and write it with
    /// [`update_changed`](TrackedModel::update_changed) or [`insert`](TrackedModel::insert).
    ///
    /// A model with a `generated` key cannot be upserted (the INSERT does not write the key, so
    /// no row could conflict): calling `upsert` on one is a compile error (see [`Upsertable`]).
    ///
    /// (The future is boxed so that a model that is not [`Upsertable`] is reported once, at
    /// the call, rather than again at its `.await`.)
    fn upsert<'t, 'c, DB>(
        self,
        tx: &'t mut TrackedTransaction<'c, DB>,
    ) -> Pin<Box<dyn Future<Output = Result<Upserted<Self>>> + Send + 't>>
    where
        DB: Backend,
        Self: TrackedRow<DB> + Upsertable + 't,
    {
        Box::pin(upsert(self, tx))
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
    /// A flag-routed model (`table_variant`) is looked for in its `TABLE`, then in each
    /// variant's table: a key alone does not say whose row it is.
    fn load_for_update<'t, 'c, DB>(
        key: &'t Self::Key,
        tx: &'t mut TrackedTransaction<'c, DB>,
    ) -> impl Future<Output = Result<Option<Self>>> + Send + 't
    where
        DB: Backend,
        Self: TrackedRow<DB>,
    {
        async move {
            let default = RowTable {
                sql: Self::__SQL.get(DB::DIALECT),
                table: Self::TABLE,
                stamps: Vec::new(),
            };
            let tables = tables_from::<Self, DB>(default);
            // A read, but one that aborts a PostgreSQL transaction when it fails (a deadlock,
            // a lock timeout): the transaction must not report a commit then.
            tx.begin_write(Self::TABLE)?;
            let found = find_row(tx, tables, |sql| {
                Self::__bind_key_value(key, sqlx::query(sql.select_for_update))
            })
            .await;
            tx.end_write(&found);
            match found? {
                Some((row, _)) => Ok(Some(Self::__from_row(&row)?)),
                None => Ok(None),
            }
        }
    }

    /// Writes every non-key, non-generated column and stages `UPDATE_EVENT` with every tracked
    /// property, as stored: a model with tracked `generated` properties reads the row back
    /// after the update (the database may compute them again). Fails with
    /// [`Error::RowNotFound`] when no row has this key.
    fn update<'t, 'c, DB>(
        &'t self,
        tx: &'t mut TrackedTransaction<'c, DB>,
    ) -> impl Future<Output = Result<()>> + Send + 't
    where
        DB: Backend,
        Self: TrackedRow<DB>,
    {
        async move {
            tx.begin_write(Self::TABLE)?;
            let updated = update(self, tx).await;
            tx.end_write(&updated);
            updated
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
            tx.begin_write(Self::TABLE)?;
            let written = update_changed(self, before, changed, tx).await;
            tx.end_write(&written);
            written
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
            tx.begin_write(Self::TABLE)?;
            let deleted = async {
                let routed = route(self, tx).await;
                let (stamps, _) = write_existing_row::<Self, DB>(tx, routed, |sql| {
                    Some(self.__bind_key(sqlx::query(sql.delete)))
                })
                .await?;
                let stamps = with_groups(self, stamps);
                let mut stager = tx.stager_with(self.distinct_id(), Self::DELETE_EVENT, stamps)?;
                let mut writer = stager.event(Self::DELETE_EVENT);
                self.__write_key_properties(&mut writer)?;
                stager.push(writer)
            }
            .await;
            tx.end_write(&deleted);
            deleted
        }
    }
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

/// A model whose key the application gives, so that [`TrackedModel::upsert`] can find an
/// existing row by it. The derive implements it for every model whose key fields are not
/// `generated`: a key the database generates is not written by the `INSERT`, so no row could
/// ever conflict, and an upsert of such a model would only ever insert.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be upserted: its key is `generated` by the database",
    label = "`{Self}`'s key is not written by the INSERT, so no existing row could conflict",
    note = "insert such rows with `insert` (or `insert_all`), or give the key its value in Rust \
            and remove `generated` from the key field"
)]
pub trait Upsertable: TrackedModel {}

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

/// [`TrackedModel::update`], within its `begin_write` / `end_write`.
async fn update<M: TrackedRow<DB>, DB: Backend>(
    this: &M,
    tx: &mut TrackedTransaction<'_, DB>,
) -> Result<()> {
    let routed = route(this, tx).await;
    if routed.0.update.is_none() {
        // Nothing to write (every column is a key or generated): the row must still
        // exist, and the event is the row's.
        let (stored, stamps) = read_existing_row(this, tx, routed).await?;
        return stage_updated(&stored, stamps, tx);
    }
    let (stamps, written) = write_existing_row::<M, DB>(tx, routed, |sql| {
        sql.update
            .map(|update| this.__bind_key(this.__bind_update(sqlx::query(update))))
    })
    .await?;
    if !M::__UPDATE_READS_BACK {
        return stage_updated(this, stamps, tx);
    }
    // The database may compute a generated column again on the update (an expression
    // of other columns, `ON UPDATE CURRENT_TIMESTAMP`, a trigger): the event carries
    // the row as stored, not the caller's copy.
    let query = this.__bind_key(sqlx::query(written.select_for_update));
    let rows = DB::fetch_all(tx.connection(), query).await?;
    let stored = match rows.first() {
        Some(row) => M::__from_row(row)?,
        None => return Err(Error::RowNotFound { table: M::TABLE }),
    };
    stage_updated(&stored, stamps, tx)
}

/// [`TrackedModel::update_changed`], within its `begin_write` / `end_write`.
async fn update_changed<M: TrackedRow<DB>, DB: Backend>(
    this: &M,
    before: &M,
    changed: ChangeMask,
    tx: &mut TrackedTransaction<'_, DB>,
) -> Result<usize> {
    // Routed by the row as it is: a change of owner must not send the update to the
    // new owner's table.
    let routed = route(before, tx).await;
    let (stamps, _) = write_existing_row::<M, DB>(tx, routed, |sql| {
        let statement = sql.update_changed_statement(DB::DIALECT, changed);
        let query = sqlx::query(sqlx::AssertSqlSafe(statement));
        Some(this.__bind_key(this.__bind_changed(changed, query)))
    })
    .await?;
    let stamps = with_groups(this, stamps);
    tx.stage_all(|tx| {
        let mut stager = tx.stager_with(this.distinct_id(), M::UPDATE_EVENT, stamps)?;
        let tracked = changed.intersection(M::__TRACKED_UPDATABLE);
        if !tracked.is_empty() {
            let mut writer = stager.event(M::UPDATE_EVENT);
            writer.unset_absent();
            this.__write_key_properties(&mut writer)?;
            this.__write_changed_properties(tracked, &mut writer)?;
            stager.push(writer)?;
            stage_group_identify(this, &mut stager, Some(tracked))?;
        }
        let person = changed.intersection(M::__PERSON);
        if M::__IDENTIFY && !person.is_empty() {
            stage_identify(this, None, &mut stager, Written::Changed(person))?;
        }
        this.__stage_milestones(before, changed, &mut stager)
    })?;
    Ok(changed.len())
}

/// Runs a statement that writes the row with a model's key in `table` (an `UPDATE` or a
/// `DELETE` ending in the key's `WHERE`). Touching no row means no row has that key there.
/// Runs `query` (an `UPDATE` or `DELETE` of one row by its key, for a table's SQL) in the
/// `routed` table and returns the routed stamps. For a flag-routed model whose row is not
/// there, runs it in each of the model's other tables and returns the stamps of the table
/// that held the row: a row stays where it was written when its user's route changes.
/// [`Error::RowNotFound`] names the routed table when no table has the row. Also returns the
/// SQL of the table written.
async fn write_existing_row<M: TrackedModel, DB: Backend>(
    tx: &mut TrackedTransaction<'_, DB>,
    routed: (&'static ModelSql, &'static str, Vec<Stamp>),
    query: impl Fn(&'static ModelSql) -> Option<BoundQuery<DB>>,
) -> Result<(Vec<Stamp>, &'static ModelSql)> {
    let (sql, table, stamps) = routed;
    let Some(first) = query(sql) else {
        return Ok((stamps, sql));
    };
    match write_keyed_row(tx, first, table).await {
        Err(Error::RowNotFound { .. }) if !M::__TABLE_VARIANTS.is_empty() => {}
        done => return done.map(|()| (stamps, sql)),
    }
    for other in other_tables::<M, DB>(table) {
        let Some(query) = query(other.sql) else {
            continue;
        };
        match write_keyed_row(tx, query, other.table).await {
            Ok(()) => {
                tracing::debug!(
                    routed = table,
                    found = other.table,
                    "flag routing: the row is not in the table its user is routed to now; \
                     written where it is"
                );
                return Ok((other.stamps, other.sql));
            }
            Err(Error::RowNotFound { .. }) => {}
            Err(error) => return Err(error),
        }
    }
    Err(Error::RowNotFound { table })
}

/// The row with `model`'s key as stored (locked where rows are), from the `routed` table or,
/// for a flag-routed model, whichever of its other tables holds it, with the stamps of a write
/// there; [`Error::RowNotFound`] naming the routed table when none does.
async fn read_existing_row<M: TrackedRow<DB>, DB: Backend>(
    model: &M,
    tx: &mut TrackedTransaction<'_, DB>,
    routed: (&'static ModelSql, &'static str, Vec<Stamp>),
) -> Result<(M, Vec<Stamp>)> {
    let (sql, table, stamps) = routed;
    let tables = tables_from::<M, DB>(RowTable { sql, table, stamps });
    match find_row(tx, tables, |sql| {
        model.__bind_key(sqlx::query(sql.select_for_update))
    })
    .await?
    {
        Some((row, found)) => Ok((M::__from_row(&row)?, found.stamps)),
        None => Err(Error::RowNotFound { table }),
    }
}

async fn write_keyed_row<DB: Backend>(
    tx: &mut TrackedTransaction<'_, DB>,
    query: BoundQuery<DB>,
    table: &'static str,
) -> Result<()> {
    let result = DB::execute(tx.connection(), query).await?;
    if DB::rows_affected(&result) == 0 {
        return Err(Error::RowNotFound { table });
    }
    tx.wrote();
    Ok(())
}
