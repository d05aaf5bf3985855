//! SQLite: the model's key must be the table's primary key.

use chrono::{DateTime, Utc};
use posthog_track::TrackedModel;

#[derive(TrackedModel)]
#[tracked(table = "users", migrations = "../migrations/sqlite", migrations_dialect = "sqlite")]
pub struct User {
    #[tracked(generated, property = "user_id")]
    pub id: i64,
    #[tracked(key, person)]
    pub email: String,
    #[tracked(property)]
    pub plan: String,
    #[tracked(generated, property)]
    pub created_at: DateTime<Utc>,
    #[tracked(property)]
    pub trial_ends_at: Option<DateTime<Utc>>,
}

fn main() {}
