//! A struct named with a raw identifier (`r#match`) takes its default event names from the
//! name without `r#`.

use posthog_track::TrackedModel;

#[allow(non_camel_case_types)]
#[derive(Debug, Clone, TrackedModel)]
#[tracked(table = "matches")]
pub struct r#match {
    #[tracked(key, property)]
    pub id: String,
}

fn main() {
    assert_eq!(<r#match as TrackedModel>::INSERT_EVENT, "match_created");
    assert_eq!(<r#match as TrackedModel>::UPDATE_EVENT, "match_updated");
    assert_eq!(<r#match as TrackedModel>::DELETE_EVENT, "match_deleted");
}
