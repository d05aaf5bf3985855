//! An untracked column must exist in the model's table or in one of its flag-routed tables.

use posthog_track::TrackedModel;

#[derive(TrackedModel)]
#[tracked(
    table = "documents",
    distinct_id = owner,
    migrations = "../migrations/variants",
    migrations_dialect = "postgres",
    table_variant(flag = "documents-v2", variant = "test", table = "documents_v2"),
    untracked_columns("currency", "legacy_score")
)]
pub struct Document {
    #[tracked(key, generated, property = "document_id")]
    pub id: i64,
    #[tracked(property)]
    pub owner: String,
    #[tracked(property)]
    pub title: String,
}

fn main() {}
