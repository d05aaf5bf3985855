//! `identify` needs the field that holds the person's distinct id.

use posthog_track::TrackedModel;

#[derive(TrackedModel)]
#[tracked(table = "accounts", identify)]
pub struct Account {
    #[tracked(key, property)]
    pub id: String,
    #[tracked(person)]
    pub email: String,
}

fn main() {}
