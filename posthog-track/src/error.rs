//! The one error type of the runtime.

use std::borrow::Cow;

/// Everything that can go wrong at run time. Derive mistakes are compile errors instead.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database refused a statement or the connection failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),

    /// `update`, `update_changed` or `delete` matched no row, so no event was staged.
    #[error("no row of `{table}` matches the model's key; nothing was written and no event staged")]
    RowNotFound {
        /// The model's table.
        table: &'static str,
    },

    /// A tracked write failed, or was cancelled (its future dropped), after its statement may
    /// have written rows whose events were never staged, or failed with an error that ended
    /// the whole transaction (any on PostgreSQL, a deadlock on MySQL/MariaDB). The
    /// transaction can only roll back: `commit` rolls it back and returns this, and a later
    /// tracked write in it is refused with this, so that no row is committed without its
    /// events and no rolled-back work is reported as committed.
    #[error(
        "a tracked write to `{table}` failed or was cancelled after writing to the database \
         (or failed with an error that ended the transaction); the transaction can only be \
         rolled back, and commit rolls it back"
    )]
    IncompleteWrite {
        /// The table of the write that did not finish.
        table: &'static str,
    },

    /// `update_changed` was given a `before` value whose key differs from the new value's.
    #[error(
        "`{table}`: update_changed compares two different rows (their keys differ); \
         to move a row to a new key, delete it and insert the new one"
    )]
    KeyChanged {
        /// The model's table.
        table: &'static str,
    },

    /// An event has nobody to attribute it to (an empty or whitespace id counts as none; so
    /// does, for `alias`, an id PostHog refuses to merge, such as `"undefined"`).
    // One message for tracked writes and captures: say every source, in the order they count.
    #[error(
        "event `{event}` has no distinct id (an empty or whitespace one counts as none): a \
         tracked write takes it from the model's distinct id field (`#[tracked(distinct_id = \
         <field>)]`, which must hold one for the row written), else from the transaction \
         (`set_distinct_id`) or its request's `TrackingContext`; an event of your own needs \
         `Event::distinct_id`"
    )]
    MissingDistinctId {
        /// The event that could not be staged.
        event: Cow<'static, str>,
    },

    /// An event's name is blank: empty, whitespace or invisible characters such as a
    /// zero-width space (given to [`Event::new`](crate::Event::new), or left so by
    /// `before_send`): PostHog has nothing to file it under. Refused where the event is staged,
    /// rather than sent for PostHog to refuse.
    #[error(
        "event name {event:?} is blank (empty, whitespace or invisible characters): give \
         Event::new a name PostHog can file the event under, such as \"order_completed\" (or, \
         if a before_send hook changes the `event` field, keep it a non-empty string)"
    )]
    InvalidEventName {
        /// The name given.
        event: Cow<'static, str>,
    },

    /// A group type or key is blank (empty, whitespace or invisible characters): PostHog
    /// ignores a `$groupidentify` whose key is empty and makes a whitespace key one group of
    /// everything sent with it.
    #[error(
        "group type {group_type:?} with key {group_key:?}: neither may be blank (empty, \
         whitespace or invisible characters)"
    )]
    InvalidGroup {
        /// The group type given.
        group_type: String,
        /// The group key given.
        group_key: String,
    },

    /// A property value could not be serialised to JSON.
    #[error("property `{property}` of event `{event}` cannot be serialised to JSON: {source}")]
    Serialize {
        /// The event being built.
        event: Cow<'static, str>,
        /// The property that failed.
        property: Cow<'static, str>,
        /// What serde_json said.
        source: serde_json::Error,
    },

    /// An operation this backend cannot perform for this model.
    #[error("{operation} on {backend}: {reason}")]
    Unsupported {
        /// What was attempted, e.g. "insert into `orders`".
        operation: String,
        /// The database backend.
        backend: &'static str,
        /// Why it cannot be done and what to do instead.
        reason: &'static str,
    },

    /// The event is larger than PostHog accepts (about 1 MB); it was not recorded.
    #[error(
        "event `{event}` is {bytes} bytes; PostHog discards events over 1 MB, so it was not recorded"
    )]
    EventTooLarge {
        /// The event's name.
        event: Cow<'static, str>,
        /// Its serialised size.
        bytes: usize,
    },

    /// `try_capture` found the in-memory queue full; the event was not queued (and is counted
    /// in [`DeliveryStats::dropped_queue_full`](crate::DeliveryStats)).
    #[error("the event queue is full ({capacity} events); the event was not queued")]
    QueueFull {
        /// The queue's capacity.
        capacity: usize,
    },

    /// The tracker was shut down; no more events are accepted.
    #[error("the tracker has been shut down; no more events are accepted")]
    ShutDown,

    /// Events were committed through [`Tracker::track`](crate::Tracker::track) on a pool the
    /// tracker runs no relay for: they wait in the outbox, undelivered.
    #[error(
        "{pending} event(s) were committed through `Tracker::track` on a pool this tracker \
         runs no relay for; they wait in the outbox: call `tracker.start_relay(pool)` once at \
         start-up, begin transactions with `tracker.begin(&pool)`, or run the standalone \
         `posthog-track relay` and build the tracker with `external_relay(true)`"
    )]
    NoRelay {
        /// Events committed that way.
        pending: u64,
    },

    /// This tracker cannot deliver events, so it refuses to run a relay: a relay without an
    /// API key would take other processes' events out of the shared outbox.
    #[error(
        "this tracker cannot deliver events ({}), so it runs no relay and leaves the outbox \
         to processes that can",
        match mode {
            crate::mode::Mode::Disabled => "POSTHOG_DISABLED is set",
            _ => "no POSTHOG_API_KEY: dry run",
        }
    )]
    CannotDeliver {
        /// The tracker's mode (dry run or disabled).
        mode: crate::mode::Mode,
    },

    /// A backfill was given a name that is no column of the model it can use.
    #[error("`{model}` has no {what} named `{name}`; {}", ValidNames { what, valid })]
    UnknownColumn {
        /// The model's table.
        model: &'static str,
        /// What the name was for, e.g. "person or group property to backfill".
        what: &'static str,
        /// The name given.
        name: String,
        /// The names that would have been accepted.
        valid: Vec<String>,
    },

    /// A backfill's `with_events` column holds no timestamp.
    #[error(
        "`{model}`: `{column}` is not a timestamp column, so it cannot date the backfilled \
         insert events; timestamp fields: {}",
        valid.join(", ")
    )]
    NotATimestamp {
        /// The model's table.
        model: &'static str,
        /// The column given to `with_events`.
        column: String,
        /// The model's fields that hold timestamps.
        valid: Vec<String>,
    },

    /// A backfill would send nothing: the model has no person properties and is no group,
    /// or `properties([])` chose none of them, and no `with_events` column was given.
    #[error(
        "`{model}` has nothing to backfill: it has no `person`/`person_once` field or \
         `identify` and no `group_type`, or `properties([...])` chose none of its person or \
         group properties, and no `with_events(\"<timestamp column>\")` was given"
    )]
    NothingToBackfill {
        /// The model's table.
        model: &'static str,
    },

    /// A backfill would stage person updates or insert events for a model that names no
    /// `distinct_id` field: a backfill has no transaction to take one from, so it could
    /// attribute none of them.
    #[error(
        "`{model}` cannot be backfilled with {what}: the model has no `distinct_id` field, so \
         no row could be attributed to a person; add `#[tracked(distinct_id = <field>)]` to the \
         model (a backfill has no transaction whose distinct id it could use)"
    )]
    BackfillWithoutDistinctId {
        /// The model's table.
        model: &'static str,
        /// What needed a distinct id: "person updates" or "insert events".
        what: &'static str,
    },

    /// Another backfill of the same model and options moved the checkpoint while this one
    /// ran; this run's last page was rolled back.
    #[error(
        "checkpoint `{checkpoint}` was moved by another backfill running at the same time; \
         this run stopped and rolled back its last page (run one backfill per model at a time)"
    )]
    BackfillConflict {
        /// The checkpoint's name.
        checkpoint: String,
    },

    /// A backfill checkpoint holds a key that does not read back as the model's key (the key
    /// type changed since it was written); `restart()` starts over.
    #[error("checkpoint `{checkpoint}` holds a key that is not a key of the model: {source}")]
    BadCheckpoint {
        /// The checkpoint's name.
        checkpoint: String,
        /// What serde_json said.
        source: serde_json::Error,
    },

    /// The outbox table does not exist in this database.
    #[error(
        "the outbox table `posthog_outbox` does not exist on {backend}: call \
         `tracker.migrate(&pool)` once at start-up, or add \
         `posthog_track::outbox::create_table_sql(..)` to your migrations ({source})"
    )]
    OutboxMissing {
        /// The database backend.
        backend: &'static str,
        /// What the database said.
        source: sqlx::Error,
    },

    /// Some events will not be delivered: PostHog rejected them for good (outbox events are
    /// dead-lettered and can be requeued), or in-memory events were given up.
    #[error(
        "{dead} event(s) dead-lettered in the outbox and {dropped} in-memory event(s) dropped: \
         {reason}"
    )]
    Undelivered {
        /// Outbox events dead-lettered (kept with their reason; see `Outbox::requeue`).
        dead: u64,
        /// In-memory events lost (captures, exposures, `AfterCommit` events).
        dropped: u64,
        /// The last reason.
        reason: String,
    },

    /// `flush` or `shutdown` ran out of time before everything was delivered.
    #[error(
        "gave up waiting for delivery after {waited:.1?}: {} not yet delivered ({reason})",
        PendingEvents(*pending)
    )]
    Timeout {
        /// How long it waited.
        waited: std::time::Duration,
        /// Events committed or captured before the call and still undelivered: outbox events
        /// wait for the next relay; in-memory events are lost once the tracker stops.
        ///
        /// `0` when they could not be counted (the database did not answer in time): a wait
        /// that timed out always left something undelivered, so `0` never means "none", and
        /// the message then says "an unknown number of events".
        pending: u64,
        /// Why they were not delivered yet: the last failure, or what they wait for.
        reason: String,
    },

    /// Feature flags could not be evaluated: PostHog's `/flags` or `/flags/definitions`
    /// failed or answered badly.
    #[error("feature flags could not be evaluated: {reason}")]
    Flags {
        /// What went wrong.
        reason: String,
        /// The underlying error (HTTP, JSON), when there is one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },

    /// A key the operation needs is not configured.
    #[error("{key} is not set: {purpose}")]
    MissingKey {
        /// The environment variable (or builder option) that holds the key.
        key: &'static str,
        /// What needs it.
        purpose: &'static str,
    },

    /// The tracker is disabled (`POSTHOG_DISABLED` or `disabled(true)`), so the operation
    /// is not available.
    #[error("the tracker is disabled: {operation} is not available")]
    Disabled {
        /// What was attempted.
        operation: &'static str,
    },

    /// PostHog's app API (used by [`plan::PlanPush`](crate::plan::PlanPush)) refused or failed
    /// a request. The personal API key is never part of the message.
    #[error("PostHog API: {reason}")]
    Api {
        /// The HTTP status, when PostHog answered.
        status: Option<u16>,
        /// What went wrong.
        reason: String,
        /// The transport or decoding error behind it, when there was one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },

    /// The configuration (environment or builder) is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// A tracking plan file (the `posthog-track plan` command) could not be read.
    #[error("cannot read the tracking plan {}: {source}", path.display())]
    ReadPlan {
        /// The file.
        path: std::path::PathBuf,
        /// What the file system said.
        source: std::io::Error,
    },

    /// A tracking plan file is not the JSON that `plan::assert_snapshot` writes.
    #[error("{} is not a tracking plan: {source}", path.display())]
    InvalidPlan {
        /// The file.
        path: std::path::PathBuf,
        /// What serde_json said.
        source: serde_json::Error,
    },
}

impl Error {
    /// [`Error::Flags`].
    pub(crate) fn flags(
        reason: impl Into<String>,
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Error::Flags {
            reason: reason.into(),
            source,
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// [`Error::Timeout`]'s count in words: a timeout whose events could not be counted (the
/// database did not answer) has `pending: 0`, and saying "0 event(s) not yet delivered" would
/// tell an operator that nothing is missing when an unknown number is.
struct PendingEvents(u64);

impl std::fmt::Display for PendingEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            0 => f.write_str("an unknown number of events"),
            count => write!(f, "{count} event(s)"),
        }
    }
}

/// [`Error::UnknownColumn`]'s list of the names that would have been accepted, or when there
/// are none, why.
struct ValidNames<'a> {
    what: &'a str,
    valid: &'a [String],
}

/// [`Error::UnknownColumn`]'s `what` for a `with_events` column.
pub(crate) const WITH_EVENTS_COLUMN: &str = "column to date insert events by (`with_events`)";

impl std::fmt::Display for ValidNames<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !self.valid.is_empty() {
            write!(f, "valid names: {}", self.valid.join(", "))
        } else if self.what == WITH_EVENTS_COLUMN {
            f.write_str(
                "it has no timestamp field (`DateTime`, `NaiveDateTime` or an `Option` of one) \
                 to date them by",
            )
        } else {
            // A group model's properties are all eligible: only a model with no person
            // property has none.
            f.write_str(
                "it has none (no `person` or `person_once` field): backfill its insert events \
                 with `.with_events(\"<timestamp column>\")`, without `properties`",
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An unknown name with no valid one says why, rather than "valid names: " and nothing:
    /// a model with no timestamp field for `with_events`, with no person property for
    /// `properties`.
    #[test]
    fn an_unknown_column_with_no_valid_name_says_why() {
        let message = |what| {
            Error::UnknownColumn {
                model: "orders",
                what,
                name: "paid_at".to_owned(),
                valid: Vec::new(),
            }
            .to_string()
        };
        assert_eq!(
            message(WITH_EVENTS_COLUMN),
            "`orders` has no column to date insert events by (`with_events`) named `paid_at`; it \
             has no timestamp field (`DateTime`, `NaiveDateTime` or an `Option` of one) to date \
             them by"
        );
        assert_eq!(
            message("person property to backfill"),
            "`orders` has no person property to backfill named `paid_at`; it has none (no \
             `person` or `person_once` field): backfill its insert events with \
             `.with_events(\"<timestamp column>\")`, without `properties`"
        );
    }

    /// A timeout says how long it waited to a tenth of a second, not in nanoseconds.
    #[test]
    fn a_timeout_shows_its_wait_to_a_tenth_of_a_second() {
        let error = Error::Timeout {
            waited: std::time::Duration::from_nanos(2_049_731_115),
            pending: 2,
            reason: "PostHog answered 503".to_owned(),
        };
        assert_eq!(
            error.to_string(),
            "gave up waiting for delivery after 2.0s: 2 event(s) not yet delivered (PostHog \
             answered 503)"
        );
    }
}
