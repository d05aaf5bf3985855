//! A database posthog-track does not write to (in an application, usually one whose cargo
//! feature is not enabled: `postgres`, `mysql` or `sqlite`) names the feature to enable. The
//! test crate enables all three, so a generic database stands in for a disabled one here.

use posthog_track::Tracker;

async fn begin<DB: sqlx::Database>(tracker: &Tracker, pool: &sqlx::Pool<DB>) {
    let _ = tracker.begin(pool).await;
}

fn main() {}
