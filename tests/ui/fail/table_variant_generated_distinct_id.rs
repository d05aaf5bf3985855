//! A routed model's table is chosen by its distinct id before the INSERT; a `generated`
//! distinct id is only known after it.

use posthog_track::TrackedModel;

#[derive(TrackedModel)]
#[tracked(
    table = "tickets",
    distinct_id = id,
    table_variant(flag = "tickets-v2", variant = "test", table = "tickets_v2")
)]
pub struct Ticket {
    #[tracked(key, generated, property = "ticket_id")]
    pub id: i64,
    #[tracked(property)]
    pub subject: String,
}

fn main() {}
