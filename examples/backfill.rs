//! Bringing existing data: a `users` table that was full before posthog-track arrived, sent
//! to PostHog from the model, with a progress bar.
//!
//! ```text
//! cargo run --example backfill
//! ```
//!
//! It fills the examples' database with users written by plain SQL (as an older version of
//! the application wrote them, with no events), then backfills them: one `$set` person update
//! per user, and their `user_signed_up` event dated by `created_at`, sent as
//! `historical_migration`. A second run stages nothing new: the checkpoint says the backfill
//! is complete, and even a restart would make the same uuids, which PostHog deduplicates.
//!
//! With `POSTHOG_API_KEY` the events go to PostHog; without one they go to a local
//! MockPostHog, which counts what it received. `BACKFILL_USERS` (default 5,000) and
//! `BACKFILL_RATE` (events per second, default 4,000) size the run.

use std::process::ExitCode;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use posthog_track::testing::MockPostHog;
use posthog_track::{BackfillReport, Error, Tracker};
use posthog_track_examples::User;

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            if let Some(hint) = hint(&*error) {
                eprintln!("hint: {hint}");
            }
            ExitCode::FAILURE
        }
    }
}

/// What to do about `error`, when the example knows.
fn hint(error: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    match error.downcast_ref::<Error>()? {
        Error::Timeout { .. } | Error::Undelivered { .. } => Some(
            "PostHog did not take the events: check that POSTHOG_HOST answers from this machine \
             and that POSTHOG_API_KEY is the project's key (phc_...); without POSTHOG_API_KEY \
             the example delivers to a local MockPostHog",
        ),
        Error::Config(_) => {
            Some("check the POSTHOG_* environment variables (POSTHOG_HOST: a URL, `us` or `eu`)")
        }
        _ => None,
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let users: i64 = env_number("BACKFILL_USERS", 5_000)?;
    let rate: u32 = env_number("BACKFILL_RATE", 4_000)?;

    let pool = posthog_track_examples::memory_database().await?;
    posthog_track_examples::migrate(&pool).await?; // runs examples/migrations/*.sql
    fill(&pool, users).await?;

    // A real PostHog with a key; otherwise a local mock that counts what it receives.
    let mock = match std::env::var("POSTHOG_API_KEY") {
        Ok(key) if !key.trim().is_empty() => None,
        _ => Some(MockPostHog::start().await),
    };
    let tracker = match &mock {
        None => Tracker::from_env()?,
        Some(mock) => {
            println!(
                "no POSTHOG_API_KEY: delivering to a local MockPostHog at {}",
                mock.url()
            );
            Tracker::builder()
                .api_key(mock.api_key())
                .host(mock.url())?
                .build()
        }
    };
    tracker.migrate(&pool).await?; // creates posthog_outbox

    println!("\nfirst run: {users} users, {rate} events per second");
    let first = backfill(&tracker, &pool, users, rate).await?;
    println!("{first}");

    println!("\nsecond run: the checkpoint says it is done");
    let second = backfill(&tracker, &pool, users, rate).await?;
    println!("{second}");

    if let Some(mock) = &mock {
        tracker.flush().await?;
        let events = mock.events();
        let person_updates = events.iter().filter(|e| e.event == "$set").count();
        let signups = events
            .iter()
            .filter(|e| e.event == "user_signed_up")
            .count();
        let historical = mock
            .requests()
            .iter()
            .filter(|request| request.historical_migration)
            .count();
        println!(
            "\nMockPostHog received {} events: {person_updates} person updates and {signups} \
             user_signed_up ({historical} historical_migration requests), {} unique uuids",
            events.len(),
            mock.unique_uuids().len()
        );
    }
    // Delivers what is left (to PostHog, with a key), for 10 s at most.
    tracker.shutdown(Duration::from_secs(10)).await?;
    Ok(())
}

/// One backfill of `User`, with a progress bar.
async fn backfill(
    tracker: &Tracker,
    pool: &sqlx::SqlitePool,
    users: i64,
    rate: u32,
) -> posthog_track::Result<BackfillReport> {
    let bar = ProgressBar::new(u64::try_from(users).unwrap_or(0));
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} rows, {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let progress = bar.clone();
    let report = tracker
        .backfill::<User>(pool)
        .with_events("created_at")
        .rate(rate)
        .on_progress(move |p| {
            progress.set_position(p.total_rows);
            progress.set_message(format!(
                "{} events staged, {:.0} events/s",
                p.events, p.events_per_second
            ));
        })
        .run()
        .await;
    bar.finish_and_clear();
    report
}

/// Users as an older version of the application wrote them: plain SQL, no events.
async fn fill(pool: &sqlx::SqlitePool, users: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) \
         INSERT INTO users (id, email, plan, password_hash, created_at) \
         SELECT printf('user-%06d', i), printf('user%d@example.com', i), \
                CASE WHEN i % 4 = 0 THEN 'pro' ELSE 'free' END, '$argon2id$v=19$...', \
                strftime('%Y-%m-%dT%H:%M:%fZ', '2024-01-01', printf('+%d minutes', i)) \
         FROM n WHERE i <= ?", // the recursion's first row is there even for 0 users
    )
    .bind(users)
    .bind(users)
    .execute(pool)
    .await?;
    Ok(())
}

fn env_number<T: std::str::FromStr>(name: &str, default: T) -> Result<T, String> {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .map_err(|_| format!("{name} must be a number, not {value:?}")),
        Err(_) => Ok(default),
    }
}
