//! Unknown field key, no suggestion close enough.

use posthog_track::TrackedModel;

#[derive(TrackedModel)]
#[tracked(table = "users", distinct_id = id)]
pub struct User {
    #[tracked(key, property = "user_id")]
    pub id: String,
    #[tracked(banana)]
    pub email: String,
}

fn main() {}
