//! A schema property that no model field feeds is an error.

use posthog_track::{EventSchema, TrackedModel};

#[derive(EventSchema)]
pub struct UserProperties {
    pub user_id: String,
    pub plan: String,
    pub seats: i64,
}

#[derive(TrackedModel)]
#[tracked(table = "users", distinct_id = id, schema = UserProperties)]
pub struct User {
    #[tracked(key, property = "user_id")]
    pub id: String,
    pub plan: String,
}

fn main() {}
