//! The entry point: configuration, migrations, tracked transactions, capture and delivery.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use sqlx::Pool;
use tokio::sync::{Notify, watch};
use uuid::Uuid;

use crate::backend::Backend;
use crate::client::queue::{Queue, QueueOptions};
use crate::client::transport::Transport;
use crate::client::{Backoff, DeliveryCounts, DeliveryStats, SharedStats, Sink};
use crate::config::{ApiKey, Config, Mode};
use crate::error::{Error, Result};
use crate::event::{Event, StagedEvent, Stager};
use crate::flags::{
    DefinitionsCache, DefinitionsClient, ExposureCache, LocalEvaluator, RemoteFlags, RoutingState,
};
use crate::outbox::{self, Outbox};
use crate::relay::{Relay, RelayOptions};
use crate::transaction::TrackedTransaction;

/// How the events of tracked writes reach PostHog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Delivery {
    /// Written to the outbox table in the write's transaction and delivered by a relay:
    /// nothing committed is lost, even across a crash (at-least-once, deduplicated by uuid).
    #[default]
    Outbox,
    /// Held in the transaction and handed to the in-memory queue after commit. Needs no outbox
    /// table, but events queued when the process dies are lost (at-most-once across a crash).
    AfterCommit,
}

/// A hook that sees every event before it is recorded: return it (changed or not) to keep it,
/// or `None` to drop it.
pub type BeforeSend = Arc<dyn Fn(serde_json::Value) -> Option<serde_json::Value> + Send + Sync>;

pub(crate) struct Inner {
    config: Config,
    pub(crate) delivery: Delivery,
    sink: Option<Sink>,
    queue_options: QueueOptions,
    relay_options: RelayOptions,
    pub(crate) before_send: Option<BeforeSend>,
    stats: SharedStats,
    queue: OnceLock<Arc<Queue>>,
    pub(crate) wake: Arc<Notify>,
    relays: Mutex<Vec<RunningRelay>>,
    pub(crate) flags: Option<RemoteFlags>,
    pub(crate) exposures: Mutex<ExposureCache>,
    pub(crate) definitions: Arc<DefinitionsCache>,
    pub(crate) definitions_client: Option<DefinitionsClient>,
    pub(crate) local_evaluation_only: bool,
    pub(crate) poller: Mutex<Option<watch::Sender<bool>>>,
    pub(crate) routing: RoutingState,
}

type DrainFn = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<()>> + Send>> + Send + Sync>;

struct RunningRelay {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    drain: DrainFn,
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
            .field("delivery", &self.inner.delivery)
            .field("stats", &self.inner.stats.snapshot())
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
        self.inner.stats.snapshot()
    }

    /// Creates the outbox table (`posthog_outbox`) and its index if they do not exist.
    pub async fn migrate<DB: Backend>(&self, pool: &Pool<DB>) -> Result<()> {
        outbox::migrate(pool).await
    }

    /// Begins a tracked transaction on a connection from `pool`.
    pub async fn begin<DB: Backend>(
        &self,
        pool: &Pool<DB>,
    ) -> Result<TrackedTransaction<'static, DB>> {
        Ok(self.track(pool.begin().await?))
    }

    /// Tracks writes in a transaction you already began (on a pool, a connection or as a
    /// nested transaction).
    pub fn track<'c, DB: Backend>(
        &self,
        tx: sqlx::Transaction<'c, DB>,
    ) -> TrackedTransaction<'c, DB> {
        TrackedTransaction::new(tx, self.clone())
    }

    /// The outbox of the database behind `pool`.
    pub fn outbox<'p, DB: Backend>(&self, pool: &'p Pool<DB>) -> Outbox<'p, DB> {
        Outbox::new(pool)
    }

    /// A relay for the outbox behind `pool`, to run by hand (`run_once`, `drain`, `run`).
    /// Most applications want [`start_relay`](Tracker::start_relay) instead.
    pub fn relay<DB: Backend>(&self, pool: Pool<DB>) -> Relay<DB> {
        Relay::new(
            pool,
            self.inner.sink.clone(),
            self.inner.relay_options.clone(),
            self.inner.stats.clone(),
            self.inner.wake.clone(),
        )
    }

    /// Starts delivering the outbox behind `pool` in the background, on the current tokio
    /// runtime. Commits through this tracker wake it at once; otherwise it polls, so events
    /// committed by other processes are delivered too. Stopped by
    /// [`shutdown`](Tracker::shutdown). Does nothing when the tracker is disabled.
    pub fn start_relay<DB: Backend>(&self, pool: Pool<DB>) {
        if self.inner.sink.is_none() {
            return;
        }
        let relay = Arc::new(self.relay(pool));
        let (stop, stopped) = watch::channel(false);
        let runner = relay.clone();
        let task = tokio::spawn(async move { runner.run(stopped).await });
        let drain: DrainFn = Arc::new(move || {
            let relay = relay.clone();
            Box::pin(async move { relay.drain().await })
        });
        lock(&self.inner.relays).push(RunningRelay { stop, task, drain });
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
        if wait_for_room {
            self.queue()?.push(staged).await?;
        } else {
            self.queue()?.try_push(staged).await?;
        }
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

    /// Delivers everything committed or captured so far: drains every relay started with
    /// [`start_relay`](Tracker::start_relay) and the in-memory queue. Fails with
    /// [`Error::Delivery`] when PostHog did not accept everything; outbox events stay for the
    /// next attempt.
    pub async fn flush(&self) -> Result<()> {
        let drains: Vec<DrainFn> = lock(&self.inner.relays)
            .iter()
            .map(|relay| relay.drain.clone())
            .collect();
        let mut result = Ok(());
        for drain in drains {
            if let Err(error) = drain().await {
                result = Err(error);
            }
        }
        if let Some(queue) = self.inner.queue.get() {
            queue.flush().await?;
        }
        result
    }

    /// Flushes with a deadline and stops background work; for the end of a process or a
    /// serverless invocation. Undelivered outbox events wait for the next relay. When the
    /// deadline passes, in-memory events not yet delivered are dropped; a zero deadline
    /// discards them at once.
    pub async fn shutdown(&self, deadline: Duration) -> Result<()> {
        let started = Instant::now();
        if let Some(poller) = lock(&self.inner.poller).take() {
            let _ = poller.send(true);
        }
        let relays: Vec<RunningRelay> = lock(&self.inner.relays).drain(..).collect();
        for relay in &relays {
            let _ = relay.stop.send(true);
        }
        let drains: Vec<DrainFn> = relays.iter().map(|relay| relay.drain.clone()).collect();
        let work = async {
            for drain in drains {
                drain().await?;
            }
            if let Some(queue) = self.inner.queue.get() {
                queue.flush().await?;
            }
            Ok::<(), Error>(())
        };
        // A zero deadline means "stop now": not even one delivery attempt is started, so
        // nothing is sent after this returns.
        let outcome = if deadline.is_zero() {
            None
        } else {
            tokio::time::timeout(deadline, work).await.ok()
        };
        if let Some(queue) = self.inner.queue.get() {
            // Out of time, the in-memory queue stops at once: a process that is shutting down
            // must not keep sending (or be frozen mid-request, as serverless runtimes do).
            if outcome.is_none() {
                queue.abort().await;
            } else {
                queue.close().await;
            }
        }
        for relay in relays {
            relay.task.abort();
        }
        match outcome {
            Some(result) => result,
            None => Err(Error::Timeout {
                waited: started.elapsed(),
                pending: 0,
            }),
        }
    }

    fn queue(&self) -> Result<&Arc<Queue>> {
        let sink = self.inner.sink.clone().ok_or(Error::ShutDown)?;
        Ok(self.inner.queue.get_or_init(|| {
            Queue::start(
                sink,
                self.inner.queue_options.clone(),
                self.inner.stats.clone(),
            )
        }))
    }

    /// Serialises an untyped event, applying `before_send`. `None` when it is not recorded.
    fn stage(&self, event: Event) -> Result<Option<StagedEvent>> {
        if self.inner.sink.is_none() {
            return Ok(None);
        }
        let name = event.name.clone();
        let distinct_id = event
            .distinct_id
            .clone()
            .ok_or(Error::MissingDistinctId { event: name })?;
        let mut staged = Vec::with_capacity(1);
        event.write(&mut Stager::new(&mut staged, distinct_id))?;
        let mut staged = self.apply_before_send(staged);
        Ok(staged.pop())
    }

    /// Runs the `before_send` hook over staged events; dropped ones are counted.
    pub(crate) fn apply_before_send(&self, events: Vec<StagedEvent>) -> Vec<StagedEvent> {
        let Some(hook) = &self.inner.before_send else {
            return events;
        };
        events
            .into_iter()
            .filter_map(|mut event| {
                let Some(json) = hook(event.json()) else {
                    self.inner.stats.filtered();
                    return None;
                };
                event.payload = json.to_string();
                Some(event)
            })
            .collect()
    }

    /// Hands events of a committed `AfterCommit` transaction to the queue.
    pub(crate) async fn enqueue(&self, events: Vec<StagedEvent>) -> Result<()> {
        let queue = self.queue()?;
        for event in events {
            queue.push(event).await?;
        }
        Ok(())
    }

    pub(crate) fn records_events(&self) -> bool {
        self.inner.sink.is_some()
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding this lock cannot leave the list inconsistent.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

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
    flags_timeout: Duration,
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
                flush_at: 500,
                flush_interval: Duration::from_millis(500),
                max_batch_bytes: crate::client::wire::MAX_REQUEST_BYTES,
                max_retries: 5,
                backoff: Backoff::default(),
                historical_migration: false,
            },
            relay: RelayOptions::default(),
            before_send: None,
            flags_timeout: Duration::from_secs(3),
            local_evaluation_only: false,
            flag_definitions: None,
        }
    }
}

impl TrackerBuilder {
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
        let sink = match self.config.mode() {
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
        let flags = self
            .config
            .api_key
            .clone()
            .filter(|_| !self.config.disabled)
            .map(|key| RemoteFlags::new(&self.config.host, key, self.flags_timeout));
        let definitions_client = match (&self.config.api_key, &self.config.personal_api_key) {
            (Some(project), Some(secret)) if !self.config.disabled => Some(DefinitionsClient::new(
                &self.config.host,
                project,
                secret.clone(),
                self.flags_timeout.max(Duration::from_secs(10)),
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
                delivery: self.delivery,
                sink,
                queue_options: self.queue,
                relay_options: self.relay,
                before_send: self.before_send,
                stats: Arc::new(DeliveryStats::default()),
                queue: OnceLock::new(),
                wake: Arc::new(Notify::new()),
                relays: Mutex::new(Vec::new()),
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
