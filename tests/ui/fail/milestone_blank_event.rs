//! A milestone's event name follows the rules of the other event names: not blank.

use posthog_track::TrackedModel;

#[derive(TrackedModel)]
#[tracked(table = "users", distinct_id = id)]
pub struct User {
    #[tracked(key, property = "user_id")]
    pub id: String,
    #[tracked(property, milestone(event = " "))]
    pub plan: String,
    #[tracked(property, milestone(event = ""))]
    pub seats: i64,
}

fn main() {}
