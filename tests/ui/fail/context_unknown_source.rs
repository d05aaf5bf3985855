//! `context` names where the value comes from: `distinct_id`, `session_id` or `property.<key>`.

use posthog_track::TrackedModel;

#[derive(TrackedModel)]
#[tracked(table = "orders")]
pub struct Order {
    #[tracked(key, property)]
    pub id: String,
    #[tracked(skip = "attribution", context = "distinct")]
    pub posthog_distinct_id: Option<String>,
    #[tracked(skip = "attribution", context = "session")]
    pub posthog_session_id: Option<String>,
    #[tracked(property, context = "property.")]
    pub utm_source: Option<String>,
}

fn main() {}
