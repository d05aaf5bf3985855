//! Tracked transactions: a sqlx transaction plus the events its writes staged.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::Duration;

use crate::backend::{Backend, Dialect};
use crate::context::TrackingContext;
use crate::error::{Error, Result};
use crate::event::{Event, EventShape, StagedEvent, Stager, Stamp, is_blank};
use crate::flags::FlagsSnapshot;
use crate::outbox;
use crate::shared::Shared;

/// A `sqlx::Transaction` whose tracked writes stage PostHog events.
///
/// The events are written to the outbox inside the transaction, by
/// [`commit`](TrackedTransaction::commit) (on PostgreSQL, usually by the insert that staged
/// them, in its own statement), so the rows and their events commit together. [`rollback`] or
/// dropping the transaction discards both.
///
/// It dereferences to the database connection, so your own sqlx queries run inside the same
/// transaction: `sqlx::query("...").execute(&mut *tx)`.
///
/// [`rollback`]: TrackedTransaction::rollback
pub struct TrackedTransaction<'c, DB: Backend> {
    tx: sqlx::Transaction<'c, DB>,
    staged: Vec<StagedEvent>,
    /// How many events at the front of `staged` are in the outbox already: written by the
    /// statement that inserted their row (PostgreSQL, see `model::fold`).
    folded: usize,
    /// How stagers render events; not the default only while `model::fold` stages a write.
    shape: EventShape,
    distinct_id: Option<String>,
    shared: Arc<Shared>,
    /// The pool's key when the transaction came from [`Tracker::begin`]: whose relay to wake.
    relay: Option<usize>,
    /// `$feature/<flag>` properties every event of this transaction carries.
    flag_stamps: Vec<Stamp>,
    context: TrackingContext,
    /// `$session_id` and the context's properties, ready to splice into every event.
    context_stamps: Vec<Stamp>,
    /// Where in `staged`, and with which uuid, the `$identify` of the first `identify` row
    /// is: that person took the request's anonymous visitor, who is merged into one person
    /// only. Stale once that event is no longer staged there (taken back, or rolled back).
    anonymous_merged: Option<(usize, uuid::Uuid)>,
    /// Whether a tracked write is under way, or left rows without their events.
    write: WriteState,
    /// The pool's connect options, when the transaction came from [`Tracker::begin`] on
    /// MySQL/MariaDB: what [`close_cancelled`](Self::close_cancelled) opens a connection with.
    ///
    /// [`Tracker::begin`]: crate::Tracker::begin
    reconnect: Option<Arc<ConnectOptionsOf<DB>>>,
}

type ConnectOptionsOf<DB> = <<DB as sqlx::Database>::Connection as sqlx::Connection>::Options;

/// How long ending a transaction whose write was cancelled may take before the connection is
/// given up: a `ROLLBACK` normally answers in milliseconds.
const ABANDON_AFTER: Duration = Duration::from_secs(10);

/// Where the tracked writes of a transaction stand: a write whose statement may have changed
/// rows, and that then failed or was dropped before staging its events, leaves rows that must
/// not commit without them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriteState {
    /// Every write finished: its events are staged, or it wrote nothing.
    Clean,
    /// A write to `table` is under way; `wrote`: one of its statements changed rows.
    Writing { table: &'static str, wrote: bool },
    /// A write to `table` did not finish after it may have written: the transaction must not
    /// commit.
    Broken { table: &'static str },
}

impl<DB: Backend> fmt::Debug for TrackedTransaction<'_, DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrackedTransaction")
            .field("backend", &DB::DIALECT.name())
            .field("staged", &self.staged)
            .field("distinct_id", &self.distinct_id)
            .field("context", &self.context)
            .finish_non_exhaustive()
    }
}

impl<'c, DB: Backend> TrackedTransaction<'c, DB> {
    pub(crate) fn new(
        tx: sqlx::Transaction<'c, DB>,
        shared: Arc<Shared>,
        relay: Option<usize>,
    ) -> Self {
        TrackedTransaction {
            tx,
            staged: Vec::new(),
            folded: 0,
            shape: EventShape::default(),
            distinct_id: None,
            shared,
            relay,
            flag_stamps: Vec::new(),
            context: TrackingContext::default(),
            context_stamps: Vec::new(),
            anonymous_merged: None,
            write: WriteState::Clean,
            reconnect: None,
        }
    }

    /// The transaction came from a pool with these connect options.
    pub(crate) fn with_reconnect(mut self, options: Arc<ConnectOptionsOf<DB>>) -> Self {
        self.reconnect = Some(options);
        self
    }

    /// Ties the transaction to a request: its events carry the context's `$session_id` and
    /// properties, models without a distinct id of their own use the context's, `identify`
    /// models merge its anonymous id, and `#[tracked(context = "...")]` fields are filled
    /// from it at insert.
    ///
    /// ```no_run
    /// # async fn signup(tracker: posthog_track::Tracker, pool: sqlx::SqlitePool,
    /// #                 context: posthog_track::TrackingContext) -> posthog_track::Result<()> {
    /// let mut tx = tracker.begin(&pool).await?.with_context(context);
    /// # Ok(()) }
    /// ```
    pub fn with_context(mut self, context: TrackingContext) -> Self {
        self.set_context(context);
        self
    }

    /// [`with_context`](Self::with_context) on a transaction in hand.
    pub fn set_context(&mut self, context: TrackingContext) {
        let mut stamps = Vec::new();
        if let Some(session_id) = context.session_id() {
            stamps.push(Stamp::new("$session_id".into(), &session_id.into()));
        }
        for (key, value) in context.properties() {
            stamps.push(Stamp::new(key.clone(), value));
        }
        self.context_stamps = stamps;
        self.context = context;
    }

    /// The request context (empty unless one was given).
    pub fn context(&self) -> &TrackingContext {
        &self.context
    }

    /// The request's anonymous id for the next `identify` row's `$identify` to merge: none
    /// once an earlier row of this transaction took the visitor (one visitor is one person).
    pub(crate) fn anonymous_to_merge(&self) -> Option<String> {
        let merged = self
            .anonymous_merged
            .is_some_and(|(at, uuid)| self.staged.get(at).is_some_and(|e| e.uuid == uuid));
        if merged {
            return None;
        }
        self.context.anonymous_id().map(str::to_owned)
    }

    /// The last `$identify` staged took the request's anonymous visitor.
    pub(crate) fn mark_anonymous_merged(&mut self) {
        self.anonymous_merged = self
            .staged
            .iter()
            .rposition(|event| event.event == "$identify")
            .map(|at| (at, self.staged[at].uuid));
    }

    /// The distinct id for events of models without a `distinct_id` field, and for
    /// [`Event`]s without their own; it takes precedence over the context's.
    pub fn set_distinct_id(&mut self, distinct_id: impl Into<String>) {
        self.distinct_id = Some(distinct_id.into());
    }

    /// The transaction's default distinct id, if set.
    pub fn distinct_id(&self) -> Option<&str> {
        self.distinct_id.as_deref()
    }

    /// The events staged so far, in order: what the outbox holds once the transaction commits.
    ///
    /// On PostgreSQL an insert may have written its events already (see
    /// [`TrackedModel::insert`](crate::TrackedModel::insert)); a `ROLLBACK TO SAVEPOINT` you
    /// send yourself removes those from the outbox but not from this list, so roll back the
    /// whole transaction instead, as after any failed write.
    pub fn staged(&self) -> &[StagedEvent] {
        &self.staged
    }

    /// Stages an event that comes from no table, in this transaction.
    pub fn capture(&mut self, event: Event) -> Result<()> {
        let own = event.distinct_id.clone();
        let name = event.name.clone();
        let mut stager = self.stager_for(own, name, Vec::new())?;
        event.write(&mut stager)
    }

    /// Commits the rows and their events together.
    ///
    /// In live mode with [`Delivery::Outbox`](crate::Delivery) (the default) the staged
    /// events are written to the outbox inside the transaction, and the pool's relay is woken
    /// after the commit; with [`Delivery::AfterCommit`](crate::Delivery) they go to the
    /// in-memory queue once the commit succeeded. In dry run (no API key) they are printed
    /// after the commit and the outbox is left alone; a disabled tracker records none.
    ///
    /// Rolls back instead, and fails with [`Error::IncompleteWrite`], when a tracked write in
    /// the transaction failed or was cancelled after it may have written (its rows would commit
    /// without their events), or failed with an error that ended the transaction (any on
    /// PostgreSQL, whose `COMMIT` would roll back silently; a deadlock on MySQL/MariaDB).
    ///
    /// Returns `Ok` once the database has committed: delivery trouble after that is logged
    /// and counted in [`Tracker::stats`](crate::Tracker::stats), never returned here (a caller that retried a
    /// failed commit would write the row twice). With `AfterCommit`, `commit` waits for room in
    /// the queue after the database committed: cancelling it then (dropping its future) loses
    /// the events not queued yet; they are counted as `dropped_cancelled` and reported by the
    /// next `flush`. So are all its events when it is cancelled while the database commits
    /// (the rows may have committed, or not).
    pub async fn commit(self) -> Result<()> {
        let span = tracing::info_span!(
            "posthog_track.commit",
            backend = DB::DIALECT.name(),
            events = self.staged.len()
        );
        tracing::Instrument::instrument(self.commit_inner(), span).await
    }

    async fn commit_inner(mut self) -> Result<()> {
        if let WriteState::Writing { table, .. } | WriteState::Broken { table } = self.write {
            // A write failed or was cancelled after its statement was sent: its rows may be
            // in the transaction without their events (or, folded, events without the rest).
            if let Err(error) = self.end_incomplete().await {
                // The connection goes back to the pool without the transaction either way.
                tracing::warn!(%error, "posthog-track: rolling back an incomplete write failed");
            }
            return Err(Error::IncompleteWrite { table });
        }
        let dispatch = &self.shared.dispatch;
        let mut staged = std::mem::take(&mut self.staged);
        // Folded events are in the outbox already (and were only folded when no hook could
        // want to see them: see `can_fold`).
        let rest = staged.split_off(self.folded.min(staged.len()));
        if dispatch.records_events() {
            staged.extend(dispatch.apply_before_send(rest)?);
        } else {
            staged.clear();
        }
        let to_outbox = dispatch.writes_outbox() && !staged.is_empty();
        if to_outbox {
            let notify = DB::DIALECT == Dialect::Postgres && dispatch.notifies_relays(self.relay);
            outbox::write::<DB>(&mut self.tx, &staged[self.folded..], notify).await?;
        }
        let guard = dispatch.guard_commit(staged.len());
        let committed = self.tx.commit().await;
        // Answered: committed, or failed and rolled back (nothing to count either way).
        if let Some(guard) = guard {
            guard.answered();
        }
        committed?;
        if to_outbox {
            crate::metrics::committed(staged.len());
        }
        dispatch.committed(self.relay, staged).await;
        Ok(())
    }

    /// Rolls back: no row and no event of this transaction remains.
    ///
    /// After a tracked write whose future was dropped on MySQL/MariaDB, the connection is
    /// closed instead (the server rolls back a transaction whose connection closes), and the
    /// pool opens a new one: sqlx cannot resume a MySQL connection whose statement was cut
    /// off half-way, and its `ROLLBACK` could wait forever.
    pub async fn rollback(self) -> Result<()> {
        self.end_incomplete().await
    }

    /// Rolls back, by closing the connection when a cancelled write may have left it out of
    /// step (see [`close_cancelled`](Self::close_cancelled)).
    async fn end_incomplete(mut self) -> Result<()> {
        let cancelled = matches!(self.write, WriteState::Writing { .. });
        if !(cancelled && DB::DIALECT == Dialect::MySql) {
            self.tx.rollback().await?;
            return Ok(());
        }
        if self.close_cancelled().await {
            return Ok(());
        }
        // No pool to open a connection from (`Tracker::track`), or it could not: try the
        // `ROLLBACK`, bounded, as it may never be answered.
        match tokio::time::timeout(ABANDON_AFTER, self.tx.rollback()).await {
            Ok(rolled_back) => Ok(rolled_back?),
            Err(_) => {
                tracing::error!(
                    "posthog-track: the connection did not answer ROLLBACK within {ABANDON_AFTER:?} \
                     after a tracked write was cancelled (sqlx cannot resume a MySQL connection \
                     whose statement was cut off); it is given up, and the server rolls the \
                     transaction back when it closes the connection (`wait_timeout`)"
                );
                Err(Error::Database(sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the connection did not answer ROLLBACK after a cancelled write",
                ))))
            }
        }
    }

    /// Closes the connection of a transaction whose write was cancelled, on MySQL/MariaDB,
    /// where sqlx may have been cut off between sending a statement and reading its answer:
    /// its next statement would then read that answer as its own, or wait forever for one the
    /// server never sends (sqlx#563), with the transaction's locks held. Closing the socket
    /// rolls the transaction back at once. In its place goes a connection opened with the
    /// pool's options and closed by the server at once (`KILL CONNECTION_ID()`): the pool tests
    /// it on release, finds it closed, and opens new ones with its own `after_connect` hooks,
    /// which a connection opened here would lack. Returns whether it closed the connection.
    async fn close_cancelled(&mut self) -> bool {
        let Some(options) = self.reconnect.clone() else {
            return false;
        };
        let opened = tokio::time::timeout(ABANDON_AFTER, async {
            let mut stand_in = sqlx::ConnectOptions::connect(&*options).await?;
            // Answered with an error (the connection was killed) or with a closed socket.
            let _ = DB::execute(&mut stand_in, sqlx::query("KILL CONNECTION_ID()")).await;
            Ok::<_, sqlx::Error>(stand_in)
        })
        .await;
        match opened {
            Ok(Ok(stand_in)) => {
                // Dropping the connection closes its socket (and the transaction with it);
                // the sqlx transaction now holds one that is in none, so it queues no
                // `ROLLBACK` when dropped.
                drop(std::mem::replace(&mut *self.tx, stand_in));
                true
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "posthog-track: no connection to stand in for one left out of step by a cancelled write");
                false
            }
            Err(_) => false,
        }
    }

    /// A tracked write to `table` begins, or is refused: after a write that did not finish (a
    /// write still under way is one whose future was dropped: whatever it sent may have been
    /// written) the transaction can only roll back, and a write in it could even commit on its
    /// own (after a MySQL deadlock the session is in autocommit).
    pub(crate) fn begin_write(&mut self, table: &'static str) -> Result<()> {
        match self.write {
            WriteState::Clean => {
                self.write = WriteState::Writing {
                    table,
                    wrote: false,
                };
                Ok(())
            }
            WriteState::Writing { table, .. } | WriteState::Broken { table } => {
                self.write = WriteState::Broken { table };
                Err(Error::IncompleteWrite { table })
            }
        }
    }

    /// A statement of the write under way changed rows (or may have: its outcome is known).
    pub(crate) fn wrote(&mut self) {
        if let WriteState::Writing { wrote, .. } = &mut self.write {
            *wrote = true;
        }
    }

    /// The write under way ended with `result`: done, or failed before any of its statements
    /// wrote (a statement that fails writes nothing), or failed after, which leaves the
    /// transaction unable to commit. An error that ended the whole transaction (see
    /// [`aborts_transaction`]) is refused too, so that `commit` never reports (nor hands to
    /// delivery) what was rolled back, nor writes events in the autocommit that follows.
    pub(crate) fn end_write<T>(&mut self, result: &Result<T>) {
        if let WriteState::Writing { table, wrote } = self.write {
            let aborted = match result {
                Err(Error::Database(sqlx::Error::Database(error))) => {
                    aborts_transaction(DB::DIALECT, error.as_ref())
                }
                Err(Error::OutboxMissing { .. }) => DB::DIALECT == Dialect::Postgres,
                _ => false,
            };
            self.write = if result.is_err() && (wrote || aborted) {
                WriteState::Broken { table }
            } else {
                WriteState::Clean
            };
        }
    }

    /// Runs `stage`, which stages the events of one write: all of them, or none when it fails
    /// half-way (its own event staged, say, and `$identify` too large), so that a transaction
    /// committed after a failed write does not send part of it.
    pub(crate) fn stage_all(&mut self, stage: impl FnOnce(&mut Self) -> Result<()>) -> Result<()> {
        let start = self.staged.len();
        let staged = stage(self);
        if staged.is_err() {
            // Folded events went to the database with their rows; they go only with a
            // rollback.
            self.staged.truncate(start.max(self.folded));
        }
        staged
    }

    /// Whether the next write may put its events in the outbox with its own statement
    /// (`model::fold`): only while nothing is staged that is not in the outbox yet, so the
    /// outbox keeps the staging order, and only when the events go to the outbox unchanged
    /// (no `before_send` hook or `$geoip_disable` to apply at commit).
    pub(crate) fn can_fold(&self) -> bool {
        self.folded == self.staged.len() && self.shared.dispatch.folds_events()
    }

    /// The events staged so far, for `model::fold`, which renders a write's events, takes them
    /// back and stages them again.
    pub(crate) fn staged_mut(&mut self) -> &mut Vec<StagedEvent> {
        &mut self.staged
    }

    /// Stagers render events this way until it is reset to the default.
    pub(crate) fn set_shape(&mut self, shape: EventShape) {
        self.shape = shape;
    }

    /// Every event staged so far is in the outbox already.
    pub(crate) fn mark_folded(&mut self) {
        self.folded = self.staged.len();
    }

    /// The underlying sqlx transaction, for APIs that want one by name.
    pub fn as_sqlx(&mut self) -> &mut sqlx::Transaction<'c, DB> {
        &mut self.tx
    }

    pub(crate) fn connection(&mut self) -> &mut DB::Connection {
        &mut self.tx
    }

    /// Stamps `$feature/<flag>` with each flag's value on every event staged from now on in
    /// this transaction, so that analyses can split by variant.
    pub fn attach_flags(&mut self, flags: &FlagsSnapshot) {
        for (key, value) in flags.feature_properties() {
            let stamp = Stamp::new(key, &value);
            self.flag_stamps
                .retain(|existing| existing.key != stamp.key);
            self.flag_stamps.push(stamp);
        }
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// A stager whose events also carry `extra` (the flag a routed write used).
    pub(crate) fn stager_with(
        &mut self,
        own: Option<String>,
        event: &'static str,
        extra: Vec<Stamp>,
    ) -> Result<Stager<'_>> {
        self.stager_for(own, event.into(), extra)
    }

    fn stager_for(
        &mut self,
        own: Option<String>,
        event: std::borrow::Cow<'static, str>,
        extra: Vec<Stamp>,
    ) -> Result<Stager<'_>> {
        let distinct_id = self
            .effective_distinct_id(own)
            .ok_or(Error::MissingDistinctId { event })?;
        // One value per key, the most specific source's: the write's own stamps (its route's
        // `$feature/<flag>`, its `$groups`) over flags attached for the request, over the
        // context's. A key twice in one JSON object is read differently by each parser.
        let mut stamps: Vec<Stamp> = Vec::new();
        for stamp in self
            .context_stamps
            .iter()
            .chain(&self.flag_stamps)
            .cloned()
            .chain(extra)
        {
            stamps.retain(|kept| kept.key != stamp.key);
            stamps.push(stamp);
        }
        Ok(Stager::new(&mut self.staged, distinct_id)
            .with_stamps(stamps)
            .with_shape(self.shape.clone()))
    }

    /// Whom a write's events are about: the model's own id, else the transaction's
    /// ([`set_distinct_id`](Self::set_distinct_id)), else the request context's. An empty or
    /// whitespace id is no id (PostHog refuses the one and lumps the other into one person):
    /// the next source decides, as in PostHog's SDKs. Flag routing decides a write's table for
    /// the same id its events get.
    pub(crate) fn effective_distinct_id(&self, own: Option<String>) -> Option<String> {
        own.filter(|id| !is_blank(id))
            .or_else(|| self.distinct_id.clone().filter(|id| !is_blank(id)))
            .or_else(|| {
                self.context
                    .distinct_id()
                    .filter(|id| !is_blank(id))
                    .map(str::to_owned)
            })
    }
}

/// Whether `error`, returned by a statement, ended its whole transaction rather than the
/// statement alone: on PostgreSQL every error (the transaction is aborted, and its `COMMIT`
/// rolls back without an error); on MySQL/MariaDB a deadlock (SQLSTATE 40001: InnoDB rolls
/// the transaction back and the session goes on in autocommit); on SQLite the errors that may
/// roll a transaction back (`SQLITE_BUSY`, `SQLITE_NOMEM`, `SQLITE_INTERRUPT`, `SQLITE_IOERR`,
/// `SQLITE_FULL`).
fn aborts_transaction(dialect: Dialect, error: &dyn sqlx::error::DatabaseError) -> bool {
    match dialect {
        Dialect::Postgres => true,
        Dialect::MySql => error.code().as_deref() == Some("40001"),
        Dialect::Sqlite => error
            .code()
            .and_then(|code| code.parse::<i32>().ok())
            .is_some_and(|code| matches!(code & 0xff, 5 | 7 | 9 | 10 | 13)),
    }
}

impl<DB: Backend> Deref for TrackedTransaction<'_, DB> {
    type Target = DB::Connection;

    fn deref(&self) -> &Self::Target {
        &self.tx
    }
}

impl<DB: Backend> DerefMut for TrackedTransaction<'_, DB> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.tx
    }
}
