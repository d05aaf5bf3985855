//! MySQL: a Rust type must be able to hold the column's values.

use chrono::{DateTime, Utc};
use posthog_track::TrackedModel;

#[derive(TrackedModel)]
#[tracked(table = "users", migrations = "../migrations/mysql", migrations_dialect = "mysql")]
pub struct User {
    #[tracked(key, generated, property = "user_id")]
    pub id: i64,
    #[tracked(person)]
    pub email: String,
    #[tracked(property)]
    pub plan: i64,
    #[tracked(generated, property)]
    pub created_at: DateTime<Utc>,
    #[tracked(property)]
    pub trial_ends_at: Option<bool>,
}

fn main() {}
