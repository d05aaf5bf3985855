//! A new column with no analytics decision fails the build, naming the field and both ways out.

use posthog_track::TrackedModel;

#[derive(TrackedModel)]
#[tracked(table = "users", distinct_id = id)]
pub struct User {
    #[tracked(key, property = "user_id")]
    pub id: String,
    #[tracked(person)]
    pub email: String,
    #[tracked(property)]
    pub plan: String,
    #[tracked(skip = "credential")]
    pub password_hash: String,
    pub trial_ends_at: Option<chrono::DateTime<chrono::Utc>>,
}

fn main() {}
