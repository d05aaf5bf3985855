//! Schema mode: the schema names every property; skip keeps a field out; a rename maps a field.

use posthog_track::{EventSchema, TrackedModel};

#[derive(EventSchema)]
pub struct UserProperties {
    pub user_id: String,
    pub email: String,
    pub plan: String,
    pub trial_ends_at: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(TrackedModel)]
#[tracked(table = "users", distinct_id = id, schema = UserProperties)]
pub struct User {
    #[tracked(key, property = "user_id")]
    pub id: String,
    #[tracked(person)]
    pub email: String,
    pub plan: String,
    pub trial_ends_at: Option<chrono::DateTime<chrono::Utc>>,
    #[tracked(skip = "credential")]
    pub password_hash: String,
}

fn main() {
    assert_eq!(UserProperties::PROPERTIES, ["user_id", "email", "plan", "trial_ends_at"]);
}
