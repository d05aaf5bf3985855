//! A `group` field's value becomes the group key: a string, integer or Uuid.

use posthog_track::TrackedModel;

#[derive(TrackedModel)]
#[tracked(table = "orders")]
pub struct Order {
    #[tracked(key, property)]
    pub id: String,
    #[tracked(property, group = "company")]
    pub company: f64,
}

fn main() {}
