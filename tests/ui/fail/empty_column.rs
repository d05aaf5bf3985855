//! An empty column name.

use posthog_track::TrackedModel;

#[derive(TrackedModel)]
#[tracked(table = "users", distinct_id = id)]
pub struct User {
    #[tracked(key, property = "user_id")]
    pub id: String,
    #[tracked(property, column = "")]
    pub email: String,
}

fn main() {}
