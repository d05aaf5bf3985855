//! The model of DESIGN.md compiles, with sqlx::FromRow derived beside it.

use posthog_track::TrackedModel;

#[derive(Debug, Clone, TrackedModel, sqlx::FromRow)]
#[tracked(table = "users", distinct_id = id,
          insert_event = "user_signed_up", update_event = "user_updated")]
pub struct User {
    #[tracked(key, property = "user_id")]
    pub id: String,
    #[tracked(person)]
    pub email: String,
    #[tracked(property, milestone(event = "plan_upgraded", when = crate::plan_upgraded))]
    pub plan: String,
    #[tracked(skip = "credential; never leaves the database")]
    pub password_hash: String,
    #[tracked(generated, property)]
    pub created_at: chrono::DateTime<chrono::Utc>,
    #[tracked(property)]
    pub r#type: String,
}

fn plan_upgraded(before: &String, after: &String) -> bool {
    before == "free" && after != "free"
}

fn main() {
    assert_eq!(<User as TrackedModel>::INSERT_EVENT, "user_signed_up");
    assert_eq!(<User as TrackedModel>::DELETE_EVENT, "user_deleted");
}
