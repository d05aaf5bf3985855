//! EventSchema needs a struct with named fields.

use posthog_track::EventSchema;

#[derive(EventSchema)]
pub enum UserProperties {
    Plan(String),
}

fn main() {}
