//! A feature flag decides which schema a write goes to: the standard `documents` table, or the
//! new `documents_v2` for users in the flag's `test` variant; the analytics know which one
//! each write used.
//!
//! ```text
//! cargo run --example flag_routed_schema
//! ```
//!
//! Runs offline: SQLite in memory, and the flag's definition given locally (in production the
//! tracker polls it from PostHog with `POSTHOG_PERSONAL_API_KEY`; see `start_flag_poller`).

use std::collections::BTreeMap;

use posthog_track::flags::LocalEvaluator;
use posthog_track::{TrackedModel, Tracker, routed_table};
use posthog_track_examples::Document;

/// The body PostHog serves at `/flags/definitions`: a 50/50 experiment on everyone.
const DEFINITIONS: &str = r#"{"flags": [{"key": "documents-v2", "active": true, "filters": {
    "groups": [{"properties": [], "rollout_percentage": 100}],
    "multivariate": {"variants": [
        {"key": "control", "rollout_percentage": 50},
        {"key": "test", "rollout_percentage": 50}]}}}]}"#;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pool = posthog_track_examples::memory_database().await?;
    posthog_track_examples::migrate(&pool).await?; // creates documents and documents_v2
    let tracker = Tracker::builder()
        .flag_definitions(LocalEvaluator::from_json(DEFINITIONS)?)
        .local_evaluation_only(true)
        .build();
    tracker.migrate(&pool).await?;

    let mut tx = tracker.begin(&pool).await?;
    for n in 0..8 {
        let owner = format!("user-{n}");
        Document {
            id: format!("doc-{n}"),
            owner,
            title: "Quarterly plan".into(),
        }
        .insert(&mut tx)
        .await?; // evaluates the flag for the owner, writes to the variant's table
    }
    // What the commit records (this dry run prints it; with a key it goes to the outbox).
    let staged: Vec<serde_json::Value> = tx.staged().iter().map(|event| event.json()).collect();
    tx.commit().await?;

    println!("rows by table:");
    for table in ["documents", "documents_v2"] {
        let owners: Vec<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT owner FROM {table} ORDER BY owner"
        )))
        .fetch_all(&pool)
        .await?;
        let owners: Vec<String> = owners.into_iter().map(|(owner,)| owner).collect();
        println!("  {table:<13} {}", owners.join(", "));
    }
    println!(
        "\nreads route the same way: user-3's documents are in `{}`",
        routed_table::<Document>(&tracker, "user-3").await
    );

    println!("\nthe events, each with the variant its write used:");
    let mut by_variant: BTreeMap<String, usize> = BTreeMap::new();
    for event in &staged {
        let variant = event["properties"]["$feature/documents-v2"]
            .as_str()
            .unwrap_or("(none)")
            .to_owned();
        println!(
            "  {} {} $feature/documents-v2={variant}",
            event["event"].as_str().unwrap_or_default(),
            event["distinct_id"].as_str().unwrap_or_default()
        );
        *by_variant.entry(variant).or_default() += 1;
    }
    println!("\nwrites per variant: {by_variant:?}");
    // The $feature_flag_called exposures went through the in-memory queue (printed in this
    // dry run, sent to PostHog with a key).
    tracker.shutdown(std::time::Duration::from_secs(5)).await?;
    Ok(())
}
