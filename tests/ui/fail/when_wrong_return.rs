//! A `when` function must return `bool`.

use posthog_track::TrackedModel;

#[derive(TrackedModel)]
#[tracked(table = "users", distinct_id = id)]
pub struct User {
    #[tracked(key, property = "user_id")]
    pub id: String,
    #[tracked(property, milestone(event = "plan_upgraded", when = upgraded))]
    pub plan: String,
}

fn upgraded(before: &String, after: &String) -> Option<bool> {
    Some(before != after)
}

fn main() {}
