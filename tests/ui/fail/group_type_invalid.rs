//! A group type is a non-empty name that does not start with `$`.

use posthog_track::TrackedModel;

#[derive(TrackedModel)]
#[tracked(table = "companies", group_type = "$company", group_key = id)]
pub struct Company {
    #[tracked(key, property)]
    pub id: String,
    #[tracked(property, group = "")]
    pub parent_id: String,
}

fn main() {}
