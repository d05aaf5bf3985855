//! `schema` must name a type that derives EventSchema.

use posthog_track::TrackedModel;

pub struct UserProperties {
    pub user_id: String,
    pub plan: String,
}

#[derive(TrackedModel)]
#[tracked(table = "users", distinct_id = id, schema = UserProperties)]
pub struct User {
    #[tracked(key, property = "user_id")]
    pub id: String,
    pub plan: String,
}

fn main() {}
