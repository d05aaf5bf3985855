//! The entry point: configuration, migrations, tracked transactions, capture and delivery.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::Pool;
use tokio::sync::{Notify, watch};
use uuid::Uuid;

use crate::backend::Backend;
use crate::client::queue::QueueOptions;
use crate::client::transport::Transport;
use crate::client::{Backoff, DeliveryCounts, Sink};
use crate::config::{ApiKey, Config};
use crate::dispatch::{BeforeSend, Delivery, Dispatch, DispatchOptions, ShutdownReport};
use crate::error::{Error, Result};
use crate::event::{Event, StagedEvent, Stager};
use crate::flags::{
    DefinitionsCache, DefinitionsClient, ExposureCache, LocalEvaluator, RemoteFlags, RoutingState,
};
use crate::mode::Mode;
use crate::outbox::{self, Outbox};
use crate::relay::{Relay, RelayOptions};
use crate::sync::lock;
use crate::transaction::TrackedTransaction;

pub(crate) struct Inner {
    config: Config,
    pub(crate) dispatch: Dispatch,
    pub(crate) flags: Option<RemoteFlags>,
    pub(crate) exposures: Mutex<ExposureCache>,
    pub(crate) definitions: Arc<DefinitionsCache>,
    pub(crate) definitions_client: Option<DefinitionsClient>,
    pub(crate) local_evaluation_only: bool,
    pub(crate) poller: Mutex<Option<watch::Sender<bool>>>,
    pub(crate) routing: RoutingState,
}

/// Tracks writes and delivers their events. Cheap to clone: clones share state.
#[derive(Clone)]
pub struct Tracker {
    pub(crate) inner: Arc<Inner>,
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
        TrackerBuilder {
            config,
            ..TrackerBuilder::default()
        }
        .build()
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
    pub async fn begin<DB: Backend>(
        &self,
        pool: &Pool<DB>,
    ) -> Result<TrackedTransaction<'static, DB>> {
        let relay = self.inner.dispatch.track_pool(pool);
        Ok(TrackedTransaction::new(
            pool.begin().await?,
            self.clone(),
            relay,
        ))
    }

    /// Tracks writes in a transaction you already began (on a pool, a connection or as a
    /// nested transaction). The tracker cannot see which pool it came from: call
    /// [`start_relay`](Tracker::start_relay) for that pool once (or use
    /// [`begin`](Tracker::begin) once on it), or `flush` reports the events as waiting.
    pub fn track<'c, DB: Backend>(
        &self,
        tx: sqlx::Transaction<'c, DB>,
    ) -> TrackedTransaction<'c, DB> {
        TrackedTransaction::new(tx, self.clone(), None)
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
    pub async fn alias(
        &self,
        distinct_id: impl Into<String>,
        alias: impl Into<String>,
    ) -> Result<()> {
        let distinct_id = distinct_id.into();
        let event = Event::new("$create_alias")
            .property("distinct_id", distinct_id.clone())
            .property("alias", alias.into())
            .distinct_id(distinct_id);
        self.capture(event).await?;
        Ok(())
    }

    /// `$groupidentify`: sets properties of a group (a company, a team).
    pub async fn group_identify(
        &self,
        group_type: impl Into<String>,
        group_key: impl Into<String>,
        properties: serde_json::Map<String, serde_json::Value>,
    ) -> Result<()> {
        let (group_type, group_key) = (group_type.into(), group_key.into());
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
    /// the flag poller); for the end of a process or a serverless invocation. Outbox events
    /// not delivered by then wait for the next relay, and the report says how many; in-memory
    /// events not delivered by then are lost, and counted in the error. A zero deadline stops
    /// at once without starting a delivery.
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
            .ok_or(Error::MissingDistinctId { event: name })?;
        let mut staged = Vec::with_capacity(1);
        event.write(&mut Stager::new(&mut staged, distinct_id))?;
        let mut staged = self.inner.dispatch.apply_before_send(staged);
        Ok(staged.pop())
    }
}

/// How long a remote `/flags` evaluation may take.
const FLAGS_TIMEOUT: Duration = Duration::from_secs(3);

/// How long fetching the flag definitions (for local evaluation) may take: a larger answer.
const DEFINITIONS_TIMEOUT: Duration = Duration::from_secs(10);

/// Builds a [`Tracker`].
#[must_use]
pub struct TrackerBuilder {
    config: Config,
    delivery: Delivery,
    gzip: bool,
    request_timeout: Duration,
    queue: QueueOptions,
    relay: RelayOptions,
    before_send: Option<BeforeSend>,
    external_relay: bool,
    local_evaluation_only: bool,
    flag_definitions: Option<LocalEvaluator>,
}

impl fmt::Debug for TrackerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrackerBuilder")
            .field("config", &self.config)
            .field("delivery", &self.delivery)
            .field("gzip", &self.gzip)
            .finish_non_exhaustive()
    }
}

impl Default for TrackerBuilder {
    fn default() -> Self {
        TrackerBuilder {
            config: Config::default(),
            delivery: Delivery::default(),
            gzip: true,
            request_timeout: Duration::from_secs(10),
            queue: QueueOptions {
                capacity: 10_000,
                capacity_bytes: 64 * 1024 * 1024,
                flush_at: 500,
                flush_interval: Duration::from_millis(500),
                max_batch_bytes: crate::client::wire::MAX_REQUEST_BYTES,
                max_retries: 5,
                backoff: Backoff::default(),
                historical_migration: false,
            },
            relay: RelayOptions::default(),
            before_send: None,
            external_relay: false,
            local_evaluation_only: false,
            flag_definitions: None,
        }
    }
}

impl TrackerBuilder {
    /// Starts from `config` (keys, host, disabled), as read by [`Config::from_env`].
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// The project API key (`phc_...`). Without one the tracker runs in dry-run mode.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.config.api_key = Some(ApiKey::new(key));
        self
    }

    /// The personal (or project secret) API key, for local flag evaluation.
    pub fn personal_api_key(mut self, key: impl Into<String>) -> Self {
        self.config.personal_api_key = Some(ApiKey::new(key));
        self
    }

    /// The PostHog host: a URL, or `us` / `eu` for PostHog Cloud.
    pub fn host(mut self, host: impl AsRef<str>) -> Result<Self> {
        self.config.host = crate::config::normalize_host(host.as_ref())?;
        Ok(self)
    }

    /// Records no events at all (tracked writes still write their rows).
    pub fn disabled(mut self, disabled: bool) -> Self {
        self.config.disabled = disabled;
        self
    }

    /// Outbox (default) or after-commit delivery for tracked writes.
    pub fn delivery(mut self, delivery: Delivery) -> Self {
        self.delivery = delivery;
        self
    }

    /// Gzip request bodies (default on).
    pub fn gzip(mut self, gzip: bool) -> Self {
        self.gzip = gzip;
        self
    }

    /// Timeout of one request to PostHog (default 10 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Capacity of the in-memory queue (default 10,000 events).
    pub fn queue_capacity(mut self, events: usize) -> Self {
        self.queue.capacity = events.max(1);
        self
    }

    /// Bytes of events the in-memory queue holds at most (default 64 MiB); when full,
    /// `capture` waits and `try_capture` refuses, as with the event count.
    pub fn queue_capacity_bytes(mut self, bytes: usize) -> Self {
        self.queue.capacity_bytes = bytes.max(1);
        self
    }

    /// A standalone `posthog-track relay` delivers the outbox, so this process starts no
    /// relay of its own (default `false`: the first tracked transaction on a pool starts
    /// the pool's relay). `flush` then waits for that relay to deliver what was committed
    /// before it, and `shutdown` reports how many events it leaves in the outbox.
    pub fn external_relay(mut self, external: bool) -> Self {
        self.external_relay = external;
        self
    }

    /// How long [`Tracker::flush`] waits for delivery at most (default 30 s).
    pub fn flush_timeout(mut self, timeout: Duration) -> Self {
        self.relay.flush_timeout = timeout;
        self
    }

    /// Failures of one outbox event, sent alone while PostHog accepts other events, after
    /// which it is dead-lettered as poison (default 20). Failures during an outage, or in a
    /// request shared with a poison event, do not count.
    pub fn max_failures(mut self, failures: u32) -> Self {
        self.relay.max_failures = failures.max(1);
        self
    }

    /// Age after which an outbox event that still fails is dead-lettered (default 7 days).
    pub fn max_age(mut self, age: Duration) -> Self {
        self.relay.max_age = age;
        self
    }

    /// Payload bytes one relay claim holds at most (default 16 MiB).
    pub fn max_claim_bytes(mut self, bytes: usize) -> Self {
        self.relay.max_claim_bytes = bytes.max(1);
        self
    }

    /// Events per request (default 500), for the queue and the relay.
    pub fn batch_size(mut self, events: usize) -> Self {
        self.queue.flush_at = events.max(1);
        self.relay.batch_size = events.max(1);
        self
    }

    /// Bytes of events per request from the in-memory queue before it is sent early (default
    /// 4 MiB; PostHog accepts up to 20 MB).
    pub fn max_batch_bytes(mut self, bytes: usize) -> Self {
        self.queue.max_batch_bytes = bytes.max(1);
        self
    }

    /// The longest an event waits in the in-memory queue before it is sent (default 500 ms).
    pub fn flush_interval(mut self, interval: Duration) -> Self {
        self.queue.flush_interval = interval;
        self
    }

    /// Retries of a failed in-memory delivery before its events are given up and counted
    /// (default 5). Outbox events are never given up.
    pub fn max_retries(mut self, retries: u32) -> Self {
        self.queue.max_retries = retries;
        self
    }

    /// Waits between retries.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.queue.backoff = backoff;
        self.relay.backoff = backoff;
        self
    }

    /// How long a relay's claim on outbox rows lasts (default 60 s).
    pub fn lease(mut self, lease: Duration) -> Self {
        self.relay.lease = lease;
        self
    }

    /// Polling bounds of an idle relay (default 50 ms growing to 2 s).
    pub fn poll_interval(mut self, min: Duration, max: Duration) -> Self {
        self.relay.min_poll = min;
        self.relay.max_poll = max.max(min);
        self
    }

    /// Marks batches as `historical_migration` (imports of past events).
    pub fn historical_migration(mut self, historical: bool) -> Self {
        self.queue.historical_migration = historical;
        self.relay.historical_migration = historical;
        self
    }

    /// A hook over every event before it is recorded; see [`BeforeSend`].
    pub fn before_send(
        mut self,
        hook: impl Fn(serde_json::Value) -> Option<serde_json::Value> + Send + Sync + 'static,
    ) -> Self {
        self.before_send = Some(Arc::new(hook));
        self
    }

    /// Never ask PostHog for a flag local definitions cannot decide; such flags read as
    /// `None`.
    pub fn local_evaluation_only(mut self, local_only: bool) -> Self {
        self.local_evaluation_only = local_only;
        self
    }

    /// Flag definitions to evaluate locally from the start (the body of
    /// `/flags/definitions`), for offline use and tests; the poller replaces them.
    pub fn flag_definitions(mut self, evaluator: LocalEvaluator) -> Self {
        self.flag_definitions = Some(evaluator);
        self
    }

    /// The tracker.
    pub fn build(self) -> Tracker {
        let mode = self.config.mode();
        if mode != Mode::Disabled && crate::config::is_plain_http_to_remote(&self.config.host) {
            tracing::warn!(
                host = %crate::config::redact_host(&self.config.host),
                "POSTHOG_HOST uses plain http:// to another machine: the API key and every \
                 event cross the network unencrypted; use https://"
            );
        }
        let sink = match mode {
            Mode::Disabled => None,
            Mode::DryRun => Some(Sink::DryRun),
            Mode::Live => self.config.api_key.clone().map(|key| {
                Sink::PostHog(Transport::new(
                    &self.config.host,
                    key,
                    self.gzip,
                    self.request_timeout,
                ))
            }),
        };
        let flush_timeout = self.relay.flush_timeout;
        let dispatch = Dispatch::new(DispatchOptions {
            mode,
            delivery: self.delivery,
            sink,
            before_send: self.before_send,
            queue: self.queue,
            relay: self.relay,
            external_relay: self.external_relay,
            flush_timeout,
        });
        let flags = self
            .config
            .api_key
            .clone()
            .filter(|_| !self.config.disabled)
            .map(|key| RemoteFlags::new(&self.config.host, key, FLAGS_TIMEOUT));
        let definitions_client = match (&self.config.api_key, &self.config.personal_api_key) {
            (Some(project), Some(secret)) if !self.config.disabled => Some(DefinitionsClient::new(
                &self.config.host,
                project,
                secret.clone(),
                DEFINITIONS_TIMEOUT,
            )),
            _ => None,
        };
        let definitions = DefinitionsCache::default();
        if let Some(evaluator) = self.flag_definitions {
            definitions.preload(evaluator);
        }
        Tracker {
            inner: Arc::new(Inner {
                config: self.config,
                dispatch,
                flags,
                exposures: Mutex::new(ExposureCache::new(50_000)),
                definitions: Arc::new(definitions),
                definitions_client,
                local_evaluation_only: self.local_evaluation_only,
                poller: Mutex::new(None),
                routing: RoutingState::default(),
            }),
        }
    }
}
