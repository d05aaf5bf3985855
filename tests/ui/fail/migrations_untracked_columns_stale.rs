//! `untracked_columns` names columns the table has and the model does not.

use chrono::{DateTime, Utc};
use posthog_track::TrackedModel;

#[derive(TrackedModel)]
#[tracked(table = "users", migrations = "../migrations/sqlite", migrations_dialect = "sqlite", untracked_columns("legacy_score", "plan"))]
pub struct User {
    #[tracked(key, generated, property = "user_id")]
    pub id: i64,
    #[tracked(person)]
    pub email: String,
    #[tracked(property)]
    pub plan: String,
    #[tracked(generated, property)]
    pub created_at: DateTime<Utc>,
    #[tracked(property)]
    pub trial_ends_at: Option<DateTime<Utc>>,
}

fn main() {}
