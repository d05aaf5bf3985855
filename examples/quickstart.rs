//! The whole idea in one file: a `User` model whose writes and PostHog events commit together.
//!
//! ```text
//! cargo run --example quickstart
//! ```
//!
//! Runs on SQLite in memory, so it needs nothing installed. It signs a user up, upgrades their
//! plan (a milestone event), rolls back a second signup, prints what the database holds (the
//! rows and the events waiting in the outbox), then delivers the outbox: to PostHog when
//! `POSTHOG_API_KEY` is set, printed as JSON lines otherwise.

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

    println!("\nposthog_outbox (committed events, as PostHog will receive them):");
    for event in tracker.outbox(&pool).events().await? {
        println!("  {}", serde_json::to_string(&event.payload)?);
    }

    // Deliver: the relay sends the outbox to PostHog (dry run: prints each event as a JSON
    // line) and deletes what was accepted. In a service, `start_relay` once at start-up.
    match tracker.mode() {
        Mode::DryRun => println!(
            "\nDry run (no POSTHOG_API_KEY): delivery prints each event instead of sending it.\n\
             To send to a real project: POSTHOG_API_KEY=phc_... \
             [POSTHOG_HOST=https://eu.i.posthog.com] cargo run --example quickstart\n"
        ),
        Mode::Live => println!(
            "\nSending to {} with key {} ...",
            tracker.config().host(),
            tracker
                .config()
                .api_key()
                .map(|key| key.to_string())
                .unwrap_or_default()
        ),
        Mode::Disabled => {
            println!("\nPOSTHOG_DISABLED is set: rows are written, no events recorded.")
        }
    }
    tracker.start_relay(pool.clone());
    // Flush, then stop the relay. PostHog unreachable? The events would wait in the outbox
    // (in a real database) for the next relay.
    if let Err(error) = tracker.shutdown(Duration::from_secs(10)).await {
        println!("{error}");
    }
    let left = tracker.outbox(&pool).status().await?;
    println!(
        "\nthe outbox now holds {} pending and {} dead events",
        left.pending, left.dead
    );
    Ok(())
}
