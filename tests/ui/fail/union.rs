//! Unions are not rows.

use posthog_track::TrackedModel;

#[derive(TrackedModel)]
#[tracked(table = "numbers")]
pub union Number {
    int: i64,
    float: f64,
}

fn main() {}
