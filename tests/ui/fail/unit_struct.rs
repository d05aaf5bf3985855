//! Unit structs have no columns.

use posthog_track::TrackedModel;

#[derive(TrackedModel)]
#[tracked(table = "users")]
pub struct User;

fn main() {}
