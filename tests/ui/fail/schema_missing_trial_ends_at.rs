//! In schema mode, a model field the schema lacks is an error on the model's field.

use posthog_track::{EventSchema, TrackedModel};

#[derive(EventSchema)]
pub struct UserProperties {
    pub user_id: String,
    pub email: String,
    pub plan: String,
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
}

fn main() {}
