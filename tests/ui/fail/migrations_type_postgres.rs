//! PostgreSQL: sqlx decodes integers at their own width and keeps TIMESTAMPTZ apart from TIMESTAMP.

use chrono::{DateTime, Utc};
use posthog_track::TrackedModel;

#[derive(TrackedModel)]
#[tracked(table = "users", migrations = "../migrations/postgres", migrations_dialect = "postgres")]
pub struct User {
    #[tracked(key, generated, property = "user_id")]
    pub id: i32,
    #[tracked(person)]
    pub email: String,
    #[tracked(property)]
    pub plan: String,
    #[tracked(generated, property)]
    pub created_at: chrono::NaiveDateTime,
    #[tracked(property)]
    pub trial_ends_at: Option<DateTime<Utc>>,
}

fn main() {}
