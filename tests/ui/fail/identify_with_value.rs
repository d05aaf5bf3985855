//! `identify` is a flag.

use posthog_track::TrackedModel;

#[derive(TrackedModel)]
#[tracked(table = "accounts", distinct_id = id, identify = true)]
pub struct Account {
    #[tracked(key, property)]
    pub id: String,
}

fn main() {}
