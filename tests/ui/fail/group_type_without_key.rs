//! `group_type` and `group_key` go together.

use posthog_track::TrackedModel;

#[derive(TrackedModel)]
#[tracked(table = "companies", group_type = "company")]
pub struct Company {
    #[tracked(key, property)]
    pub id: String,
}

#[derive(TrackedModel)]
#[tracked(table = "teams", group_key = id)]
pub struct Team {
    #[tracked(key, property)]
    pub id: String,
}

fn main() {}
