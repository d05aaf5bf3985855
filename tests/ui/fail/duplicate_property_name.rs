//! Two fields sending the same property.

use posthog_track::TrackedModel;

#[derive(TrackedModel)]
#[tracked(table = "users", distinct_id = id)]
pub struct User {
    #[tracked(key, property = "user_id")]
    pub id: String,
    #[tracked(property)]
    pub plan: String,
    #[tracked(property = "plan")]
    pub plan_name: String,
}

fn main() {}
