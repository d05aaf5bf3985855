//! A `context` field holds text: `String` or `Option<String>`.

use posthog_track::TrackedModel;

#[derive(TrackedModel)]
#[tracked(table = "orders")]
pub struct Order {
    #[tracked(key, property)]
    pub id: String,
    #[tracked(skip = "attribution", context = "session_id")]
    pub posthog_session_id: i64,
}

fn main() {}
