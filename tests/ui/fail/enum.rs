//! Enums are not rows.

use posthog_track::TrackedModel;

#[derive(TrackedModel)]
#[tracked(table = "users")]
pub enum User {
    Active { id: String },
}

fn main() {}
