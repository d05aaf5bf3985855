//! A milestone on a skipped field.

use posthog_track::TrackedModel;

#[derive(TrackedModel)]
#[tracked(table = "users", distinct_id = id)]
pub struct User {
    #[tracked(key, property = "user_id")]
    pub id: String,
    #[tracked(skip = "internal", milestone(event = "plan_changed"))]
    pub plan: String,
}

fn main() {}
