//! The whole idea in one file: a `User` model whose writes and PostHog events commit together.
//!
//! ```text
//! cargo run --example quickstart
//! ```
//!
//! Runs on SQLite in memory, so it needs nothing installed. It signs a user up, upgrades their
//! plan (a milestone event), rolls back a second signup, and prints what the database holds.
//! Without `POSTHOG_API_KEY` it is a dry run: each commit prints its events as JSON lines and
//! the outbox is left alone. With a key the events are committed to the outbox with the rows,
//! and the relay that the first transaction started delivers them to PostHog.

use std::time::Duration;

use chrono::{DateTime, Utc};
use posthog_track::{Mode, TrackedModel, Tracker};
use posthog_track_examples::User;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pool = posthog_track_examples::memory_database().await?;
    posthog_track_examples::migrate(&pool).await?; // runs examples/migrations/*.sql

    // POSTHOG_API_KEY / POSTHOG_HOST / POSTHOG_DISABLED; without a key this is a dry run.
    let tracker = Tracker::from_env()?;
    tracker.migrate(&pool).await?; // creates posthog_outbox

    // Signup and upgrade: rows and events commit together.
    let mut tx = tracker.begin(&pool).await?;
    let ada = User {
        id: "user-ada".into(),
        email: "ada@example.com".into(),
        plan: "free".into(),
        password_hash: "$argon2id$v=19$...".into(),
        created_at: DateTime::<Utc>::UNIX_EPOCH, // replaced by the database's value
    }
    .insert(&mut tx)
    .await?;
    let mut upgraded = ada.clone();
    upgraded.plan = "pro".into();
    upgraded.update_changed(&ada, &mut tx).await?; // only `plan` is written
    tx.commit().await?;

    // A signup that fails half-way: the rollback takes the row and its event with it.
    let mut tx = tracker.begin(&pool).await?;
    User {
        id: "user-bob".into(),
        email: "bob@example.com".into(),
        plan: "free".into(),
        password_hash: "$argon2id$v=19$...".into(),
        created_at: DateTime::<Utc>::UNIX_EPOCH,
    }
    .insert(&mut tx)
    .await?;
    tx.rollback().await?;

    println!("users table:");
    let rows: Vec<(String, String, String, String)> =
        sqlx::query_as("SELECT id, email, plan, created_at FROM users ORDER BY id")
            .fetch_all(&pool)
            .await?;
    for (id, email, plan, created_at) in rows {
        println!("  {id}  {email}  plan={plan}  created_at={created_at}");
    }

    match tracker.mode() {
        Mode::DryRun => println!(
            "\nDry run (no POSTHOG_API_KEY): the JSON lines above are the events each commit \
             recorded, exactly as PostHog would receive them; none was sent or stored.\n\
             To send to a real project: POSTHOG_API_KEY=phc_... \
             [POSTHOG_HOST=https://eu.i.posthog.com] cargo run --example quickstart"
        ),
        Mode::Live => {
            println!(
                "\nDelivering to {} with key {} ...",
                // Redacted: a proxy's `user:password@` in POSTHOG_HOST is a secret.
                tracker.config().redacted_host(),
                tracker
                    .config()
                    .api_key()
                    .map(|key| key.to_string())
                    .unwrap_or_default()
            );
            // Waits (retrying) until everything committed so far is delivered, then stops the
            // relay. PostHog unreachable? The events would wait in the outbox (in a real
            // database) for the next relay; nothing is lost.
            match tracker.shutdown(Duration::from_secs(10)).await {
                Ok(_) => println!("delivered"),
                Err(error) => println!("{error}"),
            }
            let left = tracker.outbox(&pool).status().await?;
            println!(
                "the outbox now holds {} pending and {} dead events",
                left.pending, left.dead
            );
        }
        Mode::Disabled => {
            println!("\nPOSTHOG_DISABLED is set: rows are written, no events recorded.")
        }
    }
    Ok(())
}
