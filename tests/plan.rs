//! The tracking plan: collected from the derives without a database, diffed with a readable,
//! classified list of changes.

use posthog_track::TrackedModel;
use posthog_track::plan::{Severity, TrackingPlan, diff};

/// A purchase.
#[derive(TrackedModel)]
#[tracked(table = "plan_orders", distinct_id = buyer)]
pub struct Order {
    /// The order number.
    #[tracked(key, property = "order_id")]
    pub id: i64,
    #[tracked(property)]
    pub buyer: String,
    /// In cents.
    #[tracked(property, milestone(event = "order_paid"))]
    pub amount: Option<i64>,
    #[tracked(person_once)]
    pub first_channel: String,
    #[tracked(skip = "card data stays in the payment provider's vault")]
    pub card_token: String,
}

#[test]
fn models_register_their_events() {
    let plan = TrackingPlan::collect();
    let created = plan
        .events
        .iter()
        .find(|e| e.event == "order_created" && e.model == "Order")
        .expect("registered");
    assert_eq!(created.table, "plan_orders");
    assert_eq!(created.description, "A purchase.");
    let names: Vec<&str> = created.properties.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["order_id", "buyer", "amount", "first_channel"]);
    let amount = &created.properties[2];
    assert_eq!(
        (amount.json_type.as_str(), amount.nullable),
        ("number", true)
    );
    assert_eq!(amount.description, "In cents.");
    assert_eq!(created.properties[3].person.as_deref(), Some("set_once"));
    let paid = plan
        .events
        .iter()
        .find(|e| e.event == "order_paid")
        .unwrap();
    assert_eq!(paid.trigger, "milestone");
    assert!(paid.properties.iter().any(|p| p.name == "previous_amount"));
    let deleted = plan
        .events
        .iter()
        .find(|e| e.event == "order_deleted")
        .unwrap();
    assert_eq!(deleted.properties.len(), 1, "delete carries the key");
    let updated = plan
        .events
        .iter()
        .find(|e| e.event == "order_updated")
        .unwrap();
    assert!(
        updated
            .properties
            .iter()
            .all(|p| p.always == (p.name == "order_id"))
    );
    let skipped = plan.skipped.iter().find(|s| s.model == "Order").unwrap();
    assert_eq!(
        skipped.reason,
        "card data stays in the payment provider's vault"
    );
    assert!(plan.to_markdown().contains("## `order_created`"));
    assert_eq!(
        TrackingPlan::from_json(&plan.to_json()).unwrap(),
        plan,
        "JSON round trip"
    );
}

#[test]
fn changes_are_classified_and_readable() {
    let old = TrackingPlan::collect();
    let mut new = old.clone();
    let created = new
        .events
        .iter_mut()
        .find(|e| e.event == "order_created")
        .unwrap();
    created.properties.retain(|p| p.name != "buyer");
    created
        .properties
        .iter_mut()
        .find(|p| p.name == "amount")
        .unwrap()
        .json_type = "string".into();
    let mut extra = created.properties[0].clone();
    extra.name = "coupon".into();
    created.properties.push(extra);
    new.events.retain(|e| e.event != "order_paid");

    let changes = diff(&old, &new);
    let text: Vec<String> = changes.iter().map(ToString::to_string).collect();
    assert_eq!(
        text,
        [
            "[BREAKING] event `order_paid` removed (milestone of `Order`)",
            "[BREAKING] property `amount` of `order_created` (insert of `Order`) changed type: number -> string",
            "[BREAKING] property `buyer` removed from `order_created` (insert of `Order`)",
            "[additive] property `coupon` added to `order_created` (insert of `Order`)",
        ]
    );
    assert_eq!(
        changes
            .iter()
            .filter(|c| c.severity == Severity::Breaking)
            .count(),
        3
    );
    assert!(diff(&old, &old).is_empty());
}
