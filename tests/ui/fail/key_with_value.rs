//! `key` takes no value.

use posthog_track::TrackedModel;

#[derive(TrackedModel)]
#[tracked(table = "users")]
pub struct User {
    #[tracked(key = true, property)]
    pub id: String,
}

fn main() {}
