//! A column only the flag-routed table has still needs a decision: a field, or
//! `untracked_columns`.

use posthog_track::TrackedModel;

#[derive(TrackedModel)]
#[tracked(
    table = "documents",
    distinct_id = owner,
    migrations = "../migrations/variants",
    migrations_dialect = "postgres",
    table_variant(flag = "documents-v2", variant = "test", table = "documents_v2")
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
