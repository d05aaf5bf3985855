//! [`TrackerBuilder`]: every option of a [`Tracker`], and how they become one.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::client::queue::QueueOptions;
use crate::client::transport::Transport;
use crate::client::{Backoff, Sink};
use crate::config::{ApiKey, CaptureMode, Compression, Config};
use crate::dispatch::{Delivery, Dispatch, DispatchOptions};
use crate::error::Result;
use crate::flags::{
    DefinitionsCache, DefinitionsClient, ExposureCache, LocalEvaluator, RemoteFlags, RoutingState,
};
use crate::mode::Mode;
use crate::relay::RelayOptions;
use crate::shared::Shared;
use crate::tracker::Tracker;

/// How long a remote `/flags` evaluation may take.
const FLAGS_TIMEOUT: Duration = Duration::from_secs(3);

/// How long fetching the flag definitions (for local evaluation) may take: a larger answer.
const DEFINITIONS_TIMEOUT: Duration = Duration::from_secs(10);

/// Builds a [`Tracker`].
#[must_use]
pub struct TrackerBuilder {
    config: Config,
    request_timeout: Duration,
    /// What the delivery side is built with, as the setters leave it.
    dispatch: DispatchOptions,
    local_evaluation_only: bool,
    flag_definitions: Option<LocalEvaluator>,
}

impl fmt::Debug for TrackerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrackerBuilder")
            .field("config", &self.config)
            .field("delivery", &self.dispatch.delivery)
            .finish_non_exhaustive()
    }
}

impl Default for TrackerBuilder {
    fn default() -> Self {
        TrackerBuilder {
            config: Config::default(),
            request_timeout: Duration::from_secs(10),
            dispatch: DispatchOptions {
                delivery: Delivery::default(),
                disable_geoip: false,
                queue: QueueOptions {
                    capacity: 10_000,
                    capacity_bytes: 64 * 1024 * 1024,
                    flush_at: 500,
                    flush_interval: Duration::from_millis(500),
                    max_batch_bytes: crate::client::wire::MAX_REQUEST_BYTES,
                    max_retries: 5,
                    backoff: Backoff::default(),
                    historical_migration: false,
                },
                relay: RelayOptions::default(),
                before_send: None,
                external_relay: false,
            },
            local_evaluation_only: false,
            flag_definitions: None,
        }
    }
}

impl TrackerBuilder {
    setters! {
        /// Starts from `config` (keys, host, disabled), as read by [`Config::from_env`].
        pub fn config(config: Config) => config = config;

        /// The project API key (`phc_...`). Without one the tracker runs in dry-run mode.
        pub fn api_key(key: impl Into<String>) => config.api_key = Some(ApiKey::new(key));

        /// The personal (or project secret) API key, for local flag evaluation.
        pub fn personal_api_key(key: impl Into<String>) =>
            config.personal_api_key = Some(ApiKey::new(key));
    }

    /// The PostHog host: a URL, or `us` / `eu` for PostHog Cloud.
    pub fn host(mut self, host: impl AsRef<str>) -> Result<Self> {
        self.config.host =
            crate::config::normalize_host(host.as_ref(), crate::config::HostSource::Builder)?;
        self.config.host_source = crate::config::HostSource::Builder;
        Ok(self)
    }

    setters! {
        /// Records no events at all (tracked writes still write their rows).
        pub fn disabled(disabled: bool) => config.disabled = disabled;

        /// Outbox (default) or after-commit delivery for tracked writes.
        pub fn delivery(delivery: Delivery) => dispatch.delivery = delivery;
    }

    /// Gzip request bodies (default on); `false` sends plain JSON. Shorthand for
    /// [`compression`](TrackerBuilder::compression).
    pub fn gzip(mut self, gzip: bool) -> Self {
        self.config.compression = if gzip {
            Compression::Gzip
        } else {
            Compression::None
        };
        self
    }

    setters! {
        /// How request bodies are compressed (default gzip; `POSTHOG_COMPRESSION`). Deflate,
        /// Brotli and zstd need [`CaptureMode::V1`]: PostHog's v0 endpoint reads gzip only, so v0
        /// sends gzip for them.
        pub fn compression(compression: Compression) => config.compression = compression;

        /// PostHog's capture protocol (default [`CaptureMode::V0`]; `POSTHOG_CAPTURE_MODE=v1`).
        /// With v1, PostHog answers each event with its own verdict and the relay settles each
        /// outbox row by it.
        pub fn capture_mode(mode: CaptureMode) => config.capture_mode = mode;

        /// Adds `$geoip_disable: true` to every event, so PostHog does not derive a location from
        /// the sending server's IP address (default off).
        pub fn disable_geoip(disable: bool) => dispatch.disable_geoip = disable;

        /// Timeout of one request to PostHog (default 10 s).
        pub fn request_timeout(timeout: Duration) => request_timeout = timeout;

        /// Capacity of the in-memory queue (default 10,000 events): events not yet delivered
        /// or given up, the batch being sent included. A batch that fills it is sent at once.
        pub fn queue_capacity(events: usize) => dispatch.queue.capacity = events.max(1);

        /// Bytes of events the in-memory queue holds at most (default 64 MiB); when full,
        /// `capture` waits and `try_capture` refuses, as with the event count.
        pub fn queue_capacity_bytes(bytes: usize) => dispatch.queue.capacity_bytes = bytes.max(1);

        /// A standalone `posthog-track relay` delivers the outbox, so this process starts no
        /// relay of its own (default `false`: the first tracked transaction on a pool starts
        /// the pool's relay). `flush` then waits for that relay to deliver what was committed
        /// before it, and `shutdown` reports how many events it leaves in the outbox.
        pub fn external_relay(external: bool) => dispatch.external_relay = external;

        /// How long [`Tracker::flush`] waits for delivery at most (default 30 s).
        pub fn flush_timeout(timeout: Duration) => dispatch.relay.flush_timeout = timeout;

        /// Failures of one outbox event, sent alone while PostHog accepts other events, after
        /// which it is dead-lettered as poison (default 20). Failures during an outage, or in a
        /// request shared with a poison event, do not count.
        pub fn max_failures(failures: u32) => dispatch.relay.max_failures = failures.max(1);

        /// Age after which an outbox event that still fails is dead-lettered (default 7 days).
        pub fn max_age(age: Duration) => dispatch.relay.max_age = age;

        /// Payload bytes one relay claim holds at most (default 16 MiB).
        pub fn max_claim_bytes(bytes: usize) => dispatch.relay.max_claim_bytes = bytes.max(1);

        /// Events per request (default 500), for the queue and the relay.
        pub fn batch_size(events: usize) =>
            dispatch.queue.flush_at = events.max(1),
            dispatch.relay.batch_size = events.max(1);

        /// Bytes of events per request from the in-memory queue before it is sent early (default
        /// 4 MiB; PostHog accepts up to 20 MB).
        pub fn max_batch_bytes(bytes: usize) => dispatch.queue.max_batch_bytes = bytes.max(1);

        /// The longest an event waits in the in-memory queue before it is sent (default 500 ms).
        pub fn flush_interval(interval: Duration) => dispatch.queue.flush_interval = interval;

        /// Retries of a failed in-memory delivery before its events are given up and counted
        /// (default 5). Outbox events are never given up.
        pub fn max_retries(retries: u32) => dispatch.queue.max_retries = retries;

        /// Waits between retries.
        pub fn backoff(backoff: Backoff) =>
            dispatch.queue.backoff = backoff,
            dispatch.relay.backoff = backoff;

        /// How often a running relay samples the outbox's pending, dead and lag figures into the
        /// [`metrics`](crate::metrics) gauges (default: never; each sample counts the table's
        /// rows). The `posthog-track relay` command samples every 15 s.
        pub fn outbox_metrics_interval(every: Duration) =>
            dispatch.relay.outbox_metrics_interval = Some(every);

        /// How long a relay's claim on outbox rows lasts (default 60 s; at least 250 ms, at most a day).
        pub fn lease(lease: Duration) => dispatch.relay.lease = lease;

        /// Polling bounds of an idle relay (default 50 ms growing to 2 s; at least 10 ms).
        pub fn poll_interval(min: Duration, max: Duration) =>
            dispatch.relay.min_poll = min,
            dispatch.relay.max_poll = max.max(min);

        /// How long a relay that finds the outbox busy waits for its next batch to fill (default
        /// 80 ms); a lone event after a quiet spell still leaves at once. See
        /// [`RelayOptions::linger`].
        pub fn linger(linger: Duration) => dispatch.relay.linger = linger;

        /// PostgreSQL: whether a relay holds each claim in the transaction that sends it (default
        /// `true`) or writes a lease into the claimed rows. See [`RelayOptions::held_claims`].
        pub fn held_claims(held: bool) => dispatch.relay.held_claims = held;

        /// Marks batches as `historical_migration` (imports of past events).
        pub fn historical_migration(historical: bool) =>
            dispatch.queue.historical_migration = historical,
            dispatch.relay.historical_migration = historical;
    }

    /// A hook over every event before it is recorded; see [`BeforeSend`](crate::dispatch::BeforeSend).
    pub fn before_send(
        mut self,
        hook: impl Fn(serde_json::Value) -> Option<serde_json::Value> + Send + Sync + 'static,
    ) -> Self {
        self.dispatch.before_send = Some(Arc::new(hook));
        self
    }

    setters! {
        /// Never ask PostHog for a flag local definitions cannot decide; such flags read as
        /// `None`.
        pub fn local_evaluation_only(local_only: bool) => local_evaluation_only = local_only;

        /// Flag definitions to evaluate locally from the start (the body of
        /// `/flags/definitions`), for offline use and tests; the poller replaces them.
        pub fn flag_definitions(evaluator: LocalEvaluator) => flag_definitions = Some(evaluator);
    }

    /// The tracker.
    pub fn build(self) -> Tracker {
        let mode = self.config.mode();
        if mode != Mode::Disabled && crate::config::is_plain_http_to_remote(&self.config.host) {
            tracing::warn!(
                host = %crate::config::redact_host(&self.config.host),
                "{} uses plain http:// to another machine: the API key and every event cross \
                 the network unencrypted; use https://",
                self.config.host_source.setting()
            );
        }
        let sink = match mode {
            Mode::Disabled => None,
            Mode::DryRun => Some(Sink::DryRun),
            Mode::Live => self.config.api_key.clone().map(|key| {
                Sink::PostHog(Transport::new(
                    &self.config.host,
                    key,
                    self.config.capture_mode,
                    self.config.compression,
                    self.request_timeout,
                ))
            }),
        };
        let dispatch = Dispatch::new(mode, sink, self.dispatch);
        let flags = self
            .config
            .api_key
            .clone()
            .filter(|_| !self.config.disabled)
            .map(|key| RemoteFlags::new(&self.config.host, key, FLAGS_TIMEOUT));
        let definitions_client = match (&self.config.api_key, &self.config.personal_api_key) {
            (Some(project), Some(secret)) if !self.config.disabled => Some(DefinitionsClient::new(
                &self.config.host,
                project,
                secret.clone(),
                DEFINITIONS_TIMEOUT,
            )),
            _ => None,
        };
        let definitions = DefinitionsCache::default();
        if let Some(evaluator) = self.flag_definitions {
            definitions.preload(evaluator);
        }
        Tracker {
            inner: Arc::new(Shared {
                config: self.config,
                dispatch,
                flags,
                exposures: Mutex::new(ExposureCache::new(50_000)),
                definitions: Arc::new(definitions),
                definitions_client,
                local_evaluation_only: self.local_evaluation_only,
                poller: Mutex::new(None),
                routing: RoutingState::default(),
            }),
        }
    }
}
