//! `distinct_id` must name a field.

use posthog_track::TrackedModel;

#[derive(TrackedModel)]
#[tracked(table = "users", distinct_id = usr_id)]
pub struct User {
    #[tracked(key, property)]
    pub user_id: String,
}

fn main() {}
