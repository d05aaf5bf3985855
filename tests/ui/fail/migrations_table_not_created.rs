//! The model's table (and each variant table) must be created by a migration.

use chrono::{DateTime, Utc};
use posthog_track::TrackedModel;

#[derive(TrackedModel)]
#[tracked(table = "user", migrations = "../migrations/postgres", migrations_dialect = "postgres", table_variant(flag = "users-v2", variant = "test", table = "users_v2"))]
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
