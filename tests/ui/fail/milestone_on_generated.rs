//! A milestone on a generated field can never fire.

use posthog_track::TrackedModel;

#[derive(TrackedModel)]
#[tracked(table = "users", distinct_id = id)]
pub struct User {
    #[tracked(key, property = "user_id")]
    pub id: String,
    #[tracked(generated, property, milestone(event = "user_aged"))]
    pub created_at: chrono::DateTime<chrono::Utc>,
}

fn main() {}
