//! `table` takes a string literal; the error is not followed by "needs a table".

use posthog_track::TrackedModel;

#[derive(TrackedModel)]
#[tracked(table = users, distinct_id = id)]
pub struct User {
    #[tracked(key, property = "user_id")]
    pub id: String,
    #[tracked(property)]
    pub email: String,
}

fn main() {}
