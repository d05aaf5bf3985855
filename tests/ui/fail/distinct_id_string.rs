//! `distinct_id` names a field, not a string.

use posthog_track::TrackedModel;

#[derive(TrackedModel)]
#[tracked(table = "users", distinct_id = "id")]
pub struct User {
    #[tracked(key, property = "user_id")]
    pub id: String,
    #[tracked(property)]
    pub email: String,
}

fn main() {}
