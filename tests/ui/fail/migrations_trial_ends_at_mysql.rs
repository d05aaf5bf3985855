//! A MySQL migration adds `trial_ends_at`; the build fails until the model has the field.

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
    pub plan: String,
    #[tracked(generated, property)]
    pub created_at: DateTime<Utc>,
}

fn main() {}
