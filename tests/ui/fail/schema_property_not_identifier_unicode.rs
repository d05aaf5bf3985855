//! A property name made of letters and digits that Rust still refuses as an identifier (`²`
//! is alphanumeric but not an identifier character) is an error, not a crash of the derive.

use posthog_track::{EventSchema, TrackedModel};

#[derive(EventSchema)]
pub struct ListingProperties {
    pub listing_id: String,
}

#[derive(TrackedModel)]
#[tracked(table = "listings", distinct_id = id, schema = ListingProperties)]
pub struct Listing {
    #[tracked(key, property = "listing_id")]
    pub id: String,
    #[tracked(property = "area_m²")]
    pub area: i64,
}

fn main() {}
