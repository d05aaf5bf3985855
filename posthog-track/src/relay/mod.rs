//! The relay: delivers the outbox to PostHog.
//!
//! A relay claims a batch of rows under a lease, sends them, and then deletes what PostHog
//! accepted, dead-letters what it rejected for good (with the reason), and releases the rest
//! for a later retry with backoff. Leases expire, so the rows of a relay that crashed between
//! send and ack are claimed again and resent with the same uuids and timestamps; PostHog's
//! uuid deduplication absorbs the repeat. Any number of relays, in-process or the standalone
//! `posthog-track relay` command, can share one database.

mod claim;

use std::sync::Arc;
use std::time::Duration;

use sqlx::Pool;
use tokio::sync::{Notify, watch};

use crate::backend::Backend;
use crate::client::backoff::Backoff;
use crate::client::deliver::Fate;
use crate::client::{SharedStats, Sink};
use crate::error::{Error, Result};
use claim::{Claimed, Settle, now_millis};

/// Tuning of a relay.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RelayOptions {
    /// Rows claimed and sent per request.
    pub batch_size: usize,
    /// How long a claim is exclusive. A relay that has not settled its rows by then is presumed
    /// dead and another may resend them. Keep it well above the request timeout.
    pub lease: Duration,
    /// Waits between retries of failed deliveries.
    pub backoff: Backoff,
    /// Polling interval when idle grows from `min_poll` to `max_poll`; a local commit wakes the
    /// relay at once.
    pub min_poll: Duration,
    /// See `min_poll`.
    pub max_poll: Duration,
    /// Send as `historical_migration` batches.
    pub historical_migration: bool,
}

impl Default for RelayOptions {
    fn default() -> Self {
        RelayOptions {
            batch_size: 500,
            lease: Duration::from_secs(60),
            backoff: Backoff::default(),
            min_poll: Duration::from_millis(50),
            max_poll: Duration::from_secs(2),
            historical_migration: false,
        }
    }
}

/// What one pass of a relay did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Pass {
    /// Rows claimed.
    pub claimed: usize,
    /// Rows delivered and deleted.
    pub delivered: usize,
    /// Rows released for a later retry.
    pub retried: usize,
    /// Rows dead-lettered.
    pub dead: usize,
    /// The reason of the last transient failure, if any.
    pub failure: Option<String>,
    /// The reason PostHog gave for the last event it rejected for good, if any.
    pub rejection: Option<String>,
    /// How long to wait before the next attempt after a failure.
    pub backoff: Option<Duration>,
}

/// Delivers the outbox of one database.
#[derive(Debug)]
pub struct Relay<DB: Backend> {
    pool: Pool<DB>,
    /// `None` when the tracker is disabled: such a relay must not touch the outbox.
    sink: Option<Sink>,
    options: RelayOptions,
    stats: SharedStats,
    wake: Arc<Notify>,
    /// One pass at a time per relay: a `drain` (what `Tracker::flush` runs) waits for the
    /// background loop's pass in flight instead of finding its rows leased and giving up.
    pass: tokio::sync::Mutex<()>,
}

impl<DB: Backend> Relay<DB> {
    pub(crate) fn new(
        pool: Pool<DB>,
        sink: Option<Sink>,
        options: RelayOptions,
        stats: SharedStats,
        wake: Arc<Notify>,
    ) -> Self {
        Relay {
            pool,
            sink,
            options,
            stats,
            wake,
            pass: tokio::sync::Mutex::new(()),
        }
    }

    /// Claims one batch, delivers it and settles every row.
    pub async fn run_once(&self) -> Result<Pass> {
        let lease = i64::try_from(self.options.lease.as_millis()).unwrap_or(i64::MAX / 2);
        let Some(sink) = &self.sink else {
            return Err(Error::Config(
                "the tracker is disabled (POSTHOG_DISABLED); its relay delivers nothing and leaves \
                 the outbox as it is"
                    .to_owned(),
            ));
        };
        let _one_pass_at_a_time = self.pass.lock().await;
        let limit = i64::try_from(self.options.batch_size.max(1)).unwrap_or(500);
        let claim = claim::claim(&self.pool, limit, lease).await?;
        let rows = &claim.rows;
        let mut pass = Pass {
            claimed: rows.len(),
            ..Pass::default()
        };
        if rows.is_empty() {
            return Ok(pass);
        }
        let payloads: Vec<&str> = rows.iter().map(|row| row.payload.as_str()).collect();
        let fates = sink
            .deliver(&payloads, self.options.historical_migration)
            .await;
        self.stats.count_fates(&fates);

        let mut delivered: Vec<&Claimed> = Vec::new();
        let mut dead: Vec<(&Claimed, String)> = Vec::new();
        let mut retry: Vec<&Claimed> = Vec::new();
        let mut retry_after = None;
        for (row, fate) in rows.iter().zip(fates) {
            match fate {
                Fate::Delivered => delivered.push(row),
                Fate::Dead { reason } => dead.push((row, reason)),
                Fate::Retry {
                    retry_after: after,
                    reason,
                } => {
                    retry_after = retry_after.max(after);
                    pass.failure = Some(reason);
                    retry.push(row);
                }
            }
        }
        pass.delivered = delivered.len();
        // The common case, everything accepted, is one small statement.
        let whole_claim = delivered.len() == rows.len();
        let acked = claim::settle(
            &self.pool,
            &claim,
            (!whole_claim).then_some(&delivered[..]),
            Settle::Delete,
        )
        .await?;
        if (acked as usize) < delivered.len() {
            tracing::warn!(
                lost = delivered.len() - acked as usize,
                "lease expired before the ack; another relay will resend (PostHog deduplicates)"
            );
        }
        for (row, reason) in &dead {
            tracing::error!(id = row.id, %reason, "PostHog rejected an outbox event; dead-lettered");
            claim::settle(&self.pool, &claim, Some(&[row]), Settle::Dead { reason }).await?;
        }
        pass.dead = dead.len();
        pass.rejection = dead.last().map(|(_, reason)| reason.clone());
        if !retry.is_empty() {
            let failures = retry.iter().map(|row| row.attempts).min().unwrap_or(1);
            let delay = self
                .options
                .backoff
                .delay(u32::try_from(failures).unwrap_or(u32::MAX), retry_after);
            tracing::warn!(
                events = retry.len(),
                reason = pass.failure.as_deref().unwrap_or(""),
                ?delay,
                "delivery failed; will retry"
            );
            let retry_at = now_millis() + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX / 2);
            let reason = pass.failure.clone().unwrap_or_default();
            claim::settle(
                &self.pool,
                &claim,
                Some(&retry),
                Settle::Release {
                    retry_at,
                    reason: &reason,
                },
            )
            .await?;
            pass.retried = retry.len();
            pass.backoff = Some(delay);
        }
        Ok(pass)
    }

    /// Delivers everything deliverable now. Fails with [`Error::Delivery`] when events remain
    /// undelivered: PostHog rejected some for good (they are dead-lettered with the reason), a
    /// delivery failed transiently, or events wait out a retry backoff or another relay's
    /// lease. Everything not delivered stays in the outbox.
    pub async fn drain(&self) -> Result<()> {
        let mut rejected = 0;
        let mut last_rejection = None;
        loop {
            let pass = self.run_once().await?;
            if let Some(reason) = pass.failure {
                return Err(Error::Delivery { reason });
            }
            if pass.dead > 0 {
                rejected += pass.dead;
                last_rejection = pass.rejection;
            }
            if pass.claimed == 0 {
                break;
            }
        }
        if rejected > 0 {
            return Err(Error::Delivery {
                reason: format!(
                    "PostHog rejected {rejected} event(s); they are dead-lettered in the outbox ({})",
                    last_rejection.unwrap_or_default()
                ),
            });
        }
        let pending = crate::outbox::Outbox::new(&self.pool)
            .status()
            .await?
            .pending;
        if pending > 0 {
            return Err(Error::Delivery {
                reason: format!(
                    "{pending} event(s) wait in the outbox for a retry or another relay's lease"
                ),
            });
        }
        Ok(())
    }

    /// Runs until `stop` becomes true: delivers at once after a local commit, polls with a
    /// growing interval when idle, and backs off while PostHog fails.
    pub async fn run(&self, mut stop: watch::Receiver<bool>) {
        let mut idle = self.options.min_poll;
        let mut errors = 0u32;
        while !*stop.borrow() {
            // While PostHog fails, new commits must not cut the backoff short.
            let (wait, wakeable) = match self.run_once().await {
                Ok(pass) => {
                    errors = 0;
                    if let Some(backoff) = pass.backoff {
                        (backoff, false)
                    } else if pass.claimed > 0 {
                        idle = self.options.min_poll;
                        continue;
                    } else {
                        let wait = idle;
                        idle = (idle * 2).min(self.options.max_poll);
                        (wait, true)
                    }
                }
                Err(error) => {
                    errors += 1;
                    tracing::error!(%error, "relay pass failed (database)");
                    (self.options.backoff.delay(errors, None), false)
                }
            };
            tokio::select! {
                _ = self.wake.notified(), if wakeable => idle = self.options.min_poll,
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => {}
            }
        }
    }
}
