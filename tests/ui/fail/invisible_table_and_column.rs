//! A table, column or `table_variant` name of only invisible characters (a zero-width space,
//! a word joiner) names nothing, as an empty one does: they were taken, and the SQL named a
//! table or column no one can see or type.

use posthog_track::TrackedModel;

#[derive(TrackedModel)]
#[tracked(
    table = "\u{200b}",
    distinct_id = id,
    table_variant(flag = "users-v2", variant = "test", table = "\u{2060} ")
)]
pub struct User {
    #[tracked(key, property = "user_id")]
    pub id: String,
    #[tracked(property, column = "\u{200b}")]
    pub email: String,
    #[tracked(property, column = " ")]
    pub plan: String,
}

fn main() {}
