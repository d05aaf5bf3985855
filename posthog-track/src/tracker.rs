//! The entry point: configuration, migrations, tracked transactions, capture and delivery.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use sqlx::Pool;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::backend::Backend;
pub use crate::builder::TrackerBuilder;
use crate::client::DeliveryCounts;
use crate::config::Config;
use crate::dispatch::ShutdownReport;
use crate::error::{Error, Result};
use crate::event::{Event, StagedEvent, Stager, is_blank, is_illegal_merge_id};
use crate::mode::Mode;
use crate::outbox::{self, Outbox};
use crate::relay::Relay;
use crate::shared::Shared;
use crate::sync::lock;
use crate::transaction::TrackedTransaction;

/// Tracks writes and delivers their events. Cheap to clone: clones share state.
#[derive(Clone)]
pub struct Tracker {
    pub(crate) inner: Arc<Shared>,
}

impl fmt::Debug for Tracker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tracker")
            .field("config", &self.inner.config)
            .field("dispatch", &self.inner.dispatch)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Tracker {
    /// A tracker configured from the environment; see [`Config::from_env`].
    pub fn from_env() -> Result<Self> {
        Ok(Self::from_config(Config::from_env()?))
    }

    /// A tracker built option by option.
    pub fn builder() -> TrackerBuilder {
        TrackerBuilder::default()
    }

    /// A tracker with this configuration and default options.
    pub fn from_config(config: Config) -> Self {
        TrackerBuilder::default().config(config).build()
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// What happens to events: sent, printed, or not recorded.
    pub fn mode(&self) -> Mode {
        self.inner.config.mode()
    }

    /// What happened to events so far.
    pub fn stats(&self) -> DeliveryCounts {
        self.inner.dispatch.stats.snapshot()
    }

    /// Creates the outbox and dead-letter tables (`posthog_outbox`, `posthog_outbox_dead`),
    /// or upgrades those of an earlier version in place. Idempotent, and safe when several
    /// processes start at once (it takes a lock); see [`outbox::create_table_sql`] to put the
    /// same DDL in your own migrations instead.
    pub async fn migrate<DB: Backend>(&self, pool: &Pool<DB>) -> Result<()> {
        outbox::migrate(pool).await
    }

    /// Begins a tracked transaction on a connection from `pool`.
    ///
    /// The first transaction on a pool starts that pool's relay in the background (in live
    /// mode, unless the builder said delivery is [external](TrackerBuilder::external_relay)),
    /// so whatever this tracker commits is delivered without further calls.
    ///
    /// On SQLite the transaction begins `IMMEDIATE`: it takes the database's write lock at
    /// once (waiting for another writer up to the busy timeout), as `FOR UPDATE` takes a
    /// row's lock elsewhere, so that what it reads ([`load_for_update`]) stays what it writes
    /// over. A deferred transaction that read first could not write once another writer had
    /// committed since its read: it failed at once with "database is locked", whatever the
    /// busy timeout.
    ///
    /// [`load_for_update`]: crate::TrackedModel::load_for_update
    pub async fn begin<DB: Backend>(
        &self,
        pool: &Pool<DB>,
    ) -> Result<TrackedTransaction<'static, DB>> {
        let relay = self.inner.dispatch.track_pool(pool);
        let tx = match DB::DIALECT {
            crate::Dialect::Sqlite => {
                pool.begin_with(sqlx::AssertSqlSafe("BEGIN IMMEDIATE".to_owned()))
                    .await?
            }
            crate::Dialect::Postgres | crate::Dialect::MySql => pool.begin().await?,
        };
        let tx = TrackedTransaction::new(tx, self.inner.clone(), relay);
        // Only MySQL/MariaDB needs them (to replace a connection a cancelled write left out
        // of step); reading them takes the pool's lock, so the others skip it.
        Ok(match DB::DIALECT {
            crate::Dialect::MySql => tx.with_reconnect(pool.connect_options()),
            crate::Dialect::Postgres | crate::Dialect::Sqlite => tx,
        })
    }

    /// Tracks writes in a transaction you already began (on a pool, a connection or as a
    /// nested transaction). The tracker cannot see which pool it came from: call
    /// [`start_relay`](Tracker::start_relay) for that pool once (or use
    /// [`begin`](Tracker::begin) once on it), or `flush` reports the events as waiting.
    pub fn track<'c, DB: Backend>(
        &self,
        tx: sqlx::Transaction<'c, DB>,
    ) -> TrackedTransaction<'c, DB> {
        TrackedTransaction::new(tx, self.inner.clone(), None)
    }

    /// The outbox of the database behind `pool`.
    pub fn outbox<'p, DB: Backend>(&self, pool: &'p Pool<DB>) -> Outbox<'p, DB> {
        Outbox::new(pool)
    }

    /// A relay for the outbox behind `pool`, to run by hand (`run_once`, `drain`, `run`).
    /// Most applications need none: [`begin`](Tracker::begin) starts one per pool. A relay
    /// of a tracker without an API key (dry run) or a disabled one refuses to run with
    /// [`Error::CannotDeliver`]: it would take other processes' events out of the outbox.
    pub fn relay<DB: Backend>(&self, pool: Pool<DB>) -> Relay<DB> {
        self.inner.dispatch.relay(pool, Arc::new(Notify::new()))
    }

    /// Starts delivering the outbox behind `pool` in the background, on the current tokio
    /// runtime, if it is not delivered already: for a pool whose transactions reach the
    /// tracker through [`track`](Tracker::track), or to deliver other processes' events from
    /// a process that commits none. Commits through this tracker wake it at once; otherwise
    /// it polls. Stopped by [`shutdown`](Tracker::shutdown) or by dropping the last clone of
    /// the tracker.
    ///
    /// Fails with [`Error::CannotDeliver`] without an API key (dry run) or when disabled.
    pub fn start_relay<DB: Backend>(&self, pool: Pool<DB>) -> Result<()> {
        self.inner.dispatch.start_relay(&pool)
    }

    /// The state of this tracker's background relays (the worst of them: paused, then backing
    /// off, then running); `None` when it runs none. What `/healthz` of the `relay` command
    /// reports.
    pub fn relay_state(&self) -> Option<crate::relay::RelayState> {
        self.inner.dispatch.relay_state()
    }

    /// Captures an event that comes from no table, outside any transaction, through the
    /// in-memory queue. Its uuid and timestamp are fixed now; the uuid is returned (`None` when
    /// the tracker is disabled or `before_send` dropped the event). Waits for room when the
    /// queue is full (see [`try_capture`](Tracker::try_capture)).
    pub async fn capture(&self, event: Event) -> Result<Option<Uuid>> {
        self.enqueue_captured(event, true).await
    }

    /// Like [`capture`](Tracker::capture), but never waits: a full queue refuses the event
    /// with [`Error::QueueFull`] and counts it in [`stats`](Tracker::stats).
    pub async fn try_capture(&self, event: Event) -> Result<Option<Uuid>> {
        self.enqueue_captured(event, false).await
    }

    async fn enqueue_captured(&self, event: Event, wait_for_room: bool) -> Result<Option<Uuid>> {
        let Some(staged) = self.stage(event)? else {
            return Ok(None);
        };
        let uuid = staged.uuid;
        self.inner.dispatch.push(staged, wait_for_room).await?;
        Ok(Some(uuid))
    }

    /// `$identify`: updates the person `distinct_id` with the `$set`, `$set_once` and
    /// `$unset` of `person`, built like any event: `Event::person().set("plan", "pro")`.
    pub async fn identify(&self, distinct_id: impl Into<String>, person: Event) -> Result<()> {
        self.capture(person.renamed("$identify").distinct_id(distinct_id))
            .await?;
        Ok(())
    }

    /// `$create_alias`: `alias` becomes another distinct id of the person `distinct_id`.
    /// An id PostHog refuses to merge (blank, or one it takes for a bug: `"undefined"`,
    /// `"null"`, `"0"`, ...) is refused with [`Error::MissingDistinctId`].
    pub async fn alias(
        &self,
        distinct_id: impl Into<String>,
        alias: impl Into<String>,
    ) -> Result<()> {
        let (distinct_id, alias) = (distinct_id.into(), alias.into());
        // As `stage` checks the distinct id: only when the event would be recorded.
        if self.inner.dispatch.records_events()
            && (is_illegal_merge_id(&alias) || is_illegal_merge_id(&distinct_id))
        {
            return Err(Error::MissingDistinctId {
                event: "$create_alias".into(),
            });
        }
        let event = Event::new("$create_alias")
            .property("distinct_id", distinct_id.clone())
            .property("alias", alias)
            .distinct_id(distinct_id);
        self.capture(event).await?;
        Ok(())
    }

    /// `$groupidentify`: sets properties of a group (a company, a team). A blank (empty or
    /// whitespace) type or key is refused with [`Error::InvalidGroup`].
    pub async fn group_identify(
        &self,
        group_type: impl Into<String>,
        group_key: impl Into<String>,
        properties: serde_json::Map<String, serde_json::Value>,
    ) -> Result<()> {
        let (group_type, group_key) = (group_type.into(), group_key.into());
        // As `stage` checks the distinct id: only when the event would be recorded.
        if self.inner.dispatch.records_events() && (is_blank(&group_type) || is_blank(&group_key)) {
            return Err(Error::InvalidGroup {
                group_type,
                group_key,
            });
        }
        let event = Event::new("$groupidentify")
            .distinct_id(format!("${group_type}_{group_key}"))
            .property("$group_type", group_type)
            .property("$group_key", group_key)
            .property("$group_set", serde_json::Value::Object(properties));
        self.capture(event).await?;
        Ok(())
    }

    /// Delivers everything committed or captured before the call: waits, retrying with
    /// backoff and waiting out other relays' leases, until each of those events is delivered
    /// to PostHog or dead-lettered, for at most the flush timeout (see
    /// [`TrackerBuilder::flush_timeout`]; 30 s by default).
    ///
    /// Fails with [`Error::Timeout`] (how many are pending, and why) when time runs out, and
    /// with [`Error::Undelivered`] when events were dead-lettered or in-memory events given
    /// up (with counts). Outbox events are never lost: what is not delivered stays in the
    /// outbox for the next attempt.
    pub async fn flush(&self) -> Result<()> {
        self.inner.dispatch.flush().await
    }

    /// Flushes within `deadline`, then stops background work (relays, the in-memory queue,
    /// the flag poller); for the end of a process or a serverless invocation. A zero deadline
    /// stops at once without starting a delivery. From then on the in-memory queue takes no
    /// events: `capture` fails with [`Error::ShutDown`], and `AfterCommit` events committed
    /// later are counted as dropped at shutdown and reported by the next `flush`. No relay
    /// runs in this process any more: a later `flush` fails at once with [`Error::Timeout`]
    /// counting what waits in the outbox for the next relay (unless delivery is external).
    ///
    /// Fails as [`flush`](Self::flush) does, after stopping: [`Error::Timeout`] when outbox
    /// events were still pending at the deadline (they wait there for the next relay, never
    /// lost), [`Error::Undelivered`] when some were dead-lettered or in-memory events were
    /// lost: those still queued at the deadline, and those given up before it that no flush
    /// reported yet. So at the end of a process, log the error rather than fail the exit on it.
    /// `Ok` says how many events wait in the outbox for another process's relay (delivery
    /// left to `posthog-track relay` with `external_relay(true)`).
    pub async fn shutdown(&self, deadline: Duration) -> Result<ShutdownReport> {
        if let Some(poller) = lock(&self.inner.poller).take() {
            let _ = poller.send(true);
        }
        self.inner.dispatch.shutdown(deadline).await
    }

    /// Serialises an untyped event, applying `before_send`. `None` when it is not recorded.
    fn stage(&self, event: Event) -> Result<Option<StagedEvent>> {
        if !self.inner.dispatch.records_events() {
            return Ok(None);
        }
        let name = event.name.clone();
        let distinct_id = event
            .distinct_id
            .clone()
            .filter(|id| !is_blank(id))
            .ok_or(Error::MissingDistinctId { event: name })?;
        let mut staged = Vec::with_capacity(1);
        event.write(&mut Stager::new(&mut staged, distinct_id))?;
        let mut staged = self.inner.dispatch.apply_before_send(staged)?;
        Ok(staged.pop())
    }
}
