//! Cross-process wake-ups: a relay on PostgreSQL hears commits made by other processes.
//!
//! A process that commits events but runs no relay for that database (delivery by a
//! standalone `posthog-track relay`) sends `NOTIFY posthog_outbox` with some of its commits
//! (see [`crate::outbox::WAKE_CHANNEL`] for which); every relay on PostgreSQL `LISTEN`s on a
//! connection of its own and claims at once when it hears one, instead of waiting for its next
//! poll. Polling stays as the safety net (a lost connection, a notification throttled away)
//! and is all there is on MySQL/MariaDB and SQLite, adaptive (`min_poll` after activity,
//! doubling to `max_poll` while idle) and bounded by `max_poll`.

use std::sync::Arc;

use sqlx::Pool;
use tokio::sync::Notify;

use crate::backend::Backend;

/// The listener of one relay; stops listening when dropped.
#[derive(Debug)]
pub(crate) struct Listening(Option<tokio::task::JoinHandle<()>>);

impl Drop for Listening {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// Starts listening for commits on `pool`'s database when it is PostgreSQL (a no-op
/// elsewhere): each notification wakes the relay through `wake`.
pub(crate) fn listen<DB: Backend>(pool: &Pool<DB>, wake: Arc<Notify>) -> Listening {
    #[cfg(feature = "postgres")]
    if let Some(pool) = (pool as &dyn std::any::Any).downcast_ref::<Pool<sqlx::Postgres>>() {
        // A connection of its own, not one of the pool's: it is held for as long as the relay
        // runs, and must not shrink the application's pool.
        let options = (*pool.connect_options()).clone();
        return Listening(Some(tokio::spawn(postgres::listen(options, wake))));
    }
    let _ = (pool, wake);
    Listening(None)
}

#[cfg(feature = "postgres")]
mod postgres {
    use std::sync::Arc;
    use std::time::Duration;

    use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
    use tokio::sync::Notify;

    use crate::client::backoff::Backoff;
    use crate::outbox::WAKE_CHANNEL;

    /// Waits between attempts to (re)connect the listener.
    const RECONNECT: Backoff = Backoff {
        initial: Duration::from_millis(500),
        max: Duration::from_secs(30),
    };

    pub(super) async fn listen(options: PgConnectOptions, wake: Arc<Notify>) {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect_lazy_with(options);
        let mut failures = 0u32;
        loop {
            let error = match hear(&pool, &wake, &mut failures).await {
                Ok(never) => match never {},
                Err(error) => error,
            };
            failures += 1;
            if failures == 1 {
                tracing::warn!(
                    %error,
                    "the relay cannot LISTEN for commits; it polls meanwhile and retries"
                );
            }
            tokio::time::sleep(RECONNECT.delay(failures, None)).await;
        }
    }

    /// Listens until an error; wakes the relay on every notification, and after every
    /// reconnection (notifications sent while disconnected are lost).
    async fn hear(
        pool: &sqlx::PgPool,
        wake: &Notify,
        failures: &mut u32,
    ) -> Result<std::convert::Infallible, sqlx::Error> {
        let mut listener = PgListener::connect_with(pool).await?;
        listener.listen(WAKE_CHANNEL).await?;
        if *failures > 0 {
            tracing::info!("the relay listens for commits again");
        }
        *failures = 0;
        wake.notify_one();
        loop {
            match listener.try_recv().await? {
                Some(_) => wake.notify_one(),
                // The connection was lost; the listener reconnects and listens again.
                None => wake.notify_one(),
            }
        }
    }
}
