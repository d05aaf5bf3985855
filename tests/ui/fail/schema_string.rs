//! `schema` names a type, not a string.

use posthog_track::{EventSchema, TrackedModel};

#[derive(EventSchema)]
pub struct UserProperties {
    pub user_id: String,
}

#[derive(TrackedModel)]
#[tracked(table = "users", distinct_id = id, schema = "UserProperties")]
pub struct User {
    #[tracked(key, property = "user_id")]
    pub id: String,
}

fn main() {}
