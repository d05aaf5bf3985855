//! Unknown key inside milestone(...).

use posthog_track::TrackedModel;

#[derive(TrackedModel)]
#[tracked(table = "users", distinct_id = id)]
pub struct User {
    #[tracked(key, property = "user_id")]
    pub id: String,
    #[tracked(property, milestone(event = "plan_upgraded", iff = upgraded))]
    pub plan: String,
}

fn main() {}
