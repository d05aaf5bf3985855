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

/// A customer company: a PostHog group.
#[derive(TrackedModel)]
#[tracked(table = "plan_workspaces", group_type = "workspace", group_key = id)]
pub struct Workspace {
    #[tracked(key, property = "workspace_id")]
    pub id: String,
    #[tracked(property)]
    pub name: String,
}

/// A person in a workspace.
#[derive(TrackedModel)]
#[tracked(table = "plan_members", distinct_id = id, identify)]
pub struct Member {
    #[tracked(key, property = "member_id")]
    pub id: String,
    /// Where to write to them.
    #[tracked(person)]
    pub email: String,
    #[tracked(person_once)]
    pub first_channel: Option<String>,
    #[tracked(property, group = "workspace")]
    pub workspace_id: String,
}

/// PostHog's own events that models send are in the plan: `$identify` for an `identify`
/// model, `$groupidentify` for a group, and `$groups` on every event of a grouped model.
#[test]
fn identify_and_group_events_are_planned() {
    let plan = TrackingPlan::collect();
    let find = |event: &str, model: &str| {
        plan.events
            .iter()
            .find(|e| e.event == event && e.model == model)
            .unwrap_or_else(|| panic!("`{event}` of `{model}` is in the plan"))
    };
    let identify = find("$identify", "Member");
    assert_eq!(identify.trigger, "identify");
    assert_eq!(identify.table, "plan_members");
    let names: Vec<&str> = identify
        .properties
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(
        names,
        ["$anon_distinct_id", "email", "first_channel", "$groups"]
    );
    assert_eq!(identify.properties[1].person.as_deref(), Some("set"));
    assert_eq!(identify.properties[2].person.as_deref(), Some("set_once"));
    assert_eq!(
        identify.properties[1].description,
        "Where to write to them."
    );
    assert!(
        identify
            .properties
            .iter()
            .all(|p| !p.always || p.name == "$groups")
    );
    assert!(
        identify.description.is_empty(),
        "PostHog's own event keeps PostHog's description"
    );

    let backfill = find("$set", "Member");
    assert_eq!(backfill.trigger, "backfill");
    let names: Vec<(&str, Option<&str>)> = backfill
        .properties
        .iter()
        .map(|p| (p.name.as_str(), p.person.as_deref()))
        .collect();
    assert_eq!(
        names,
        [
            ("email", Some("set")),
            ("first_channel", Some("set_once")),
            ("$groups", None)
        ]
    );

    let group = find("$groupidentify", "Workspace");
    assert_eq!(group.trigger, "group_identify");
    let names: Vec<(&str, &str)> = group
        .properties
        .iter()
        .map(|p| (p.name.as_str(), p.json_type.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            ("$group_type", "string"),
            ("$group_key", "string"),
            ("$group_set", "object"),
            ("$groups", "object"),
        ]
    );

    for (event, model) in [
        ("member_created", "Member"),
        ("member_updated", "Member"),
        ("member_deleted", "Member"),
        ("workspace_created", "Workspace"),
    ] {
        let groups = find(event, model)
            .properties
            .iter()
            .find(|p| p.name == "$groups")
            .unwrap_or_else(|| panic!("`{event}` carries `$groups`"));
        assert_eq!((groups.json_type.as_str(), groups.always), ("object", true));
    }
    assert!(
        !find("order_created", "Order")
            .properties
            .iter()
            .any(|p| p.name.starts_with('$')),
        "a model without groups sends no `$groups`"
    );
    assert!(
        !plan
            .events
            .iter()
            .any(|e| e.event == "$identify" && e.model == "Order"),
        "only `identify` models send `$identify`"
    );
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

/// A support ticket: its key is generated, so it cannot be upserted.
#[derive(TrackedModel)]
#[tracked(table = "plan_tickets", distinct_id = opener)]
pub struct Ticket {
    #[tracked(key, generated, property = "ticket_id")]
    pub id: i64,
    #[tracked(property)]
    pub opener: String,
}

/// An upsert sends the insert event when it creates the row and the update event, with every
/// property, when the row existed: the plan lists both under their own triggers, for models
/// that can be upserted (no generated key).
#[test]
fn upserts_are_planned_as_what_they_are() {
    let plan = TrackingPlan::collect();
    let triggers = |event: &str, model: &str| -> Vec<String> {
        plan.events
            .iter()
            .filter(|e| e.event == event && e.model == model)
            .map(|e| e.trigger.clone())
            .collect()
    };
    assert_eq!(
        triggers("order_created", "Order"),
        ["insert", "upsert_created"]
    );
    assert_eq!(
        triggers("order_updated", "Order"),
        ["update", "upsert_existed"]
    );
    let upserted = plan
        .events
        .iter()
        .find(|e| e.event == "order_updated" && e.trigger == "upsert_existed")
        .unwrap();
    let names: Vec<(&str, bool)> = upserted
        .properties
        .iter()
        .map(|p| (p.name.as_str(), p.always))
        .collect();
    assert_eq!(
        names,
        [
            ("order_id", true),
            ("buyer", true),
            ("amount", true),
            ("first_channel", true)
        ],
        "an upsert that finds the row sends every property, as `update` does"
    );
    assert_eq!(triggers("ticket_created", "Ticket"), ["insert"]);
    assert_eq!(triggers("ticket_updated", "Ticket"), ["update"]);
    let markdown = plan.to_markdown();
    assert!(
        markdown.contains("Sent on upsert (the row existed) of `Order` (table `plan_orders`)."),
        "{markdown}"
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

/// The `posthog-track` command, built beside this test (the tests crate enables `cli`).
fn cli_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let binary = dir.join(format!("posthog-track{}", std::env::consts::EXE_SUFFIX));
    assert!(
        binary.exists(),
        "{} is missing: `cargo build -p posthog-track --features cli` first",
        binary.display()
    );
    binary
}

/// An unreadable plan file is an I/O error naming the file, not a configuration error; a
/// missing personal key is a missing key.
#[test]
fn the_command_names_what_went_wrong() {
    let missing = std::env::temp_dir().join("posthog-track-no-such-plan.json");
    let output = std::process::Command::new(cli_binary())
        .args(["plan", "show", "--plan"])
        .arg(&missing)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "cannot read the tracking plan {}",
            missing.display()
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("invalid configuration"), "{stderr}");

    let plan = std::env::temp_dir().join(format!("posthog-track-plan-{}.json", std::process::id()));
    std::fs::write(&plan, TrackingPlan::collect().to_json()).unwrap();
    let output = std::process::Command::new(cli_binary())
        .args(["plan", "push", "--project-id", "1", "--plan"])
        .arg(&plan)
        .env_remove("POSTHOG_PERSONAL_API_KEY")
        .output()
        .unwrap();
    std::fs::remove_file(&plan).ok();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("POSTHOG_PERSONAL_API_KEY is not set"),
        "{stderr}"
    );
    assert!(!stderr.contains("invalid configuration"), "{stderr}");
}
