//! The in-memory batching queue behind `Tracker::capture`, exposures and `AfterCommit`
//! delivery.
//!
//! Bounded in events and in bytes: when it is full, `capture` waits for room (backpressure)
//! and `try_capture` returns [`Error::QueueFull`](crate::Error::QueueFull). Events here live in
//! memory only: a crash loses what is queued, which is why tracked writes go through the
//! outbox by default. Nothing is lost silently: every event the queue gives up is counted by
//! cause in the stats, and reported by the next `flush` (or `shutdown`) as
//! [`Error::Undelivered`](crate::Error::Undelivered).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::time::Instant;

use super::backoff::Backoff;
use super::deliver::{self, Fate, Group};
use super::v1::RequestMeta;
use super::{DropCause, SharedStats, Sink};
use crate::config::CaptureMode;
use crate::error::{Error, Result};
use crate::event::StagedEvent;

/// v1 never retries sooner than this (the capture_v1 contract's floor).
const V1_MIN_BACKOFF: Duration = Duration::from_millis(100);

/// Tuning of the in-memory queue.
#[derive(Debug, Clone)]
pub(crate) struct QueueOptions {
    pub capacity: usize,
    /// Bytes of payload the queue holds at most.
    pub capacity_bytes: usize,
    pub flush_at: usize,
    pub flush_interval: Duration,
    pub max_batch_bytes: usize,
    pub max_retries: u32,
    pub backoff: Backoff,
    pub historical_migration: bool,
}

/// The queue's byte budget is counted in KiB permits (a semaphore has a bounded permit count).
const PERMIT_BYTES: usize = 1024;

fn permits_for(bytes: usize) -> u32 {
    u32::try_from(bytes.div_ceil(PERMIT_BYTES).max(1)).unwrap_or(u32::MAX)
}

struct Queued {
    event: StagedEvent,
    /// Sends of this event that failed so far.
    failures: u32,
    /// The request it was last sent in: a v1 retry resends it as that request (same id, next
    /// attempt).
    request: Option<RequestMeta>,
    /// Its share of the byte budget, returned when the event leaves the queue.
    _room: OwnedSemaphorePermit,
    /// Its place among the `capacity` events the queue holds, freed when it leaves the queue
    /// (delivered, given up or dropped), not when the worker takes it into its batch.
    _slot: OwnedSemaphorePermit,
}

impl Queued {
    /// An event entering the queue (counted in the queue's gauges until it leaves).
    fn new(event: StagedEvent, (slot, room): (OwnedSemaphorePermit, OwnedSemaphorePermit)) -> Self {
        crate::metrics::queue_moved(1.0, event.payload.len());
        Queued {
            event,
            failures: 0,
            request: None,
            _room: room,
            _slot: slot,
        }
    }
}

impl Drop for Queued {
    /// Delivered, given up or lost at shutdown: it leaves the queue's gauges.
    fn drop(&mut self) {
        crate::metrics::queue_moved(-1.0, self.event.payload.len());
    }
}

// Nearly every command is an event: boxing it would cost an allocation each.
#[allow(clippy::large_enum_variant)]
enum Command {
    Event(Queued),
    Flush(oneshot::Sender<Result<()>>),
    /// The queue is full and an event waits for room: send what is held now, not at the next
    /// timed send (which `flush_interval(Duration::MAX)` never makes).
    Send,
}

/// Handle to the queue's worker task.
pub(crate) struct Queue {
    sender: Mutex<Option<mpsc::Sender<Command>>>,
    worker: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    room: Arc<Semaphore>,
    room_permits: u32,
    /// `capacity` permits: one per event held, in the channel, the batch or its retries.
    slots: Arc<Semaphore>,
    capacity: usize,
    /// Events accepted and not yet delivered or given up.
    in_flight: Arc<AtomicUsize>,
    /// Events given up and not reported yet; shared with the worker so that what it gave up
    /// is still reported when `close` stops it.
    unreported: Arc<std::sync::Mutex<Unreported>>,
    stats: SharedStats,
}

/// Events given up since the last flush reported them, and the last reason.
#[derive(Debug, Default)]
struct Unreported {
    dropped: u64,
    reason: String,
}

impl Unreported {
    /// Takes them, as the error that reports them (`Ok` when there are none).
    fn take(shared: &std::sync::Mutex<Unreported>) -> Result<()> {
        let Unreported { dropped, reason } = std::mem::take(&mut *crate::sync::lock(shared));
        if dropped == 0 {
            return Ok(());
        }
        Err(Error::Undelivered {
            dead: 0,
            dropped,
            reason,
        })
    }

    /// Puts back what a report that nobody received held.
    fn restore(shared: &std::sync::Mutex<Unreported>, dropped: u64, reason: String) {
        let mut unreported = crate::sync::lock(shared);
        unreported.dropped += dropped;
        if unreported.reason.is_empty() {
            unreported.reason = reason;
        }
    }
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("capacity", &self.capacity)
            .field("in_flight", &self.in_flight.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Queue {
    /// Starts the worker on the current tokio runtime.
    pub(crate) fn start(sink: Sink, options: QueueOptions, stats: SharedStats) -> Arc<Queue> {
        // At most `Semaphore::MAX_PERMITS`: more would panic, and is no bound anyway.
        let capacity = options.capacity.clamp(1, Semaphore::MAX_PERMITS);
        let (sender, receiver) = mpsc::channel(capacity);
        let room_permits = permits_for(options.capacity_bytes);
        let in_flight = Arc::new(AtomicUsize::new(0));
        let unreported = Arc::new(std::sync::Mutex::new(Unreported::default()));
        let worker = tokio::spawn(
            Worker {
                sink,
                options,
                stats: stats.clone(),
                buffer: Vec::new(),
                bytes: 0,
                in_flight: in_flight.clone(),
                capacity,
                room_permits,
                held_permits: 0,
                unreported: unreported.clone(),
            }
            .run(receiver),
        );
        Arc::new(Queue {
            sender: Mutex::new(Some(sender)),
            worker: std::sync::Mutex::new(Some(worker)),
            room: Arc::new(Semaphore::new(room_permits as usize)),
            room_permits,
            slots: Arc::new(Semaphore::new(capacity)),
            capacity,
            in_flight,
            unreported,
            stats,
        })
    }

    async fn sender(&self) -> Result<mpsc::Sender<Command>> {
        self.sender.lock().await.clone().ok_or(Error::ShutDown)
    }

    /// The event's place in the queue and share of the byte budget; `None` when it must wait
    /// and `wait` is false.
    async fn room_for(
        &self,
        event: &StagedEvent,
        wait: bool,
    ) -> Result<Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)>> {
        // A single event larger than the whole budget still passes, alone.
        let permits = permits_for(event.payload.len()).min(self.room_permits);
        if wait {
            let slot = self.slots.clone().acquire_owned().await;
            let room = self.room.clone().acquire_many_owned(permits).await;
            return match (slot, room) {
                (Ok(slot), Ok(room)) => Ok(Some((slot, room))),
                _ => Err(Error::ShutDown),
            };
        }
        let taken = self.slots.clone().try_acquire_owned().and_then(|slot| {
            let room = self.room.clone().try_acquire_many_owned(permits)?;
            Ok((slot, room))
        });
        match taken {
            Ok(permits) => Ok(Some(permits)),
            Err(tokio::sync::TryAcquireError::NoPermits) => Ok(None),
            Err(tokio::sync::TryAcquireError::Closed) => Err(Error::ShutDown),
        }
    }

    /// Queues an event, waiting for room when the queue is full.
    pub(crate) async fn push(&self, event: StagedEvent) -> Result<()> {
        let sender = self.sender().await?;
        let room = match self.room_for(&event, false).await? {
            Some(room) => room,
            None => {
                // A full channel holds events the worker has yet to take: it needs no nudge.
                let _ = sender.try_send(Command::Send);
                self.room_for(&event, true).await?.ok_or(Error::ShutDown)?
            }
        };
        let pending = Pending::count(&self.in_flight);
        let queued = Queued::new(event, room);
        // The channel may be full (of flush requests): the send waits, and a caller cancelled
        // then (a `commit` dropped) must not leave the event counted as pending.
        sender
            .send(Command::Event(queued))
            .await
            .map_err(|_| Error::ShutDown)?;
        pending.accepted();
        Ok(())
    }

    /// Queues an event if there is room right now.
    pub(crate) async fn try_push(&self, event: StagedEvent) -> Result<()> {
        let sender = self.sender().await?;
        let full = || {
            self.stats.dropped_queue_full();
            Error::QueueFull {
                capacity: self.capacity,
            }
        };
        let Some(room) = self.room_for(&event, false).await? else {
            // Refused now; the worker sends what it holds, so that room is made.
            let _ = sender.try_send(Command::Send);
            return Err(full());
        };
        let pending = Pending::count(&self.in_flight);
        let queued = Queued::new(event, room);
        match sender.try_send(Command::Event(queued)) {
            Ok(()) => {
                pending.accepted();
                Ok(())
            }
            Err(error) => {
                drop(pending);
                match error {
                    mpsc::error::TrySendError::Full(_) => Err(full()),
                    mpsc::error::TrySendError::Closed(_) => Err(Error::ShutDown),
                }
            }
        }
    }

    /// Events accepted and not yet delivered or given up.
    pub(crate) fn pending(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Delivers everything queued before this call. Fails with
    /// [`Error::Undelivered`](crate::Error::Undelivered) when events were given up since the
    /// last flush.
    pub(crate) async fn flush(&self) -> Result<()> {
        let (ack, done) = oneshot::channel();
        let Ok(sender) = self.sender().await else {
            return Ok(()); // closed: `close` delivers what is left
        };
        sender
            .send(Command::Flush(ack))
            .await
            .map_err(|_| Error::ShutDown)?;
        done.await.map_err(|_| Error::ShutDown)?
    }

    /// Stops accepting events and waits for the worker to deliver what it holds, until
    /// `stop`; past it, the worker is stopped and what it still held is counted as
    /// dropped at shutdown. Fails with [`Error::Undelivered`] counting those and every event
    /// given up before and not reported yet (by a flush that timed out, say).
    pub(crate) async fn close(&self, stop: Stop) -> Result<()> {
        let lost = self.stop_worker(stop).await;
        let unreported = Unreported::take(&self.unreported);
        if lost == 0 {
            return unreported;
        }
        let dropped = match unreported {
            Err(Error::Undelivered { dropped, .. }) => dropped,
            _ => 0,
        };
        Err(Error::Undelivered {
            dead: 0,
            dropped: dropped + lost as u64,
            reason: "shutdown's deadline passed before they were sent".to_owned(),
        })
    }

    /// Stops the worker (see [`close`](Self::close)); returns the events it still held.
    async fn stop_worker(&self, stop: Stop) -> usize {
        self.sender.lock().await.take();
        self.room.close();
        self.slots.close();
        let worker = self
            .worker
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let Some(mut worker) = worker else {
            return 0;
        };
        let finished = match stop {
            Stop::At(Some(at)) => tokio::time::timeout_at(at, &mut worker).await.is_ok(),
            Stop::At(None) => (&mut worker).await.is_ok(),
            Stop::Now => false,
        };
        if finished {
            return 0;
        }
        worker.abort();
        let _ = worker.await;
        let lost = self.in_flight.swap(0, Ordering::Relaxed);
        if lost > 0 {
            self.stats.dropped(DropCause::AtShutdown, lost);
            tracing::error!(
                events = lost,
                "shutdown deadline passed: in-memory events not yet delivered are lost"
            );
        }
        lost
    }
}

/// An event counted in `in_flight` while it is handed to the worker: uncounted again if the
/// hand-off fails or is cancelled (its future dropped) before the channel took it.
struct Pending<'a> {
    in_flight: &'a AtomicUsize,
    accepted: bool,
}

impl<'a> Pending<'a> {
    fn count(in_flight: &'a AtomicUsize) -> Self {
        in_flight.fetch_add(1, Ordering::Relaxed);
        Pending {
            in_flight,
            accepted: false,
        }
    }

    /// The channel took it: the worker uncounts it when it leaves the queue.
    fn accepted(mut self) {
        self.accepted = true;
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.accepted {
            // Saturating: `close` may have counted it as lost (and zeroed the count) already.
            let _ = self
                .in_flight
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    Some(n.saturating_sub(1))
                });
        }
    }
}

/// When [`Queue::close`] stops the worker.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stop {
    /// At once: what it holds is dropped.
    Now,
    /// Once it has delivered what it holds, or at the instant given (`None`: no deadline).
    At(Option<Instant>),
}

/// The groups of a v1 round: events that were sent in the same request are resent together as
/// that request (same id, next attempt); events never sent make one new request.
fn v1_groups(pending: &[Queued]) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    let mut fresh = Vec::new();
    for (index, queued) in pending.iter().enumerate() {
        match &queued.request {
            None => fresh.push(index),
            Some(request) => match groups.iter_mut().find(|g| g.request.id == request.id) {
                Some(group) => group.members.push(index),
                None => groups.push(Group {
                    members: vec![index],
                    request: request.retry(),
                }),
            },
        }
    }
    if !fresh.is_empty() {
        groups.push(Group::new(fresh, 1));
    }
    groups
}

struct Worker {
    sink: Sink,
    options: QueueOptions,
    stats: SharedStats,
    buffer: Vec<Queued>,
    bytes: usize,
    in_flight: Arc<AtomicUsize>,
    /// The queue's capacity in events, and its byte budget in permits: a batch that holds
    /// either is sent at once, as nothing more can be queued until it leaves.
    capacity: usize,
    room_permits: u32,
    /// Byte-budget permits of the events in `buffer`.
    held_permits: usize,
    /// Events given up since the last flush, and the last reason.
    unreported: Arc<std::sync::Mutex<Unreported>>,
}

impl Worker {
    async fn run(mut self, mut receiver: mpsc::Receiver<Command>) {
        let mut deadline: Option<Instant> = None;
        loop {
            let command = match deadline {
                Some(at) => match tokio::time::timeout_at(at, receiver.recv()).await {
                    Ok(command) => command,
                    Err(_) => {
                        self.send_buffer().await;
                        deadline = None;
                        continue;
                    }
                },
                None => receiver.recv().await,
            };
            match command {
                Some(Command::Event(queued)) => {
                    self.bytes += queued.event.payload.len();
                    self.held_permits += queued._room.num_permits();
                    self.buffer.push(queued);
                    if self.buffer.len() >= self.options.flush_at
                        || self.bytes >= self.options.max_batch_bytes
                        || self.buffer.len() >= self.capacity
                        || self.held_permits >= self.room_permits as usize
                    {
                        self.send_buffer().await;
                        deadline = None;
                    } else if deadline.is_none() {
                        // An interval too long to add to the clock (`Duration::MAX`) sends
                        // only on batch size or flush.
                        deadline = Instant::now().checked_add(self.options.flush_interval);
                    }
                }
                Some(Command::Send) => {
                    self.send_buffer().await;
                    deadline = None;
                }
                Some(Command::Flush(ack)) => {
                    self.send_buffer().await;
                    deadline = None;
                    let result = Unreported::take(&self.unreported);
                    // The flush that asked gave up waiting (it timed out): the events given
                    // up stay to be reported by the next one.
                    if let Err(Err(Error::Undelivered {
                        dropped, reason, ..
                    })) = ack.send(result)
                    {
                        Unreported::restore(&self.unreported, dropped, reason);
                    }
                }
                None => {
                    self.send_buffer().await;
                    return;
                }
            }
        }
    }

    fn give_up(&mut self, events: &[Queued], cause: DropCause, reason: &str) {
        if events.is_empty() {
            return;
        }
        tracing::error!(
            events = events.len(),
            ?cause,
            %reason,
            "in-memory events given up; they will not reach PostHog"
        );
        self.stats.dropped(cause, events.len());
        let mut unreported = crate::sync::lock(&self.unreported);
        unreported.dropped += events.len() as u64;
        reason.clone_into(&mut unreported.reason);
    }

    /// Sends the buffer; events that fail are retried until the retry budget is spent. On v0,
    /// whole once, then in ever smaller groups, so a poison event cannot sink the others; on
    /// v1, as the same request (same `PostHog-Request-Id`, next `PostHog-Attempt`) holding only
    /// the events PostHog asked for again, after a backoff of at least 100 ms and
    /// `Retry-After`. A request refused whole for the set-up (401, 402, 403, ...) or as bad
    /// (400, 413, 415) is not retried: its events are given up and counted.
    async fn send_buffer(&mut self) {
        let mut pending = std::mem::take(&mut self.buffer);
        self.bytes = 0;
        self.held_permits = 0;
        let mut round = 0u32;
        let v1 = self.sink.capture_mode() == CaptureMode::V1;
        while !pending.is_empty() {
            let payloads: Vec<&str> = pending.iter().map(|q| q.event.payload.as_str()).collect();
            let groups = if v1 {
                v1_groups(&pending)
            } else {
                // The first retry resends the request whole (same events, as PostHog's SDK
                // contract expects); splitting to isolate a poison event starts after that.
                let prior: Vec<u32> = pending
                    .iter()
                    .map(|q| q.failures.saturating_sub(1))
                    .collect();
                deliver::groups(&prior)
                    .into_iter()
                    .map(|members| {
                        let attempt = members
                            .iter()
                            .map(|&i| pending[i].failures + 1)
                            .max()
                            .unwrap_or(1);
                        Group::new(members, attempt)
                    })
                    .collect()
            };
            let report = self
                .sink
                .deliver(
                    &payloads,
                    &groups,
                    &vec![self.options.historical_migration; payloads.len()],
                )
                .await;
            self.stats
                .count_fates(&report.fates, crate::metrics::Path::Queue);
            let mut retry_after = None;
            let mut last_reason = String::new();
            let mut retry = Vec::new();
            let mut delivered_any = false;
            let mut failed_any = false;
            let mut done = 0;
            let mut given_up: Vec<(Queued, DropCause, String)> = Vec::new();
            for ((mut queued, fate), sent_in) in
                pending.into_iter().zip(report.fates).zip(report.sent_in)
            {
                match fate {
                    Fate::Delivered => {
                        delivered_any = true;
                        done += 1;
                    }
                    Fate::Dead { reason } | Fate::Refused { reason } => {
                        given_up.push((queued, DropCause::Rejected, reason));
                    }
                    Fate::Retry {
                        retry_after: after,
                        reason,
                        ..
                    } => {
                        retry_after = retry_after.max(after);
                        last_reason = reason;
                        queued.failures += 1;
                        queued.request = sent_in;
                        failed_any = true;
                        retry.push((queued, DropCause::AfterRetries));
                    }
                    // Refused for the set-up (401, 403, 402, ...): resending the same request
                    // cannot help, and PostHog's SDK contract says not to.
                    Fate::Paused { reason } if !reason.is_empty() => {
                        given_up.push((queued, DropCause::Misconfigured, reason));
                    }
                    Fate::Paused { .. } => retry.push((queued, DropCause::AfterRetries)),
                }
            }
            for (queued, cause, reason) in &given_up {
                self.give_up(std::slice::from_ref(queued), *cause, reason);
            }
            done += given_up.len();
            self.in_flight.fetch_sub(done, Ordering::Relaxed);
            // v0 resends at once what another group of the same round let through (poison
            // isolation), unless PostHog asked for a wait (`Retry-After` of a 429 or 503);
            // v1 resends only what PostHog asked for, and never at once.
            let wait = !delivered_any || (v1 && failed_any) || retry_after.is_some();
            if wait {
                round += 1;
            }
            let (spent, kept): (Vec<_>, Vec<_>) = retry
                .into_iter()
                .partition(|(queued, _)| queued.failures > self.options.max_retries);
            for (queued, cause) in spent {
                let reason = format!("after {} attempts: {last_reason}", queued.failures);
                self.give_up(std::slice::from_ref(&queued), cause, &reason);
                self.in_flight.fetch_sub(1, Ordering::Relaxed);
            }
            pending = kept.into_iter().map(|(queued, _)| queued).collect();
            if pending.is_empty() {
                break;
            }
            if wait {
                let mut delay = self.options.backoff.delay(round, retry_after);
                if v1 {
                    delay = delay.max(V1_MIN_BACKOFF);
                }
                tracing::warn!(events = pending.len(), reason = %last_reason, ?delay, "delivery failed; retrying");
                tokio::time::sleep(delay).await;
            }
        }
    }
}
