//! A model that matches its PostgreSQL migrations, `ALTER TABLE ... ADD COLUMN trial_ends_at` included, compiles.

use chrono::{DateTime, Utc};
use posthog_track::TrackedModel;

#[derive(TrackedModel)]
#[tracked(table = "users", migrations = "../migrations/postgres", migrations_dialect = "postgres")]
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
