//! What a tracker does with events: a leaf that the configuration and the errors share.

/// What the tracker does with events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Events are recorded and sent to PostHog.
    Live,
    /// No API key: events are recorded in the outbox and printed instead of sent.
    DryRun,
    /// `POSTHOG_DISABLED`: tracked writes still write rows, but record no events.
    Disabled,
}
