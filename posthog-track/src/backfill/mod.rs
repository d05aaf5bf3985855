//! Backfill: bring a table's existing rows to PostHog through the model.
//!
//! [`Tracker::backfill`] streams a [`TrackedModel`](crate::TrackedModel)'s rows in key order
//! (keyset pagination, one page in memory at a time) and stages, through the outbox:
//!
//! - for a person model (`identify`, or fields marked `person` / `person_once`), one `$set`
//!   event per row with the person properties as they are now in `$set` / `$set_once`;
//! - for a group model (`group_type`), one `$groupidentify` per row;
//! - with [`with_events`](Backfill::with_events), the model's insert event per row, dated by
//!   the named column and sent as `historical_migration`.
//!
//! Every event's uuid is a UUIDv5 of the table, the row's key and the event: for an insert
//! event, its timestamp (the row's creation); for an update, its content. So a rerun stages
//! the same uuids for what did not change, and PostHog's uuid deduplication absorbs them. A checkpoint of
//! the last key (table `posthog_backfill`) moves in the same transaction as each page's
//! events: an interrupted run resumes after the last page it committed, and never stages a
//! page twice. A page's rows are read with a shared lock held until it commits (PostgreSQL
//! `FOR SHARE`, MySQL `LOCK IN SHARE MODE`, SQLite's write lock), so a concurrent write to
//! one of them is staged after the page's update of it, never before one carrying the value
//! it replaced.

mod checkpoint;
mod model;
mod pace;

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::Pool;
use uuid::Uuid;

use crate::backend::{Backend, Dialect};
use crate::error::{Error, Result};
use crate::event::{
    EventWriter, LIB_NAME, LIB_VERSION, Section, StagedEvent, Stager, Stamp, format_timestamp,
    is_blank,
};
use crate::mode::Mode;
use crate::model::with_groups;
use crate::outbox;
use crate::tracker::Tracker;
use checkpoint::Checkpoint;
pub use checkpoint::{TABLE as CHECKPOINT_TABLE, create_table_sql};
#[doc(hidden)]
pub use model::{
    BackfillField, BackfillIsTimestamp, BackfillIsTimestampType, BackfillModel,
    BackfillNotTimestamp, BackfillNotTimestampType, BackfillPerson, BackfillRow, BackfillSpec,
    BackfillTimestamp, BackfillTimestampProbe, BackfillTimestampType, EventTimestamp, PageSql,
};
use pace::Pacer;

/// Rows per page (and per transaction) unless [`Backfill::page_size`] says otherwise.
const DEFAULT_PAGE_SIZE: usize = 500;
/// Events a dry run shows unless [`Backfill::sample`] says otherwise.
const DEFAULT_SAMPLE: usize = 5;
/// Uuids per `IN (...)` when a restarted run looks for events still in the outbox.
const UUIDS_PER_LOOKUP: usize = 500;

/// The namespace of backfilled events' UUIDv5s.
const NAMESPACE: Uuid = Uuid::from_u128(0x5d1c_7a2e_3f4b_4e61_9a0d_8c2b_6e4f_1a37);

impl Tracker {
    /// A backfill of `M`'s existing rows in the database behind `pool`: configure it, then
    /// [`run`](Backfill::run) it.
    ///
    /// ```no_run
    /// # use posthog_track::{TrackedModel, Tracker};
    /// # #[derive(Clone, TrackedModel)]
    /// # #[tracked(table = "users", distinct_id = id)]
    /// # struct User {
    /// #     #[tracked(key, property)] id: String,
    /// #     #[tracked(person)] email: String,
    /// #     #[tracked(person)] trial_ends_at: Option<chrono::DateTime<chrono::Utc>>,
    /// #     #[tracked(property)] created_at: chrono::DateTime<chrono::Utc>,
    /// # }
    /// # async fn run(tracker: Tracker, pool: sqlx::SqlitePool) -> posthog_track::Result<()> {
    /// let report = tracker
    ///     .backfill::<User>(&pool)
    ///     .properties(["trial_ends_at"])     // only this person property
    ///     .rate(500)                         // events per second
    ///     .on_progress(|p| eprintln!("{} rows, {} events", p.rows, p.events))
    ///     .run()
    ///     .await?;
    /// println!("{report}");
    /// # Ok(()) }
    /// ```
    pub fn backfill<'p, M>(&self, pool: &'p (impl BackfillPool<M> + 'p)) -> Backfill<'p, M>
    where
        M: BackfillModel,
    {
        Backfill {
            tracker: self.clone(),
            pool,
            options: Options {
                only: None,
                rate: None,
                with_events: None,
                dry_run: false,
                restart: false,
                page_size: DEFAULT_PAGE_SIZE,
                max_rows: None,
                sample: DEFAULT_SAMPLE,
                on_progress: None,
            },
            model: PhantomData,
        }
    }
}

/// A pool a backfill of `M` can read: `sqlx::Pool<DB>` of every [`Backend`] whose sqlx types
/// can read `M`'s fields, when `M`'s key can be kept in the checkpoint (serde
/// `Serialize` + `Deserialize`, as strings, integers and uuids are). It lets
/// `tracker.backfill::<M>(&pool)` name only the model.
#[diagnostic::on_unimplemented(
    message = "`{M}` cannot be backfilled from `{Self}`",
    label = "not a pool `{M}` can be read from, with a key the checkpoint can keep",
    note = "the pool must be a `sqlx::Pool` of a backend `{M}` can be written to, and `{M}`'s \
            key type must implement `serde::Serialize` and `serde::Deserialize`"
)]
pub trait BackfillPool<M>: Sync {
    #[doc(hidden)]
    fn __run<'a>(
        &'a self,
        tracker: Tracker,
        options: Options<'a>,
    ) -> Pin<Box<dyn Future<Output = Result<BackfillReport>> + Send + 'a>>;

    #[doc(hidden)]
    fn __backend(&self) -> &'static str;
}

impl<DB, M> BackfillPool<M> for Pool<DB>
where
    DB: Backend,
    M: BackfillRow<DB> + 'static,
    M::Key: Serialize + DeserializeOwned,
{
    fn __run<'a>(
        &'a self,
        tracker: Tracker,
        options: Options<'a>,
    ) -> Pin<Box<dyn Future<Output = Result<BackfillReport>> + Send + 'a>> {
        Box::pin(run::<M, DB>(tracker, self, options))
    }

    fn __backend(&self) -> &'static str {
        DB::DIALECT.name()
    }
}

/// Progress callback of a [`Backfill`].
type ProgressFn<'p> = Box<dyn FnMut(&BackfillProgress) + Send + 'p>;

/// A backfill of model `M`'s rows, being configured; see [`Tracker::backfill`].
#[must_use = "a backfill does nothing until `.run().await`"]
pub struct Backfill<'p, M> {
    tracker: Tracker,
    pool: &'p (dyn BackfillPool<M> + 'p),
    options: Options<'p>,
    model: PhantomData<fn() -> M>,
}

/// The options of a [`Backfill`]. Not public API.
#[doc(hidden)]
pub struct Options<'p> {
    only: Option<Vec<String>>,
    rate: Option<u32>,
    with_events: Option<String>,
    dry_run: bool,
    restart: bool,
    page_size: usize,
    max_rows: Option<u64>,
    sample: usize,
    on_progress: Option<ProgressFn<'p>>,
}

impl<M> fmt::Debug for Backfill<'_, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let options = &self.options;
        f.debug_struct("Backfill")
            .field("backend", &self.pool.__backend())
            .field("only", &options.only)
            .field("rate", &options.rate)
            .field("with_events", &options.with_events)
            .field("dry_run", &options.dry_run)
            .field("restart", &options.restart)
            .field("page_size", &options.page_size)
            .field("max_rows", &options.max_rows)
            .finish_non_exhaustive()
    }
}

/// How far a running backfill got; handed to [`Backfill::on_progress`] after every page.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct BackfillProgress {
    /// Rows read so far in this run.
    pub rows: u64,
    /// Events staged so far in this run (counted, in a dry run).
    pub events: u64,
    /// Rows read so far by this backfill across runs (this run and those it resumed).
    pub total_rows: u64,
    /// Time since the run started.
    pub elapsed: Duration,
    /// Rows read per second in this run.
    pub rows_per_second: f64,
    /// Events staged per second in this run.
    pub events_per_second: f64,
    /// The last key done, as JSON.
    pub last_key: Option<String>,
}

/// What a backfill run did; returned by [`Backfill::run`]. `Display` prints a summary.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BackfillReport {
    /// The model's table.
    pub model: &'static str,
    /// The checkpoint's name in `posthog_backfill`: the table and a digest of the options.
    pub checkpoint: String,
    /// Rows read in this run.
    pub rows: u64,
    /// Events staged in this run (in a dry run: that would have been staged).
    pub events: u64,
    /// `$set` person updates among `events`.
    pub person_updates: u64,
    /// `$groupidentify` events among `events`.
    pub group_updates: u64,
    /// Historical insert events among `events` (`with_events`).
    pub insert_events: u64,
    /// Rows that could not be attributed: no distinct id (person update, insert event) or no
    /// group key (`$groupidentify`); each such row and event is counted once here.
    pub skipped_unattributed: u64,
    /// Events left out because they carried nothing: a person update whose properties are
    /// all `None`, or an insert event whose `with_events` column is `None`.
    pub skipped_empty: u64,
    /// Events of a restarted run that were still waiting in the outbox, so not staged again.
    pub already_in_outbox: u64,
    /// Pages (transactions) committed.
    pub pages: u64,
    /// How long the run took.
    pub duration: Duration,
    /// The key this run started after (JSON), when it resumed an interrupted backfill.
    pub resumed_from: Option<String>,
    /// The checkpoint said this backfill had already read every row, so this run did
    /// nothing (see [`Backfill::restart`]).
    pub already_complete: bool,
    /// Every row has been read: the backfill is complete.
    pub complete: bool,
    /// A dry run: nothing was staged and the checkpoint did not move.
    pub dry_run: bool,
    /// This run moved the checkpoint, so the next one resumes after it: false for a dry run
    /// and for a tracker without an API key, whose events are not kept.
    pub checkpoint_kept: bool,
    /// The first events of a dry run (at most [`Backfill::sample`]).
    pub sample: Vec<StagedEvent>,
}

impl fmt::Display for BackfillReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = if self.dry_run {
            "would stage"
        } else {
            "staged"
        };
        write!(
            f,
            "backfill of `{}`{}: {} rows read, {verb} {} events ({} person updates, {} group \
             updates, {} historical insert events)",
            self.model,
            if self.dry_run { " (dry run)" } else { "" },
            self.rows,
            self.events,
            self.person_updates,
            self.group_updates,
            self.insert_events,
        )?;
        if self.skipped_unattributed + self.skipped_empty + self.already_in_outbox > 0 {
            write!(
                f,
                "; skipped {} without distinct id or group key, {} empty, {} already in the \
                 outbox",
                self.skipped_unattributed, self.skipped_empty, self.already_in_outbox
            )?;
        }
        write!(f, " in {:.2?}", self.duration)?;
        if let Some(key) = &self.resumed_from {
            write!(f, ", resumed after key {key}")?;
        }
        if self.already_complete {
            write!(f, "; already complete, nothing to do")?;
        } else if self.complete {
            write!(f, "; complete")?;
        } else if self.checkpoint_kept {
            write!(f, "; incomplete, the next run resumes")?;
        } else {
            write!(
                f,
                "; stopped before the last row, and nothing was kept: the next run starts \
                 where this one did"
            )?;
        }
        write!(f, " (checkpoint `{}`)", self.checkpoint)
    }
}

impl<'p, M> Backfill<'p, M>
where
    M: BackfillModel,
{
    /// Backfills only these person (or group) properties, by property name, field name or
    /// column: the day `trial_ends_at` becomes `#[tracked(person)]`, send just it. A name
    /// that is no such property fails the run with [`Error::UnknownColumn`], which lists the
    /// valid ones. Insert events (`with_events`) always carry every tracked property. A
    /// group model's `$groupidentify` is staged only when a group property is named (not
    /// only person properties), and a list naming nothing fails with
    /// [`Error::NothingToBackfill`] unless `with_events` is given.
    pub fn properties<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.options.only = Some(names.into_iter().map(Into::into).collect());
        self
    }

    setters! {
        /// At most this many events per second, averaged from the start of the run (pages are
        /// sized to a tenth of a second of events), so PostHog's ingestion is not flooded.
        /// Unlimited by default, and with `0`.
        pub fn rate(events_per_second: u32) => options.rate = Some(events_per_second);

        /// Also stages the model's insert event for every row, dated by `column` (a field or
        /// column of the model holding a timestamp, e.g. `created_at`) and sent as
        /// `historical_migration`. Rows whose column is `None` get no insert event. Needs outbox
        /// delivery (the default): the after-commit queue has no per-event historical flag.
        pub fn with_events(column: impl Into<String>) => options.with_events = Some(column.into());

        /// Reads every row and counts the events a run would stage, keeps a
        /// [`sample`](BackfillReport::sample) of them, and stages nothing (the checkpoint does not
        /// move either).
        pub fn dry_run() => options.dry_run = true;

        /// Starts from the first row again even when the checkpoint says this backfill is
        /// complete or part-way (for example after the data changed). Insert events
        /// ([`with_events`](Self::with_events)) and updates of rows that did not change get
        /// the same uuids, which PostHog deduplicates; a changed row's person or group update
        /// gets a new one, and reaches PostHog. Events of the earlier run still waiting in the
        /// outbox are not staged twice.
        pub fn restart() => options.restart = true;

        /// Rows per page, that is per read and per transaction (default 500). A rate makes pages
        /// smaller.
        pub fn page_size(rows: usize) => options.page_size = rows.max(1);

        /// Stops after this many rows (the last page is cut to fit); the next run resumes, unless
        /// nothing was kept (a dry run, or a tracker without an API key). For backfills
        /// spread over maintenance windows.
        pub fn max_rows(rows: u64) => options.max_rows = Some(rows);

        /// How many events a dry run keeps in [`BackfillReport::sample`] (default 5).
        pub fn sample(events: usize) => options.sample = events;

        /// Called after every page with the progress so far (also logged with `tracing` at
        /// `info`, target `posthog_track::backfill`).
        pub fn on_progress(callback: impl FnMut(&BackfillProgress) + Send + 'p) =>
            options.on_progress = Some(Box::new(callback));
    }

    /// Runs the backfill to the end (or to [`max_rows`](Backfill::max_rows)).
    ///
    /// Fails before staging anything when a name given to `properties` or `with_events` is
    /// not valid ([`Error::UnknownColumn`], [`Error::NotATimestamp`]), when the model has
    /// nothing to backfill ([`Error::NothingToBackfill`]), when it is flag-routed
    /// (`table_variant`: [`Error::Unsupported`], since a run reads one table), or when the
    /// tracker is disabled.
    /// A failure part-way leaves every committed page committed, with its checkpoint: run
    /// again to resume.
    ///
    /// A tracker without an API key (its dry-run mode) prints the events, as it does those of
    /// tracked writes, and leaves the checkpoint alone, so the run with the key still sends
    /// every row.
    pub async fn run(self) -> Result<BackfillReport> {
        self.pool.__run(self.tracker, self.options).await
    }
}

/// Why a backfill stops when a page would start with the key the last one ended with.
const KEY_NOT_ORDERED: &str = "the key as stored does not compare with the key as bound \
    (SQLite compares text byte by byte: a timestamp stored as '2024-01-01T00:00:02.000Z' sorts \
    after the '2024-01-01T00:00:02+00:00' sqlx binds for it), so each page would read its last \
    row again; store the key column as sqlx writes it (or as a number), or backfill through a \
    model keyed by another unique column";

/// Why a backfill stops at a row whose key holds a NULL.
const KEY_HOLDS_NULL: &str = "a key column of the table holds NULL, and keyset pagination \
    cannot page through it (`key > last` is never true of a NULL: the rows after it, or the \
    NULL-keyed rows themselves, would never be sent while the run said it was complete); give \
    those rows a key, or backfill through a model keyed by a NOT NULL unique column";

/// The error of a backfill of `table` whose key column holds a NULL.
fn key_holds_null<DB: Backend>(table: &str) -> Error {
    Error::Unsupported {
        operation: format!("backfill of `{table}`"),
        backend: DB::DIALECT.name(),
        reason: KEY_HOLDS_NULL,
    }
}

/// Whether a key (a value, or a composite key's tuple) is or holds a NULL.
fn holds_null<K: Serialize>(key: &K) -> bool {
    match serde_json::to_value(key) {
        Ok(serde_json::Value::Null) => true,
        Ok(serde_json::Value::Array(items)) => items.iter().any(serde_json::Value::is_null),
        _ => false,
    }
}

/// How many times in a row a page the database rolled back (see [`lost_deadlock`]) is read
/// again before the run fails.
const PAGE_ATTEMPTS: u32 = 5;

/// Whether `error` says the database rolled the statement's transaction back to break a
/// deadlock (SQLSTATE 40P01 on PostgreSQL, 40001 on MySQL/MariaDB, error 1213) or for a
/// serialization failure (40001: a row a REPEATABLE READ page locks changed meanwhile).
fn lost_deadlock(error: &sqlx::Error) -> bool {
    let sqlx::Error::Database(database) = error else {
        return false;
    };
    matches!(database.code().as_deref(), Some("40P01" | "40001"))
}

/// Why a model with `table_variant`s is not backfilled.
const ROUTED_MODEL: &str = "the model has `table_variant` tables, and a backfill pages \
    through one table: the rows of the others would never be sent while the run said it was \
    complete. Backfill each table through a model of its own without `table_variant` (the same \
    fields, `table = \"...\"`)";

/// [`Backfill::run`] on one backend.
async fn run<M, DB>(
    tracker: Tracker,
    pool: &Pool<DB>,
    mut options: Options<'_>,
) -> Result<BackfillReport>
where
    M: BackfillRow<DB>,
    M::Key: Serialize + DeserializeOwned,
    DB: Backend,
{
    let started = Instant::now();
    if !M::__TABLE_VARIANTS.is_empty() {
        return Err(Error::Unsupported {
            operation: format!("backfill of `{}`", M::TABLE),
            backend: DB::DIALECT.name(),
            reason: ROUTED_MODEL,
        });
    }
    let plan = Plan::resolve::<M>(options.only.as_deref(), options.with_events.as_deref())?;
    let dispatch = &tracker.inner.dispatch;
    let mode = tracker.mode();
    if !options.dry_run {
        if mode == Mode::Disabled {
            return Err(Error::Disabled {
                operation: "backfill",
            });
        }
        if plan.events_field.is_some() && mode == Mode::Live && !dispatch.writes_outbox() {
            return Err(Error::Unsupported {
                operation: format!("backfill of `{}` with_events", M::TABLE),
                backend: DB::DIALECT.name(),
                reason: "historical insert events need outbox delivery (the default): the \
                             after-commit queue sends every event of a batch alike",
            });
        }
    }
    let mut report = BackfillReport {
        model: M::TABLE,
        checkpoint: plan.checkpoint.clone(),
        rows: 0,
        events: 0,
        person_updates: 0,
        group_updates: 0,
        insert_events: 0,
        skipped_unattributed: 0,
        skipped_empty: 0,
        already_in_outbox: 0,
        pages: 0,
        duration: Duration::ZERO,
        resumed_from: None,
        already_complete: false,
        complete: false,
        dry_run: options.dry_run,
        checkpoint_kept: false,
        sample: Vec::new(),
    };

    // Only events that are kept (live mode) move the checkpoint: a run of a tracker without an
    // API key prints its events, and must not mark the backfill done for the run that sends.
    let persist = !options.dry_run && mode == Mode::Live;
    report.checkpoint_kept = persist;
    let (mut checkpoint, existed) = if !persist {
        match checkpoint::peek(pool, &plan.checkpoint).await? {
            Some(found) => (found, true),
            None => (Checkpoint::default(), false),
        }
    } else {
        checkpoint::load(pool, &plan.checkpoint, &plan.description).await?
    };
    let mut look_in_outbox = false;
    if options.restart && existed {
        if !persist {
            checkpoint = Checkpoint::default();
        } else {
            checkpoint = checkpoint::reset(pool, &plan.checkpoint, &checkpoint).await?;
            look_in_outbox = dispatch.writes_outbox();
        }
    }
    if checkpoint.done {
        report.already_complete = true;
        report.complete = true;
        report.duration = started.elapsed();
        tracing::info!(
            target: "posthog_track::backfill",
            model = M::TABLE,
            checkpoint = %plan.checkpoint,
            "backfill already complete; nothing to do (restart() starts over)"
        );
        return Ok(report);
    }
    report.resumed_from = checkpoint.last_key.clone();
    let mut last_key: Option<M::Key> = match &checkpoint.last_key {
        Some(json) => Some(
            serde_json::from_str(json).map_err(|source| Error::BadCheckpoint {
                checkpoint: plan.checkpoint.clone(),
                source,
            })?,
        ),
        None => None,
    };
    let relay = if options.dry_run {
        None
    } else {
        dispatch.track_pool(pool)
    };
    let pacer = Pacer::new(if options.dry_run { None } else { options.rate });
    let rows_per_page = pacer.rows_per_page(options.page_size, plan.events_per_row());
    let pages = M::__BACKFILL.pages(DB::DIALECT);
    // A run that stages reads each page's rows with a shared lock until the page commits: a
    // write to one of them waits for the page (and stages its own update after it) or the page
    // waits for the write (and reads what it wrote). Without it, a write committed between a
    // page's read and its commit had its new value overwritten in PostHog by the page's
    // staler one, staged after it. SQLite's write lock, taken before the read, does as much.
    let lock = match DB::DIALECT {
        Dialect::Postgres if persist => " FOR SHARE",
        Dialect::MySql if persist => " LOCK IN SHARE MODE",
        _ => "",
    };
    // MySQL's page after a composite key spells the row comparison out (see `PageSql`).
    let key_columns = M::__BACKFILL
        .fields
        .iter()
        .filter(|field| field.key)
        .count();
    let spelled_out = DB::DIALECT == Dialect::MySql && key_columns > 1;
    let (first_page, next_page) = (
        format!("{}{lock}", pages.first),
        format!("{}{lock}", pages.after),
    );
    tracing::info!(
        target: "posthog_track::backfill",
        model = M::TABLE,
        checkpoint = %plan.checkpoint,
        resumed_from = ?checkpoint.last_key,
        dry_run = options.dry_run,
        "backfill started: {}",
        plan.description
    );

    // Deadlocks lost in a row by the page being read.
    let mut lost_deadlocks = 0;
    loop {
        let mut limit = rows_per_page as u64;
        if let Some(max) = options.max_rows {
            limit = limit.min(max.saturating_sub(report.rows));
            if limit == 0 {
                break;
            }
        }
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut tx = match DB::DIALECT {
            // Take the write lock before reading the page, or the first write of a
            // transaction that read before a relay's commit fails with SQLITE_BUSY_SNAPSHOT.
            Dialect::Sqlite if persist => pool.begin_with("BEGIN IMMEDIATE").await?,
            // At READ COMMITTED, a row the page's `FOR SHARE` waited for comes back as its
            // new version, in its old place: a key changed meanwhile is out of order, and as
            // the page's last row it moved the checkpoint past rows never read. At REPEATABLE
            // READ the read fails instead (40001), and the page is read again.
            Dialect::Postgres if persist => {
                pool.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ")
                    .await?
            }
            _ => pool.begin().await?,
        };
        let query = match &last_key {
            None => DB::bind_i64(sqlx::query(sqlx::AssertSqlSafe(first_page.clone())), limit),
            Some(key) => {
                let mut query = sqlx::query(sqlx::AssertSqlSafe(next_page.clone()));
                if spelled_out {
                    for len in 1..=key_columns {
                        query = M::__bind_key_prefix(key, len, query);
                    }
                } else {
                    query = M::__bind_key_value(key, query);
                }
                DB::bind_i64(query, limit)
            }
        };
        let rows = match DB::fetch_all(&mut tx, query).await {
            Ok(rows) => {
                lost_deadlocks = 0;
                rows
            }
            // The page's shared lock deadlocked with a transaction that locks several of its
            // rows, or (PostgreSQL) a row it waited for was changed meanwhile, and the
            // database rolled the page back: nothing of it was staged, so read it again (in a
            // new transaction, which sees the change).
            Err(error) if lost_deadlocks < PAGE_ATTEMPTS && lost_deadlock(&error) => {
                drop(tx);
                lost_deadlocks += 1;
                tracing::info!(
                    target: "posthog_track::backfill",
                    model = M::TABLE,
                    attempt = lost_deadlocks,
                    "backfill page rolled back by the database (a deadlock, or a row changed \
                     while the page waited for it); reading it again: {error}"
                );
                tokio::time::sleep(Duration::from_millis(50) * lost_deadlocks).await;
                continue;
            }
            Err(error) => return Err(error.into()),
        };
        let Some(last_row) = rows.last() else {
            // Keyset pagination reads no row whose key holds a NULL (PostgreSQL sorts them
            // last, after every page): such rows were never sent, so the run is not complete.
            if !DB::fetch_all(&mut tx, sqlx::query(pages.null_key))
                .await?
                .is_empty()
            {
                return Err(key_holds_null::<DB>(M::TABLE));
            }
            if persist {
                let next = Checkpoint {
                    done: true,
                    generation: checkpoint.next_generation(),
                    ..checkpoint.clone()
                };
                checkpoint::advance::<DB>(&mut tx, &plan.checkpoint, &checkpoint, &next).await?;
                tx.commit().await?;
            }
            report.complete = true;
            break;
        };
        // A page starts after the last key read. Its first row being that key again means the
        // database does not order the stored keys as it compares them with the bound ones
        // (SQLite compares text byte by byte): the run would read that row for ever.
        if let (Some(previous), Some(first)) = (&last_key, rows.first())
            && key_json(&M::__key_from_row(first)?)? == key_json(previous)?
        {
            return Err(Error::Unsupported {
                operation: format!("backfill of `{}`", M::TABLE),
                backend: DB::DIALECT.name(),
                reason: KEY_NOT_ORDERED,
            });
        }
        let page_key = M::__key_from_row(last_row)?;
        let page_key_json = key_json(&page_key)?;

        let mut page = Page::default();
        for row in &rows {
            let model = M::__from_row(row)?;
            let key = M::__key_from_row(row)?;
            // A NULL in the key (MySQL and SQLite sort them first): the page after it would
            // read nothing (`key > NULL`), and the run would say complete. Nothing of the
            // page is staged.
            if holds_null(&key) {
                return Err(key_holds_null::<DB>(M::TABLE));
            }
            let key = key_json(&key)?;
            plan.stage_row(&model, &key, &mut page)?;
        }
        if look_in_outbox {
            report.already_in_outbox += page.drop_pending::<DB>(&mut tx).await?;
        }
        report.rows += rows.len() as u64;
        report.skipped_unattributed += page.skipped_unattributed;
        report.skipped_empty += page.skipped_empty;
        report.pages += 1;

        if options.dry_run {
            report.events += (page.live.len() + page.past.len()) as u64;
            report.person_updates += page.person_updates;
            report.group_updates += page.group_updates;
            report.insert_events += page.past.len() as u64;
            let room = options.sample.saturating_sub(report.sample.len());
            report
                .sample
                .extend(page.live.into_iter().chain(page.past).take(room));
            drop(tx);
        } else {
            let live = dispatch.apply_before_send(page.live)?;
            let past = dispatch.apply_before_send(page.past)?;
            // Counted after the `before_send` hook: an event it drops is not staged.
            let staged = (live.len() + past.len()) as u64;
            let named = |name: &str| live.iter().filter(|event| event.event == name).count();
            report.events += staged;
            report.person_updates += named("$set") as u64;
            report.group_updates += named("$groupidentify") as u64;
            report.insert_events += past.len() as u64;
            if dispatch.writes_outbox() {
                // One notification for the page's commit, when another process relays.
                let notify = DB::DIALECT == crate::backend::Dialect::Postgres
                    && !(live.is_empty() && past.is_empty())
                    && dispatch.notifies_relays(relay);
                outbox::write_marked::<DB>(&mut tx, &live, false, false).await?;
                outbox::write_marked::<DB>(&mut tx, &past, true, notify).await?;
            }
            if persist {
                let next = Checkpoint {
                    last_key: Some(page_key_json.clone()),
                    rows: checkpoint
                        .rows
                        .saturating_add(i64::try_from(rows.len()).unwrap_or(i64::MAX)),
                    events: checkpoint
                        .events
                        .saturating_add(i64::try_from(staged).unwrap_or(i64::MAX)),
                    done: false,
                    generation: checkpoint.next_generation(),
                };
                checkpoint::advance::<DB>(&mut tx, &plan.checkpoint, &checkpoint, &next).await?;
                checkpoint = next;
            }
            tx.commit().await?;
            let mut committed = live;
            committed.extend(past);
            dispatch.committed(relay, committed).await;
        }
        last_key = Some(page_key);

        let elapsed = started.elapsed();
        let seconds = elapsed.as_secs_f64().max(1e-9);
        #[allow(clippy::cast_precision_loss)]
        let progress = BackfillProgress {
            rows: report.rows,
            events: report.events,
            // The checkpoint counts this run's committed rows too, when it is kept.
            total_rows: u64::try_from(checkpoint.rows).unwrap_or(0)
                + if persist { 0 } else { report.rows },
            elapsed,
            rows_per_second: report.rows as f64 / seconds,
            events_per_second: report.events as f64 / seconds,
            last_key: Some(page_key_json),
        };
        tracing::info!(
            target: "posthog_track::backfill",
            model = M::TABLE,
            rows = progress.rows,
            events = progress.events,
            rows_per_second = progress.rows_per_second,
            events_per_second = progress.events_per_second,
            last_key = ?progress.last_key,
            "backfill progress"
        );
        if let Some(callback) = &mut options.on_progress {
            callback(&progress);
        }
        let wait = pacer.delay(report.events, started.elapsed());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
    report.duration = started.elapsed();
    tracing::info!(target: "posthog_track::backfill", "{report}");
    Ok(report)
}

fn key_json<K: Serialize>(key: &K) -> Result<String> {
    serde_json::to_string(key).map_err(|source| Error::Serialize {
        event: Cow::Borrowed("backfill"),
        property: Cow::Borrowed("key"),
        source,
    })
}

/// The events of one page, and what was left out.
#[derive(Default)]
struct Page {
    /// Person and group updates.
    live: Vec<StagedEvent>,
    /// Historical insert events.
    past: Vec<StagedEvent>,
    person_updates: u64,
    group_updates: u64,
    skipped_unattributed: u64,
    skipped_empty: u64,
}

impl Page {
    /// Leaves out the events still waiting in the outbox (a restarted run's); returns how
    /// many. The outbox has no index on uuid, so this is only done after a restart.
    async fn drop_pending<DB: Backend>(&mut self, conn: &mut DB::Connection) -> Result<u64> {
        let mut pending = std::collections::HashSet::new();
        let uuids: Vec<String> = self
            .live
            .iter()
            .chain(&self.past)
            .map(|event| event.uuid.hyphenated().to_string())
            .collect();
        for chunk in uuids.chunks(UUIDS_PER_LOOKUP) {
            let mut sql = "SELECT uuid FROM posthog_outbox WHERE uuid IN (".to_owned();
            for n in 1..=chunk.len() {
                if n > 1 {
                    sql.push_str(", ");
                }
                DB::DIALECT.push_placeholder(&mut sql, n);
            }
            sql.push(')');
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for uuid in chunk {
                query = DB::bind_text(query, uuid);
            }
            let rows = DB::fetch_all(conn, query)
                .await
                .map_err(|error| outbox::explain(error, DB::DIALECT))?;
            for row in &rows {
                pending.insert(DB::text(row, 0)?);
            }
        }
        if pending.is_empty() {
            return Ok(0);
        }
        let before = self.live.len() + self.past.len();
        let keep = |event: &StagedEvent| !pending.contains(&event.uuid.hyphenated().to_string());
        self.live.retain(keep);
        self.past.retain(keep);
        Ok((before - self.live.len() - self.past.len()) as u64)
    }
}

/// What a run stages, resolved from the model and the options.
struct Plan {
    person: bool,
    group: Option<&'static str>,
    /// The property names sent; all of them when `None`.
    only: Option<Vec<&'static str>>,
    events_field: Option<usize>,
    checkpoint: String,
    description: String,
}

impl Plan {
    fn resolve<M: BackfillModel>(
        only: Option<&[String]>,
        with_events: Option<&str>,
    ) -> Result<Self> {
        let fields = M::__BACKFILL.fields;
        let person = M::__IDENTIFY
            || fields
                .iter()
                .any(|field| field.person != BackfillPerson::No);
        let group = M::__GROUP_TYPE;
        let eligible = |field: &BackfillField| {
            field.property.is_some() && (group.is_some() || field.person != BackfillPerson::No)
        };
        let mut chosen = Vec::new();
        // Whether a person property is among those chosen (all are, without `only`).
        let mut person_chosen = only.is_none() && person;
        // Whether a group property (a field that is no person property) is among those
        // chosen: a `$groupidentify` with none would carry an empty `$group_set`.
        let mut group_chosen = only.is_none() && group.is_some();
        match only {
            None => {}
            Some(names) => {
                for name in names {
                    let found = fields.iter().position(|field| {
                        eligible(field)
                            && (field.field == name
                                || field.column == name
                                || field.property == Some(name.as_str()))
                    });
                    let Some(index) = found else {
                        return Err(Error::UnknownColumn {
                            model: M::TABLE,
                            what: if group.is_some() {
                                "group property to backfill"
                            } else {
                                "person property to backfill"
                            },
                            name: name.clone(),
                            valid: fields
                                .iter()
                                .filter(|field| eligible(field))
                                .filter_map(|field| field.property.map(str::to_owned))
                                .collect(),
                        });
                    };
                    person_chosen |= fields[index].person != BackfillPerson::No;
                    group_chosen |= fields[index].person == BackfillPerson::No;
                    chosen.push(index);
                }
            }
        }
        // In field order, each once: the same properties named in another order, by another
        // of their names or twice are the same backfill, with the same checkpoint.
        chosen.sort_unstable();
        chosen.dedup();
        let chosen: Vec<&'static str> = chosen
            .into_iter()
            .map(|index| fields[index].property.unwrap_or(fields[index].field))
            .collect();
        let events_field = match with_events {
            None => None,
            Some(name) => Some(
                fields
                    .iter()
                    .position(|field| field.field == name || field.column == name)
                    .ok_or_else(|| Error::UnknownColumn {
                        model: M::TABLE,
                        what: crate::error::WITH_EVENTS_COLUMN,
                        name: name.to_owned(),
                        // Only the timestamp fields: any other is refused as no timestamp.
                        valid: (0..fields.len())
                            .filter(|&i| M::__is_timestamp(i))
                            .map(|i| fields[i].field.to_owned())
                            .collect(),
                    })?,
            ),
        };
        // Checked from the field's type, before a row is read: on an empty table the run
        // would otherwise complete (and its checkpoint say done).
        if let Some(index) = events_field
            && !M::__is_timestamp(index)
        {
            return Err(Error::NotATimestamp {
                model: M::TABLE,
                column: fields[index].column.to_owned(),
                valid: (0..fields.len())
                    .filter(|&i| M::__is_timestamp(i))
                    .map(|i| fields[i].field.to_owned())
                    .collect(),
            });
        }
        // A group model's backfill limited to group properties stages no person updates, and
        // one limited to person properties no group updates.
        let person = person_chosen;
        let group = group.filter(|_| group_chosen);
        // A model with nothing to send, or `properties([])` that chose nothing: refused, rather
        // than a run that reads every row, stages nothing and marks itself complete.
        if !person && group.is_none() && events_field.is_none() {
            return Err(Error::NothingToBackfill { model: M::TABLE });
        }
        // Without a distinct id every person update and insert event would be skipped: say so
        // before reading a row. (A group model's `$groupidentify` needs only its group key, so
        // a group model backfills without one when no person property is chosen.)
        if !M::__BACKFILL.distinct_id {
            let what = if events_field.is_some() {
                Some("insert events")
            } else if person {
                Some("person updates")
            } else {
                None
            };
            if let Some(what) = what {
                return Err(Error::BackfillWithoutDistinctId {
                    model: M::TABLE,
                    what,
                });
            }
        }
        let mut description = String::new();
        if person {
            description.push_str("$set");
        }
        if let Some(group) = group {
            if !description.is_empty() {
                description.push_str(" + ");
            }
            description.push_str("$groupidentify(");
            description.push_str(group);
            description.push(')');
        }
        if only.is_some() {
            description.push_str(" of [");
            description.push_str(&chosen.join(", "));
            description.push(']');
        }
        if let Some(index) = events_field {
            if !description.is_empty() {
                description.push_str(" + ");
            }
            description.push_str(M::INSERT_EVENT);
            description.push_str(" dated by ");
            description.push_str(fields[index].column);
        }
        // The checkpoint belongs to this model as it is: its fields, columns, properties and
        // person properties, besides what the run sends. Another model on the same table, or
        // this one with a property added (the drift guard's case), starts a run of its own
        // instead of finding the other's complete.
        let signature: String = fields
            .iter()
            .map(|field| {
                format!(
                    "{}:{}:{}:{:?}:{}\n",
                    field.field,
                    field.column,
                    field.property.unwrap_or_default(),
                    field.person,
                    field.key
                )
            })
            .collect();
        let digest = {
            use sha1::Digest as _;
            let hash = sha1::Sha1::digest(
                format!(
                    "{}\n{description}\n{}\n{signature}",
                    M::TABLE,
                    M::INSERT_EVENT
                )
                .as_bytes(),
            );
            hash.iter()
                .take(8)
                .map(|byte| format!("{byte:02x}"))
                .collect::<String>()
        };
        let table: String = M::TABLE.chars().take(200).collect();
        Ok(Plan {
            person,
            group,
            only: only.map(|_| chosen.clone()),
            events_field,
            checkpoint: format!("{table}:{digest}"),
            description,
        })
    }

    /// The entries of a JSON object (`$set`, `$set_once`, the plain properties) that were
    /// chosen with `properties([...])`; all of them when none were.
    fn chosen(
        &self,
        object: Option<&serde_json::Value>,
    ) -> serde_json::Map<String, serde_json::Value> {
        let Some(serde_json::Value::Object(object)) = object else {
            return serde_json::Map::new();
        };
        object
            .iter()
            .filter(|(name, _)| {
                self.only
                    .as_ref()
                    .is_none_or(|only| only.contains(&name.as_str()))
            })
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect()
    }

    fn events_per_row(&self) -> usize {
        usize::from(self.person)
            + usize::from(self.group.is_some())
            + usize::from(self.events_field.is_some())
    }

    /// Stages the events of one row into `page`.
    fn stage_row<M: BackfillModel>(&self, model: &M, key: &str, page: &mut Page) -> Result<()> {
        let stamps = with_groups(model, Vec::new());
        // A blank id is no id, as in live writes: PostHog refuses an empty one.
        let distinct_id = model.distinct_id().filter(|id| !is_blank(id));
        let properties = row_properties(model)?;
        let mut unattributed = false;
        if self.person {
            match &distinct_id {
                None => unattributed = true,
                Some(distinct_id) => {
                    let set = self.chosen(properties.get("$set"));
                    let set_once = self.chosen(properties.get("$set_once"));
                    if set.is_empty() && set_once.is_empty() {
                        page.skipped_empty += 1;
                    } else {
                        let staged = stage_live_update(
                            M::TABLE,
                            key,
                            distinct_id.clone(),
                            stamps.clone(),
                            page,
                            |stager| {
                                let mut writer = stager.event("$set");
                                for (section, values) in
                                    [(Section::Set, set), (Section::SetOnce, set_once)]
                                {
                                    for (name, value) in &values {
                                        writer.dynamic_property(section, name, value)?;
                                    }
                                }
                                Ok(writer)
                            },
                        )?;
                        page.person_updates += staged;
                    }
                }
            }
        }
        if let Some(group_type) = self.group {
            match model.__group_key().filter(|key| !is_blank(key)) {
                None => unattributed = true,
                Some(group_key) => {
                    let mut plain = properties.clone();
                    for reserved in ["$lib", "$lib_version", "$set", "$set_once"] {
                        plain.remove(reserved);
                    }
                    let group_set = serde_json::Value::Object(
                        self.chosen(Some(&serde_json::Value::Object(plain))),
                    );
                    let group_distinct_id = format!("${group_type}_{group_key}");
                    let staged = stage_live_update(
                        M::TABLE,
                        key,
                        group_distinct_id.clone(),
                        stamps.clone(),
                        page,
                        |stager| {
                            let mut writer = stager.event_for("$groupidentify", group_distinct_id);
                            for (name, value) in [
                                ("$group_type", group_type.into()),
                                ("$group_key", group_key.into()),
                                ("$group_set", group_set),
                            ] {
                                writer.dynamic_property(Section::Properties, name, &value)?;
                            }
                            Ok(writer)
                        },
                    )?;
                    page.group_updates += staged;
                }
            }
        }
        if let Some(index) = self.events_field {
            let at = match model.__timestamp_of(index) {
                BackfillTimestamp::At(at) => Some(at),
                BackfillTimestamp::Missing => None,
                BackfillTimestamp::NotATimestamp => {
                    let fields = M::__BACKFILL.fields;
                    return Err(Error::NotATimestamp {
                        model: M::TABLE,
                        column: fields[index].column.to_owned(),
                        valid: (0..fields.len())
                            .filter(|&i| {
                                model.__timestamp_of(i) != BackfillTimestamp::NotATimestamp
                            })
                            .map(|i| fields[i].field.to_owned())
                            .collect(),
                    });
                }
            };
            match (&distinct_id, at) {
                (None, _) => unattributed = true,
                (Some(_), None) => page.skipped_empty += 1,
                (Some(distinct_id), Some(at)) => {
                    let mut events = Vec::with_capacity(1);
                    let mut stager =
                        Stager::new(&mut events, distinct_id.clone()).with_stamps(stamps);
                    let mut writer = stager.event_at(M::INSERT_EVENT.into(), format_timestamp(at));
                    model.__write_properties(&mut writer)?;
                    stager.push(writer)?;
                    for mut event in events {
                        settle_uuid(M::TABLE, key, &mut event, true);
                        page.past.push(event);
                    }
                }
            }
        }
        if unattributed {
            page.skipped_unattributed += 1;
        }
        Ok(())
    }
}

/// Every property a row's events carry, as the model writes them (its insert event's
/// properties, with `$set` and `$set_once`): one writer for live writes and backfills alike.
fn row_properties<M: BackfillModel>(
    model: &M,
) -> Result<serde_json::Map<String, serde_json::Value>> {
    let mut scratch = Vec::with_capacity(1);
    let mut stager = Stager::new(&mut scratch, String::new());
    let mut writer = stager.event(M::INSERT_EVENT);
    model.__write_properties(&mut writer)?;
    stager.push(writer)?;
    let payload = scratch.pop().map(|event| event.payload).unwrap_or_default();
    payload_properties(M::INSERT_EVENT, &payload)
}

/// The properties of event `name`'s `payload`.
fn payload_properties(
    name: &'static str,
    payload: &str,
) -> Result<serde_json::Map<String, serde_json::Value>> {
    let mut event: serde_json::Value =
        serde_json::from_str(payload).map_err(|source| Error::Serialize {
            event: Cow::Borrowed(name),
            property: Cow::Borrowed("properties"),
            source,
        })?;
    // Canonical (keys sorted at every level), so a map property's order, a `HashMap`'s own,
    // cannot reach the `$set` a uuid is made of.
    match event
        .get_mut("properties")
        .map(serde_json::Value::take)
        .map(sort_keys)
    {
        Some(serde_json::Value::Object(properties)) => Ok(properties),
        _ => Ok(serde_json::Map::new()),
    }
}

/// `value` with the keys of every object in it sorted. serde_json's maps sort their keys,
/// unless its `preserve_order` feature is on (any crate of the application's build can turn
/// it on), in which case they keep the order the keys were written in.
fn sort_keys(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(object) => {
            let mut entries: Vec<(String, serde_json::Value)> = object
                .into_iter()
                .map(|(key, value)| (key, sort_keys(value)))
                .collect();
            entries.sort_by(|(a, _), (b, _)| a.cmp(b));
            serde_json::Value::Object(entries.into_iter().collect())
        }
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.into_iter().map(sort_keys).collect())
        }
        other => other,
    }
}

/// The event's properties after `$lib` and `$lib_version`, which are the same for every
/// event of a version (and must not change a uuid when the library is upgraded).
fn content(event: &StagedEvent) -> &str {
    // Strings in the payload are JSON-escaped, so the first unescaped `,"properties":` is
    // the event's own.
    let properties = event
        .payload
        .find(",\"properties\":")
        .map_or(event.payload.as_str(), |at| &event.payload[at + 14..]);
    let lib = format!("{{\"$lib\":\"{LIB_NAME}\",\"$lib_version\":\"{LIB_VERSION}\"");
    properties.strip_prefix(lib.as_str()).unwrap_or(properties)
}

/// Stages into `page.live` the person or group update that `write` makes with a stager for
/// `distinct_id`, each event's uuid settled from the row (`table`, `key`) so that a rerun
/// sends the same one; returns how many events it staged.
fn stage_live_update(
    table: &str,
    key: &str,
    distinct_id: String,
    stamps: Vec<Stamp>,
    page: &mut Page,
    write: impl FnOnce(&Stager<'_>) -> Result<EventWriter>,
) -> Result<u64> {
    let mut events = Vec::with_capacity(1);
    let mut stager = Stager::new(&mut events, distinct_id).with_stamps(stamps);
    let writer = write(&stager)?;
    stager.push(writer)?;
    let staged = events.len() as u64;
    for mut event in events {
        settle_uuid(table, key, &mut event, false);
        page.live.push(event);
    }
    Ok(staged)
}

/// Gives `event` its deterministic uuid, UUIDv5 of the model's table, the row's key, the
/// event's name and distinct id, and then:
/// - for a historical insert event, its timestamp (the row's creation, from the row): the
///   event happened once, so a rerun names it the same whatever changed since in the row or
///   in the model's fields, and PostHog counts it once;
/// - for a person or group update, its properties: an update with new values must reach
///   PostHog, one with the same values is the same update. It is timestamped when staged, so
///   its timestamp stays out: a rerun over unchanged rows makes the same uuids.
fn settle_uuid(table: &str, key: &str, event: &mut StagedEvent, historical: bool) {
    let mut name = Vec::with_capacity(event.payload.len() + 64);
    for part in [table, key, &event.event, &event.distinct_id] {
        name.extend_from_slice(part.as_bytes());
        name.push(0);
    }
    if historical {
        name.extend_from_slice(event.timestamp.as_bytes());
    } else {
        name.extend_from_slice(content(event).as_bytes());
    }
    set_uuid(event, &name);
}

/// Gives `event` the UUIDv5 of `name`.
fn set_uuid(event: &mut StagedEvent, name: &[u8]) {
    let uuid = Uuid::new_v5(&NAMESPACE, name);
    let text = uuid.hyphenated().to_string();
    // Every payload starts with `{"uuid":"<36 characters>"`.
    if event.payload.get(9..45).is_some() && event.payload.starts_with("{\"uuid\":\"") {
        event.payload.replace_range(9..45, &text);
        event.uuid = uuid;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn staged(payload_tail: &str) -> StagedEvent {
        let mut events = Vec::new();
        let mut stager = Stager::new(&mut events, "d1".to_owned());
        let mut writer = stager.event("$set");
        writer
            .person(
                crate::event::Section::Set,
                "email",
                "\"email\":",
                payload_tail,
            )
            .unwrap();
        stager.push(writer).unwrap();
        events.pop().unwrap()
    }

    #[test]
    fn uuids_depend_on_content_not_on_staging_time() {
        let (mut a, mut b, mut c) = (staged("a@x"), staged("a@x"), staged("b@x"));
        b.timestamp = "2001-01-01T00:00:00.000000Z".into();
        for event in [&mut a, &mut b, &mut c] {
            settle_uuid("users", "\"u1\"", event, false);
        }
        assert_eq!(a.uuid, b.uuid);
        assert_ne!(a.uuid, c.uuid);
        assert_eq!(a.json()["uuid"], a.uuid.to_string());
        let mut other_key = staged("a@x");
        settle_uuid("users", "\"u2\"", &mut other_key, false);
        assert_ne!(a.uuid, other_key.uuid);
    }

    /// A map serialised in the order given, as a `HashMap` serialises in an order of its own.
    struct InOrder(Vec<(&'static str, i64)>);

    impl Serialize for InOrder {
        fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            serializer.collect_map(self.0.iter().map(|(key, value)| (key, value)))
        }
    }

    /// A person update's uuid does not depend on the order a map property (a `HashMap`)
    /// serialised in, whatever serde_json's map keeps: with its `preserve_order` feature,
    /// which any crate of an application's build may turn on, the map read back keeps the
    /// order it was written in (a new uuid for every rerun). Run it both ways:
    /// `cargo test -p posthog-track --lib --features serde_json/preserve_order backfill`.
    #[test]
    fn person_update_uuids_do_not_depend_on_map_order() {
        fn person_update(prefs: &InOrder) -> (StagedEvent, String) {
            let mut scratch = Vec::new();
            let mut stager = Stager::new(&mut scratch, String::new());
            let mut writer = stager.event("user_created");
            writer
                .person(Section::Set, "prefs", "\"prefs\":", prefs)
                .unwrap();
            stager.push(writer).unwrap();
            let payload = scratch.pop().unwrap().payload;
            let properties = payload_properties("user_created", &payload).unwrap();
            let set = properties["$set"].as_object().unwrap().clone();
            let mut page = Page::default();
            stage_live_update(
                "users",
                "1",
                "d1".to_owned(),
                Vec::new(),
                &mut page,
                |stager| {
                    let mut writer = stager.event("$set");
                    for (name, value) in &set {
                        writer.dynamic_property(Section::Set, name, value)?;
                    }
                    Ok(writer)
                },
            )
            .unwrap();
            (page.live.pop().unwrap(), payload)
        }
        let (one, one_payload) = person_update(&InOrder(vec![("a", 1), ("b", 2)]));
        let (other, other_payload) = person_update(&InOrder(vec![("b", 2), ("a", 1)]));
        assert_ne!(one_payload, other_payload);
        assert_eq!(one.uuid, other.uuid, "{} / {}", one.payload, other.payload);
    }

    /// A historical insert event is named by its row and its time, not by its properties: the
    /// same event whatever they hold (a row updated since, a model with a field more, a map
    /// in any order), another at another time.
    #[test]
    fn historical_uuids_name_the_row_and_its_time() {
        fn historical<T: Serialize>(
            name: &'static str,
            key: &'static str,
            value: &T,
            at: &str,
        ) -> StagedEvent {
            let mut events = Vec::new();
            let mut stager = Stager::new(&mut events, "d1".to_owned());
            let mut writer = stager.event_at("signed_up".into(), at.into());
            writer.property(name, key, value).unwrap();
            stager.push(writer).unwrap();
            let mut event = events.pop().unwrap();
            settle_uuid("users", "1", &mut event, true);
            event
        }
        let at = "2024-01-01T00:00:00.000000Z";
        let expected = Uuid::new_v5(
            &NAMESPACE,
            b"users\x001\x00signed_up\x00d1\x002024-01-01T00:00:00.000000Z",
        );
        let pro = historical("plan", "\"plan\":", &"pro", at);
        let enterprise = historical("plan", "\"plan\":", &"enterprise", at);
        let one = historical("tags", "\"tags\":", &InOrder(vec![("a", 1), ("b", 2)]), at);
        let other = historical("tags", "\"tags\":", &InOrder(vec![("b", 2), ("a", 1)]), at);
        for event in [&pro, &enterprise, &one, &other] {
            assert_eq!(event.uuid, expected, "{}", event.payload);
        }
        let later = historical("plan", "\"plan\":", &"pro", "2024-01-02T00:00:00.000000Z");
        assert_ne!(later.uuid, expected);
    }

    /// A person update of a group-linked model carries `$groups` (a stamp), hashed as written:
    /// before the properties, where earlier versions wrote it, so that a rerun after an
    /// upgrade makes the same uuids.
    #[test]
    fn person_update_uuids_of_grouped_models_keep_their_layout() {
        let mut events = Vec::new();
        let groups = serde_json::json!({"company": "c1"});
        let mut stager = Stager::new(&mut events, "d1".to_owned())
            .with_stamps(vec![Stamp::new("$groups".into(), &groups)]);
        let mut writer = stager.event("$set");
        writer
            .person(Section::Set, "plan", "\"plan\":", &"pro")
            .unwrap();
        stager.push(writer).unwrap();
        let mut event = events.pop().unwrap();
        settle_uuid("users", "1", &mut event, false);
        let mut name = b"users\x001\x00$set\x00d1\x00".to_vec();
        name.extend_from_slice(b",\"$groups\":{\"company\":\"c1\"},\"$set\":{\"plan\":\"pro\"}}}");
        assert_eq!(
            event.uuid,
            Uuid::new_v5(&NAMESPACE, &name),
            "{}",
            event.payload
        );
    }
}
