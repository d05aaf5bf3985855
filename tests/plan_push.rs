//! `plan push`: the tracking plan's descriptions and property types reach PostHog's event and
//! property definitions with the fewest requests, against `MockPostHog`'s app API.

use posthog_track::plan::{
    DefinitionChange, EventDefinition, PlanPush, PropertyDefinition, PushOptions, TrackingPlan,
    definition_changes,
};
use posthog_track::testing::{MockDefinition, MockPostHog};
use posthog_track::{ApiKey, Error};

const PROJECT: u64 = 42;

fn plan() -> TrackingPlan {
    let property = |name: &str, ty: &str, description: &str| {
        serde_json::json!({"name": name, "type": ty, "nullable": false, "always": true,
                           "description": description})
    };
    let event = |name: &str, description: &str, properties: Vec<serde_json::Value>| {
        serde_json::json!({"event": name, "trigger": "insert", "model": "Order",
                           "table": "orders", "description": description,
                           "properties": properties})
    };
    let json = serde_json::json!({
        "events": [
            event("order_completed", "A customer paid", vec![
                property("order_id", "number", "The order number."),
                property("amount", "number", "In cents."),
                property("paid_at", "string", "When the payment cleared."),
                property("metadata", "object", "Free-form details."),
            ]),
            event("order_refunded", "Money went back", vec![
                property("order_id", "number", "The order number."),
                property("reason", "string", "Why."),
            ]),
            event("page_viewed", "A page was viewed", vec![]),
            event("user_signed_up", "", vec![property("plan", "string", "Billing plan.")]),
        ],
        "skipped": []
    });
    TrackingPlan::from_json(&json.to_string()).unwrap()
}

/// PostHog already knows part of the plan: some right, some stale, some missing.
fn seed(mock: &MockPostHog) {
    mock.add_event_definition("order_completed", Some("A customer paid"));
    mock.add_event_definition("order_refunded", Some("Old text"));
    mock.add_event_definition("user_signed_up", None);
    mock.add_event_definition("not_in_the_plan", Some("someone else's"));
    mock.add_property_definition("order_id", Some("Numeric"), Some("The order number."));
    mock.add_property_definition("amount", Some("String"), Some("In cents."));
    mock.add_property_definition(
        "paid_at",
        Some("DateTime"),
        Some("When the payment cleared."),
    );
    mock.add_property_definition("metadata", None, None);
    mock.add_property_definition("plan", Some("String"), None);
}

fn options(mock: &MockPostHog) -> PushOptions {
    PushOptions::new(&mock.url(), PROJECT, ApiKey::new(mock.personal_api_key())).unwrap()
}

fn lines(changes: &[DefinitionChange]) -> Vec<String> {
    changes.iter().map(ToString::to_string).collect()
}

fn patches(mock: &MockPostHog) -> usize {
    mock.api_requests()
        .iter()
        .filter(|r| r.method == "PATCH")
        .count()
}

const NOT_SEEN: &str = "not yet seen by PostHog, will be described on the next push";

#[tokio::test]
async fn dry_run_lists_the_minimal_changes_and_apply_makes_posthog_match() {
    let mock = MockPostHog::start().await;
    seed(&mock);
    let push = PlanPush::new(options(&mock));
    let plan = plan();

    let changes = push.plan_changes(&plan).await.unwrap();
    assert_eq!(
        lines(&changes),
        [
            r#"PATCH event order_refunded: description "Old text" -> "Money went back""#.to_owned(),
            format!("SKIP event page_viewed: {NOT_SEEN}"),
            r#"PATCH property amount: property_type "String" -> "Numeric""#.to_owned(),
            r#"PATCH property metadata: description "" -> "Free-form details.""#.to_owned(),
            r#"PATCH property plan: description "" -> "Billing plan.""#.to_owned(),
            format!("SKIP property reason: {NOT_SEEN}"),
        ]
    );
    assert_eq!(patches(&mock), 0, "computing changes only reads");

    assert_eq!(push.apply(&changes).await.unwrap(), 4);
    assert_eq!(patches(&mock), 4, "one PATCH per changed definition");
    let events = mock.event_definitions();
    let description = |name: &str| {
        events
            .iter()
            .find(|d| d.name == name)
            .and_then(|d| d.description.clone())
    };
    assert_eq!(
        description("order_refunded").as_deref(),
        Some("Money went back")
    );
    assert_eq!(
        description("user_signed_up"),
        None,
        "empty plan description: untouched"
    );
    assert_eq!(
        description("not_in_the_plan").as_deref(),
        Some("someone else's")
    );
    let properties = mock.property_definitions();
    let property = |name: &str| -> MockDefinition {
        properties.iter().find(|d| d.name == name).unwrap().clone()
    };
    assert_eq!(property("amount").property_type.as_deref(), Some("Numeric"));
    assert_eq!(property("amount").description.as_deref(), Some("In cents."));
    assert_eq!(
        property("metadata").description.as_deref(),
        Some("Free-form details.")
    );
    assert_eq!(
        property("metadata").property_type,
        None,
        "objects keep their type"
    );
    assert_eq!(
        property("paid_at").property_type.as_deref(),
        Some("DateTime")
    );
    assert_eq!(
        property("plan").description.as_deref(),
        Some("Billing plan.")
    );

    // Nothing left to patch; only the names PostHog has not seen yet remain.
    let again = push.plan_changes(&plan).await.unwrap();
    assert!(again.iter().all(|c| !c.is_patch()), "{:?}", lines(&again));
    assert_eq!(again.len(), 2);

    // Once they are ingested, the next push describes them, and then nothing is left.
    mock.add_event_definition("page_viewed", None);
    mock.add_property_definition("reason", Some("String"), None);
    let after_ingestion = push.plan_changes(&plan).await.unwrap();
    assert_eq!(
        lines(&after_ingestion),
        [
            r#"PATCH event page_viewed: description "" -> "A page was viewed""#,
            r#"PATCH property reason: description "" -> "Why.""#,
        ]
    );
    assert_eq!(push.apply(&after_ingestion).await.unwrap(), 2);
    assert!(push.plan_changes(&plan).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_refused_key_is_a_typed_error_that_never_shows_the_key() {
    let mock = MockPostHog::start().await;
    seed(&mock);
    let secret = "phx_wrong_but_secret_key_0123456789";
    let options = PushOptions::new(&mock.url(), PROJECT, ApiKey::new(secret)).unwrap();
    let error = PlanPush::new(options.clone())
        .plan_changes(&plan())
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            Error::Api {
                status: Some(401),
                ..
            }
        ),
        "{error:?}"
    );
    let shown = format!("{error} {error:?} {options:?}");
    assert!(!shown.contains(secret), "{shown}");
    assert!(!shown.contains("wrong_but_secret"), "{shown}");
    assert!(shown.contains("401"), "{shown}");
    assert!(mock.api_requests().iter().all(|r| r.status == 401));
}

#[tokio::test]
async fn every_page_is_read() {
    let mock = MockPostHog::start().await;
    for i in 0..5 {
        mock.add_event_definition(&format!("event_{i}"), None);
        mock.add_property_definition(&format!("property_{i}"), Some("String"), None);
    }
    let push = PlanPush::new(options(&mock).page_size(2));
    let events = push.event_definitions().await.unwrap();
    let names: Vec<&str> = events.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        ["event_0", "event_1", "event_2", "event_3", "event_4"]
    );
    assert_eq!(push.property_definitions().await.unwrap().len(), 5);

    let requests = mock.api_requests();
    let paths: Vec<&str> = requests.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/api/projects/42/event_definitions/?limit=2",
            "/api/projects/42/event_definitions/?limit=2&offset=2",
            "/api/projects/42/event_definitions/?limit=2&offset=4",
            "/api/projects/42/property_definitions/?type=event&limit=2",
            "/api/projects/42/property_definitions/?type=event&limit=2&offset=2",
            "/api/projects/42/property_definitions/?type=event&limit=2&offset=4",
        ]
    );
}

#[test]
fn properties_shared_by_events_are_merged() {
    let mut plan = plan();
    // `order_id` is a number in one event and a string in another: its type is left alone.
    plan.events[1].properties[0].json_type = "string".into();
    let properties = [PropertyDefinition {
        id: "p1".into(),
        name: "order_id".into(),
        description: Some("The order number.".into()),
        property_type: Some("String".into()),
    }];
    let events: Vec<EventDefinition> = Vec::new();
    let changes = definition_changes(&plan, &events, &properties);
    let skip = |kind: &str, name: &str| format!("SKIP {kind} {name}: {NOT_SEEN}");
    assert_eq!(
        lines(&changes),
        [
            skip("event", "order_completed"),
            skip("event", "order_refunded"),
            skip("event", "page_viewed"),
            skip("property", "amount"),
            skip("property", "metadata"),
            skip("property", "paid_at"),
            skip("property", "plan"),
            skip("property", "reason"),
        ],
        "order_id: same description, disagreeing types -> untouched"
    );
}

#[test]
fn a_project_key_given_as_the_personal_key_is_refused_with_what_to_use() {
    let error = PushOptions::new("us", 1, ApiKey::new("phc_project_key_0123456789")).unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("project API key (phc_...)") && message.contains("phx_"),
        "{message}"
    );
    assert!(!message.contains("0123456789"), "{message}");
}

#[test]
fn ingestion_hosts_map_to_the_app_host() {
    let key = || ApiKey::new("phx_x");
    let host = |h: &str| PushOptions::new(h, 1, key()).unwrap().host().to_owned();
    assert_eq!(host("https://us.i.posthog.com"), "https://us.posthog.com");
    assert_eq!(host("https://eu.i.posthog.com/"), "https://eu.posthog.com");
    assert_eq!(host("https://eu.posthog.com"), "https://eu.posthog.com");
    assert_eq!(host("https://ph.example.com"), "https://ph.example.com");
}

// PostHog's API takes the personal key as `Authorization: Bearer`; a `--host` with credentials
// would add a second Authorization header. The push refuses, sends nothing, and never shows
// the credentials.
#[tokio::test]
async fn a_host_with_credentials_is_refused_without_showing_them() {
    let mock = MockPostHog::start().await;
    seed(&mock);
    let host = posthog_track_tests::with_credentials(&mock.url());
    let options = PushOptions::new(&host, PROJECT, ApiKey::new(mock.personal_api_key())).unwrap();
    let error = PlanPush::new(options)
        .plan_changes(&plan())
        .await
        .unwrap_err();
    let shown = format!("{error} {error:?}");
    assert!(shown.contains("credentials"), "{shown}");
    assert!(!shown.contains("hunter2pw"), "{shown}");
    assert!(mock.api_requests().is_empty());
}

// A definition's `id` comes from PostHog's answer and went into the PATCH's path as it was:
// an id holding `../` (a proxy's or a compromised answer) sent the PATCH, with the personal
// key, to another endpoint of the host (`/api/organizations/@current/`, once the client
// resolved the dots). Only ids of letters, digits, `-` and `_` (PostHog's are UUIDs) are
// patched; another is refused with an error, and nothing is sent for it.
#[tokio::test]
async fn a_definition_id_that_is_a_path_is_refused() {
    use std::sync::{Arc, Mutex};
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let recorded = seen.clone();
    let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
        let recorded = recorded.clone();
        async move {
            let path = request.uri().path().to_owned();
            recorded
                .lock()
                .unwrap()
                .push(format!("{} {path}", request.method()));
            let results = if path.ends_with("/event_definitions/") {
                serde_json::json!([{"id": "../../../organizations/@current",
                                    "name": "order_refunded", "description": "Old text"}])
            } else {
                serde_json::json!([])
            };
            axum::Json(serde_json::json!({"next": null, "results": results}))
        }
    });
    let host = posthog_track_tests::serve(app).await;
    let options = PushOptions::new(&host, PROJECT, ApiKey::new("phx_personal")).unwrap();
    let push = PlanPush::new(options);
    let changes = push.plan_changes(&plan()).await.unwrap();
    let applied = push.apply(&changes).await;
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.iter()
            .all(|request| request.starts_with("GET /api/projects/42/")),
        "{seen:?}"
    );
    let error = applied.unwrap_err();
    assert!(
        matches!(&error, Error::Api { .. }) && error.to_string().contains("order_refunded"),
        "{error}"
    );
}
