//! A `context` field is written at insert; a `generated` one is not.

use posthog_track::TrackedModel;

#[derive(TrackedModel)]
#[tracked(table = "orders")]
pub struct Order {
    #[tracked(key, property)]
    pub id: String,
    #[tracked(generated, skip = "attribution", context = "session_id")]
    pub posthog_session_id: Option<String>,
}

fn main() {}
