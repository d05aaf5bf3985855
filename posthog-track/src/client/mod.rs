//! The PostHog client: where events go once they are committed (or captured), how many made
//! it, and the in-memory batching queue.

pub(crate) mod backoff;
pub(crate) mod deliver;
pub(crate) mod queue;
pub(crate) mod transport;
pub(crate) mod wire;

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Once};

pub use backoff::Backoff;
use deliver::Fate;
use transport::Transport;
pub use transport::USER_AGENT_VALUE;

/// Where delivered events end up.
#[derive(Debug, Clone)]
pub(crate) enum Sink {
    /// PostHog (or anything speaking its `/batch/` API, such as `MockPostHog`).
    PostHog(Transport),
    /// No API key: each event is printed to stdout as a JSON line.
    DryRun,
}

static DRY_RUN_NOTICE: Once = Once::new();

impl Sink {
    /// Delivers `payloads` and reports the fate of each.
    pub(crate) async fn deliver(&self, payloads: &[&str], historical_migration: bool) -> Vec<Fate> {
        match self {
            Sink::PostHog(transport) => {
                deliver::deliver(transport, payloads, historical_migration).await
            }
            Sink::DryRun => {
                DRY_RUN_NOTICE.call_once(|| {
                    tracing::warn!("posthog-track: no POSTHOG_API_KEY, dry run: events are printed, not sent");
                    eprintln!(
                        "posthog-track: DRY RUN (no POSTHOG_API_KEY): events are printed to stdout as \
                         JSON lines instead of being sent to PostHog"
                    );
                });
                let stdout = std::io::stdout();
                let mut out = stdout.lock();
                for payload in payloads {
                    let _ = writeln!(out, "{payload}");
                }
                vec![Fate::Delivered; payloads.len()]
            }
        }
    }
}

/// Counters of what happened to events, for monitoring. Cheap to read at any time.
#[derive(Debug, Default)]
pub struct DeliveryStats {
    delivered: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
    dropped_queue_full: AtomicU64,
    dropped_after_retries: AtomicU64,
    filtered: AtomicU64,
}

/// A snapshot of [`DeliveryStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct DeliveryCounts {
    /// Accepted by PostHog (or printed, in dry run).
    pub delivered: u64,
    /// Delivery attempts that failed transiently and will be (or were) retried.
    pub retried: u64,
    /// Rejected by PostHog for good; outbox events are kept with status dead.
    pub dead_lettered: u64,
    /// Refused by `try_capture` because the in-memory queue was full.
    pub dropped_queue_full: u64,
    /// In-memory events given up after the retry budget (outbox events are never given up).
    pub dropped_after_retries: u64,
    /// Dropped on purpose by the `before_send` hook.
    pub filtered: u64,
}

impl DeliveryStats {
    pub(crate) fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// The counts so far.
    pub fn snapshot(&self) -> DeliveryCounts {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        DeliveryCounts {
            delivered: get(&self.delivered),
            retried: get(&self.retried),
            dead_lettered: get(&self.dead_lettered),
            dropped_queue_full: get(&self.dropped_queue_full),
            dropped_after_retries: get(&self.dropped_after_retries),
            filtered: get(&self.filtered),
        }
    }

    pub(crate) fn count_fates(&self, fates: &[Fate]) {
        for fate in fates {
            let counter = match fate {
                Fate::Delivered => &self.delivered,
                Fate::Retry { .. } => &self.retried,
                Fate::Dead { .. } => &self.dead_lettered,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn dropped_queue_full(&self) {
        self.dropped_queue_full.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn dropped_after_retries(&self, n: usize) {
        Self::add(&self.dropped_after_retries, n);
    }

    pub(crate) fn filtered(&self) {
        self.filtered.fetch_add(1, Ordering::Relaxed);
    }
}

pub(crate) type SharedStats = Arc<DeliveryStats>;
