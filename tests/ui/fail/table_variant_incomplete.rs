//! A flag-routed table needs the flag, the variant and the table.

use posthog_track::TrackedModel;

#[derive(TrackedModel)]
#[tracked(table = "documents", table_variant(flag = "documents-v2", variant = "test"))]
pub struct Document {
    #[tracked(key, property)]
    pub id: String,
}

fn main() {}
