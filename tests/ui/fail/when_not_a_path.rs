//! `when` names a function; a closure is not accepted.

use posthog_track::TrackedModel;

#[derive(TrackedModel)]
#[tracked(table = "users", distinct_id = id)]
pub struct User {
    #[tracked(key, property = "user_id")]
    pub id: String,
    #[tracked(property, milestone(event = "plan_upgraded", when = |a, b| a != b))]
    pub plan: String,
}

fn main() {}
