//! The relay: delivers the outbox to PostHog.
//!
//! A relay claims a batch of rows under a lease (on the database's clock, renewed while the
//! batch is in flight; on PostgreSQL the claim is held by the sending transaction instead, see
//! `claim`), sends them, and then settles every row by what PostHog said:
//!
//! - accepted: deleted;
//! - a transient failure (transport error, 408, 429, 5xx): released for a retry after an
//!   exponential backoff with jitter (`Retry-After` honoured). A row that failed before is sent
//!   in ever smaller groups, so an event that fails every request it is in (poison) is cut off
//!   from the good events within a few rounds; once it has failed `max_failures` times sent
//!   alone while PostHog accepted other events, or is older than `max_age`, it is dead-lettered with its
//!   history. Rows waiting out a backoff never hold back newer rows;
//! - refused for its own sake (over 1 MB, or a single event answered 400 or 413 in a round in
//!   which PostHog accepted other events): moved to the dead-letter table with the reason, to
//!   be requeued or purged. A round in which every event is refused, each sent alone, is what
//!   a proxy or a wrong host refusing every request looks like: its events fail as in an
//!   outage, with a loud error, and nothing is dead-lettered for it;
//! - a configuration failure (401, 403, 404, 405, a redirect): nothing is wrong with the
//!   events, so none is counted or dead-lettered. The relay pauses with one loud error that
//!   says what to fix, probes again with a backoff capped at a minute, and resumes by itself.
//!
//! Leases expire, so the rows of a relay that crashed between send and ack are claimed again
//! and resent with the same uuids and timestamps; PostHog's uuid deduplication absorbs the
//! repeat. Acks are fenced by a per-claim token. Any number of relays, in-process or the
//! standalone `posthog-track relay` command, can share one database. Only a tracker that can
//! deliver (live mode, with an API key) runs a relay: a relay without a key would take other
//! processes' events out of the outbox.

mod claim;
mod wake;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use sqlx::Pool;
use tokio::sync::{Notify, watch};

use crate::backend::Backend;
use crate::client::backoff::Backoff;
use crate::client::deliver::{self, Fate};
use crate::client::{SharedStats, Sink};
use crate::error::{Error, Result};
use crate::mode::Mode;
use crate::outbox::Outbox;
use claim::{Claimed, Settle};

/// Tuning of a relay.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RelayOptions {
    /// Rows claimed and sent per round.
    pub batch_size: usize,
    /// Payload bytes one claim may hold at most (the first row is always taken).
    pub max_claim_bytes: usize,
    /// How long a claim is exclusive (at least 250 ms, at most a day). It is renewed while
    /// the batch is in flight; a relay that died holding it loses it after this long, and
    /// another relay resends the rows.
    pub lease: Duration,
    /// Waits between retries of failed deliveries.
    pub backoff: Backoff,
    /// Polling interval when idle grows from `min_poll` (at least 10 ms) to `max_poll`; a local
    /// commit wakes the relay at once.
    pub min_poll: Duration,
    /// See `min_poll`.
    pub max_poll: Duration,
    /// PostgreSQL only: hold each claim in the transaction that sends it (rows locked with
    /// `FOR UPDATE SKIP LOCKED`, settled and committed once PostHog answered) instead of
    /// writing a lease into every claimed row. Saves the claim's `UPDATE` of every row (a new
    /// row version each); the lease still bounds how long a silent relay keeps its rows
    /// (`idle_in_transaction_session_timeout`). Default on; MySQL/MariaDB and SQLite always
    /// write leases.
    pub held_claims: bool,
    /// How long a busy relay waits before its next claim so that the batch can fill (as a
    /// Kafka producer's `linger.ms`): after a round that claimed some rows but not a full
    /// batch, the next claim comes this much later. A relay that finds a full batch claims
    /// again at once, and a relay that was idle claims at once when woken, so a lone event
    /// is never held back; an event committed while the outbox is busy waits at most this
    /// long more. Zero claims again at once (a request per handful of events under load).
    pub linger: Duration,
    /// Send as `historical_migration` batches.
    pub historical_migration: bool,
    /// Failures of one event, while PostHog accepted others, after which it is dead-lettered.
    pub max_failures: u32,
    /// Age after which an event that still fails is dead-lettered.
    pub max_age: Duration,
    /// How long `drain` (and so `Tracker::flush`) waits at most.
    pub flush_timeout: Duration,
    /// How often a running relay samples the outbox's pending, dead and lag figures into
    /// the [`metrics`](crate::metrics) gauges (a count over the table); `None`: never.
    pub outbox_metrics_interval: Option<Duration>,
}

impl Default for RelayOptions {
    fn default() -> Self {
        RelayOptions {
            batch_size: 500,
            max_claim_bytes: 16 * 1024 * 1024,
            lease: Duration::from_secs(60),
            backoff: Backoff::default(),
            min_poll: Duration::from_millis(50),
            max_poll: Duration::from_secs(2),
            linger: Duration::from_millis(80),
            held_claims: true,
            historical_migration: false,
            max_failures: 20,
            max_age: Duration::from_secs(7 * 24 * 3600),
            flush_timeout: Duration::from_secs(30),
            outbox_metrics_interval: None,
        }
    }
}

/// What one round of a relay did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Pass {
    /// Rows claimed.
    pub claimed: usize,
    /// The largest outbox id among the rows claimed, if any.
    pub newest_claimed: Option<i64>,
    /// Rows delivered and deleted.
    pub delivered: usize,
    /// Rows released for a later retry after a transient failure.
    pub retried: usize,
    /// Rows dead-lettered.
    pub dead: usize,
    /// Rows handed back untouched: the relay is paused on a configuration failure, or the
    /// round ended before sending them.
    pub held: usize,
    /// The reason of the last transient failure, if any.
    pub failure: Option<String>,
    /// The reason of the last dead-lettered event, if any.
    pub rejection: Option<String>,
    /// The configuration failure that paused the relay, if any.
    pub paused: Option<String>,
    /// How long to wait before the next round: after a round in which nothing got through.
    pub backoff: Option<Duration>,
}

/// What a relay is doing, as far as its last round tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RelayState {
    /// Delivering, or idle with nothing to deliver.
    Running,
    /// Waiting out a backoff: PostHog (or the database) failed the last round.
    BackingOff,
    /// Paused on a configuration failure (wrong key or host): nothing is sent until it is
    /// fixed, and the relay probes now and then to resume by itself.
    Paused,
    /// A background relay ([`Tracker::start_relay`](crate::Tracker::start_relay)) whose task
    /// ended without being stopped, i.e. it panicked (a bug: the panic is logged): nothing
    /// delivers for it until the process restarts. The `relay` command exits non-zero on it.
    Stopped,
}

impl RelayState {
    /// The relay-state gauge counting relays in this state (`None`: not a running relay's).
    fn gauge(self) -> Option<crate::metrics::RelayGauge> {
        match self {
            RelayState::Running => Some(crate::metrics::RelayGauge::Running),
            RelayState::BackingOff => Some(crate::metrics::RelayGauge::BackingOff),
            RelayState::Paused => Some(crate::metrics::RelayGauge::Paused),
            RelayState::Stopped => None,
        }
    }

    fn from_u8(value: u8) -> Self {
        match value {
            1 => RelayState::BackingOff,
            2 => RelayState::Paused,
            _ => RelayState::Running,
        }
    }
}

/// Delivers the outbox of one database.
#[derive(Debug)]
pub struct Relay<DB: Backend> {
    pool: Pool<DB>,
    /// Where events go, in live mode; otherwise the mode, which must not touch the outbox.
    sink: std::result::Result<Sink, Mode>,
    options: RelayOptions,
    stats: SharedStats,
    wake: Arc<Notify>,
    /// One round at a time per relay: a `drain` (what `Tracker::flush` runs) waits for the
    /// background loop's round in flight instead of finding its rows leased.
    pass: tokio::sync::Mutex<()>,
    /// Consecutive rounds paused on a configuration failure (0 when running).
    pauses: AtomicU32,
    /// Consecutive rounds in which nothing got through (0 after any success).
    failed_rounds: AtomicU32,
    /// When set (by `shutdown`), a round still sending at this instant stops waiting and hands
    /// its rows back at once, instead of leaving them leased for a whole lease.
    abandon_at: std::sync::Mutex<Option<Instant>>,
    /// When this relay last saw PostHog accept events (`None`: not yet, or it has failed
    /// since in a way only an outage explains); see `judge`.
    accepted_at: std::sync::Mutex<Option<Instant>>,
    /// The database's clock minus this process's, and when it was measured: see
    /// `clock_offset`.
    clock: std::sync::Mutex<Option<(Instant, chrono::Duration)>>,
    /// A [`RelayState`] as `u8`, kept by `run`.
    state: std::sync::atomic::AtomicU8,
    /// Set once the pool's sessions were looked at (see `check_session`): whether they
    /// default to a stricter isolation level than READ COMMITTED (PostgreSQL; `false`
    /// elsewhere).
    strict_isolation: std::sync::OnceLock<bool>,
}

impl<DB: Backend> Relay<DB> {
    pub(crate) fn new(
        pool: Pool<DB>,
        sink: Option<Sink>,
        mode: Mode,
        options: RelayOptions,
        stats: SharedStats,
        wake: Arc<Notify>,
    ) -> Self {
        Relay {
            pool,
            sink: sink
                .filter(|sink| matches!(sink, Sink::PostHog(_)))
                .ok_or(mode),
            options,
            stats,
            wake,
            pass: tokio::sync::Mutex::new(()),
            pauses: AtomicU32::new(0),
            failed_rounds: AtomicU32::new(0),
            abandon_at: std::sync::Mutex::new(None),
            accepted_at: std::sync::Mutex::new(None),
            clock: std::sync::Mutex::new(None),
            state: std::sync::atomic::AtomicU8::new(RelayState::Running as u8),
            strict_isolation: std::sync::OnceLock::new(),
        }
    }

    /// The outbox this relay delivers.
    pub fn outbox(&self) -> Outbox<'_, DB> {
        Outbox::new(&self.pool)
    }

    /// The lease, at least [`MIN_LEASE`]: a shorter one expires while the rows are sent, and
    /// other relays send them again meanwhile. At most [`MAX_LEASE`]: a lease too long to add
    /// to the clock (`relay --lease 18446744073709551615`) panicked the relay after its send,
    /// with the delivered rows still in the outbox.
    fn lease(&self) -> Duration {
        self.options.lease.clamp(MIN_LEASE, MAX_LEASE)
    }

    /// The shortest idle poll, at least [`MIN_POLL`]: a zero interval (`relay
    /// --poll-interval-ms 0`) would send a claim to the database back to back, thousands a
    /// second, while the outbox is empty.
    fn min_poll(&self) -> Duration {
        self.options.min_poll.max(MIN_POLL)
    }

    fn max_poll(&self) -> Duration {
        self.options.max_poll.max(self.min_poll())
    }

    fn lease_millis(&self) -> i64 {
        i64::try_from(self.lease().as_millis()).unwrap_or(i64::MAX / 4)
    }

    /// Claims one batch, delivers it and settles every row. Fails with
    /// [`Error::CannotDeliver`] when the tracker has no API key or is disabled: such a relay
    /// never touches the outbox.
    pub async fn run_once(&self) -> Result<Pass> {
        self.round(None).await
    }

    /// From now on, rounds still sending at `at` stop waiting for PostHog and hand their rows
    /// back (they may have arrived; a resend is identical, and PostHog deduplicates).
    pub(crate) fn abandon_at(&self, at: Instant) {
        *self
            .abandon_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(at);
    }

    fn abandon_deadline(&self, round: Option<Instant>) -> Option<Instant> {
        let global = *self
            .abandon_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match (global, round) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// One round; a send still in flight at `deadline` is abandoned (see `abandon_at`).
    async fn round(&self, deadline: Option<Instant>) -> Result<Pass> {
        let sink = match &self.sink {
            Ok(sink) => sink,
            Err(mode) => return Err(Error::CannotDeliver { mode: *mode }),
        };
        let _one_round_at_a_time = self.pass.lock().await;
        if self
            .abandon_deadline(deadline)
            .is_some_and(|at| Instant::now() >= at)
        {
            // Past the deadline (a round in flight just handed its rows back): a new request
            // now would be sent and never waited for.
            return Ok(Pass::default());
        }
        self.check_session().await?;
        // Before the claim: a held claim keeps its connection until it ends, and reading the
        // clock needs one (a pool of one would wait for itself).
        let clock_offset = self.clock_offset().await;
        let limit = i64::try_from(self.options.batch_size.max(1)).unwrap_or(500);
        let lease = self.lease_millis();
        let claim_span =
            tracing::info_span!("posthog_track.claim", limit, rows = tracing::field::Empty);
        let claim = tracing::Instrument::instrument(
            claim::claim(
                &self.pool,
                claim::Ask {
                    limit,
                    lease_millis: lease,
                    max_bytes: self.options.max_claim_bytes,
                    hold: self.options.held_claims,
                    isolate: self.strict_isolation.get().copied().unwrap_or(false),
                },
            ),
            claim_span.clone(),
        )
        .await
        // A missing outbox (a relay started before `outbox migrate`) says how to create it.
        .map_err(|error| match error {
            Error::Database(error) => crate::outbox::explain(error, DB::DIALECT),
            other => other,
        })?;
        claim_span.record("rows", claim.rows.len());
        let claimed_at = Instant::now();
        let rows = &claim.rows;
        let mut pass = Pass {
            claimed: rows.len(),
            newest_claimed: rows.iter().map(|row| row.id).max(),
            ..Pass::default()
        };
        if rows.is_empty() {
            claim::finish(claim).await?;
            return Ok(pass);
        }
        let payloads: Vec<&str> = rows.iter().map(|row| row.payload.as_str()).collect();
        let prior: Vec<u32> = rows
            .iter()
            .map(|row| u32::try_from(row.attempts.saturating_sub(1)).unwrap_or(u32::MAX))
            .collect();
        let groups = deliver::groups(&prior);
        let mut alone = vec![false; rows.len()];
        for group in &groups {
            if let [index] = group[..] {
                alone[index] = true;
            }
        }
        let fresh: Vec<bool> = prior.iter().map(|&failures| failures == 0).collect();
        // Each request's `PostHog-Attempt` is the most sends any of its events has had; its
        // send time is on the database's clock.
        let requests: Vec<deliver::Group> = groups
            .iter()
            .map(|members| {
                let attempt = members
                    .iter()
                    .map(|&i| u32::try_from(rows[i].attempts).unwrap_or(u32::MAX))
                    .max()
                    .unwrap_or(1);
                deliver::Group::on_clock(members.clone(), attempt, clock_offset)
            })
            .collect();
        let historical: Vec<bool> = rows
            .iter()
            .map(|row| row.historical || self.options.historical_migration)
            .collect();
        let fates = {
            let send = tracing::Instrument::instrument(
                sink.deliver(&payloads, &requests, &historical),
                tracing::info_span!(
                    "posthog_track.send",
                    events = payloads.len(),
                    groups = requests.len()
                ),
            );
            tokio::pin!(send);
            let renew_every = self.lease() / 3;
            let mut renewed = Instant::now();
            let tick = Duration::from_millis(50).min(renew_every);
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + tick, tick);
            loop {
                tokio::select! {
                    report = &mut send => break Some(report.fates),
                    _ = ticks.tick() => {
                        if self
                            .abandon_deadline(deadline)
                            .is_some_and(|at| Instant::now() >= at)
                        {
                            break None;
                        }
                        if renewed.elapsed() >= renew_every {
                            renewed = Instant::now();
                            if let Err(error) = claim::renew(&self.pool, &claim, lease).await {
                                tracing::warn!(%error, "could not renew the relay's lease");
                            }
                        }
                    }
                }
            }
        };
        let settle_span = tracing::info_span!(
            "posthog_track.settle",
            delivered = tracing::field::Empty,
            retried = tracing::field::Empty,
            dead = tracing::field::Empty,
            held = tracing::field::Empty
        );
        let Some(fates) = fates else {
            settle_span.record("held", rows.len());
            // Out of time mid-send: hand every row back now, uncounted, so that the next
            // relay need not wait out the lease.
            tracing::Instrument::instrument(
                claim::settle(
                    &self.pool,
                    &claim,
                    None,
                    Settle::Release {
                        delay_millis: 0,
                        entry: "abandoned mid-send at a deadline (a resend is identical)",
                        failed: false,
                        counted: false,
                    },
                ),
                settle_span,
            )
            .await?;
            pass.held = rows.len();
            claim::finish(claim).await?;
            return Ok(pass);
        };
        self.stats.count_fates(&fates, crate::metrics::Path::Outbox);

        let mut delivered: Vec<&Claimed> = Vec::new();
        let mut dead: Vec<(&Claimed, String)> = Vec::new();
        let mut retry: Vec<(&Claimed, bool)> = Vec::new();
        let mut held: Vec<&Claimed> = Vec::new();
        let mut refused: Vec<(&Claimed, String)> = Vec::new();
        let mut retry_after = None;
        for ((row, fate), alone) in rows.iter().zip(fates).zip(alone) {
            match fate {
                Fate::Delivered => delivered.push(row),
                Fate::Dead { reason } => {
                    crate::metrics::dead_lettered(crate::metrics::DeadReason::Refused);
                    dead.push((row, reason));
                }
                Fate::Refused { reason } => refused.push((row, reason)),
                Fate::Retry {
                    retry_after: after,
                    reason,
                    asked,
                } => {
                    retry_after = retry_after.max(after);
                    pass.failure = Some(reason);
                    // A v1 `retry` verdict is PostHog's doing, never the event's: no blame.
                    retry.push((row, alone && !asked));
                }
                Fate::Paused { reason } => {
                    if !reason.is_empty() {
                        pass.paused = Some(reason);
                    }
                    held.push(row);
                }
            }
        }
        // A 400 (or 413) for a request of one event is PostHog's word that the event is bad
        // only if PostHog accepts other events meanwhile. When nothing got through this round,
        // the refusals may be the way to PostHog refusing everything (a proxy, or plain HTTP
        // sent to an HTTPS port, which Go's servers answer with a plain-text 400; nginx's page
        // pauses the relay instead, see `transport`): dead-lettering them would empty the
        // outbox into the dead-letter table. They fail like a retry instead, and the blame
        // rules below decide (`max_failures` alone while PostHog accepts others).
        if delivered.is_empty() && !refused.is_empty() {
            let (_, reason) = &refused[refused.len() - 1];
            if refused.len() > 1 {
                tracing::error!(
                    events = refused.len(),
                    %reason,
                    "PostHog refused every event of this round, each sent alone, and accepted \
                     none: a proxy or a wrong POSTHOG_HOST refusing every request looks like \
                     this (for example plain HTTP sent to an HTTPS port). The events are kept \
                     and retried, not dead-lettered; check the host and what stands in front \
                     of PostHog"
                );
            } else {
                tracing::warn!(
                    %reason,
                    "PostHog refused the only event of this round: it is dead-lettered once \
                     PostHog accepts another event beside it (a bad event), and kept until then \
                     (a proxy or a wrong POSTHOG_HOST refusing every request looks the same)"
                );
            }
            self.stats
                .retried(refused.len(), crate::metrics::Path::Outbox);
            for (row, reason) in refused.drain(..) {
                pass.failure = Some(reason);
                retry.push((row, true));
            }
        }
        for (row, reason) in refused {
            crate::metrics::dead_lettered(crate::metrics::DeadReason::Refused);
            dead.push((row, reason));
        }
        pass.delivered = delivered.len();
        settle_span.record("delivered", delivered.len());
        let whole_claim = delivered.len() == rows.len();
        let acked = tracing::Instrument::instrument(
            self.ack(&claim, (!whole_claim).then_some(&delivered[..]), deadline),
            settle_span.clone(),
        )
        .await?;
        let since_claim = claimed_at.elapsed().as_secs_f64();
        for row in &delivered {
            if let Some(age) = row.age_millis {
                crate::metrics::commit_to_delivery(age.max(0) as f64 / 1000.0 + since_claim);
            }
        }
        if (acked as usize) < delivered.len() {
            tracing::warn!(
                lost = delivered.len() - acked as usize,
                "lease expired before the ack; another relay will resend (PostHog deduplicates)"
            );
        }

        // A failure counts against an event only when it was sent alone, had failed before,
        // and PostHog accepts other events: then the event itself is the problem. During an
        // outage, or in a group with a poison event, nothing is the event's fault, and nothing
        // is given up.
        let isolated = self.judge(&groups, &fates_summary(&delivered, &retry, &fresh, rows));
        let reason = pass.failure.clone().unwrap_or_default();
        let mut released = Vec::new();
        let mut blamed = Vec::new();
        for (row, alone) in retry {
            let blame = isolated && alone && row.attempts > 1;
            // The count is read from the row, which may hold anything: it stops at the top.
            let failures = row.failures.saturating_add(i64::from(blame));
            let too_old = row.age_millis.is_some_and(|age| {
                u128::from(age.unsigned_abs()) > self.options.max_age.as_millis()
            });
            if blame && failures >= i64::from(self.options.max_failures) {
                crate::metrics::dead_lettered(crate::metrics::DeadReason::MaxFailures);
                dead.push((
                    row,
                    format!(
                        "gave up after {failures} failures while PostHog accepted other events: \
                         {reason}"
                    ),
                ));
            } else if too_old {
                crate::metrics::dead_lettered(crate::metrics::DeadReason::MaxAge);
                dead.push((
                    row,
                    format!(
                        "undelivered for longer than max_age ({:?}): {reason}",
                        self.options.max_age
                    ),
                ));
            } else if blame {
                blamed.push(row);
            } else {
                released.push(row);
            }
        }
        for (row, reason) in &dead {
            tracing::error!(id = row.id, %reason, "outbox event dead-lettered");
            tracing::Instrument::instrument(
                claim::settle(&self.pool, &claim, Some(&[row]), Settle::Dead { reason }),
                settle_span.clone(),
            )
            .await?;
        }
        settle_span.record("dead", dead.len());
        self.stats.dead_lettered(dead.len());
        pass.dead = dead.len();
        pass.rejection = dead.last().map(|(_, reason)| reason.clone());

        let entry = history_entry(&reason);
        for (rows, failed) in [(&released, false), (&blamed, true)] {
            if rows.is_empty() {
                continue;
            }
            let attempts = rows.iter().map(|row| row.attempts).min().unwrap_or(1);
            let delay = self
                .options
                .backoff
                .delay(u32::try_from(attempts).unwrap_or(u32::MAX), retry_after);
            tracing::warn!(events = rows.len(), %reason, ?delay, "delivery failed; will retry");
            tracing::Instrument::instrument(
                claim::settle(
                    &self.pool,
                    &claim,
                    Some(rows),
                    Settle::Release {
                        delay_millis: millis(delay),
                        entry: &entry,
                        failed,
                        counted: true,
                    },
                ),
                settle_span.clone(),
            )
            .await?;
            pass.retried += rows.len();
        }
        settle_span.record("retried", pass.retried);

        let pause_delay = self.track_pause(&pass);
        if !held.is_empty() {
            let (delay, entry) = match &pass.paused {
                Some(reason) => (pause_delay, history_entry(reason)),
                None => (Duration::ZERO, String::new()),
            };
            let entry_ref = if entry.is_empty() {
                "not sent: the round ended early"
            } else {
                &entry
            };
            tracing::Instrument::instrument(
                claim::settle(
                    &self.pool,
                    &claim,
                    Some(&held),
                    Settle::Release {
                        delay_millis: millis(delay),
                        entry: entry_ref,
                        failed: false,
                        counted: false,
                    },
                ),
                settle_span.clone(),
            )
            .await?;
            pass.held = held.len();
        }
        settle_span.record("held", pass.held);

        if pass.paused.is_some() {
            pass.backoff = Some(pause_delay);
        } else if pass.delivered == 0 && pass.retried > 0 {
            let rounds = self.failed_rounds.fetch_add(1, Ordering::Relaxed) + 1;
            pass.backoff = Some(self.options.backoff.delay(rounds, retry_after));
        } else if pass.delivered > 0 {
            self.failed_rounds.store(0, Ordering::Relaxed);
        }
        // A held claim's settlements take effect here, all at once.
        claim::finish(claim).await?;
        Ok(pass)
    }

    /// Updates what the relay believes of PostHog's health from a round's outcome, and returns
    /// it: healthy when this relay saw PostHog accept events within [`HEALTH_WINDOW`];
    /// unhealthy from the start (a relay just started, or another relay's `--drain`, knows
    /// nothing yet), once nothing was accepted for that long, or when a round failed whole
    /// while it sent fresh events (which have no history of failing) or several groups (two
    /// poison events at once are unlikely; an outage is not); unchanged by a lone retried
    /// event failing again, which is what a poison event looks like.
    fn judge(&self, groups: &[Vec<usize>], summary: &RoundSummary) -> bool {
        let mut accepted_at = crate::sync::lock(&self.accepted_at);
        if summary.delivered > 0 {
            *accepted_at = Some(Instant::now());
        } else if summary.failed > 0 && (summary.fresh_failed || groups.len() > 1) {
            *accepted_at = None;
        }
        accepted_at.is_some_and(|at| at.elapsed() < HEALTH_WINDOW)
    }

    /// The database's clock minus this process's, measured again every [`CLOCK_EVERY`]. The
    /// relay's requests carry their send time (`sent_at`, v1's `created_at`), from which
    /// PostHog corrects every event's timestamp as if the sender's clock were off: events
    /// stamped by the application's hosts, sent by a relay whose clock is off by an hour,
    /// would be stored an hour off. On the database's clock, which leases already use, the
    /// relay's own clock no longer matters. A failed measurement keeps the last one.
    async fn clock_offset(&self) -> chrono::Duration {
        let last = *crate::sync::lock(&self.clock);
        if let Some((at, offset)) = last
            && at.elapsed() < CLOCK_EVERY
        {
            return offset;
        }
        let last = last.map_or(chrono::Duration::zero(), |(_, offset)| offset);
        match self.measure_clock().await {
            Ok(offset) => {
                if offset.num_seconds().abs() >= CLOCK_WARNING.as_secs() as i64
                    && (last - offset).num_seconds().abs() >= 1
                {
                    tracing::warn!(
                        offset_ms = offset.num_milliseconds(),
                        "this host's clock is {} s {} the database's; the relay times its \
                         requests by the database's clock, so events are not shifted, but \
                         check the host's time synchronisation (NTP)",
                        offset.num_seconds().abs(),
                        if offset > chrono::Duration::zero() {
                            "behind"
                        } else {
                            "ahead of"
                        }
                    );
                }
                *crate::sync::lock(&self.clock) = Some((Instant::now(), offset));
                offset
            }
            Err(error) => {
                tracing::debug!(%error, "could not read the database's clock; keeping the last offset");
                // Not again before CLOCK_EVERY: a round must not wait for a connection each time.
                *crate::sync::lock(&self.clock) = Some((Instant::now(), last));
                last
            }
        }
    }

    /// Deletes the delivered rows of `claim` (all of them when `rows` is `None`). A written
    /// lease retries a delete that fails (SQLite's "database is locked" while another writer
    /// holds the database past the busy timeout, a connection lost) while half a lease lasts:
    /// the rows are still this relay's, the delete is fenced by the claim, and giving up
    /// leaves them leased until the lease runs out, then sends them a second time. A held
    /// claim's transaction ends with a failed statement on PostgreSQL, so it is not retried.
    async fn ack(
        &self,
        claim: &claim::Claim<DB>,
        rows: Option<&[&Claimed]>,
        deadline: Option<Instant>,
    ) -> Result<u64> {
        let until = Instant::now() + self.lease() / 2;
        let mut wait = Duration::from_millis(20);
        loop {
            let error = match claim::settle(&self.pool, claim, rows, Settle::Delete).await {
                Ok(acked) => return Ok(acked),
                Err(error) => error,
            };
            let retry_at = Instant::now() + wait;
            if claim.is_held()
                || retry_at >= until
                || self
                    .abandon_deadline(deadline)
                    .is_some_and(|at| retry_at >= at)
            {
                return Err(error);
            }
            tracing::warn!(%error, "could not delete delivered events; retrying while the lease lasts");
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(1));
        }
    }

    /// Once per relay, what the pool's sessions were set up with. MySQL/MariaDB: refuses a
    /// pool whose sessions run with autocommit off (`autocommit = 0` in the server's
    /// configuration, `init_connect`, an `after_connect`). The relay's statements outside its
    /// claim each rely on autocommit: without it, each would open a transaction that nothing
    /// commits (delivered rows never deleted, so sent again after their lease, their locks
    /// held against other relays), and the claim fails with the server's "Transaction
    /// characteristics can't be changed while a transaction is in progress", which names
    /// neither the setting nor the fix. PostgreSQL: notes whether the sessions default to a
    /// stricter isolation level than READ COMMITTED, under which written leases run their
    /// statements in READ COMMITTED transactions (see `claim::Ask::isolate`).
    async fn check_session(&self) -> Result<()> {
        if self.strict_isolation.get().is_some() {
            return Ok(());
        }
        let sql = match DB::DIALECT {
            crate::backend::Dialect::MySql => "SELECT @@autocommit",
            crate::backend::Dialect::Postgres => {
                "SELECT CASE WHEN current_setting('transaction_isolation') = 'read committed' \
                 THEN 0 ELSE 1 END::BIGINT"
            }
            crate::backend::Dialect::Sqlite => {
                let _ = self.strict_isolation.set(false);
                return Ok(());
            }
        };
        let mut conn = self.pool.acquire().await?;
        let row = DB::fetch_one(&mut conn, sqlx::query(sql)).await?;
        let value = DB::int(&row, 0)?;
        let strict = match DB::DIALECT {
            crate::backend::Dialect::MySql if value == 0 => {
                return Err(Error::Unsupported {
                    operation: "the relay".to_owned(),
                    backend: DB::DIALECT.name(),
                    reason: "this pool's sessions run with autocommit off (autocommit = 0 in \
                             the server's configuration, init_connect or the pool's \
                             after_connect), so each of the relay's statements would open a \
                             transaction that nothing commits, and delivered events would \
                             stay in the outbox; give the relay a pool whose sessions run \
                             `SET autocommit = 1` (in after_connect). Nothing was claimed or \
                             sent",
                });
            }
            crate::backend::Dialect::Postgres => value != 0,
            _ => false,
        };
        let _ = self.strict_isolation.set(strict);
        Ok(())
    }

    async fn measure_clock(&self) -> Result<chrono::Duration> {
        let mut conn = self.pool.acquire().await?;
        let sql = format!("SELECT {}", DB::DIALECT.now_millis_sql());
        let sent = chrono::Utc::now();
        let row = DB::fetch_one(&mut conn, sqlx::query(sqlx::AssertSqlSafe(sql))).await?;
        let received = chrono::Utc::now();
        // The database read its clock about half-way through the round trip.
        let local = sent + (received - sent) / 2;
        Ok(chrono::Duration::milliseconds(
            DB::int(&row, 0)?.saturating_sub(local.timestamp_millis()),
        ))
    }

    /// Updates the pause state after a round; returns how long a paused relay waits.
    fn track_pause(&self, pass: &Pass) -> Duration {
        match &pass.paused {
            Some(reason) => {
                let pauses = self.pauses.fetch_add(1, Ordering::Relaxed) + 1;
                let delay = PAUSE_BACKOFF.delay(pauses, None);
                if pauses == 1 {
                    tracing::error!(
                        %reason,
                        "posthog-track relay PAUSED: PostHog refused the request because of the \
                         set-up, not the events. Nothing is dropped; it retries every minute at \
                         most and resumes by itself once this is fixed"
                    );
                }
                delay
            }
            None => {
                if pass.delivered > 0 && self.pauses.swap(0, Ordering::Relaxed) > 0 {
                    tracing::info!("posthog-track relay resumed: PostHog accepts events again");
                }
                Duration::ZERO
            }
        }
    }

    /// How long to wait before the next claim after a round that claimed rows: the linger,
    /// unless the round found a full batch (a backlog: claim again at once).
    fn linger_after(&self, pass: &Pass) -> Option<Duration> {
        let full = pass.claimed >= self.options.batch_size.max(1);
        (!full && !self.options.linger.is_zero()).then_some(self.options.linger)
    }

    /// Whether the relay is paused on a configuration failure right now.
    pub fn is_paused(&self) -> bool {
        self.pauses.load(Ordering::Relaxed) > 0
    }

    /// What the relay is doing, from its last round in [`run`](Relay::run).
    pub fn state(&self) -> RelayState {
        RelayState::from_u8(self.state.load(Ordering::Relaxed))
    }

    /// Records the state after a round of `run`, in [`state`](Relay::state) and in the
    /// relay-state gauge.
    fn set_state(&self, state: RelayState) {
        let before = RelayState::from_u8(self.state.swap(state as u8, Ordering::Relaxed));
        crate::metrics::relay_state(before.gauge(), state.gauge());
    }

    /// Samples the outbox figures into the metrics gauges when they are due.
    async fn sample_outbox(&self, last: &mut Option<Instant>) {
        let Some(every) = self.options.outbox_metrics_interval else {
            return;
        };
        if last.is_some_and(|at| at.elapsed() < every) {
            return;
        }
        *last = Some(Instant::now());
        match self.outbox().status().await {
            Ok(status) => status.record_metrics(),
            Err(error) => tracing::warn!(%error, "could not read the outbox's figures for metrics"),
        }
    }

    /// Delivers everything committed before the call, within the relay's flush timeout; see
    /// [`drain_for`](Relay::drain_for).
    pub async fn drain(&self) -> Result<()> {
        self.drain_for(self.options.flush_timeout).await
    }

    /// Delivers everything committed before the call: retries with backoff, waits out other
    /// relays' leases, until each of those events is delivered or dead-lettered, for at most
    /// `timeout`.
    ///
    /// Fails with [`Error::Timeout`] (how many are still pending, and why) when time runs out,
    /// and with [`Error::Undelivered`] when some were dead-lettered on the way. Nothing is ever
    /// lost: undelivered events stay in the outbox.
    pub async fn drain_for(&self, timeout: Duration) -> Result<()> {
        if let Err(mode) = self.sink {
            return Err(Error::CannotDeliver { mode });
        }
        let started = Instant::now();
        // The last count of pending events, for a drain cut off at its timeout.
        let pending = std::sync::atomic::AtomicU64::new(0);
        // Bounded as a whole: a database that does not answer (a lock held, a partition, a
        // hung server) would otherwise keep a statement, and the drain, waiting without end.
        // A little past the timeout, so that a send in flight at the timeout is abandoned by its
        // round, which hands its rows back, rather than cut off with its rows still leased.
        let bound = timeout.saturating_add(DRAIN_GRACE);
        match tokio::time::timeout(bound, self.drain_until(started, timeout, &pending)).await {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout {
                waited: started.elapsed(),
                pending: pending.load(Ordering::Relaxed),
                reason: "the database did not answer within the timeout".to_owned(),
            }),
        }
    }

    async fn drain_until(
        &self,
        started: Instant,
        timeout: Duration,
        last_pending: &std::sync::atomic::AtomicU64,
    ) -> Result<()> {
        let newest = self.outbox().newest_id().await?;
        let mut counted = false;
        let mut dead = 0u64;
        let mut last_dead = None;
        let mut why = String::new();
        loop {
            // A timeout too long to add to the clock (`Duration::MAX`) is no deadline.
            let pass = self.round(started.checked_add(timeout)).await?;
            dead += pass.dead as u64;
            if pass.rejection.is_some() {
                last_dead = pass.rejection.clone();
            }
            if let Some(reason) = pass.paused.clone().or_else(|| pass.failure.clone()) {
                why = reason;
            }
            let remaining = timeout.saturating_sub(started.elapsed());
            // A round that claimed rows older than `newest` is still inside the backlog this
            // drain was asked for: events up to `newest` remain, so there is nothing to count
            // yet. Counting them after every round read every row left up to `newest`, which
            // made draining a backlog quadratic in its size (a 100,000-event SQLite backlog:
            // 23 us of CPU per event instead of 5). The first round counts, so that a drain
            // cut off by its timeout reports a number; later ones take off what they settled.
            let inside_backlog =
                pass.claimed > 0 && pass.newest_claimed.is_some_and(|id| id < newest);
            if inside_backlog && counted && !remaining.is_zero() {
                let settled = (pass.delivered + pass.dead) as u64;
                let left = last_pending.load(Ordering::Relaxed).saturating_sub(settled);
                last_pending.store(left.max(1), Ordering::Relaxed);
                if let Some(backoff) = pass.backoff {
                    tokio::time::sleep(backoff.min(remaining)).await;
                }
                continue;
            }
            let (pending, ready_in) = self.outbox().pending_through(newest).await?;
            counted = true;
            last_pending.store(pending.unsigned_abs(), Ordering::Relaxed);
            if pending == 0 {
                break;
            }
            if remaining.is_zero() {
                if why.is_empty() {
                    // No round of this drain failed: its events wait out an earlier failure's
                    // backoff (another round's, another relay's), or another relay's lease.
                    why = match self.outbox().last_failure_through(newest).await? {
                        Some(failure) => format!("waiting out a retry backoff after: {failure}"),
                        None => "waiting for another relay's lease or a retry backoff".to_owned(),
                    };
                }
                return Err(Error::Timeout {
                    waited: started.elapsed(),
                    pending: pending.unsigned_abs(),
                    reason: why,
                });
            }
            let wait = match pass.backoff {
                Some(backoff) => backoff,
                None if pass.claimed == 0 => Duration::from_millis(ready_in.clamp(5, 1000) as u64),
                None => Duration::ZERO,
            };
            tokio::time::sleep(wait.min(remaining)).await;
        }
        if dead > 0 {
            return Err(Error::Undelivered {
                dead,
                dropped: 0,
                reason: last_dead.unwrap_or_default(),
            });
        }
        Ok(())
    }

    /// Runs until `stop` becomes true (or its sender is dropped: the tracker is gone):
    /// delivers at once after a local commit (or, on PostgreSQL, a notifying commit of
    /// another process), lingers between claims while the outbox is busy so that batches
    /// fill, polls with a growing interval when idle, backs off while PostHog fails, and
    /// pauses while the set-up is wrong.
    pub async fn run(&self, stop: watch::Receiver<bool>) {
        self.state
            .store(RelayState::Running as u8, Ordering::Relaxed);
        crate::metrics::relay_state(None, RelayState::Running.gauge());
        // Dropped when the loop returns, and when it unwinds from a panic: the gauge must not
        // count a dead relay as running, and the panic must not pass unnoticed in the logs.
        let _ended = RunEnded(&self.state);
        self.run_loop(stop).await;
    }

    async fn run_loop(&self, mut stop: watch::Receiver<bool>) {
        // On PostgreSQL, commits of processes without a relay wake this one too.
        let _listening = wake::listen(&self.pool, self.wake.clone());
        let mut idle = self.min_poll();
        let mut errors = 0u32;
        let mut sampled = None;
        loop {
            if *stop.borrow() {
                return;
            }
            self.sample_outbox(&mut sampled).await;
            // While PostHog fails, new commits must not cut the backoff short.
            let round = self.run_once().await;
            // Debug builds of the `posthog-track` command only: its test of a relay task that
            // panics (tests/faults.rs); nothing from the database or the network can get here.
            #[cfg(all(debug_assertions, feature = "cli"))]
            if PANIC_AFTER_ROUND.load(Ordering::Relaxed) {
                panic!(
                    "the posthog-track command's POSTHOG_TRACK_TEST_RELAY_PANIC is set: the relay \
                     panics after a round, for a test"
                );
            }
            let (wait, wakeable) = match round {
                Ok(pass) => {
                    errors = 0;
                    self.set_state(if self.is_paused() {
                        RelayState::Paused
                    } else if pass.backoff.is_some() {
                        RelayState::BackingOff
                    } else {
                        RelayState::Running
                    });
                    if let Some(backoff) = pass.backoff {
                        (backoff, false)
                    } else if pass.claimed > 0 {
                        idle = self.min_poll();
                        match self.linger_after(&pass) {
                            Some(linger) => (linger, false),
                            None => continue,
                        }
                    } else {
                        let wait = idle;
                        idle = (idle * 2).min(self.max_poll());
                        (wait, true)
                    }
                }
                Err(error) => {
                    errors += 1;
                    self.set_state(RelayState::BackingOff);
                    tracing::error!(%error, "relay round failed (database)");
                    (self.options.backoff.delay(errors, None), false)
                }
            };
            tokio::select! {
                _ = self.wake.notified(), if wakeable => idle = self.min_poll(),
                _ = tokio::time::sleep(wait) => {}
                changed = stop.changed() => {
                    if changed.is_err() {
                        return; // the tracker that owned this relay is gone
                    }
                }
            }
        }
    }
}

/// Ends [`Relay::run`]: takes the relay out of the relay-state gauge, and says loudly when
/// it ends by a panic.
struct RunEnded<'a>(&'a std::sync::atomic::AtomicU8);

impl Drop for RunEnded<'_> {
    fn drop(&mut self) {
        let state = RelayState::from_u8(self.0.load(Ordering::Relaxed));
        crate::metrics::relay_state(state.gauge(), None);
        if std::thread::panicking() {
            tracing::error!(
                "the relay panicked (a bug in posthog-track: please report it with the panic \
                 message above): this relay delivers nothing more until the process restarts; \
                 what it held returns to the outbox when its lease runs out"
            );
        }
    }
}

/// What a round achieved, for judging PostHog's health.
struct RoundSummary {
    delivered: usize,
    failed: usize,
    fresh_failed: bool,
}

fn fates_summary(
    delivered: &[&Claimed],
    retry: &[(&Claimed, bool)],
    fresh: &[bool],
    rows: &[Claimed],
) -> RoundSummary {
    let fresh_ids: std::collections::HashSet<i64> = rows
        .iter()
        .zip(fresh)
        .filter(|(_, fresh)| **fresh)
        .map(|(row, _)| row.id)
        .collect();
    RoundSummary {
        delivered: delivered.len(),
        failed: retry.len(),
        fresh_failed: retry.iter().any(|(row, _)| fresh_ids.contains(&row.id)),
    }
}

/// Debug builds of the `posthog-track` command: when set, every running relay of the process
/// panics after its next round (the `relay` command's test that a dead relay task stops the
/// command). Only the command sets it (`__cli::panic_relays_after_a_round`, when its
/// POSTHOG_TRACK_TEST_RELAY_PANIC is set): the library reads no environment variable for it,
/// so an application's debug build cannot have its relay panicked from the environment.
#[cfg(all(debug_assertions, feature = "cli"))]
pub(crate) static PANIC_AFTER_ROUND: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// The shortest lease a relay takes, whatever it was given (`relay --lease 0`): it is renewed
/// every third of it while a send is in flight.
const MIN_LEASE: Duration = Duration::from_millis(250);

/// The longest lease a relay takes, whatever it was given: a day is "never" for a claim that
/// is renewed while its send is in flight, and it fits the clock and the database's arithmetic.
const MAX_LEASE: Duration = Duration::from_secs(86_400);

/// The shortest wait between two polls of an empty outbox, whatever the relay was given.
const MIN_POLL: Duration = Duration::from_millis(10);

/// How long past its timeout a drain waits for the database before it gives up on it (see
/// `drain_for`).
const DRAIN_GRACE: Duration = Duration::from_millis(500);

/// How often the relay measures the database's clock against its own (`clock_offset`).
const CLOCK_EVERY: Duration = Duration::from_secs(60);
/// A difference between the clocks from which the relay warns.
const CLOCK_WARNING: Duration = Duration::from_secs(60);

/// How long PostHog's accepting events stays evidence that a lone event failing again is
/// the event's fault. Past it, with nothing accepted since, the relay cannot tell an outage
/// from a poison event and blames nothing (a poison event is then given up at `max_age`, or as
/// soon as other events get through again).
const HEALTH_WINDOW: Duration = Duration::from_secs(60);

/// Backoff of a paused relay: a probe after a second, growing to one a minute.
const PAUSE_BACKOFF: Backoff = Backoff {
    initial: Duration::from_secs(1),
    max: Duration::from_secs(60),
};

fn millis(delay: Duration) -> i64 {
    i64::try_from(delay.as_millis()).unwrap_or(i64::MAX / 4)
}

/// One line of a row's failure history: when (this host's clock, for reading only) and why.
fn history_entry(reason: &str) -> String {
    format!(
        "{} {reason}",
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Tracker;

    #[tokio::test]
    async fn a_zero_poll_interval_still_waits_between_polls() {
        let pool = sqlx::SqlitePool::connect("sqlite::memory:").await.unwrap();
        let tracker = Tracker::builder()
            .api_key("phc_poll")
            .poll_interval(Duration::ZERO, Duration::ZERO)
            .build();
        let relay = tracker.relay(pool);
        assert_eq!(relay.min_poll(), MIN_POLL);
        assert_eq!(relay.max_poll(), MIN_POLL);
    }
}
