//! A transaction begun with a `TrackingContext`: its events carry `$session_id` and the
//! context's properties, models without a distinct id of their own use the context's (unless
//! the transaction sets one), and `context` fields are filled at insert but never overwrite a
//! value when the context has none.

use posthog_track::{TrackedModel, Tracker, TrackingContext};
use posthog_track_examples::memory_database;
use serde_json::{Value, json};

#[derive(Debug, Clone, TrackedModel)]
#[tracked(table = "notes", insert_event = "note_written")]
pub struct Note {
    #[tracked(key, property = "note_id")]
    pub id: String,
    #[tracked(skip = "attribution column", context = "session_id")]
    pub session_id: Option<String>,
    #[tracked(property, context = "property.utm_source")]
    pub source: String,
}

async fn pool() -> sqlx::SqlitePool {
    let pool = memory_database().await.unwrap();
    sqlx::query("CREATE TABLE notes (id TEXT PRIMARY KEY, session_id TEXT, source TEXT NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    pool
}

fn note(id: &str) -> Note {
    Note {
        id: id.into(),
        session_id: None,
        source: "typed by hand".into(),
    }
}

#[tokio::test]
async fn context_stamps_events_and_fills_fields() {
    let pool = pool().await;
    let tracker = Tracker::builder().build();
    tracker.migrate(&pool).await.unwrap();
    let context = TrackingContext::new()
        .with_distinct_id("visitor-1")
        .with_session_id("session-1")
        .with_property("utm_source", "newsletter")
        .with_property("app_version", 42);
    let mut tx = tracker.begin(&pool).await.unwrap().with_context(context);
    let stored = note("n1").insert(&mut tx).await.unwrap();
    assert_eq!(stored.session_id.as_deref(), Some("session-1"));
    assert_eq!(stored.source, "newsletter");
    tx.set_distinct_id("user-1"); // the transaction's own id wins over the context's
    note("n2").insert(&mut tx).await.unwrap();
    let staged: Vec<_> = tx.staged().iter().map(|event| event.json()).collect();
    tx.commit().await.unwrap();

    assert_eq!(staged[0]["distinct_id"], "visitor-1");
    assert_eq!(staged[1]["distinct_id"], "user-1");
    for event in &staged {
        let properties = &event["properties"];
        assert_eq!(properties["$session_id"], "session-1");
        assert_eq!(properties["app_version"], 42);
        assert_eq!(properties["source"], "newsletter");
        assert!(properties.get("session_id").is_none(), "skipped field");
    }
    let rows: Vec<(String, Option<String>, String)> =
        sqlx::query_as("SELECT id, session_id, source FROM notes ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        rows,
        [
            ("n1".into(), Some("session-1".into()), "newsletter".into()),
            ("n2".into(), Some("session-1".into()), "newsletter".into()),
        ]
    );
}

#[tokio::test]
async fn without_a_context_value_the_field_keeps_its_own() {
    let pool = pool().await;
    let tracker = Tracker::builder().build();
    tracker.migrate(&pool).await.unwrap();
    let mut tx = tracker
        .begin(&pool)
        .await
        .unwrap()
        .with_context(TrackingContext::new().with_distinct_id("visitor-2"));
    let stored = note("n3").insert(&mut tx).await.unwrap();
    assert_eq!(stored.session_id, None);
    assert_eq!(stored.source, "typed by hand");
    let event = tx.staged()[0].json();
    assert!(event["properties"].get("$session_id").is_none());
    tx.commit().await.unwrap();
}

/// A context property named like one of the model's (here `source`) does not make the event
/// carry the key twice: the model's own value is sent, once.
#[tokio::test]
async fn a_model_property_wins_over_a_context_property_of_its_name() {
    let pool = pool().await;
    let tracker = Tracker::builder().build();
    tracker.migrate(&pool).await.unwrap();
    let context = TrackingContext::new()
        .with_distinct_id("visitor-4")
        .with_property("source", "from the request")
        .with_property("note_id", 7);
    let mut tx = tracker.begin(&pool).await.unwrap().with_context(context);
    note("n4").insert(&mut tx).await.unwrap();
    let payload = tx.staged()[0].payload.clone();
    tx.commit().await.unwrap();
    assert_eq!(payload.matches("\"source\":").count(), 1, "{payload}");
    assert_eq!(payload.matches("\"note_id\":").count(), 1, "{payload}");
    let event: Value = serde_json::from_str(&payload).unwrap();
    assert_eq!(event["properties"]["source"], "typed by hand", "{payload}");
    assert_eq!(event["properties"]["note_id"], "n4", "{payload}");
}

#[tokio::test]
async fn without_any_distinct_id_the_write_is_refused() {
    let pool = pool().await;
    let tracker = Tracker::builder().build();
    tracker.migrate(&pool).await.unwrap();
    let mut tx = tracker.begin(&pool).await.unwrap();
    let error = note("n4").insert(&mut tx).await.unwrap_err();
    assert!(
        matches!(error, posthog_track::Error::MissingDistinctId { .. }),
        "{error}"
    );
}

/// A hostile `X-POSTHOG-SESSION-ID` (a megabyte) made every event of the request too large to
/// stage, so the request's tracked write failed: header values are cleaned and cut as
/// posthog-python's integrations do (control characters out, 1,000 characters at most).
#[tokio::test]
async fn hostile_headers_are_cut_and_never_fail_the_write() {
    let pool = pool().await;
    let tracker = Tracker::builder().build();
    tracker.migrate(&pool).await.unwrap();
    let mut headers = axum::http::HeaderMap::new();
    headers.insert(
        "x-posthog-distinct-id",
        axum::http::HeaderValue::from_str(" visitor\t-h ").unwrap(),
    );
    headers.insert(
        "x-posthog-session-id",
        axum::http::HeaderValue::from_str(&"s".repeat(1_000_000)).unwrap(),
    );
    let context = TrackingContext::from_headers(&headers);
    assert_eq!(context.distinct_id(), Some("visitor-h"));
    assert_eq!(
        context.session_id().map(str::len),
        Some(posthog_track::MAX_HEADER_ID_CHARS)
    );
    let mut tx = tracker.begin(&pool).await.unwrap().with_context(context);
    note("n-huge").insert(&mut tx).await.unwrap();
    tx.rollback().await.unwrap();
    // Nothing but control characters and spaces: no id at all.
    let mut headers = axum::http::HeaderMap::new();
    headers.insert(
        "x-posthog-distinct-id",
        axum::http::HeaderValue::from_str("\t \t").unwrap(),
    );
    assert_eq!(TrackingContext::from_headers(&headers).distinct_id(), None);
}

#[derive(Debug, Clone, TrackedModel)]
#[tracked(table = "guest_orders", distinct_id = buyer, insert_event = "guest_order_placed")]
pub struct GuestOrder {
    #[tracked(key, property = "order_id")]
    pub id: String,
    #[tracked(skip = "who bought; empty for a guest checkout")]
    pub buyer: String,
}

/// An empty distinct id is no id (PostHog refuses one): the request's is used, as in
/// posthog-python, and with none the write is refused. It was staged as "", overriding the
/// request's, and could never be delivered.
#[tokio::test]
async fn an_empty_distinct_id_falls_back_to_the_request() {
    let pool = pool().await;
    sqlx::query("CREATE TABLE guest_orders (id TEXT PRIMARY KEY, buyer TEXT NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    let tracker = Tracker::builder().build();
    tracker.migrate(&pool).await.unwrap();
    let guest = |id: &str| GuestOrder {
        id: id.into(),
        buyer: String::new(),
    };
    let mut tx = tracker
        .begin(&pool)
        .await
        .unwrap()
        .with_context(TrackingContext::new().with_distinct_id("visitor-9"));
    guest("o1").insert(&mut tx).await.unwrap();
    assert_eq!(tx.staged()[0].distinct_id, "visitor-9");
    tx.rollback().await.unwrap();
    let mut tx = tracker.begin(&pool).await.unwrap();
    tx.set_distinct_id(String::new());
    let error = guest("o2").insert(&mut tx).await.unwrap_err();
    assert!(
        matches!(error, posthog_track::Error::MissingDistinctId { .. }),
        "{error}"
    );
    tx.rollback().await.unwrap();
    let error = tracker
        .capture(posthog_track::Event::new("signup").distinct_id(""))
        .await
        .unwrap_err();
    assert!(
        matches!(error, posthog_track::Error::MissingDistinctId { .. }),
        "{error}"
    );
}

#[derive(Debug, Clone, TrackedModel)]
#[tracked(table = "employees", distinct_id = id, identify, update_event = "employee_updated")]
pub struct Employee {
    #[tracked(key, property = "employee_id")]
    pub id: String,
    #[tracked(person)]
    pub company: Option<String>,
}

/// A person field cleared to `None` clears the person property (`$unset`) on an update, whole
/// or partial; an insert leaves an absent value out (it must not erase what the visitor's
/// person got before the row existed). The property stayed on the person for good.
#[tokio::test]
async fn clearing_a_person_field_clears_the_person_property() {
    let pool = pool().await;
    sqlx::query("CREATE TABLE employees (id TEXT PRIMARY KEY, company TEXT)")
        .execute(&pool)
        .await
        .unwrap();
    let tracker = Tracker::builder().build();
    tracker.migrate(&pool).await.unwrap();
    let properties = |tx: &posthog_track::TrackedTransaction<'_, sqlx::Sqlite>| -> Vec<Value> {
        tx.staged()
            .iter()
            .map(|event| {
                let event: Value = serde_json::from_str(&event.payload).unwrap();
                event["properties"].clone()
            })
            .collect()
    };
    let mut tx = tracker.begin(&pool).await.unwrap();
    let unemployed = Employee {
        id: "e0".into(),
        company: None,
    }
    .insert(&mut tx)
    .await
    .unwrap();
    for event in properties(&tx) {
        assert!(
            event.get("$unset").is_none() && event.get("$set").is_none(),
            "{event}"
        );
    }
    let before = Employee {
        id: "e1".into(),
        company: Some("Acme".into()),
    }
    .insert(&mut tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let mut after = before.clone();
    after.company = None;
    let mut tx = tracker.begin(&pool).await.unwrap();
    after.update_changed(&before, &mut tx).await.unwrap();
    let staged = properties(&tx);
    assert_eq!(
        staged.len(),
        2,
        "employee_updated and $identify: {staged:?}"
    );
    for event in staged {
        assert_eq!(event["$unset"], json!(["company"]), "{event}");
        assert!(event.get("$set").is_none(), "{event}");
    }
    tx.rollback().await.unwrap();
    let mut tx = tracker.begin(&pool).await.unwrap();
    after.update(&mut tx).await.unwrap();
    unemployed.update(&mut tx).await.unwrap();
    for event in properties(&tx) {
        assert_eq!(event["$unset"], json!(["company"]), "{event}");
    }
    tx.rollback().await.unwrap();
}
