//! An event name of only whitespace is no name, on every event attribute of the struct.

use posthog_track::TrackedModel;

#[derive(TrackedModel)]
#[tracked(table = "users", distinct_id = id, insert_event = "   ", delete_event = "\t")]
pub struct User {
    #[tracked(key, property = "user_id")]
    pub id: String,
    #[tracked(property)]
    pub email: String,
}

fn main() {}
