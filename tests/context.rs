//! A transaction begun with a `TrackingContext`: its events carry `$session_id` and the
//! context's properties, models without a distinct id of their own use the context's (unless
//! the transaction sets one), and `context` fields are filled at insert but never overwrite a
//! value when the context has none.

use posthog_track::{TrackedModel, Tracker, TrackingContext};
use posthog_track_examples::memory_database;

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
