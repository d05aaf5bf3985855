//! `group_key` must name a field of the model.

use posthog_track::TrackedModel;

#[derive(TrackedModel)]
#[tracked(table = "companies", group_type = "company", group_key = company_id)]
pub struct Company {
    #[tracked(key, property)]
    pub id: String,
    #[tracked(property)]
    pub name: String,
}

fn main() {}
