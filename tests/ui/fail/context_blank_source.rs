//! A blank `context` names no source: the error says so and lists the sources there are.

use posthog_track::TrackedModel;

#[derive(TrackedModel)]
#[tracked(table = "orders")]
pub struct Order {
    #[tracked(key, property)]
    pub id: String,
    #[tracked(skip = "attribution", context = "")]
    pub posthog_distinct_id: Option<String>,
    #[tracked(skip = "attribution", context = "  ")]
    pub posthog_session_id: Option<String>,
    #[tracked(property, context = "property. ")]
    pub utm_source: Option<String>,
    #[tracked(property, context = "property.\u{200b}")]
    pub utm_medium: Option<String>,
}

fn main() {}
