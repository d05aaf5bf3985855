//! A milestone on the key can never fire.

use posthog_track::TrackedModel;

#[derive(TrackedModel)]
#[tracked(table = "users")]
pub struct User {
    #[tracked(key, property, milestone(event = "id_changed"))]
    pub id: String,
}

fn main() {}
