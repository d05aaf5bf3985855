//! Tuple structs have no column names.

use posthog_track::TrackedModel;

#[derive(TrackedModel)]
#[tracked(table = "users")]
pub struct User(String, String);

fn main() {}
