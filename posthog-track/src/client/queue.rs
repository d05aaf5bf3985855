//! The in-memory batching queue behind `Tracker::capture` and `AfterCommit` delivery.
//!
//! Bounded: when it is full, `capture` waits for room (backpressure) and `try_capture` returns
//! [`Error::QueueFull`](crate::Error::QueueFull) and counts the event as dropped. Nothing is
//! ever dropped silently. Events here live in memory only: a crash loses what is queued, which
//! is why tracked writes go through the outbox by default.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::time::Instant;

use super::backoff::Backoff;
use super::deliver::Fate;
use super::{SharedStats, Sink};
use crate::error::{Error, Result};
use crate::event::StagedEvent;

/// Tuning of the in-memory queue.
#[derive(Debug, Clone)]
pub(crate) struct QueueOptions {
    pub capacity: usize,
    pub flush_at: usize,
    pub flush_interval: Duration,
    pub max_batch_bytes: usize,
    pub max_retries: u32,
    pub backoff: Backoff,
    pub historical_migration: bool,
}

enum Command {
    Event(StagedEvent),
    Flush(oneshot::Sender<Result<()>>),
}

/// Handle to the queue's worker task.
#[derive(Debug)]
pub(crate) struct Queue {
    sender: Mutex<Option<mpsc::Sender<Command>>>,
    worker: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    capacity: usize,
    stats: SharedStats,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Event(event) => f.debug_tuple("Event").field(event).finish(),
            Command::Flush(_) => f.write_str("Flush"),
        }
    }
}

impl Queue {
    /// Starts the worker on the current tokio runtime.
    pub(crate) fn start(sink: Sink, options: QueueOptions, stats: SharedStats) -> Arc<Queue> {
        let (sender, receiver) = mpsc::channel(options.capacity.max(1));
        let capacity = options.capacity;
        let worker = tokio::spawn(
            Worker {
                sink,
                options,
                stats: stats.clone(),
                buffer: Vec::new(),
                bytes: 0,
            }
            .run(receiver),
        );
        Arc::new(Queue {
            sender: Mutex::new(Some(sender)),
            worker: std::sync::Mutex::new(Some(worker)),
            capacity,
            stats,
        })
    }

    async fn sender(&self) -> Result<mpsc::Sender<Command>> {
        self.sender.lock().await.clone().ok_or(Error::ShutDown)
    }

    /// Queues an event, waiting for room when the queue is full.
    pub(crate) async fn push(&self, event: StagedEvent) -> Result<()> {
        self.sender()
            .await?
            .send(Command::Event(event))
            .await
            .map_err(|_| Error::ShutDown)
    }

    /// Queues an event if there is room right now.
    pub(crate) async fn try_push(&self, event: StagedEvent) -> Result<()> {
        match self.sender().await?.try_send(Command::Event(event)) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.stats.dropped_queue_full();
                Err(Error::QueueFull {
                    capacity: self.capacity,
                })
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Error::ShutDown),
        }
    }

    /// Delivers everything queued before this call.
    pub(crate) async fn flush(&self) -> Result<()> {
        let (ack, done) = oneshot::channel();
        self.sender()
            .await?
            .send(Command::Flush(ack))
            .await
            .map_err(|_| Error::ShutDown)?;
        done.await.map_err(|_| Error::ShutDown)?
    }

    /// Stops accepting events; the worker delivers what it holds and exits.
    pub(crate) async fn close(&self) {
        self.sender.lock().await.take();
    }

    /// Stops the worker now: events it still holds are dropped (a shutdown out of time).
    pub(crate) async fn abort(&self) {
        self.close().await;
        let worker = self
            .worker
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(worker) = worker {
            worker.abort();
        }
    }
}

struct Worker {
    sink: Sink,
    options: QueueOptions,
    stats: SharedStats,
    buffer: Vec<StagedEvent>,
    bytes: usize,
}

impl Worker {
    async fn run(mut self, mut receiver: mpsc::Receiver<Command>) {
        let mut deadline: Option<Instant> = None;
        loop {
            let command = match deadline {
                Some(at) => match tokio::time::timeout_at(at, receiver.recv()).await {
                    Ok(command) => command,
                    Err(_) => {
                        let _ = self.send_buffer().await;
                        deadline = None;
                        continue;
                    }
                },
                None => receiver.recv().await,
            };
            match command {
                Some(Command::Event(event)) => {
                    self.bytes += event.payload.len();
                    self.buffer.push(event);
                    if self.buffer.len() >= self.options.flush_at
                        || self.bytes >= self.options.max_batch_bytes
                    {
                        let _ = self.send_buffer().await;
                        deadline = None;
                    } else if deadline.is_none() {
                        deadline = Some(Instant::now() + self.options.flush_interval);
                    }
                }
                Some(Command::Flush(ack)) => {
                    let result = self.send_buffer().await;
                    deadline = None;
                    let _ = ack.send(result);
                }
                None => {
                    let _ = self.send_buffer().await;
                    return;
                }
            }
        }
    }

    /// Sends the buffer, retrying transient failures within the retry budget.
    async fn send_buffer(&mut self) -> Result<()> {
        let mut pending = std::mem::take(&mut self.buffer);
        self.bytes = 0;
        let mut failures = 0;
        while !pending.is_empty() {
            let payloads: Vec<&str> = pending.iter().map(|event| event.payload.as_str()).collect();
            let fates = self
                .sink
                .deliver(&payloads, self.options.historical_migration)
                .await;
            self.stats.count_fates(&fates);
            let mut retry_after = None;
            let mut last_reason = String::new();
            let mut retry = Vec::new();
            for (event, fate) in pending.into_iter().zip(fates) {
                match fate {
                    Fate::Delivered => {}
                    Fate::Dead { reason } => {
                        tracing::error!(event = %event.event, uuid = %event.uuid, %reason, "PostHog rejected an event; it is dropped");
                    }
                    Fate::Retry {
                        retry_after: after,
                        reason,
                        ..
                    } => {
                        retry_after = retry_after.max(after);
                        last_reason = reason;
                        retry.push(event);
                    }
                }
            }
            pending = retry;
            if pending.is_empty() {
                break;
            }
            failures += 1;
            if failures > self.options.max_retries {
                tracing::error!(events = pending.len(), reason = %last_reason, "giving up on in-memory events after retries");
                self.stats.dropped_after_retries(pending.len());
                return Err(Error::Delivery {
                    reason: last_reason,
                });
            }
            let delay = self.options.backoff.delay(failures, retry_after);
            tracing::warn!(events = pending.len(), reason = %last_reason, ?delay, "delivery failed; retrying");
            tokio::time::sleep(delay).await;
        }
        Ok(())
    }
}
