//! A person property's name of only whitespace is no name, for `person` and `person_once`.

use posthog_track::TrackedModel;

#[derive(TrackedModel)]
#[tracked(table = "users", distinct_id = id)]
pub struct User {
    #[tracked(key, property = "user_id")]
    pub id: String,
    #[tracked(person = "  ")]
    pub email: String,
    #[tracked(person_once = "\n")]
    pub channel: String,
}

fn main() {}
