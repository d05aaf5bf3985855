//! Routing a variant to the model's own table, or the same variant twice, is a mistake.

use posthog_track::TrackedModel;

#[derive(TrackedModel)]
#[tracked(
    table = "documents",
    table_variant(flag = "documents-v2", variant = "test", table = "documents"),
    table_variant(flag = "documents-v2", variant = "test", table = "documents_v2")
)]
pub struct Document {
    #[tracked(key, property)]
    pub id: String,
}

fn main() {}
