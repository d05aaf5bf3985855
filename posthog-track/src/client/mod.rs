//! The PostHog client: where events go once they are committed (or captured), how many made
//! it, and the in-memory batching queue.

pub(crate) mod backoff;
pub(crate) mod deliver;
pub(crate) mod queue;
pub(crate) mod transport;
pub(crate) mod v1;
pub(crate) mod wire;

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Once};

pub use backoff::Backoff;
use deliver::{Fate, Group, Report};
use transport::Transport;

use crate::config::CaptureMode;
pub(crate) use transport::USER_AGENT_VALUE;

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
    /// Delivers `payloads` in `groups` (see [`deliver::groups`]) and reports the fate of each;
    /// `historical[i]` sends payload `i` as `historical_migration`.
    pub(crate) async fn deliver(
        &self,
        payloads: &[&str],
        groups: &[Group],
        historical: &[bool],
    ) -> Report {
        match self {
            Sink::PostHog(transport) => {
                deliver::deliver(transport, payloads, groups, historical).await
            }
            Sink::DryRun => {
                print_dry_run(payloads.iter().copied());
                Report {
                    fates: vec![Fate::Delivered; payloads.len()],
                    sent_in: vec![None; payloads.len()],
                }
            }
        }
    }

    /// The capture protocol events are sent with (dry run prints: v0's event shape).
    pub(crate) fn capture_mode(&self) -> CaptureMode {
        match self {
            Sink::PostHog(transport) => transport.mode(),
            Sink::DryRun => CaptureMode::V0,
        }
    }
}

/// Dry run: events are printed to stdout as JSON lines, with one loud notice per process.
pub(crate) fn print_dry_run<'a>(payloads: impl IntoIterator<Item = &'a str>) {
    DRY_RUN_NOTICE.call_once(|| {
        tracing::warn!("posthog-track: no POSTHOG_API_KEY, dry run: events are printed, not sent");
        eprintln!(
            "posthog-track: DRY RUN (no POSTHOG_API_KEY): events are printed to stdout as JSON \
             lines instead of being sent to PostHog, and the outbox is left alone"
        );
    });
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for payload in payloads {
        let _ = writeln!(out, "{payload}");
    }
}

/// Counters of what happened to events, for monitoring. Cheap to read at any time.
#[derive(Debug, Default)]
pub struct DeliveryStats {
    delivered: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
    paused: AtomicU64,
    dropped_queue_full: AtomicU64,
    dropped_after_retries: AtomicU64,
    dropped_rejected: AtomicU64,
    dropped_misconfigured: AtomicU64,
    dropped_at_shutdown: AtomicU64,
    dropped_cancelled: AtomicU64,
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
    /// Outbox events PostHog rejected for good, moved to the dead-letter table.
    pub dead_lettered: u64,
    /// Event sends refused because the set-up is wrong (key, host, proxy); the events wait.
    pub paused: u64,
    /// In-memory events refused by `try_capture` because the queue was full.
    pub dropped_queue_full: u64,
    /// In-memory events given up after the retry budget (outbox events are never given up).
    pub dropped_after_retries: u64,
    /// In-memory events PostHog rejected for good (400, 413, over 1 MB).
    pub dropped_rejected: u64,
    /// In-memory events given up because their request was refused for the set-up (401,
    /// 403, 404, 405, a redirect, ...): the in-memory queue does not retry those.
    pub dropped_misconfigured: u64,
    /// In-memory events still queued when `shutdown`'s deadline passed, or committed
    /// (`Delivery::AfterCommit`) after `shutdown`.
    pub dropped_at_shutdown: u64,
    /// `Delivery::AfterCommit` events whose `commit` was cancelled (its future dropped, as
    /// when a web framework cancels the handler of a client that went away) while the
    /// database committed, or after it, while they waited for room in the queue.
    pub dropped_cancelled: u64,
    /// Dropped on purpose by the `before_send` hook.
    pub filtered: u64,
}

impl DeliveryCounts {
    /// In-memory events lost, all causes together (`before_send` drops excluded).
    pub fn dropped(&self) -> u64 {
        self.dropped_queue_full
            + self.dropped_after_retries
            + self.dropped_rejected
            + self.dropped_misconfigured
            + self.dropped_at_shutdown
            + self.dropped_cancelled
    }
}

/// Why an in-memory event was given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DropCause {
    AfterRetries,
    Rejected,
    Misconfigured,
    AtShutdown,
    Cancelled,
}

impl DeliveryStats {
    /// The counts so far.
    pub fn snapshot(&self) -> DeliveryCounts {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        DeliveryCounts {
            delivered: get(&self.delivered),
            retried: get(&self.retried),
            dead_lettered: get(&self.dead_lettered),
            paused: get(&self.paused),
            dropped_queue_full: get(&self.dropped_queue_full),
            dropped_after_retries: get(&self.dropped_after_retries),
            dropped_rejected: get(&self.dropped_rejected),
            dropped_misconfigured: get(&self.dropped_misconfigured),
            dropped_at_shutdown: get(&self.dropped_at_shutdown),
            dropped_cancelled: get(&self.dropped_cancelled),
            filtered: get(&self.filtered),
        }
    }

    /// Counts deliveries, retries and pauses (dead letters and drops are counted where they
    /// are decided).
    pub(crate) fn count_fates(&self, fates: &[Fate], path: crate::metrics::Path) {
        let delivered = fates
            .iter()
            .filter(|f| matches!(f, Fate::Delivered))
            .count();
        let retried = fates
            .iter()
            .filter(|f| matches!(f, Fate::Retry { .. }))
            .count();
        crate::metrics::delivered(path, delivered);
        crate::metrics::retried(path, retried);
        for fate in fates {
            let counter = match fate {
                Fate::Delivered => &self.delivered,
                Fate::Retry { .. } => &self.retried,
                Fate::Paused { reason } if !reason.is_empty() => &self.paused,
                Fate::Paused { .. } | Fate::Dead { .. } | Fate::Refused { .. } => continue,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts `n` events kept for a retry that [`count_fates`](Self::count_fates) did not see
    /// as retries (the relay's refusals held back while PostHog accepted nothing).
    pub(crate) fn retried(&self, n: usize, path: crate::metrics::Path) {
        self.retried.fetch_add(n as u64, Ordering::Relaxed);
        crate::metrics::retried(path, n);
    }

    /// Counts `n` events printed in dry run at commit, which no delivery round sees.
    pub(crate) fn printed(&self, n: usize, path: crate::metrics::Path) {
        self.delivered.fetch_add(n as u64, Ordering::Relaxed);
        crate::metrics::delivered(path, n);
    }

    pub(crate) fn dead_lettered(&self, n: usize) {
        self.dead_lettered.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn dropped_queue_full(&self) {
        self.dropped_queue_full.fetch_add(1, Ordering::Relaxed);
        crate::metrics::dropped("queue_full", 1);
    }

    pub(crate) fn dropped(&self, cause: DropCause, n: usize) {
        let counter = match cause {
            DropCause::AfterRetries => &self.dropped_after_retries,
            DropCause::Rejected => &self.dropped_rejected,
            DropCause::Misconfigured => &self.dropped_misconfigured,
            DropCause::AtShutdown => &self.dropped_at_shutdown,
            DropCause::Cancelled => &self.dropped_cancelled,
        };
        counter.fetch_add(n as u64, Ordering::Relaxed);
        crate::metrics::dropped(
            match cause {
                DropCause::AfterRetries => "after_retries",
                DropCause::Rejected => "rejected",
                DropCause::Misconfigured => "misconfigured",
                DropCause::AtShutdown => "at_shutdown",
                DropCause::Cancelled => "cancelled",
            },
            n,
        );
    }

    pub(crate) fn filtered(&self) {
        self.filtered.fetch_add(1, Ordering::Relaxed);
    }
}

pub(crate) type SharedStats = Arc<DeliveryStats>;
