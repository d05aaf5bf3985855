//! The delivery side of a tracker, shared by the tracker and its transactions: where committed
//! and captured events go (the outbox and its relays, the in-memory queue, or stdout in dry
//! run), `before_send`, the stats, and waiting for delivery (`flush`, `shutdown`).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use sqlx::Pool;
use tokio::sync::{Notify, watch};

use crate::backend::Backend;
use crate::client::queue::{Queue, QueueOptions, Stop};
use crate::client::{DropCause, SharedStats, Sink, print_dry_run};
use crate::error::{Error, Result};
use crate::event::StagedEvent;
use crate::mode::Mode;
use crate::outbox::Outbox;
use crate::relay::{Relay, RelayOptions, RelayState};
use crate::sync::lock;

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
/// or `None` to drop it. An event it returns without a distinct id (absent, empty or
/// whitespace), or larger than PostHog accepts, is refused as staging refuses one: `capture`
/// or `commit` (before the database commits) fails with
/// [`Error::MissingDistinctId`](crate::Error::MissingDistinctId) or
/// [`Error::EventTooLarge`](crate::Error::EventTooLarge).
pub type BeforeSend = Arc<dyn Fn(serde_json::Value) -> Option<serde_json::Value> + Send + Sync>;

/// What [`Tracker::shutdown`](crate::Tracker::shutdown) left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Events waiting in the outboxes this tracker committed to, for the next relay (a
    /// standalone `posthog-track relay` when delivery is external). Never lost.
    pub left_in_outbox: u64,
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
type DrainFn = Arc<dyn Fn(Duration) -> BoxFuture<'static, Result<()>> + Send + Sync>;
type PendingFn = Arc<dyn Fn() -> BoxFuture<'static, Result<i64>> + Send + Sync>;

/// An outbox this tracker committed to, and its in-process relay when it runs one.
struct KnownPool {
    pending: PendingFn,
    /// Waits, without claiming anything, until what was committed before the call is gone
    /// from the outbox: `flush` when another process delivers.
    await_external: DrainFn,
    relay: Option<RunningRelay>,
    /// When a commit here last notified other processes' relays; see `notifies_relays`.
    last_notify: AtomicU64,
}

/// At most one `NOTIFY` per database per this long: see [`crate::outbox::WAKE_CHANNEL`].
const NOTIFY_EVERY: Duration = Duration::from_millis(25);

struct RunningRelay {
    /// Dropped with the tracker: the relay loop then stops by itself.
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    drain: DrainFn,
    /// Makes rounds still sending at the instant given hand their rows back.
    abandon_at: Arc<dyn Fn(Instant) + Send + Sync>,
    wake: Arc<Notify>,
    state: Arc<dyn Fn() -> RelayState + Send + Sync>,
}

/// Identifies a pool (clones of a `Pool` share their options).
fn pool_key<DB: Backend>(pool: &Pool<DB>) -> usize {
    Arc::as_ptr(&pool.connect_options()) as *const () as usize
}

pub(crate) struct Dispatch {
    pub(crate) mode: Mode,
    pub(crate) delivery: Delivery,
    /// `None` when disabled; `DryRun` prints.
    sink: Option<Sink>,
    before_send: Option<BeforeSend>,
    /// Every event gets `$geoip_disable: true`.
    disable_geoip: bool,
    pub(crate) stats: SharedStats,
    queue_options: QueueOptions,
    relay_options: RelayOptions,
    queue: OnceLock<Arc<Queue>>,
    /// `shutdown` was called: no queue is started from then on (one it closed refuses
    /// events itself).
    shut_down: std::sync::atomic::AtomicBool,
    /// `shutdown` stopped this process's relays: a `flush` waits for none of them.
    relays_stopped: std::sync::atomic::AtomicBool,
    pools: Mutex<HashMap<usize, KnownPool>>,
    /// A standalone relay serves the databases: this process starts none.
    external_relay: bool,
    /// Events committed through `Tracker::track` (no pool known) while no relay ran.
    unrelayed: AtomicU64,
    flush_timeout: Duration,
    /// The origin of the `last_notify` clocks.
    epoch: Instant,
    /// `last_notify` of commits whose pool is unknown (`Tracker::track`).
    last_notify: AtomicU64,
    /// In-memory events lost and not reported yet, and why: `AfterCommit` events lost before
    /// they reached the queue (committed after `shutdown`, or their `commit` cancelled), and
    /// the queue's losses that a `flush` or `shutdown` could not report because it failed
    /// otherwise (a timeout of the outbox, say). Reported by the next `flush` or `shutdown`.
    unqueued: Mutex<(u64, String)>,
}

impl std::fmt::Debug for Dispatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatch")
            .field("mode", &self.mode)
            .field("delivery", &self.delivery)
            .field("external_relay", &self.external_relay)
            .finish_non_exhaustive()
    }
}

/// What a tracker's builder configures of its delivery side; the mode and the sink follow from
/// the config when it is built.
pub(crate) struct DispatchOptions {
    pub delivery: Delivery,
    pub before_send: Option<BeforeSend>,
    pub disable_geoip: bool,
    pub queue: QueueOptions,
    pub relay: RelayOptions,
    pub external_relay: bool,
}

impl Dispatch {
    pub(crate) fn new(mode: Mode, sink: Option<Sink>, options: DispatchOptions) -> Self {
        let flush_timeout = options.relay.flush_timeout;
        Dispatch {
            mode,
            delivery: options.delivery,
            sink,
            before_send: options.before_send,
            disable_geoip: options.disable_geoip,
            stats: SharedStats::default(),
            queue_options: options.queue,
            relay_options: options.relay,
            queue: OnceLock::new(),
            shut_down: std::sync::atomic::AtomicBool::new(false),
            relays_stopped: std::sync::atomic::AtomicBool::new(false),
            pools: Mutex::new(HashMap::new()),
            external_relay: options.external_relay,
            unrelayed: AtomicU64::new(0),
            flush_timeout,
            epoch: Instant::now(),
            last_notify: AtomicU64::new(0),
            unqueued: Mutex::new((0, String::new())),
        }
    }

    /// Whether tracked writes record events at all (not when disabled).
    pub(crate) fn records_events(&self) -> bool {
        self.sink.is_some()
    }

    /// Whether committed events go to the outbox (live mode with outbox delivery).
    fn uses_outbox(&self) -> bool {
        self.mode == Mode::Live && self.delivery == Delivery::Outbox
    }

    /// A relay for `pool`, to run by hand.
    pub(crate) fn relay<DB: Backend>(&self, pool: Pool<DB>, wake: Arc<Notify>) -> Relay<DB> {
        Relay::new(
            pool,
            self.sink.clone(),
            self.mode,
            self.relay_options.clone(),
            self.stats.clone(),
            wake,
        )
    }

    /// Called when a tracked transaction begins on `pool`: the first one starts the pool's
    /// in-process relay (unless delivery is external), so that a tracker delivers what it
    /// commits without further calls. Returns the pool's key, for waking its relay.
    pub(crate) fn track_pool<DB: Backend>(&self, pool: &Pool<DB>) -> Option<usize> {
        if !self.uses_outbox() {
            return None;
        }
        let key = pool_key(pool);
        let mut pools = lock(&self.pools);
        if let std::collections::hash_map::Entry::Vacant(entry) = pools.entry(key) {
            // None after `shutdown`: it stopped background work for good.
            let spawn = !self.external_relay && !self.shut_down.load(Ordering::SeqCst);
            let relay = spawn.then(|| self.spawn_relay(pool.clone()));
            entry.insert(known_pool(pool.clone(), relay));
        }
        Some(key)
    }

    /// Starts the in-process relay of `pool` now, whatever the builder said about external
    /// delivery.
    pub(crate) fn start_relay<DB: Backend>(&self, pool: &Pool<DB>) -> Result<()> {
        if !matches!(self.sink, Some(Sink::PostHog(_))) {
            return Err(Error::CannotDeliver { mode: self.mode });
        }
        let key = pool_key(pool);
        let mut pools = lock(&self.pools);
        let known = pools
            .entry(key)
            .or_insert_with(|| known_pool(pool.clone(), None));
        if known.relay.is_none() {
            known.relay = Some(self.spawn_relay(pool.clone()));
        }
        Ok(())
    }

    fn spawn_relay<DB: Backend>(&self, pool: Pool<DB>) -> RunningRelay {
        let wake = Arc::new(Notify::new());
        let relay = Arc::new(self.relay(pool, wake.clone()));
        let (stop, stopped) = watch::channel(false);
        let runner = relay.clone();
        let task = tokio::spawn(async move { runner.run(stopped).await });
        let abandoning = relay.clone();
        let observed = relay.clone();
        let drain: DrainFn = Arc::new(move |timeout| {
            let relay = relay.clone();
            Box::pin(async move { relay.drain_for(timeout).await })
        });
        RunningRelay {
            stop,
            task,
            drain,
            abandon_at: Arc::new(move |at| abandoning.abandon_at(at)),
            wake,
            state: Arc::new(move || observed.state()),
        }
    }

    /// Adds `$geoip_disable` when asked, then runs `before_send` over staged events (so the
    /// hook sees what will be sent); dropped ones are counted. What the hook returns is
    /// checked as staging checks an event: an event it left without a distinct id (absent,
    /// blank) fails with [`Error::MissingDistinctId`], one it left without a name (not a
    /// string, or blank: empty, whitespace or invisible characters) with
    /// [`Error::InvalidEventName`], one it made larger than PostHog accepts with
    /// [`Error::EventTooLarge`], rather than be sent for PostHog to refuse.
    pub(crate) fn apply_before_send(
        &self,
        mut events: Vec<StagedEvent>,
    ) -> Result<Vec<StagedEvent>> {
        if self.disable_geoip {
            for event in &mut events {
                crate::event::disable_geoip(event);
            }
        }
        let Some(hook) = &self.before_send else {
            return Ok(events);
        };
        let mut kept = Vec::with_capacity(events.len());
        for mut event in events {
            let Some(mut json) = hook(event.json()) else {
                self.stats.filtered();
                continue;
            };
            // A number as the distinct id is sent as its text, as v0's capture reads it: v1's
            // requires a string.
            if let Some(id) = json.get("distinct_id").filter(|id| id.is_number()) {
                json["distinct_id"] = id.to_string().into();
            }
            // The hook may rename the event: to a blank name, or to no string at all.
            match json.get("event") {
                Some(serde_json::Value::String(name)) if !crate::event::is_blank(name) => {}
                other => {
                    return Err(Error::InvalidEventName {
                        event: match other {
                            Some(serde_json::Value::String(name)) => name.clone().into(),
                            Some(value) => value.to_string().into(),
                            None => "".into(),
                        },
                    });
                }
            }
            adopt_hook_identity(&mut event, &mut json);
            crate::event::options_to_properties(&mut json);
            let attributed = match json.get("distinct_id") {
                Some(serde_json::Value::String(id)) => !crate::event::is_blank(id),
                _ => false,
            };
            if !attributed {
                return Err(Error::MissingDistinctId { event: event.event });
            }
            event.payload = json.to_string();
            if event.payload.len() > crate::client::wire::MAX_EVENT_BYTES {
                return Err(Error::EventTooLarge {
                    event: event.event,
                    bytes: event.payload.len(),
                });
            }
            kept.push(event);
        }
        Ok(kept)
    }

    /// Whether a write's events may go to the outbox with the statement that writes its row
    /// (`model::fold`): in live mode with outbox delivery, when commit would write them
    /// unchanged (no `before_send` hook, no `$geoip_disable` to add).
    pub(crate) fn folds_events(&self) -> bool {
        self.uses_outbox()
            && self.records_events()
            && self.before_send.is_none()
            && !self.disable_geoip
    }

    /// Where the events of a transaction about to commit go: `true` when they must be written
    /// to the outbox inside it.
    pub(crate) fn writes_outbox(&self) -> bool {
        self.uses_outbox()
    }

    /// Whether a commit about to happen on `pool` (PostgreSQL) should notify the relays of
    /// other processes: only when this process runs no relay for it (its own relay is woken
    /// in memory), and at most once per `NOTIFY_EVERY` per pool, because notifying commits
    /// are serialised by PostgreSQL.
    pub(crate) fn notifies_relays(&self, pool: Option<usize>) -> bool {
        // Offset by one period, so that the first commit notifies.
        let now =
            u64::try_from((self.epoch.elapsed() + NOTIFY_EVERY).as_micros()).unwrap_or(u64::MAX);
        let every = u64::try_from(NOTIFY_EVERY.as_micros()).unwrap_or(u64::MAX);
        let pools = lock(&self.pools);
        let last = match pool.and_then(|key| pools.get(&key)) {
            Some(known) if known.relay.is_some() => return false,
            Some(known) => &known.last_notify,
            None => &self.last_notify,
        };
        let previous = last.load(Ordering::Relaxed);
        now.saturating_sub(previous) >= every
            && last
                .compare_exchange(previous, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// After a commit: wakes the pool's relay (outbox), or prints (dry run), or queues
    /// (`AfterCommit`). Never fails: the database has committed, and delivery trouble from
    /// here on is logged and counted, not returned as the commit's error.
    pub(crate) async fn committed(&self, pool: Option<usize>, events: Vec<StagedEvent>) {
        if events.is_empty() {
            return;
        }
        match (self.mode, self.delivery) {
            (Mode::Live, Delivery::Outbox) => {
                let relay = pool.and_then(|key| {
                    lock(&self.pools)
                        .get(&key)
                        .and_then(|known| known.relay.as_ref().map(|relay| relay.wake.clone()))
                });
                let unrelayed = || {
                    pool.is_none()
                        && !self.external_relay
                        && !self.runs_relays()
                        && self
                            .unrelayed
                            .fetch_add(events.len() as u64, Ordering::Relaxed)
                            == 0
                };
                match relay {
                    Some(wake) => wake.notify_one(),
                    None if unrelayed() => tracing::error!(
                        "posthog-track: events were committed through `Tracker::track` on a pool \
                         this tracker runs no relay for; they wait in the outbox. Call \
                         `tracker.start_relay(pool)` once at start-up, or begin transactions \
                         with `tracker.begin(&pool)`"
                    ),
                    None => {}
                }
            }
            (Mode::DryRun, delivery) => {
                print_dry_run(events.iter().map(|e| e.payload.as_str()));
                // Printed is dry run's delivered, as for captured events.
                let path = match delivery {
                    Delivery::Outbox => crate::metrics::Path::Outbox,
                    Delivery::AfterCommit => crate::metrics::Path::Queue,
                };
                self.stats.printed(events.len(), path);
            }
            (Mode::Live, Delivery::AfterCommit) => {
                // Counts what a `commit` cancelled while it waits for room leaves unqueued.
                let mut handoff = Handoff {
                    dispatch: self,
                    left: events.len(),
                    reason: WAITED_FOR_ROOM,
                };
                for event in events {
                    let queued = self.push(event, true).await;
                    handoff.left -= 1;
                    if let Err(error) = queued {
                        tracing::error!(%error, "an after-commit event could not be queued");
                        self.unqueued(
                            DropCause::AtShutdown,
                            1,
                            "committed after `shutdown`: the in-memory queue accepts no more \
                             events",
                        );
                    }
                }
            }
            (Mode::Disabled, _) => {}
        }
    }

    /// Held across the database's `COMMIT` of a transaction whose events go to the in-memory
    /// queue after it (`AfterCommit`): a `commit` cancelled there may leave the rows
    /// committed, and their events are then counted as lost rather than lost silently.
    pub(crate) fn guard_commit(&self, events: usize) -> Option<Handoff<'_>> {
        let queued = self.mode == Mode::Live && self.delivery == Delivery::AfterCommit;
        // Not `then_some`: a guard built and dropped would count the events as lost.
        if !queued || events == 0 {
            return None;
        }
        Some(Handoff {
            dispatch: self,
            left: events,
            reason: WAITED_FOR_COMMIT,
        })
    }

    /// Counts `AfterCommit` events lost before they reached the queue, for the next `flush`.
    fn unqueued(&self, cause: DropCause, events: usize, reason: &str) {
        self.stats.dropped(cause, events);
        let mut unqueued = lock(&self.unqueued);
        unqueued.0 += events as u64;
        unqueued.1 = reason.to_owned();
    }

    /// The in-memory queue's `result`, its losses set aside for
    /// [`with_unqueued`](Self::with_unqueued) (counted in the stats already): a result that
    /// fails otherwise (a timeout) would fold them away unreported.
    fn defer_losses(&self, result: Result<()>) -> Result<()> {
        match result {
            Err(Error::Undelivered {
                dead: 0,
                dropped,
                reason,
            }) => {
                let mut unqueued = lock(&self.unqueued);
                unqueued.0 += dropped;
                unqueued.1 = reason;
                Ok(())
            }
            other => other,
        }
    }

    /// `result` with the in-memory events lost and not reported yet, which it reports; a
    /// result that could not report them (a timeout) leaves them for the next.
    fn with_unqueued(&self, result: Result<()>, started: Instant) -> Result<()> {
        let (lost, reason) = std::mem::take(&mut *lock(&self.unqueued));
        if lost == 0 {
            return result;
        }
        let mut outcome = Outcome::default();
        outcome.add(result);
        outcome.add(Err(Error::Undelivered {
            dead: 0,
            dropped: lost,
            reason: reason.clone(),
        }));
        let mut result = outcome.finish(started);
        if !matches!(result, Err(Error::Undelivered { .. })) {
            // Said in words too: after a `shutdown`, there may be no next flush.
            if let Err(Error::Timeout { reason: why, .. }) = &mut result {
                why.push_str(&format!(
                    "; besides, {lost} in-memory event(s) were lost ({reason}), reported again \
                     by the next flush"
                ));
            }
            let mut unqueued = lock(&self.unqueued);
            unqueued.0 += lost;
            if unqueued.1.is_empty() {
                unqueued.1 = reason;
            }
        }
        result
    }

    /// The worst state of the background relays, `None` when none runs. A relay whose task
    /// ended while it was not stopped (it panicked) is [`RelayState::Stopped`].
    pub(crate) fn relay_state(&self) -> Option<RelayState> {
        let rank = |state: RelayState| match state {
            RelayState::Stopped => 3,
            RelayState::Paused => 2,
            RelayState::BackingOff => 1,
            _ => 0,
        };
        lock(&self.pools)
            .values()
            .filter_map(|known| {
                // `shutdown` takes the relays out of the pools before stopping them: one still
                // here whose task is over ended by itself.
                known.relay.as_ref().map(|relay| {
                    if relay.task.is_finished() {
                        RelayState::Stopped
                    } else {
                        (relay.state)()
                    }
                })
            })
            .max_by_key(|state| rank(*state))
    }

    fn runs_relays(&self) -> bool {
        lock(&self.pools)
            .values()
            .any(|known| known.relay.is_some())
    }

    /// Queues a captured event for the in-memory path.
    pub(crate) async fn push(&self, event: StagedEvent, wait_for_room: bool) -> Result<()> {
        let queue = self.queue()?;
        if wait_for_room {
            queue.push(event).await
        } else {
            queue.try_push(event).await
        }
    }

    fn queue(&self) -> Result<&Arc<Queue>> {
        let sink = self.sink.clone().ok_or(Error::Disabled {
            operation: "the in-memory event queue",
        })?;
        if let Some(queue) = self.queue.get() {
            return Ok(queue);
        }
        // A queue started after `shutdown` would run on with nothing to stop or flush it.
        if self.shut_down.load(Ordering::SeqCst) {
            return Err(Error::ShutDown);
        }
        Ok(self
            .queue
            .get_or_init(|| Queue::start(sink, self.queue_options.clone(), self.stats.clone())))
    }

    /// Delivers everything committed or captured before the call, within the flush timeout.
    pub(crate) async fn flush(&self) -> Result<()> {
        // A timeout too large to add to the clock (`Duration::MAX`) is no deadline at all.
        self.deliver_all(Instant::now().checked_add(self.flush_timeout))
            .await
    }

    /// `deadline`: `None` waits as long as it takes.
    async fn deliver_all(&self, deadline: Option<Instant>) -> Result<()> {
        let started = Instant::now();
        // `shutdown` stopped this process's relays: no relay here delivers any more. (While
        // it runs, a flush waits for what its final drain delivers.)
        let stopped = self.relays_stopped.load(Ordering::SeqCst) && !self.external_relay;
        let drains: Vec<DrainFn> = lock(&self.pools)
            .values()
            .map(|known| match &known.relay {
                Some(relay) => relay.drain.clone(),
                None if stopped => left_after_shutdown(known.pending.clone()),
                None => known.await_external.clone(),
            })
            .collect();
        let outbox = async {
            let mut outcome = Outcome::default();
            for drain in drains {
                outcome.add(drain(time_left(deadline)).await);
            }
            outcome
        };
        // At the same time as the outbox: the queue's events must not wait for the outbox's
        // (its losses are kept for a report, whatever the outbox's result).
        let memory = async {
            let queue = self.queue.get()?;
            let remaining = time_left(deadline);
            Some(match tokio::time::timeout(remaining, queue.flush()).await {
                Ok(result) => self.defer_losses(result),
                Err(_) => Err(Error::Timeout {
                    waited: started.elapsed(),
                    pending: queue.pending() as u64,
                    reason: "in-memory events still being sent".to_owned(),
                }),
            })
        };
        let (mut outcome, memory) = tokio::join!(outbox, memory);
        if let Some(result) = memory {
            outcome.add(result);
        }
        let unrelayed = self.unrelayed.load(Ordering::Relaxed);
        if unrelayed > 0 && !self.runs_relays() && !self.external_relay {
            outcome.add(Err(Error::NoRelay { pending: unrelayed }));
        }
        self.with_unqueued(outcome.finish(started), started)
    }

    /// Flushes until `deadline`, then stops background work.
    pub(crate) async fn shutdown(&self, deadline: Duration) -> Result<ShutdownReport> {
        let started = Instant::now();
        self.shut_down.store(true, Ordering::SeqCst);
        // `None`: a deadline too far to add to the clock (`Duration::MAX`), i.e. none.
        let at = started.checked_add(deadline);
        let relays: Vec<RunningRelay> = lock(&self.pools)
            .values_mut()
            .filter_map(|known| known.relay.take())
            .collect();
        // The relays are out of the pools for good: once this ends, or is cancelled (its
        // future dropped, the relays with it), no relay of this process delivers.
        let stops = StopsRelays(&self.relays_stopped);
        if let Some(at) = at {
            for relay in &relays {
                (relay.abandon_at)(at);
            }
        }
        // Put the relays back for the final flush only: they stop as soon as it ends.
        let drained = async {
            if deadline.is_zero() {
                // "Stop now": not even one delivery attempt is started.
                return Ok(());
            }
            let mut outcome = Outcome::default();
            for relay in &relays {
                outcome.add((relay.drain)(time_left(at)).await);
            }
            outcome.finish(started)
        };
        // The in-memory queue is flushed at the same time: its events are lost at the
        // deadline, the outbox's wait for the next relay.
        let flushed = async {
            let queue = self.queue.get()?;
            if deadline.is_zero() {
                return Some(Ok(()));
            }
            Some(
                match tokio::time::timeout(time_left(at), queue.flush()).await {
                    Ok(result) => self.defer_losses(result),
                    Err(_) => Ok(()), // `close` counts what is left
                },
            )
        };
        let (mut result, flushed) = tokio::join!(drained, flushed);
        for relay in &relays {
            let _ = relay.stop.send(true);
        }
        if let Some(queue) = self.queue.get() {
            let flushed = flushed.unwrap_or(Ok(()));
            let closed = queue
                .close(if deadline.is_zero() {
                    Stop::Now
                } else {
                    Stop::At(at.map(tokio::time::Instant::from_std))
                })
                .await;
            let mut outcome = Outcome::default();
            outcome.add(result);
            outcome.add(flushed);
            outcome.add(self.defer_losses(closed));
            result = outcome.finish(started);
        }
        for relay in relays {
            // Its round in flight ends by `at` (abandoned if need be); then it sees the stop.
            let grace = time_left(at).saturating_add(Duration::from_millis(500));
            let mut task = relay.task;
            if tokio::time::timeout(grace, &mut task).await.is_err() {
                task.abort();
            }
        }
        drop(stops);
        let mut left = 0u64;
        let pending: Vec<PendingFn> = lock(&self.pools)
            .values()
            .map(|known| known.pending.clone())
            .collect();
        for count in pending {
            // Bounded like the rest: a database that does not answer must not hold the stop.
            let grace = time_left(at).saturating_add(Duration::from_millis(500));
            if let Ok(Ok(count)) = tokio::time::timeout(grace, count()).await {
                left += count.unsigned_abs();
            }
        }
        if left > 0 {
            tracing::info!(
                events = left,
                "posthog-track stopped; {left} event(s) wait in the outbox for the next relay"
            );
        }
        self.with_unqueued(result, started)
            .map(|()| ShutdownReport {
                left_in_outbox: left,
            })
    }
}

/// Why the events of a cancelled hand-off were lost.
const WAITED_FOR_ROOM: &str = "their `commit` was cancelled (its future dropped) after the \
                               database committed, while they waited for room in the in-memory \
                               queue";
const WAITED_FOR_COMMIT: &str = "their `commit` was cancelled (its future dropped) while the \
                                 database committed: the rows may have committed without them";

/// Sets its flag when dropped: see [`Dispatch::shutdown`].
struct StopsRelays<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for StopsRelays<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// The events of an `AfterCommit` hand-off not queued yet: counted as lost if the hand-off
/// is dropped half-way (its `commit` cancelled), so that the next `flush` reports them.
pub(crate) struct Handoff<'a> {
    dispatch: &'a Dispatch,
    left: usize,
    reason: &'static str,
}

impl Handoff<'_> {
    /// The database answered the `COMMIT` (or failed it): [`Dispatch::committed`] takes over.
    pub(crate) fn answered(mut self) {
        self.left = 0;
    }
}

impl Drop for Handoff<'_> {
    fn drop(&mut self) {
        if self.left > 0 {
            tracing::error!(
                events = self.left,
                "a commit was cancelled when the database may have committed, before its \
                 after-commit events were queued: they are lost"
            );
            self.dispatch
                .unqueued(DropCause::Cancelled, self.left, self.reason);
        }
    }
}

/// The "drain" of a pool whose relay `shutdown` stopped: nothing in this process delivers its
/// outbox any more, so a flush says at once what waits there (for the next relay) instead of
/// waiting, until its timeout, for a relay that does not run.
fn left_after_shutdown(pending: PendingFn) -> DrainFn {
    Arc::new(move |timeout| {
        let pending = pending.clone();
        Box::pin(async move {
            let started = Instant::now();
            let bound = timeout.saturating_add(Duration::from_millis(500));
            let (pending, reason) = match tokio::time::timeout(bound, pending()).await {
                Ok(Ok(0)) => return Ok(()),
                Ok(Ok(count)) => (
                    count.unsigned_abs(),
                    "the tracker was shut down: they wait in the outbox for the next relay",
                ),
                Ok(Err(error)) => return Err(error),
                Err(_) => (0, "the database did not answer within the timeout"),
            };
            Err(Error::Timeout {
                waited: started.elapsed(),
                pending,
                reason: reason.to_owned(),
            })
        })
    })
}

/// What is left until `deadline`; all the time in the world without one.
fn time_left(deadline: Option<Instant>) -> Duration {
    deadline.map_or(Duration::MAX, |at| {
        at.saturating_duration_since(Instant::now())
    })
}

fn known_pool<DB: Backend>(pool: Pool<DB>, relay: Option<RunningRelay>) -> KnownPool {
    let counted = pool.clone();
    let pending: PendingFn = Arc::new(move || {
        let pool = counted.clone();
        Box::pin(async move { Outbox::new(&pool).status().await.map(|s| s.pending) })
    });
    let await_external: DrainFn = Arc::new(move |timeout| {
        let pool = pool.clone();
        Box::pin(async move { await_delivery(&pool, timeout).await })
    });
    KnownPool {
        pending,
        await_external,
        relay,
        last_notify: AtomicU64::new(0),
    }
}

/// Waits until every event committed before the call has left the outbox (delivered or
/// dead-lettered by whichever relay serves it), for at most `timeout`; fails with
/// [`Error::Undelivered`] when some of them were dead-lettered, as a flush by an in-process
/// relay does.
async fn await_delivery<DB: Backend>(pool: &Pool<DB>, timeout: Duration) -> Result<()> {
    let started = Instant::now();
    // Bounded as a whole: a database that does not answer would keep a query, and the flush,
    // waiting without end.
    let bound = timeout.saturating_add(Duration::from_millis(500));
    match tokio::time::timeout(bound, await_delivery_until(pool, started, timeout)).await {
        Ok(result) => result,
        Err(_) => Err(Error::Timeout {
            waited: started.elapsed(),
            pending: 0,
            reason: "the database did not answer within the timeout".to_owned(),
        }),
    }
}

async fn await_delivery_until<DB: Backend>(
    pool: &Pool<DB>,
    started: Instant,
    timeout: Duration,
) -> Result<()> {
    let outbox = Outbox::new(pool);
    let (oldest, newest, since) = outbox.wait_start().await?;
    loop {
        // Whether anything is left, not how much: counting read every row left on each poll.
        if !outbox.any_pending_through(newest).await? {
            let dead = outbox.dead_since(oldest, newest, since).await?;
            if dead > 0 {
                return Err(Error::Undelivered {
                    dead: dead.unsigned_abs(),
                    dropped: 0,
                    reason: "dead-lettered by the relay that serves this outbox; see \
                             `posthog-track outbox status` for why"
                        .to_owned(),
                });
            }
            return Ok(());
        }
        let remaining = timeout.saturating_sub(started.elapsed());
        if remaining.is_zero() {
            let (pending, _) = outbox.pending_through(newest).await?;
            if pending == 0 {
                // Delivered since the probe: the next one says so (and looks for dead
                // letters). A timeout's `pending: 0` means "not counted", never "none".
                continue;
            }
            return Err(Error::Timeout {
                waited: started.elapsed(),
                pending: pending.unsigned_abs(),
                reason: "waiting for the external relay (`posthog-track relay`) to deliver them"
                    .to_owned(),
            });
        }
        tokio::time::sleep(remaining.min(Duration::from_millis(100))).await;
    }
}

/// Several delivery results folded into one error that counts everything.
#[derive(Default)]
struct Outcome {
    pending: u64,
    /// A wait ran out of time, even if it could not count what was left (a database that
    /// did not answer): never a success.
    timed_out: bool,
    /// A wait ran out of time without counting what it left (`pending: 0`): `pending` is then
    /// only what the others counted.
    uncounted: bool,
    dead: u64,
    dropped: u64,
    reason: Option<String>,
    other: Option<Error>,
}

impl Outcome {
    fn add(&mut self, result: Result<()>) {
        match result {
            Ok(()) => {}
            Err(Error::Timeout {
                pending, reason, ..
            }) => {
                self.pending += pending;
                self.timed_out = true;
                self.uncounted |= pending == 0;
                self.reason = Some(reason);
            }
            Err(Error::Undelivered {
                dead,
                dropped,
                reason,
            }) => {
                self.dead += dead;
                self.dropped += dropped;
                self.reason.get_or_insert(reason);
            }
            Err(Error::NoRelay { pending }) => {
                self.pending += pending;
                self.reason = Some(Error::NoRelay { pending }.to_string());
            }
            Err(other) => {
                self.other.get_or_insert(other);
            }
        }
    }

    fn finish(self, started: Instant) -> Result<()> {
        if let Some(error) = self.other {
            return Err(error);
        }
        let mut reason = self.reason.unwrap_or_default();
        if self.pending > 0 || self.timed_out {
            if self.uncounted && self.pending > 0 {
                // The count would read as everything that is left; it is a floor.
                reason.push_str(
                    "; more may wait: a wait that ran out of time (a database that did not \
                     answer) could not count what it left",
                );
            }
            return Err(Error::Timeout {
                waited: started.elapsed(),
                pending: self.pending,
                reason,
            });
        }
        if self.dead > 0 || self.dropped > 0 {
            return Err(Error::Undelivered {
                dead: self.dead,
                dropped: self.dropped,
                reason,
            });
        }
        Ok(())
    }
}

/// What a `before_send` hook made of the event's identity becomes the staged event's, so that
/// `capture` returns, and the outbox's columns show, what is sent (a hook that pseudonymises
/// the distinct id leaves no raw id in the outbox). A uuid the hook removed or spoiled is put
/// back: retries must resend the same uuid for PostHog to deduplicate them.
fn adopt_hook_identity(event: &mut StagedEvent, json: &mut serde_json::Value) {
    let text = |key: &str| json.get(key).and_then(serde_json::Value::as_str);
    match text("uuid").and_then(|uuid| uuid::Uuid::parse_str(uuid).ok()) {
        Some(uuid) => event.uuid = uuid,
        None => {
            if let Some(object) = json.as_object_mut() {
                object.insert("uuid".to_owned(), event.uuid.to_string().into());
            }
        }
    }
    let text = |key: &str| json.get(key).and_then(serde_json::Value::as_str);
    if let Some(name) = text("event") {
        event.event = std::borrow::Cow::Owned(name.to_owned());
    }
    if let Some(distinct_id) = text("distinct_id") {
        event.distinct_id = distinct_id.to_owned();
    }
    // The outbox's timestamp column holds an RFC 3339 time of at most 40 characters (it is
    // a VARCHAR(40) on MySQL); anything else stays in the payload alone.
    if let Some(timestamp) = text("timestamp")
        .filter(|timestamp| timestamp.len() <= 40)
        .filter(|timestamp| chrono::DateTime::parse_from_rfc3339(timestamp).is_ok())
    {
        event.timestamp = timestamp.to_owned();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeout(pending: u64) -> Result<()> {
        Err(Error::Timeout {
            waited: Duration::from_secs(1),
            pending,
            reason: "PostHog answered 503".to_owned(),
        })
    }

    /// Waits that timed out fold into one `Timeout` that counts what they counted, and says
    /// when the count is only a floor (one of them could not count).
    #[test]
    fn an_uncounted_timeout_makes_the_count_a_floor() {
        let started = Instant::now();
        let mut both = Outcome::default();
        both.add(timeout(3));
        both.add(timeout(0));
        let message = both.finish(started).unwrap_err().to_string();
        assert!(
            message.contains(": 3 event(s) not yet delivered"),
            "{message}"
        );
        assert!(message.contains("; more may wait"), "{message}");

        let mut counted = Outcome::default();
        counted.add(timeout(3));
        counted.add(Ok(()));
        let message = counted.finish(started).unwrap_err().to_string();
        assert!(
            message.contains(": 3 event(s) not yet delivered"),
            "{message}"
        );
        assert!(!message.contains("more may wait"), "{message}");

        let mut uncounted = Outcome::default();
        uncounted.add(timeout(0));
        let error = uncounted.finish(started).unwrap_err();
        assert!(
            matches!(error, Error::Timeout { pending: 0, .. }),
            "a timeout is never a success: {error:?}"
        );
        let message = error.to_string();
        assert!(message.contains("an unknown number of events"), "{message}");
        assert!(!message.contains("more may wait"), "{message}");
    }
}
