//! `key` twice.

use posthog_track::TrackedModel;

#[derive(TrackedModel)]
#[tracked(table = "users")]
pub struct User {
    #[tracked(key, key, property)]
    pub id: String,
}

fn main() {}
