//! PostgreSQL: sqlx decodes integers at their own width and keeps TIMESTAMPTZ apart from TIMESTAMP;
//! a nullable column's suggestion is an `Option` at once (one build, one fix).

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
    pub trial_ends_at: chrono::NaiveDateTime,
}

fn main() {}
