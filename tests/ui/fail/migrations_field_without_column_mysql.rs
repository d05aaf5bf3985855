//! MySQL: a field whose column no migration creates fails the build on the field.

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
    #[tracked(property)]
    pub trial_ends_at: Option<DateTime<Utc>>,
    #[tracked(property)]
    pub nickname: Option<String>,
    #[tracked(property)]
    pub emial_verified: Option<bool>,
}

fn main() {}
