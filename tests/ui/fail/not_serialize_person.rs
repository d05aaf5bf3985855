//! A `person` field is written twice (event property and `$set`); a type that cannot become
//! JSON is still reported once, on the field's type.

use posthog_track::TrackedModel;

#[derive(Debug, Clone, PartialEq)]
pub struct Address {
    pub city: String,
}

#[derive(TrackedModel)]
#[tracked(table = "users", distinct_id = id)]
pub struct User {
    #[tracked(key, property = "user_id")]
    pub id: String,
    #[tracked(person, milestone(event = "user_moved"))]
    pub address: Address,
}

fn main() {}
