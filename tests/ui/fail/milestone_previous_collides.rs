//! `previous_<property>` of a milestone collides with a property.

use posthog_track::TrackedModel;

#[derive(TrackedModel)]
#[tracked(table = "users", distinct_id = id)]
pub struct User {
    #[tracked(key, property = "user_id")]
    pub id: String,
    #[tracked(property, milestone(event = "plan_changed"))]
    pub plan: String,
    #[tracked(property)]
    pub previous_plan: String,
}

fn main() {}
