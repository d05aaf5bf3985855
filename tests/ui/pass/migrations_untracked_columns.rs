//! A column the model leaves alone is declared; a nullable one may be.

use chrono::{DateTime, Utc};
use posthog_track::TrackedModel;

#[derive(TrackedModel)]
#[tracked(table = "users", migrations = "../migrations/postgres", migrations_dialect = "postgres", untracked_columns("trial_ends_at"))]
pub struct User {
    #[tracked(key, generated, property = "user_id")]
    pub id: i64,
    #[tracked(person)]
    pub email: String,
    #[tracked(property)]
    pub plan: String,
    #[tracked(generated, property)]
    pub created_at: DateTime<Utc>,
}

fn main() {}
