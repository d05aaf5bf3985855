//! The entry point: configuration, migrations and tracked transactions.

use std::sync::Arc;

use sqlx::Pool;

use crate::backend::Backend;
use crate::config::{ApiKey, Config, Mode};
use crate::error::Result;
use crate::outbox::{self, Outbox};
use crate::transaction::TrackedTransaction;

/// Tracks writes and (with the relay) delivers their events. Cheap to clone: clones share state.
#[derive(Debug, Clone)]
pub struct Tracker {
    inner: Arc<Config>,
}

impl Tracker {
    /// A tracker configured from the environment; see [`Config::from_env`].
    pub fn from_env() -> Result<Self> {
        Ok(Self::from_config(Config::from_env()?))
    }

    /// A tracker built field by field.
    pub fn builder() -> TrackerBuilder {
        TrackerBuilder {
            config: Config::default(),
        }
    }

    /// A tracker with this configuration.
    pub fn from_config(config: Config) -> Self {
        Tracker {
            inner: Arc::new(config),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.inner
    }

    /// What happens to events: sent, printed, or not recorded.
    pub fn mode(&self) -> Mode {
        self.inner.mode()
    }

    /// Creates the outbox table (`posthog_outbox`) if it does not exist. Idempotent.
    pub async fn migrate<DB: Backend>(&self, pool: &Pool<DB>) -> Result<()> {
        outbox::migrate(pool).await
    }

    /// Begins a tracked transaction on a connection from `pool`.
    pub async fn begin<DB: Backend>(
        &self,
        pool: &Pool<DB>,
    ) -> Result<TrackedTransaction<'static, DB>> {
        Ok(self.track(pool.begin().await?))
    }

    /// Tracks writes in a transaction you already began (on a pool, a connection or as a
    /// nested transaction).
    pub fn track<'c, DB: Backend>(
        &self,
        tx: sqlx::Transaction<'c, DB>,
    ) -> TrackedTransaction<'c, DB> {
        TrackedTransaction::new(tx, self.mode() != Mode::Disabled)
    }

    /// The outbox of the database behind `pool`.
    pub fn outbox<'p, DB: Backend>(&self, pool: &'p Pool<DB>) -> Outbox<'p, DB> {
        Outbox::new(pool)
    }
}

/// Builds a [`Tracker`].
#[derive(Debug, Clone)]
#[must_use]
pub struct TrackerBuilder {
    config: Config,
}

impl TrackerBuilder {
    /// The project API key (`phc_...`). Without one the tracker runs in dry-run mode.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.config.api_key = Some(ApiKey::new(key));
        self
    }

    /// The personal (or project secret) API key, for local flag evaluation.
    pub fn personal_api_key(mut self, key: impl Into<String>) -> Self {
        self.config.personal_api_key = Some(ApiKey::new(key));
        self
    }

    /// The PostHog host: a URL, or `us` / `eu` for PostHog Cloud.
    pub fn host(mut self, host: impl AsRef<str>) -> Result<Self> {
        self.config.host = crate::config::normalize_host(host.as_ref())?;
        Ok(self)
    }

    /// Records no events at all (tracked writes still write their rows).
    pub fn disabled(mut self, disabled: bool) -> Self {
        self.config.disabled = disabled;
        self
    }

    /// The tracker.
    pub fn build(self) -> Tracker {
        Tracker::from_config(self.config)
    }
}
