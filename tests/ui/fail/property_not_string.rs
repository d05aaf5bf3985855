//! `property = ...` takes a string literal; the error is not followed by "no analytics decision".

use posthog_track::TrackedModel;

#[derive(TrackedModel)]
#[tracked(table = "users", distinct_id = id)]
pub struct User {
    #[tracked(key, property = "user_id")]
    pub id: String,
    #[tracked(property = email_address)]
    pub email: String,
}

fn main() {}
