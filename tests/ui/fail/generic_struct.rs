//! Generic models are not supported.

use posthog_track::TrackedModel;

#[derive(TrackedModel)]
#[tracked(table = "users")]
pub struct User<T> {
    #[tracked(key, property)]
    pub id: T,
}

fn main() {}
