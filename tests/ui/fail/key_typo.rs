//! A misspelt `key` gets a suggestion, and no second "has no key" error.

use posthog_track::TrackedModel;

#[derive(TrackedModel)]
#[tracked(table = "users", distinct_id = id)]
pub struct User {
    #[tracked(kye, property = "user_id")]
    pub id: String,
    #[tracked(property)]
    pub email: String,
}

fn main() {}
