//! Milestone event names follow the same rules as the other event names.

use posthog_track::TrackedModel;

#[derive(TrackedModel)]
#[tracked(table = "users", distinct_id = id)]
pub struct User {
    #[tracked(key, property = "user_id")]
    pub id: String,
    #[tracked(property, milestone(event = "$pageview"))]
    pub plan: String,
}

fn main() {}
