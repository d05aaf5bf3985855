//! The tracking plan: collected from the derives without a database, diffed with a readable,
//! classified list of changes.

use posthog_track::flags::LocalEvaluator;
use posthog_track::plan::{Severity, TrackingPlan, VariantTable, diff};
use posthog_track::testing::MockPostHog;
use posthog_track::{TrackedModel, Tracker};

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
            "[BREAKING] event `order_paid` removed (milestone of `Order` on `amount`)",
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

/// A property that stops being a person property (or changes between `$set` and `$set_once`)
/// changes the person profiles insights and cohorts read: the diff called it additive.
#[test]
fn a_person_property_that_goes_away_is_breaking() {
    let old = TrackingPlan::collect();
    let mut new = old.clone();
    let created = new
        .events
        .iter_mut()
        .find(|e| e.event == "member_created")
        .unwrap();
    for property in &mut created.properties {
        match property.name.as_str() {
            "email" => property.person = None,
            "first_channel" => property.person = Some("set".into()),
            "workspace_id" => property.person = Some("set_once".into()),
            _ => {}
        }
    }
    let text: Vec<String> = diff(&old, &new).iter().map(ToString::to_string).collect();
    assert_eq!(
        text,
        [
            "[BREAKING] property `email` of `member_created` (insert of `Member`) is no longer a person property (`$set`)",
            "[BREAKING] property `first_channel` of `member_created` (insert of `Member`) changed person property: `$set_once` -> `$set`",
            "[additive] property `workspace_id` of `member_created` (insert of `Member`) is now also a person property (`$set_once`)",
        ]
    );
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

// ---------------------------------------------------------------------------------------
// Milestones, flag-routed models and revenue amounts in the plan
// ---------------------------------------------------------------------------------------

/// An in-memory SQLite database (not `posthog_track_examples::memory_database`: linking the
/// examples would add their models to this binary's plan).
async fn memory_database() -> sqlx::SqlitePool {
    sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect("sqlite::memory:")
        .await
        .unwrap()
}

fn plan_upgraded(before: &String, after: &String) -> bool {
    before == "free" && after != "free"
}

fn grew(before: &i64, after: &i64) -> bool {
    after > before
}

/// An account whose plan is a person property, with two milestones that share one event name.
#[derive(Debug, Clone, TrackedModel)]
#[tracked(table = "plan_accounts", distinct_id = id, identify)]
pub struct Account {
    #[tracked(key, property = "account_id")]
    pub id: String,
    #[tracked(person, milestone(event = "account_plan_upgraded", when = plan_upgraded),
              milestone(event = "account_grew"))]
    pub plan: String,
    #[tracked(property, milestone(event = "account_grew", when = grew))]
    pub seats: i64,
}

/// A document whose rows go to `plan_documents_v2` for the users in variant `test`.
#[derive(Debug, Clone, TrackedModel)]
#[tracked(
    table = "plan_documents",
    distinct_id = owner,
    insert_event = "plan_document_created",
    table_variant(flag = "documents-v2", variant = "test", table = "plan_documents_v2")
)]
pub struct Document {
    #[tracked(key, property = "document_id")]
    pub id: String,
    #[tracked(property)]
    pub owner: String,
    #[tracked(property)]
    pub title: String,
}

/// An order whose amount is a `rust_decimal::Decimal` (NUMERIC in the database).
#[derive(Debug, Clone, TrackedModel)]
#[tracked(table = "plan_decimal_orders", distinct_id = user_id, insert_event = "decimal_order_completed")]
pub struct DecimalOrder {
    #[tracked(key, property = "order_id")]
    pub id: String,
    #[tracked(property)]
    pub user_id: String,
    #[tracked(property)]
    pub revenue: rust_decimal::Decimal,
    #[tracked(property)]
    pub currency: String,
}

/// A milestone event sends the row's properties and `previous_<field>`, but no `$set`: the plan
/// must not say that its `plan` property is also a person property (it said `set`, copied
/// from the field).
#[tokio::test]
async fn milestone_properties_are_not_person_properties() {
    let pool = memory_database().await;
    posthog_track_tests::execute(
        &pool,
        "CREATE TABLE plan_accounts (id TEXT PRIMARY KEY, plan TEXT NOT NULL, seats INTEGER NOT NULL)",
    )
    .await;
    let mock = MockPostHog::start().await;
    let tracker: Tracker = posthog_track_tests::tracker_for(&mock).build();
    tracker.migrate(&pool).await.unwrap();
    let mut tx = tracker.begin(&pool).await.unwrap();
    let before = Account {
        id: "a1".into(),
        plan: "free".into(),
        seats: 1,
    }
    .insert(&mut tx)
    .await
    .unwrap();
    let mut after = before.clone();
    after.plan = "pro".into();
    after.update_changed(&before, &mut tx).await.unwrap();
    let staged: Vec<_> = tx.staged().iter().map(|e| e.json()).collect();
    tx.commit().await.unwrap();
    let milestone = staged
        .iter()
        .find(|e| e["event"] == "account_plan_upgraded")
        .expect("the milestone fired");

    let plan = TrackingPlan::collect();
    let planned = plan
        .events
        .iter()
        .find(|e| e.event == "account_plan_upgraded")
        .unwrap();
    let planned_plan = planned
        .properties
        .iter()
        .find(|p| p.name == "plan")
        .unwrap();
    let event_sets_plan = milestone["properties"]["$set"]["plan"].is_string();
    assert_eq!(
        planned_plan.person.is_some(),
        event_sets_plan,
        "the plan says `plan` of account_plan_upgraded is person {:?}; the event: {milestone}",
        planned_plan.person,
    );
}

/// Two milestones of one model with the same event name (on `plan` and on `seats`) are two
/// sources of the event: the diff keyed both as (event, model, trigger), kept one, and did not
/// report the removal of the other.
#[test]
fn removing_one_of_two_milestones_of_one_event_is_reported() {
    let mut old = TrackingPlan::collect();
    old.events.retain(|e| e.model == "Account");
    old.skipped.clear();
    let grew: Vec<_> = old
        .events
        .iter()
        .filter(|e| e.event == "account_grew")
        .collect();
    assert_eq!(grew.len(), 2, "two sources of account_grew: {grew:#?}");
    // The milestone on `plan` is removed (the event is no longer sent when the plan changes).
    let mut new = old.clone();
    let on_plan = new
        .events
        .iter()
        .position(|e| {
            e.event == "account_grew" && e.properties.iter().any(|p| p.name == "previous_plan")
        })
        .unwrap();
    new.events.remove(on_plan);
    let text: Vec<String> = diff(&old, &new).iter().map(ToString::to_string).collect();
    assert_eq!(
        text,
        ["[BREAKING] event `account_grew` removed (milestone of `Account` on `plan`)"]
    );
    assert!(diff(&old, &old).is_empty());
    // A plan file written before plans recorded `milestone_of`: the milestone's source is
    // the property whose `previous_` value it carries.
    let mut written_before = old.clone();
    for event in &mut written_before.events {
        event.milestone_of.clear();
    }
    assert!(diff(&written_before, &old).is_empty());
    let text: Vec<String> = diff(&written_before, &new)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        text,
        ["[BREAKING] event `account_grew` removed (milestone of `Account` on `plan`)"]
    );
}

/// The events of a flag-routed model carry `$feature/<flag>`, and its rows may go to the
/// variant's table: the plan listed neither.
#[tokio::test]
async fn a_routed_model_plans_its_flag_property_and_variant_tables() {
    let pool = memory_database().await;
    for table in ["plan_documents", "plan_documents_v2"] {
        posthog_track_tests::execute(
            &pool,
            format!("CREATE TABLE {table} (id TEXT PRIMARY KEY, owner TEXT NOT NULL, title TEXT NOT NULL)"),
        )
        .await;
    }
    let definitions = serde_json::json!({"flags": [{"key": "documents-v2", "active": true, "filters": {
        "groups": [{"properties": [], "rollout_percentage": 100, "variant": "test"}],
        "multivariate": {"variants": [
            {"key": "control", "rollout_percentage": 50},
            {"key": "test", "rollout_percentage": 50}
        ]}
    }}]});
    let evaluator = LocalEvaluator::from_json(&definitions.to_string()).unwrap();
    let mock = MockPostHog::start().await;
    let tracker: Tracker = posthog_track_tests::tracker_for(&mock)
        .flag_definitions(evaluator)
        .build();
    tracker.migrate(&pool).await.unwrap();
    let mut tx = tracker.begin(&pool).await.unwrap();
    Document {
        id: "d1".into(),
        owner: "user-1".into(),
        title: "draft".into(),
    }
    .insert(&mut tx)
    .await
    .unwrap();
    let staged: Vec<_> = tx.staged().iter().map(|e| e.json()).collect();
    tx.commit().await.unwrap();

    let plan = TrackingPlan::collect();
    let planned = plan
        .events
        .iter()
        .find(|e| e.event == "plan_document_created" && e.trigger == "insert")
        .unwrap();
    let names: Vec<&str> = planned.properties.iter().map(|p| p.name.as_str()).collect();
    let sent = staged[0]["properties"].as_object().unwrap();
    assert_eq!(sent["$feature/documents-v2"], "test");
    for key in sent.keys().filter(|k| !k.starts_with("$lib")) {
        assert!(
            names.contains(&key.as_str()),
            "`{key}` is sent with plan_document_created but not in the plan {names:?}"
        );
    }
    let feature = planned
        .properties
        .iter()
        .find(|p| p.name == "$feature/documents-v2")
        .unwrap();
    assert_eq!(
        (feature.json_type.as_str(), feature.always),
        ("string", false)
    );
    assert_eq!(
        planned.variant_tables,
        [VariantTable {
            flag: "documents-v2".into(),
            variant: "test".into(),
            table: "plan_documents_v2".into(),
        }]
    );
    for event in plan.events.iter().filter(|e| e.model == "Document") {
        assert!(
            event
                .properties
                .iter()
                .any(|p| p.name == "$feature/documents-v2"),
            "`{}` ({}) carries the flag",
            event.event,
            event.trigger
        );
    }
    let markdown = plan.to_markdown();
    assert!(
        markdown.contains(
            "(table `plan_documents`, or `plan_documents_v2` for variant `test` of flag `documents-v2`)"
        ),
        "{markdown}"
    );
    assert_eq!(TrackingPlan::from_json(&plan.to_json()).unwrap(), plan);
}

/// serde sends a `rust_decimal::Decimal` as a string ("49.50"); the plan said number, so `plan
/// push` made PostHog's type Numeric for a property that arrives as text.
#[test]
fn a_decimal_is_planned_as_the_string_serde_sends() {
    let order = DecimalOrder {
        id: "o1".into(),
        user_id: "u1".into(),
        revenue: rust_decimal::Decimal::new(4950, 2),
        currency: "EUR".into(),
    };
    let mut events = Vec::new();
    posthog_track::__private::stage_insert_event_detached(&order, "u1", &mut events).unwrap();
    let sent = events[0].json()["properties"]["revenue"].clone();
    assert_eq!(sent, "49.50");

    let plan = TrackingPlan::collect();
    let planned = plan
        .events
        .iter()
        .find(|e| e.event == "decimal_order_completed" && e.trigger == "insert")
        .unwrap();
    let revenue = planned
        .properties
        .iter()
        .find(|p| p.name == "revenue")
        .unwrap();
    assert_eq!(revenue.json_type, "string", "the event sends {sent}");
}

/// A plan file written before milestone properties stopped being marked as person properties
/// (milestone events never send `$set`) is no different from today's: comparing it reports
/// nothing for them, rather than a breaking change for every person field with a milestone.
#[test]
fn an_older_plan_marking_milestone_properties_as_person_is_no_change() {
    let new = TrackingPlan::collect();
    let mut old = new.clone();
    let mut marked = 0;
    for event in old.events.iter_mut().filter(|e| e.trigger == "milestone") {
        for property in &mut event.properties {
            if property.name == "plan" {
                property.person = Some("set".into());
                marked += 1;
            }
        }
    }
    assert!(marked > 0, "the plan has a milestone carrying `plan`");
    let changes: Vec<String> = diff(&old, &new).iter().map(ToString::to_string).collect();
    assert!(changes.is_empty(), "{changes:?}");
}

/// A flag-routed model with a person property: its writes send `$set`, but the backfill
/// refuses it (a run reads one table), so the plan must not promise a backfill `$set`.
#[derive(Debug, Clone, TrackedModel)]
#[tracked(
    table = "plan_routed_profiles",
    distinct_id = id,
    insert_event = "plan_routed_profile_created",
    table_variant(flag = "profiles-v2", variant = "test", table = "plan_routed_profiles_v2")
)]
pub struct RoutedProfile {
    #[tracked(key, property = "profile_id")]
    pub id: String,
    #[tracked(person)]
    pub email: String,
}

#[test]
fn a_flag_routed_model_plans_no_backfill() {
    let plan = TrackingPlan::collect();
    let routed: Vec<&str> = plan
        .events
        .iter()
        .filter(|event| event.model == "RoutedProfile")
        .map(|event| event.trigger.as_str())
        .collect();
    assert!(routed.contains(&"insert"), "{routed:?}");
    assert!(!routed.contains(&"backfill"), "{routed:?}");
}
