//! `group_key` names a field, without quotes.

use posthog_track::TrackedModel;

#[derive(TrackedModel)]
#[tracked(table = "companies", group_type = "company", group_key = "id")]
pub struct Company {
    #[tracked(key, property)]
    pub id: String,
}

fn main() {}
