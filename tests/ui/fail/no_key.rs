//! update and delete need a key.

use posthog_track::TrackedModel;

#[derive(TrackedModel)]
#[tracked(table = "users")]
pub struct User {
    #[tracked(property)]
    pub id: String,
}

fn main() {}
