//! A model field whose type differs from the schema's is an error on the model's field.

use posthog_track::{EventSchema, TrackedModel};

#[derive(EventSchema)]
pub struct UserProperties {
    pub user_id: String,
    pub seats: i64,
}

#[derive(TrackedModel)]
#[tracked(table = "users", distinct_id = id, schema = UserProperties)]
pub struct User {
    #[tracked(key, property = "user_id")]
    pub id: String,
    pub seats: i32,
}

fn main() {}
