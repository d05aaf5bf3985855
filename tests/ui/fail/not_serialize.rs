//! A property whose type cannot become JSON.

use posthog_track::TrackedModel;

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub name: String,
}

#[derive(TrackedModel)]
#[tracked(table = "users", distinct_id = id)]
pub struct User {
    #[tracked(key, property = "user_id")]
    pub id: String,
    #[tracked(property)]
    pub plan: Plan,
}

fn main() {}
