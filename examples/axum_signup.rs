//! A web service whose writes are tied to each user's PostHog journey: `POST /signup`
//! identifies the new user (merging the anonymous visitor) and creates their company group,
//! `POST /orders` stores who, in which session and from which campaign an order came, and
//! `POST /plan` fires the `plan_upgraded` milestone. The code is `examples/src/shop.rs`.
//!
//! ```text
//! cargo run --example axum_signup                                  # SQLite in memory
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo run --example axum_signup
//! ```
//!
//! Then, as posthog-js would (`__add_tracing_headers` sends the two PostHog headers):
//!
//! ```text
//! curl -s localhost:3000/signup -H 'content-type: application/json' \
//!      -H 'x-posthog-distinct-id: anon-1' -H 'x-posthog-session-id: session-1' \
//!      -d '{"email": "ada@example.com", "company": "Analytical Engines"}'
//! curl -s localhost:3000/orders -H 'content-type: application/json' \
//!      -H 'x-posthog-distinct-id: user-…' -H 'x-posthog-session-id: session-1' \
//!      -H 'x-utm-source: newsletter' -d '{"user_id": "user-…", "revenue": 49.0, "currency": "EUR"}'
//! curl -s localhost:3000/plan -H 'content-type: application/json' \
//!      -H 'x-posthog-distinct-id: user-…' -d '{"user_id": "user-…", "plan": "pro"}'
//! ```
//!
//! Without `POSTHOG_API_KEY` the events are printed instead of sent (dry run). `ADDR` changes
//! the address (default `127.0.0.1:3000`).

use std::time::Duration;

use posthog_track::{Backend, TrackedRow, Tracker};
use posthog_track_examples::shop::{self, Account, Company, Order, Shop};
use sqlx::Pool;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tracker = Tracker::from_env()?;
    let address = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(&address).await?;
    match std::env::var("DATABASE_URL") {
        Ok(url) if url.starts_with("postgres") => {
            serve(sqlx::PgPool::connect(&url).await?, tracker, listener).await
        }
        Ok(url) if url.starts_with("mysql") => {
            serve(sqlx::MySqlPool::connect(&url).await?, tracker, listener).await
        }
        Ok(url) => serve(sqlx::SqlitePool::connect(&url).await?, tracker, listener).await,
        Err(_) => {
            let pool = posthog_track_examples::memory_database().await?;
            serve(pool, tracker, listener).await
        }
    }
}

async fn serve<DB: Backend>(
    pool: Pool<DB>,
    tracker: Tracker,
    listener: tokio::net::TcpListener,
) -> Result<(), Box<dyn std::error::Error>>
where
    Account: TrackedRow<DB>,
    Company: TrackedRow<DB>,
    Order: TrackedRow<DB>,
{
    shop::migrate(&pool, &tracker).await?; // the first tracked transaction starts the relay
    println!(
        "shop on http://{} ({}); Ctrl-C stops it",
        listener.local_addr()?,
        DB::DIALECT.name()
    );
    let app = shop::app(Shop {
        pool,
        tracker: tracker.clone(),
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    tracker.shutdown(Duration::from_secs(10)).await?;
    Ok(())
}
