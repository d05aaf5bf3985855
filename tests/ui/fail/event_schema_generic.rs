//! An event schema lists concrete property types.

use posthog_track::EventSchema;

#[derive(EventSchema)]
pub struct UserProperties<T> {
    pub plan: T,
}

fn main() {}
