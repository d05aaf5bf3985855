//! A model that matches its SQLite migrations, `ALTER TABLE ... ADD COLUMN trial_ends_at` included, compiles.

use chrono::{DateTime, Utc};
use posthog_track::TrackedModel;

#[derive(TrackedModel)]
#[tracked(table = "users", migrations = "../migrations/sqlite", migrations_dialect = "sqlite")]
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

fn main() {
    assert_eq!(<User as TrackedModel>::TABLE, "users");
}
