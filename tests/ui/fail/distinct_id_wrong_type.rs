//! The distinct id field must turn into a string.

use posthog_track::TrackedModel;

#[derive(TrackedModel)]
#[tracked(table = "users", distinct_id = token)]
pub struct User {
    #[tracked(key, property)]
    pub id: String,
    #[tracked(skip = "binary")]
    pub token: Vec<u8>,
}

fn main() {}
