//! A `when` function with one argument.

use posthog_track::TrackedModel;

#[derive(TrackedModel)]
#[tracked(table = "users", distinct_id = id)]
pub struct User {
    #[tracked(key, property = "user_id")]
    pub id: String,
    #[tracked(property, milestone(event = "plan_upgraded", when = upgraded))]
    pub plan: String,
}

fn upgraded(after: &String) -> bool {
    after == "pro"
}

fn main() {}
