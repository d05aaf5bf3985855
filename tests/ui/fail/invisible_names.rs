//! A name of only invisible characters (zero-width space, joiners, word joiner, byte order
//! mark), with or without whitespace, is no name, as a whitespace one is: nobody could see,
//! type or query it in PostHog.

use posthog_track::TrackedModel;

#[derive(TrackedModel)]
#[tracked(table = "users", distinct_id = id, insert_event = "\u{200b}", update_event = " \u{feff}")]
pub struct User {
    #[tracked(key, property = "user_id")]
    pub id: String,
    #[tracked(property = "\u{2060}")]
    pub email: String,
    #[tracked(person_once = "\u{200c}\u{200d}")]
    pub channel: String,
    #[tracked(property, milestone(event = "\u{200b}\t"))]
    pub plan: String,
    #[tracked(property, group = "\u{feff}")]
    pub company_id: String,
    #[tracked(skip = "\u{200b}")]
    pub password_hash: String,
}

fn main() {}
