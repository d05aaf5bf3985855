//! Raw identifiers (`r#type`) work as columns and properties, in schema mode too, beside
//! `sqlx::FromRow`; `person_once`, `column` and `delete_event` combine with them.

use posthog_track::{EventSchema, TrackedModel};

#[derive(EventSchema)]
pub struct AccountProperties {
    pub account_id: i64,
    pub r#type: String,
    pub kind: String,
    pub first_seen_plan: String,
}

#[derive(Debug, Clone, TrackedModel, sqlx::FromRow)]
#[tracked(table = "accounts", distinct_id = id, schema = AccountProperties,
          delete_event = "account_closed")]
pub struct Account {
    #[tracked(key, generated, property = "account_id")]
    pub id: i64,
    pub r#type: String,
    #[tracked(property = "kind")]
    pub r#enum: String,
    #[tracked(person_once, column = "plan_at_signup")]
    pub first_seen_plan: String,
    #[tracked(skip = "operational; not an analytics fact")]
    pub r#loop: i32,
}

fn main() {
    assert_eq!(<Account as TrackedModel>::DELETE_EVENT, "account_closed");
    assert_eq!(
        AccountProperties::PROPERTIES,
        ["account_id", "type", "kind", "first_seen_plan"]
    );
}
