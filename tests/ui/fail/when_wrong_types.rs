//! A `when` function over the wrong type.

use posthog_track::TrackedModel;

#[derive(TrackedModel)]
#[tracked(table = "users", distinct_id = id)]
pub struct User {
    #[tracked(key, property = "user_id")]
    pub id: String,
    #[tracked(property, milestone(event = "plan_upgraded", when = upgraded))]
    pub plan: String,
}

fn upgraded(before: &i64, after: &i64) -> bool {
    before < after
}

fn main() {}
