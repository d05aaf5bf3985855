//! A milestone needs an event name.

use posthog_track::TrackedModel;

#[derive(TrackedModel)]
#[tracked(table = "users", distinct_id = id)]
pub struct User {
    #[tracked(key, property = "user_id")]
    pub id: String,
    #[tracked(property, milestone(when = upgraded))]
    pub plan: String,
}

fn upgraded(before: &String, after: &String) -> bool {
    before != after
}

fn main() {}
