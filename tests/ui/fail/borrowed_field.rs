//! A borrowed field is refused with the owned type to use, and the impls that stand in while
//! the derive reports it add no error of their own (the struct's missing lifetime remains).

use posthog_track::TrackedModel;

#[derive(TrackedModel)]
#[tracked(table = "users", distinct_id = id)]
pub struct User {
    #[tracked(key, property = "user_id")]
    pub id: &str,
    #[tracked(property)]
    pub plan: String,
}

fn main() {}
