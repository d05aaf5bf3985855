//! A group type of only whitespace is no group type.

use posthog_track::TrackedModel;

#[derive(TrackedModel)]
#[tracked(table = "companies", group_type = " ", group_key = id)]
pub struct Company {
    #[tracked(key, property)]
    pub id: String,
    #[tracked(property, group = "\t")]
    pub parent_id: String,
}

fn main() {}
