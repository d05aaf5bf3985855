//! Metrics, through the [`metrics`](https://docs.rs/metrics) facade: install the exporter of
//! your choice (Prometheus, StatsD, OpenTelemetry...) and these appear; install none and each
//! one costs a few nanoseconds (the facade's no-op recorder), so they are always compiled in.
//!
//! The names are the constants of this module, and [`TABLE`] lists every metric with its
//! kind, labels and meaning; `posthog-track relay --metrics-addr` serves them to Prometheus.
//!
//! | name | kind | labels | what |
//! | --- | --- | --- | --- |
//! | `posthog_track_events_staged_total` | counter | | events staged: by tracked writes, `capture` in transactions (rolled back ones included) and the tracker's `capture` |
//! | `posthog_track_events_committed_total` | counter | | events committed to the outbox table with their rows |
//! | `posthog_track_events_delivered_total` | counter | `path` = `outbox` \| `queue` | events PostHog accepted |
//! | `posthog_track_events_retried_total` | counter | `path` = `outbox` \| `queue` | event sends that failed transiently and are retried |
//! | `posthog_track_events_dead_lettered_total` | counter | `reason` = `refused` \| `max_failures` \| `max_age` | outbox events moved to the dead-letter table |
//! | `posthog_track_events_dropped_total` | counter | `cause` = `queue_full` \| `after_retries` \| `rejected` \| `misconfigured` \| `at_shutdown` \| `cancelled` | in-memory events given up |
//! | `posthog_track_flag_evaluations_total` | counter | `source` = `local` \| `remote` | feature flag values decided |
//! | `posthog_track_exposures_sent_total` | counter | | `$feature_flag_called` exposures captured |
//! | `posthog_track_outbox_pending` | gauge | | events waiting in the outbox |
//! | `posthog_track_outbox_dead` | gauge | | events in the dead-letter table |
//! | `posthog_track_outbox_oldest_pending_age_seconds` | gauge | | age of the oldest waiting event: the lag an analyst sees (0 when none waits) |
//! | `posthog_track_queue_events` | gauge | | events in the in-memory queue |
//! | `posthog_track_queue_bytes` | gauge | | payload bytes in the in-memory queue |
//! | `posthog_track_relays` | gauge | `state` = `running` \| `backing_off` \| `paused` | relays of this process in each state (`paused`: on a configuration error) |
//! | `posthog_track_batch_size_events` | histogram | | events per request to PostHog |
//! | `posthog_track_request_duration_seconds` | histogram | `outcome` = `delivered` \| `retry` \| `too_large` \| `rejected` \| `misconfigured` | latency of requests to PostHog |
//! | `posthog_track_commit_to_delivery_seconds` | histogram | | from an outbox event's commit to its delivery (database clock at commit, then this host's) |
//!
//! Install the recorder before building the tracker: the gauges of the in-memory queue and of
//! the relays count up and down from their start.
//!
//! The outbox gauges come from a periodic [`Outbox::status`](crate::outbox::Outbox::status),
//! which counts rows: a relay samples them when
//! [`TrackerBuilder::outbox_metrics_interval`](crate::TrackerBuilder::outbox_metrics_interval)
//! is set (the `relay` command does it every 15 s), or call
//! [`OutboxStatus::record_metrics`](crate::outbox::OutboxStatus::record_metrics) yourself.
//! The outbox gauges and relay states describe one database per process: several databases
//! served by one process share them.
//!
//! Tracing spans with stable names complete the picture: `posthog_track.commit` (fields
//! `backend`, `events`), `posthog_track.claim` (`limit`, `rows`), `posthog_track.send`
//! (`events`, `groups`) and `posthog_track.settle` (`delivered`, `retried`, `dead`,
//! `held`), so a slow commit or a slow PostHog shows up in your own traces.

use ::metrics::{counter, gauge, histogram};

/// Counter: events staged by tracked writes and captures.
pub const EVENTS_STAGED: &str = "posthog_track_events_staged_total";
/// Counter: events committed to the outbox table.
pub const EVENTS_COMMITTED: &str = "posthog_track_events_committed_total";
/// Counter, label `path`: events PostHog accepted.
pub const EVENTS_DELIVERED: &str = "posthog_track_events_delivered_total";
/// Counter, label `path`: event sends that failed transiently and are retried.
pub const EVENTS_RETRIED: &str = "posthog_track_events_retried_total";
/// Counter, label `reason`: outbox events dead-lettered.
pub const EVENTS_DEAD_LETTERED: &str = "posthog_track_events_dead_lettered_total";
/// Counter, label `cause`: in-memory events given up.
pub const EVENTS_DROPPED: &str = "posthog_track_events_dropped_total";
/// Counter, label `source`: feature flag values decided.
pub const FLAG_EVALUATIONS: &str = "posthog_track_flag_evaluations_total";
/// Counter: `$feature_flag_called` exposures captured.
pub const EXPOSURES_SENT: &str = "posthog_track_exposures_sent_total";
/// Gauge: events waiting in the outbox.
pub const OUTBOX_PENDING: &str = "posthog_track_outbox_pending";
/// Gauge: events in the dead-letter table.
pub const OUTBOX_DEAD: &str = "posthog_track_outbox_dead";
/// Gauge: seconds since the oldest waiting event was committed (0 when none waits).
pub const OUTBOX_OLDEST_PENDING_AGE: &str = "posthog_track_outbox_oldest_pending_age_seconds";
/// Gauge: events in the in-memory queue.
pub const QUEUE_EVENTS: &str = "posthog_track_queue_events";
/// Gauge: payload bytes in the in-memory queue.
pub const QUEUE_BYTES: &str = "posthog_track_queue_bytes";
/// Gauge, label `state`: relays of this process in each state.
pub const RELAYS: &str = "posthog_track_relays";
/// Histogram: events per request to PostHog.
pub const BATCH_SIZE: &str = "posthog_track_batch_size_events";
/// Histogram, label `outcome`: seconds per request to PostHog.
pub const REQUEST_DURATION: &str = "posthog_track_request_duration_seconds";
/// Histogram: seconds from an outbox event's commit to its delivery.
pub const COMMIT_TO_DELIVERY: &str = "posthog_track_commit_to_delivery_seconds";

/// The kind of a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// A level, up and down.
    Gauge,
    /// A distribution of observations.
    Histogram,
}

/// One row of [`TABLE`].
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Metric {
    /// The metric's name.
    pub name: &'static str,
    /// Counter, gauge or histogram.
    pub kind: Kind,
    /// Its labels, with the values each takes.
    pub labels: &'static [(&'static str, &'static [&'static str])],
    /// What it measures (the exporter's help text).
    pub help: &'static str,
}

const PATHS: &[(&str, &[&str])] = &[("path", &["outbox", "queue"])];

/// Every metric this crate emits.
pub const TABLE: &[Metric] = &[
    Metric {
        name: EVENTS_STAGED,
        kind: Kind::Counter,
        labels: &[],
        help: "Events staged by tracked writes and captures",
    },
    Metric {
        name: EVENTS_COMMITTED,
        kind: Kind::Counter,
        labels: &[],
        help: "Events committed to the outbox table with their rows",
    },
    Metric {
        name: EVENTS_DELIVERED,
        kind: Kind::Counter,
        labels: PATHS,
        help: "Events PostHog accepted",
    },
    Metric {
        name: EVENTS_RETRIED,
        kind: Kind::Counter,
        labels: PATHS,
        help: "Event sends that failed transiently and are retried",
    },
    Metric {
        name: EVENTS_DEAD_LETTERED,
        kind: Kind::Counter,
        labels: &[("reason", &["refused", "max_failures", "max_age"])],
        help: "Outbox events moved to the dead-letter table",
    },
    Metric {
        name: EVENTS_DROPPED,
        kind: Kind::Counter,
        labels: &[(
            "cause",
            &[
                "queue_full",
                "after_retries",
                "rejected",
                "misconfigured",
                "at_shutdown",
                "cancelled",
            ],
        )],
        help: "In-memory events given up",
    },
    Metric {
        name: FLAG_EVALUATIONS,
        kind: Kind::Counter,
        labels: &[("source", &["local", "remote"])],
        help: "Feature flag values decided",
    },
    Metric {
        name: EXPOSURES_SENT,
        kind: Kind::Counter,
        labels: &[],
        help: "$feature_flag_called exposures captured",
    },
    Metric {
        name: OUTBOX_PENDING,
        kind: Kind::Gauge,
        labels: &[],
        help: "Events waiting in the outbox",
    },
    Metric {
        name: OUTBOX_DEAD,
        kind: Kind::Gauge,
        labels: &[],
        help: "Events in the dead-letter table",
    },
    Metric {
        name: OUTBOX_OLDEST_PENDING_AGE,
        kind: Kind::Gauge,
        labels: &[],
        help: "Seconds since the oldest waiting outbox event was committed (0 when none waits)",
    },
    Metric {
        name: QUEUE_EVENTS,
        kind: Kind::Gauge,
        labels: &[],
        help: "Events in the in-memory queue",
    },
    Metric {
        name: QUEUE_BYTES,
        kind: Kind::Gauge,
        labels: &[],
        help: "Payload bytes in the in-memory queue",
    },
    Metric {
        name: RELAYS,
        kind: Kind::Gauge,
        labels: &[("state", &["running", "backing_off", "paused"])],
        help: "Relays of this process in each state (paused: on a configuration error)",
    },
    Metric {
        name: BATCH_SIZE,
        kind: Kind::Histogram,
        labels: &[],
        help: "Events per request to PostHog",
    },
    Metric {
        name: REQUEST_DURATION,
        kind: Kind::Histogram,
        labels: &[(
            "outcome",
            &[
                "delivered",
                "retry",
                "too_large",
                "rejected",
                "misconfigured",
            ],
        )],
        help: "Seconds per request to PostHog",
    },
    Metric {
        name: COMMIT_TO_DELIVERY,
        kind: Kind::Histogram,
        labels: &[],
        help: "Seconds from an outbox event's commit to its delivery",
    },
];

/// Registers the help text of every metric with the installed recorder (exporters show it);
/// call it once after installing one.
pub fn describe() {
    for metric in TABLE {
        match metric.kind {
            Kind::Counter => ::metrics::describe_counter!(metric.name, metric.help),
            Kind::Gauge => ::metrics::describe_gauge!(metric.name, metric.help),
            Kind::Histogram => ::metrics::describe_histogram!(metric.name, metric.help),
        }
    }
}

/// Which delivery path an event took.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Path {
    Outbox,
    Queue,
}

impl Path {
    fn as_str(self) -> &'static str {
        match self {
            Path::Outbox => "outbox",
            Path::Queue => "queue",
        }
    }
}

/// Why an outbox event was dead-lettered.
#[derive(Debug, Clone, Copy)]
pub(crate) enum DeadReason {
    /// PostHog refused the event itself (400 or 413 alone, over 1 MB).
    Refused,
    /// It failed `max_failures` times alone while PostHog accepted other events.
    MaxFailures,
    /// It was still undelivered past `max_age`.
    MaxAge,
}

/// A relay's state, for [`RELAYS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RelayGauge {
    Running,
    BackingOff,
    Paused,
}

impl RelayGauge {
    fn as_str(self) -> &'static str {
        match self {
            RelayGauge::Running => "running",
            RelayGauge::BackingOff => "backing_off",
            RelayGauge::Paused => "paused",
        }
    }
}

/// One event staged (the hot path of a tracked write: a label-free, constant key).
#[inline]
pub(crate) fn staged() {
    counter!(EVENTS_STAGED).increment(1);
}

pub(crate) fn committed(events: usize) {
    counter!(EVENTS_COMMITTED).increment(events as u64);
}

pub(crate) fn delivered(path: Path, events: usize) {
    if events > 0 {
        counter!(EVENTS_DELIVERED, "path" => path.as_str()).increment(events as u64);
    }
}

pub(crate) fn retried(path: Path, events: usize) {
    if events > 0 {
        counter!(EVENTS_RETRIED, "path" => path.as_str()).increment(events as u64);
    }
}

pub(crate) fn dead_lettered(reason: DeadReason) {
    let reason = match reason {
        DeadReason::Refused => "refused",
        DeadReason::MaxFailures => "max_failures",
        DeadReason::MaxAge => "max_age",
    };
    counter!(EVENTS_DEAD_LETTERED, "reason" => reason).increment(1);
}

/// `cause` is one of the values [`TABLE`] lists for [`EVENTS_DROPPED`].
pub(crate) fn dropped(cause: &'static str, events: usize) {
    counter!(EVENTS_DROPPED, "cause" => cause).increment(events as u64);
}

pub(crate) fn flag_evaluations(local: bool, flags: usize) {
    if flags > 0 {
        let source = if local { "local" } else { "remote" };
        counter!(FLAG_EVALUATIONS, "source" => source).increment(flags as u64);
    }
}

pub(crate) fn exposure_sent() {
    counter!(EXPOSURES_SENT).increment(1);
}

pub(crate) fn outbox(pending: i64, dead: i64, oldest_age: Option<std::time::Duration>) {
    gauge!(OUTBOX_PENDING).set(pending as f64);
    gauge!(OUTBOX_DEAD).set(dead as f64);
    gauge!(OUTBOX_OLDEST_PENDING_AGE).set(oldest_age.map_or(0.0, |age| age.as_secs_f64()));
}

/// An event entered (`+1`) or left (`-1`) the in-memory queue, with its payload bytes.
pub(crate) fn queue_moved(sign: f64, bytes: usize) {
    gauge!(QUEUE_EVENTS).increment(sign);
    gauge!(QUEUE_BYTES).increment(sign * bytes as f64);
}

/// A relay moved from `from` (`None`: it just started) to `to` (`None`: it stopped).
pub(crate) fn relay_state(from: Option<RelayGauge>, to: Option<RelayGauge>) {
    if from == to {
        return;
    }
    if let Some(from) = from {
        gauge!(RELAYS, "state" => from.as_str()).decrement(1.0);
    }
    if let Some(to) = to {
        gauge!(RELAYS, "state" => to.as_str()).increment(1.0);
    }
}

/// One request to PostHog: its events, how long it took and how it ended (one of the
/// `outcome` values of [`REQUEST_DURATION`]).
pub(crate) fn request(events: usize, took: std::time::Duration, outcome: &'static str) {
    histogram!(BATCH_SIZE).record(events as f64);
    histogram!(REQUEST_DURATION, "outcome" => outcome).record(took.as_secs_f64());
}

pub(crate) fn commit_to_delivery(seconds: f64) {
    histogram!(COMMIT_TO_DELIVERY).record(seconds);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_names_each_metric_once_and_the_docs_list_them_all() {
        let docs = include_str!("metrics.rs");
        let mut names: Vec<&str> = TABLE.iter().map(|metric| metric.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), TABLE.len(), "a name appears twice");
        for metric in TABLE {
            assert!(
                docs.contains(&format!("//! | `{}` | ", metric.name)),
                "{} is missing from the module's table",
                metric.name
            );
            assert!(metric.name.starts_with("posthog_track_"), "{}", metric.name);
            assert_eq!(
                metric.name.ends_with("_total"),
                metric.kind == Kind::Counter,
                "{}: counters and only counters end in _total",
                metric.name
            );
        }
    }
}
