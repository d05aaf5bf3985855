//! Flag-routed schemas on real databases: a PostHog flag decides whether a document goes to
//! `documents` or `documents_v2`, the user's exposure is recorded once, and every event says
//! which variant the write used.

use std::collections::BTreeMap;
use std::time::Duration;

use posthog_track::flags::{FlagValue, LocalEvaluator};
use posthog_track::testing::MockPostHog;
use posthog_track::{Backend, Dialect, TrackedModel, TrackedRow, Tracker, routed_table};
use posthog_track_examples::memory_database;
use posthog_track_tests::{
    database_url, execute, insert_committed, isolated_mysql, isolated_postgres, tracker_for,
};
use serde_json::json;
use sqlx::Pool;

#[derive(Debug, Clone, TrackedModel)]
#[tracked(
    table = "documents",
    distinct_id = owner,
    insert_event = "document_created",
    table_variant(flag = "documents-v2", variant = "test", table = "documents_v2")
)]
struct Document {
    #[tracked(key, property = "document_id")]
    id: String,
    #[tracked(property)]
    owner: String,
    #[tracked(property)]
    title: String,
}

fn definitions() -> String {
    json!({"flags": [{"key": "documents-v2", "active": true, "filters": {
        "groups": [{"properties": [], "rollout_percentage": 100}],
        "multivariate": {"variants": [
            {"key": "control", "rollout_percentage": 50},
            {"key": "test", "rollout_percentage": 50}
        ]}
    }}]})
    .to_string()
}

/// The three tests of `$scenario`: on an in-memory SQLite database, and on a PostgreSQL schema
/// and a MariaDB database of their own named `$name`, each with its text column type.
macro_rules! routing_tests {
    ($scenario:ident, $name:literal, $sqlite:ident, $postgres:ident, $mysql:ident) => {
        #[tokio::test]
        async fn $sqlite() {
            $scenario(&memory_database().await.unwrap(), "TEXT").await;
        }

        #[tokio::test]
        async fn $postgres() {
            let Some(url) = database_url("POSTGRES_URL") else {
                return;
            };
            $scenario(&isolated_postgres(&url, $name).await, "TEXT").await;
        }

        #[tokio::test]
        async fn $mysql() {
            let Some(url) = database_url("MYSQL_URL") else {
                return;
            };
            $scenario(&isolated_mysql(&url, $name).await, "VARCHAR(64)").await;
        }
    };
}

routing_tests!(split_by_variant, "routing", sqlite, postgres, mysql);

async fn split_by_variant<DB>(pool: &Pool<DB>, text: &str)
where
    DB: Backend,
    Document: TrackedRow<DB>,
{
    let (mock, evaluator, tracker) = with_local_definitions(pool, text).await;

    // Two documents for each of 20 users, in one transaction per user.
    let users: Vec<String> = (0..20).map(|i| format!("user-{i}")).collect();
    for user in &users {
        let mut tx = tracker.begin(pool).await.unwrap();
        for n in 0..2 {
            let document = Document {
                id: format!("{user}-{n}"),
                owner: user.clone(),
                title: format!("draft {n}"),
            };
            let document = document.insert(&mut tx).await.unwrap();
            let mut renamed = document.clone();
            renamed.title = format!("final {n}");
            renamed.update_changed(&document, &mut tx).await.unwrap();
        }
        tx.commit().await.unwrap();
    }

    let expected: BTreeMap<&str, FlagValue> = users
        .iter()
        .map(|user| {
            (
                user.as_str(),
                evaluator.evaluate("documents-v2", user).unwrap(),
            )
        })
        .collect();
    let in_test = expected
        .values()
        .filter(|value| value.variant() == Some("test"))
        .count();
    assert!(
        in_test > 0 && in_test < users.len(),
        "both variants are represented: {in_test} of 20"
    );

    let count = |table: &'static str| async move {
        count(
            pool,
            format!("SELECT COUNT(*) FROM {table} WHERE title LIKE 'final%'"),
        )
        .await as usize
    };
    assert_eq!(
        count("documents_v2").await,
        2 * in_test,
        "test users' rows are in documents_v2"
    );
    assert_eq!(
        count("documents").await,
        2 * (users.len() - in_test),
        "everyone else's in documents"
    );
    for (user, value) in &expected {
        let table = routed_table::<Document>(&tracker, user).await;
        assert_eq!(
            table,
            if value.variant() == Some("test") {
                "documents_v2"
            } else {
                "documents"
            },
            "reads follow writes"
        );
    }

    tracker.relay(pool.clone()).drain().await.unwrap();
    tracker.flush().await.unwrap();
    let events = mock
        .wait_for_events(users.len() * 5, Duration::from_secs(10))
        .await
        .unwrap();
    let exposures: Vec<_> = events
        .iter()
        .filter(|e| e.event == "$feature_flag_called")
        .collect();
    assert_eq!(
        exposures.len(),
        users.len(),
        "one exposure per user and variant, not per write"
    );
    for event in events.iter().filter(|e| e.event != "$feature_flag_called") {
        let variant = expected[event.distinct_id.as_str()].to_string();
        assert_eq!(
            event.properties["$feature/documents-v2"],
            json!(variant),
            "{} carries its variant",
            event.event
        );
    }
    for exposure in exposures {
        let variant = expected[exposure.distinct_id.as_str()].to_string();
        assert_eq!(
            exposure.properties["$feature_flag_response"],
            json!(variant)
        );
    }
}

routing_tests!(
    consistent_routes,
    "routing_cache",
    routes_are_consistent_without_definitions_sqlite,
    routes_are_consistent_without_definitions_postgres,
    routes_are_consistent_without_definitions_mysql
);

/// Without local definitions, a user's route is asked of PostHog once and then kept: the
/// insert and a later update in another transaction go to the same table, with one `/flags`
/// request. A route PostHog cannot give falls back to the default table loudly (counted).
async fn consistent_routes<DB>(pool: &Pool<DB>, text: &str)
where
    DB: Backend,
    Document: TrackedRow<DB>,
{
    create_document_tables(pool, text).await;
    let mock = MockPostHog::start().await;
    mock.set_remote_flags(json!({"flags": {
        "documents-v2": {"key": "documents-v2", "enabled": true, "variant": "test"}
    }}));
    let tracker: Tracker = tracker_for(&mock).build();
    tracker.migrate(pool).await.unwrap();

    let document = Document {
        id: "d1".into(),
        owner: "user-1".into(),
        title: "draft".into(),
    };
    let document = insert_committed(&tracker, pool, document).await;
    // PostHog changes its answer: the user's route does not change under them.
    mock.set_remote_flags(json!({"flags": {}}));
    let mut renamed = document.clone();
    renamed.title = "final".into();
    let mut tx = tracker.begin(pool).await.unwrap();
    renamed.update_changed(&document, &mut tx).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        routed_table::<Document>(&tracker, "user-1").await,
        "documents_v2"
    );
    assert_eq!(
        mock.flags_requests().len(),
        1,
        "one /flags request per user and flag"
    );
    assert_eq!(
        count(
            pool,
            "SELECT COUNT(*) FROM documents_v2 WHERE title = 'final'"
        )
        .await,
        1
    );

    // PostHog has no value for this user: the default table, with a warning and a count.
    assert_eq!(tracker.flag_routing_fallbacks(), 0);
    let unrouted = Document {
        id: "d2".into(),
        owner: "user-2".into(),
        title: "draft".into(),
    };
    insert_committed(&tracker, pool, unrouted).await;
    assert_eq!(tracker.flag_routing_fallbacks(), 1);
    assert_eq!(
        count(pool, "SELECT COUNT(*) FROM documents WHERE id = 'd2'").await,
        1
    );
}

/// The default table and the variant's, with `text` as the backend's text column type.
async fn create_document_tables<DB: Backend>(pool: &Pool<DB>, text: &str) {
    for table in ["documents", "documents_v2"] {
        execute(
            pool,
            format!(
                "CREATE TABLE {table} (id {text} PRIMARY KEY, owner {text} NOT NULL, title {text} NOT NULL)"
            ),
        )
        .await;
    }
}

/// The document tables, a mock, the flag's definitions, and a tracker delivering to the mock
/// that evaluates the flag locally from them, with the outbox created.
async fn with_local_definitions<DB: Backend>(
    pool: &Pool<DB>,
    text: &str,
) -> (MockPostHog, LocalEvaluator, Tracker) {
    create_document_tables(pool, text).await;
    let mock = MockPostHog::start().await;
    let evaluator = LocalEvaluator::from_json(&definitions()).unwrap();
    let tracker: Tracker = tracker_for(&mock)
        .flag_definitions(evaluator.clone())
        .build();
    tracker.migrate(pool).await.unwrap();
    (mock, evaluator, tracker)
}

/// What a `SELECT COUNT(*)` answers.
async fn count<DB: Backend>(pool: &Pool<DB>, sql: impl Into<String>) -> i64 {
    let mut conn = pool.acquire().await.unwrap();
    let query = sqlx::query(sqlx::AssertSqlSafe(sql.into()));
    DB::int(&DB::fetch_one(&mut conn, query).await.unwrap(), 0).unwrap()
}

routing_tests!(
    insert_all_routes_each_row,
    "routing_bulk",
    insert_all_routes_each_row_sqlite,
    insert_all_routes_each_row_postgres,
    insert_all_routes_each_row_mysql
);

/// `insert_all` routes every row as `insert` does: one multi-row INSERT per table, each row
/// in its user's table, each event stamped with the user's variant, in the order of the rows.
async fn insert_all_routes_each_row<DB>(pool: &Pool<DB>, text: &str)
where
    DB: Backend,
    Document: TrackedRow<DB>,
    for<'c> &'c Pool<DB>: sqlx::Executor<'c, Database = DB>,
    for<'q> <DB as sqlx::Database>::Arguments: sqlx::IntoArguments<DB>,
    for<'r> (String,): sqlx::FromRow<'r, DB::Row>,
{
    let (_mock, evaluator, tracker) = with_local_definitions(pool, text).await;

    let rows: Vec<Document> = (0..20)
        .map(|i| Document {
            id: format!("bulk-{i}"),
            owner: format!("bulk-user-{i}"),
            title: format!("title {i}"),
        })
        .collect();
    let mut tx = tracker.begin(pool).await.unwrap();
    let stored = Document::insert_all(&rows, &mut tx).await.unwrap();
    let staged: Vec<_> = tx.staged().iter().map(|event| event.json()).collect();
    tx.commit().await.unwrap();

    assert_eq!(
        stored.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
        rows.iter().map(|d| d.id.as_str()).collect::<Vec<_>>()
    );
    let ids = |table: &'static str| async move {
        let rows: Vec<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT id FROM {table} WHERE id LIKE 'bulk-%'"
        )))
        .fetch_all(pool)
        .await
        .unwrap();
        rows.into_iter()
            .map(|(id,)| id)
            .collect::<std::collections::BTreeSet<_>>()
    };
    let (v2, v1) = (ids("documents_v2").await, ids("documents").await);
    assert!(
        !v2.is_empty() && !v1.is_empty(),
        "both tables: {v2:?} {v1:?}"
    );
    assert_eq!(staged.len(), rows.len());
    for (row, event) in rows.iter().zip(&staged) {
        let variant = evaluator.evaluate("documents-v2", &row.owner).unwrap();
        let in_test = variant.variant() == Some("test");
        assert_eq!(event["distinct_id"], json!(row.owner));
        assert_eq!(event["properties"]["document_id"], json!(row.id));
        assert_eq!(
            event["properties"]["$feature/documents-v2"],
            json!(variant.variant())
        );
        let table = if in_test { &v2 } else { &v1 };
        assert!(
            table.contains(&row.id),
            "{} went to the wrong table",
            row.id
        );
    }
}

/// Everyone in `variant` of `documents-v2`.
fn everyone_in(variant: &str) -> serde_json::Value {
    json!({"flags": [{"key": "documents-v2", "active": true, "filters": {
        "groups": [{"properties": [], "rollout_percentage": 100, "variant": variant}],
        "multivariate": {"variants": [
            {"key": "control", "rollout_percentage": 50},
            {"key": "test", "rollout_percentage": 50}
        ]}
    }}]})
}

/// A user the 50/50 definitions put in `variant`.
fn user_in(variant: &str) -> String {
    let evaluator = LocalEvaluator::from_json(&definitions()).unwrap();
    (0..1000)
        .map(|i| format!("user-{i}"))
        .find(|user| evaluator.evaluate("documents-v2", user).unwrap().variant() == Some(variant))
        .unwrap()
}

routing_tests!(
    rows_stay_where_they_were_written,
    "routing_moved",
    rows_stay_where_they_were_written_sqlite,
    rows_stay_where_they_were_written_postgres,
    rows_stay_where_they_were_written_mysql
);

/// A user's route can change after their row was written: new definitions (even within the
/// transaction that wrote it), a route that fell back because PostHog could not decide, a
/// change of owner. Updates, deletes and upserts of an existing row find it where it is (they
/// failed with `RowNotFound`, and an upsert inserted a second row in the other table), and
/// their events say which table's variant they wrote.
async fn rows_stay_where_they_were_written<DB>(pool: &Pool<DB>, text: &str)
where
    DB: Backend,
    Document: TrackedRow<DB>,
{
    create_document_tables(pool, text).await;
    let mock = MockPostHog::start().await;
    mock.set_flag_definitions(everyone_in("test"));
    let tracker: Tracker = tracker_for(&mock)
        .personal_api_key(mock.personal_api_key())
        .build();
    tracker.migrate(pool).await.unwrap();
    tracker.load_flag_definitions().await.unwrap();

    // New definitions between the insert and the update, in one transaction.
    let mut tx = tracker.begin(pool).await.unwrap();
    let document = Document {
        id: "d1".into(),
        owner: "user-1".into(),
        title: "draft".into(),
    }
    .insert(&mut tx)
    .await
    .unwrap();
    mock.set_flag_definitions(everyone_in("control"));
    tracker.load_flag_definitions().await.unwrap();
    let mut renamed = document.clone();
    renamed.title = "final".into();
    renamed.update_changed(&document, &mut tx).await.unwrap();
    renamed.update(&mut tx).await.unwrap();
    let staged: Vec<_> = tx.staged().iter().map(|event| event.json()).collect();
    tx.commit().await.unwrap();
    for event in &staged {
        assert_eq!(
            event["properties"]["$feature/documents-v2"],
            json!("test"),
            "every write went to the `test` table: {event}"
        );
    }
    assert_eq!(
        count(
            pool,
            "SELECT COUNT(*) FROM documents_v2 WHERE title = 'final'"
        )
        .await,
        1
    );

    // The exposures are the user's route at each write (the README says so): `test` at the
    // insert, `control` at the updates, whose events say `test`, the table that holds the row.
    tracker.flush().await.unwrap();
    let responses: std::collections::BTreeSet<String> = mock
        .events()
        .iter()
        .filter(|event| event.event == "$feature_flag_called" && event.distinct_id == "user-1")
        .map(|event| event.properties["$feature_flag_response"].to_string())
        .collect();
    assert_eq!(
        responses,
        ["\"control\"".to_owned(), "\"test\"".to_owned()].into(),
        "{:?}",
        mock.events()
    );

    // `load_for_update` finds it in the variant's table (it read only `documents`), and the
    // upsert of that row updates it where it is; it does not insert it into `documents`.
    let mut tx = tracker.begin(pool).await.unwrap();
    let loaded = Document::load_for_update(&"d1".to_owned(), &mut tx)
        .await
        .unwrap();
    assert_eq!(
        loaded.map(|document| document.title),
        Some("final".to_owned())
    );
    let mut again = renamed.clone();
    again.title = "upserted".into();
    assert!(!again.upsert(&mut tx).await.unwrap().was_inserted());
    tx.commit().await.unwrap();
    assert_eq!(count(pool, "SELECT COUNT(*) FROM documents").await, 0);
    assert_eq!(
        count(
            pool,
            "SELECT COUNT(*) FROM documents_v2 WHERE title = 'upserted'"
        )
        .await,
        1
    );

    // A change of owner: routed by the row as it is, found where it is.
    let (alice, bob) = (user_in("test"), user_in("control"));
    let tracker: Tracker = tracker_for(&mock)
        .flag_definitions(LocalEvaluator::from_json(&definitions()).unwrap())
        .build();
    let owned = Document {
        id: "d2".into(),
        owner: alice.clone(),
        title: "draft".into(),
    };
    let owned = insert_committed(&tracker, pool, owned).await;
    let mut transferred = owned.clone();
    transferred.owner = bob;
    let mut tx = tracker.begin(pool).await.unwrap();
    transferred.update_changed(&owned, &mut tx).await.unwrap();
    transferred.delete(&mut tx).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        count(pool, "SELECT COUNT(*) FROM documents_v2 WHERE id = 'd2'").await,
        0
    );

    // A route that fell back (PostHog could not decide) put the row in `documents`; once
    // PostHog decides `test`, the update still finds it there.
    let mock = MockPostHog::start().await;
    mock.set_remote_flags(json!({"flags": {}}));
    let tracker: Tracker = tracker_for(&mock).build();
    let fallen = insert_committed(
        &tracker,
        pool,
        Document {
            id: "d3".into(),
            owner: "user-3".into(),
            title: "draft".into(),
        },
    )
    .await;
    assert_eq!(tracker.flag_routing_fallbacks(), 1);
    mock.set_remote_flags(json!({"flags": {
        "documents-v2": {"key": "documents-v2", "enabled": true, "variant": "test"}
    }}));
    let mut renamed = fallen.clone();
    renamed.title = "final".into();
    let mut tx = tracker.begin(pool).await.unwrap();
    renamed.update_changed(&fallen, &mut tx).await.unwrap();
    let staged = tx.staged()[0].json();
    tx.commit().await.unwrap();
    assert_eq!(
        count(
            pool,
            "SELECT COUNT(*) FROM documents WHERE id = 'd3' AND title = 'final'"
        )
        .await,
        1
    );
    assert_eq!(
        staged["properties"].get("$feature/documents-v2"),
        None,
        "the write went to the default table, not to `test`'s: {staged}"
    );
}

#[derive(Debug, Clone, TrackedModel)]
#[tracked(
    table = "notes",
    insert_event = "note_created",
    table_variant(flag = "documents-v2", variant = "test", table = "notes_v2")
)]
struct Note {
    #[tracked(key, property = "note_id")]
    id: String,
    #[tracked(property)]
    body: String,
}

/// A model without a distinct id field is routed by the id its events get: the transaction's,
/// else the request context's (the context's was ignored, so the row went to the default table
/// and its event carried no `$feature/...`). The routing stamp and flags attached to the
/// transaction for another user give one `$feature/documents-v2` key, the write's.
#[tokio::test]
async fn routes_by_the_distinct_id_the_events_get() {
    let pool = memory_database().await.unwrap();
    for table in ["notes", "notes_v2"] {
        execute(
            &pool,
            format!("CREATE TABLE {table} (id TEXT PRIMARY KEY, body TEXT NOT NULL)"),
        )
        .await;
    }
    let (mock, _evaluator, tracker) = with_local_definitions(&pool, "TEXT").await;
    let _ = mock;
    let (alice, admin) = (user_in("test"), user_in("control"));
    let admin_flags = tracker.evaluate_flags(admin.as_str()).await.unwrap();
    let mut tx = tracker
        .begin(&pool)
        .await
        .unwrap()
        .with_context(posthog_track::TrackingContext::new().with_distinct_id(alice.clone()));
    tx.attach_flags(&admin_flags);
    Note {
        id: "n1".into(),
        body: "hello".into(),
    }
    .insert(&mut tx)
    .await
    .unwrap();
    let payload = tx.staged()[0].payload.clone();
    let event = tx.staged()[0].json();
    tx.commit().await.unwrap();
    assert_eq!(event["distinct_id"], json!(alice));
    assert_eq!(
        event["properties"]["$feature/documents-v2"],
        json!("test"),
        "{event}"
    );
    assert_eq!(
        payload.matches("\"$feature/documents-v2\"").count(),
        1,
        "one `$feature/documents-v2` per event: {payload}"
    );
    assert_eq!(count(&pool, "SELECT COUNT(*) FROM notes_v2").await, 1);
}

routing_tests!(
    upserts_prefer_the_routed_table,
    "routing_upsert_first",
    upserts_prefer_the_routed_table_sqlite,
    upserts_prefer_the_routed_table_postgres,
    upserts_prefer_the_routed_table_mysql
);

/// A key can be in two of a model's tables (a stale copy an earlier version's upsert made, or
/// keys unique per table only). `upsert` writes the routed table's row, as `update` does; it
/// looks in the other tables only when the routed one has no such row.
async fn upserts_prefer_the_routed_table<DB>(pool: &Pool<DB>, text: &str)
where
    DB: Backend,
    Document: TrackedRow<DB>,
{
    let (_mock, _evaluator, tracker) = with_local_definitions(pool, text).await;
    let alice = user_in("test");
    for table in ["documents", "documents_v2"] {
        execute(
            pool,
            format!("INSERT INTO {table} (id, owner, title) VALUES ('d1', '{alice}', 'old')"),
        )
        .await;
    }
    let mut tx = tracker.begin(pool).await.unwrap();
    let upserted = Document {
        id: "d1".into(),
        owner: alice.clone(),
        title: "new".into(),
    }
    .upsert(&mut tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert!(!upserted.was_inserted());
    assert_eq!(
        count(
            pool,
            "SELECT COUNT(*) FROM documents_v2 WHERE title = 'new'"
        )
        .await,
        1,
        "alice is in `test`: her table's row is the one written"
    );
    assert_eq!(
        count(pool, "SELECT COUNT(*) FROM documents WHERE title = 'old'").await,
        1
    );
}

routing_tests!(
    concurrent_upserts_of_a_new_routed_key_all_succeed,
    "routing_upsert_race",
    concurrent_upserts_of_a_new_routed_key_all_succeed_sqlite,
    concurrent_upserts_of_a_new_routed_key_all_succeed_postgres,
    concurrent_upserts_of_a_new_routed_key_all_succeed_mysql
);

/// Concurrent upserts of one document in a race, each in a transaction of its own.
const RACERS: usize = 6;

/// The routed twin of bulk.rs' `concurrent_upserts_of_a_new_key_all_succeed`: concurrent
/// upserts of one new key of a flag-routed model, each in a transaction of its own, all
/// succeed; exactly one inserts, the others update, the outbox holds the events of one insert
/// and of the updates, and the row is in one table only. Every writer routed to the variant's
/// table, then every writer routed to the default table, each three times (one race may
/// happen to run its transactions one after another). On MySQL/MariaDB the upsert first looked
/// the key up in each of the model's tables with `SELECT ... FOR UPDATE`: for a missing key
/// that takes gap locks, which every transaction held at once, and then their INSERTs waited
/// on each other's gaps and InnoDB killed all but one (1213).
async fn concurrent_upserts_of_a_new_routed_key_all_succeed<DB>(pool: &Pool<DB>, text: &str)
where
    DB: Backend,
    Document: TrackedRow<DB>,
{
    let tracker = race_tracker(pool, text).await;
    let (alice, bob) = (user_in("test"), user_in("control"));
    for (name, owner) in [("race-test", &alice), ("race-control", &bob)] {
        for n in 0..3 {
            let id = format!("{name}-{n}");
            let outcomes = race(&tracker, pool, &id, [owner, owner]).await;
            let mut inserted = 0;
            for outcome in outcomes {
                match outcome {
                    Ok(true) => inserted += 1,
                    Ok(false) => {}
                    Err(error) => panic!("{id}: a concurrent upsert failed: {error:?}"),
                }
            }
            assert_eq!(inserted, 1, "{id}: exactly one upsert inserts the row");
            assert_eq!(
                race_events(&tracker, pool, &id).await,
                (1, RACERS - 1),
                "{id}: one document_created, the others document_updated"
            );
            assert_eq!(race_rows(pool, &id).await, 1, "{id}: one row");
        }
    }
}

routing_tests!(
    concurrent_upserts_routed_to_two_tables_keep_one_row,
    "routing_upsert_race_mixed",
    concurrent_upserts_routed_to_two_tables_keep_one_row_sqlite,
    concurrent_upserts_routed_to_two_tables_keep_one_row_postgres,
    concurrent_upserts_routed_to_two_tables_keep_one_row_mysql
);

/// Concurrent upserts of one new key by writers routed to different tables (the row's owner
/// differs between them, as when its owner changes): the key ends up in one table only. On
/// MySQL/MariaDB each writer's look-up of the key in the other's table waits for the other (a
/// row lock, or a gap lock holding back its INSERT), so the second finds the first's row; two
/// writers that each locked the other's gap deadlock instead, and InnoDB rolls one back
/// (1213, which this test accepts: no lock order avoids it, see `upsert_routed_mysql`). On
/// PostgreSQL a look-up of a missing key locks nothing and an uncommitted row is invisible to
/// it, so writers routed to different tables each inserted the key into their own table (two
/// inserts reported, a row in each table, in each of five runs before the fix); now the upsert
/// first takes an advisory lock on the key, and a writer that waited on it finds the row the
/// first committed. The writers that succeed report one insert between them, and the outbox
/// holds their events. Ten rounds: one race may happen to run its transactions one after
/// another.
async fn concurrent_upserts_routed_to_two_tables_keep_one_row<DB>(pool: &Pool<DB>, text: &str)
where
    DB: Backend,
    Document: TrackedRow<DB>,
{
    let tracker = race_tracker(pool, text).await;
    let (alice, bob) = (user_in("test"), user_in("control"));
    for n in 0..10 {
        let id = format!("race-mixed-{n}");
        let outcomes = race(&tracker, pool, &id, [&alice, &bob]).await;
        let (mut inserted, mut succeeded) = (0, 0);
        for outcome in outcomes {
            match outcome {
                Ok(was_inserted) => {
                    succeeded += 1;
                    inserted += usize::from(was_inserted);
                }
                Err(posthog_track::Error::Database(sqlx::Error::Database(error)))
                    if DB::DIALECT == Dialect::MySql
                        && error.code().as_deref() == Some("40001") => {}
                Err(error) => panic!("{id}: a concurrent upsert failed: {error:?}"),
            }
        }
        assert_eq!(inserted, 1, "{id}: exactly one upsert inserts the row");
        assert_eq!(
            race_events(&tracker, pool, &id).await,
            (1, succeeded - 1),
            "{id}: the events of the upserts that succeeded"
        );
        assert_eq!(
            race_rows(pool, &id).await,
            1,
            "{id}: the row is in one table"
        );
    }
}

/// The document tables, and a tracker that routes by the 50/50 definitions and keeps its
/// events in the outbox (no relay of its own) to be counted.
async fn race_tracker<DB: Backend>(pool: &Pool<DB>, text: &str) -> Tracker {
    create_document_tables(pool, text).await;
    let tracker: Tracker = Tracker::builder()
        .api_key("phc_routing_race")
        .flag_definitions(LocalEvaluator::from_json(&definitions()).unwrap())
        .external_relay(true)
        .build();
    tracker.migrate(pool).await.unwrap();
    tracker
}

/// [`RACERS`] transactions upsert document `id` at once, owned by `owners` in turn, half with
/// the same title (MySQL reports an unchanged row like an insert); whether each inserted it.
async fn race<DB>(
    tracker: &Tracker,
    pool: &Pool<DB>,
    id: &str,
    owners: [&String; 2],
) -> Vec<posthog_track::Result<bool>>
where
    DB: Backend,
    Document: TrackedRow<DB>,
{
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(RACERS));
    let mut tasks = Vec::new();
    for n in 0..RACERS {
        let (tracker, pool, barrier) = (tracker.clone(), pool.clone(), barrier.clone());
        let document = Document {
            id: id.to_owned(),
            owner: owners[n % 2].clone(),
            title: if n % 4 < 2 { "same" } else { "other" }.to_owned(),
        };
        // Six, within the MySQL and PostgreSQL pools' eight connections: each transaction
        // holds one until its commit (SQLite's single connection runs them one at a time).
        tasks.push(tokio::spawn(async move {
            // Before `begin`: SQLite's takes the one write lock (BEGIN IMMEDIATE).
            barrier.wait().await;
            let mut tx = tracker.begin(&pool).await?;
            let upserted = match document.upsert(&mut tx).await {
                Ok(upserted) => upserted,
                Err(error) => {
                    let _ = tx.rollback().await;
                    return Err(error);
                }
            };
            tx.commit().await?;
            Ok(upserted.was_inserted())
        }));
    }
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.unwrap());
    }
    outcomes
}

/// How many `document_created` and `document_updated` of document `id` the outbox holds.
async fn race_events<DB: Backend>(tracker: &Tracker, pool: &Pool<DB>, id: &str) -> (usize, usize) {
    let names: Vec<String> = tracker
        .outbox(pool)
        .events()
        .await
        .unwrap()
        .into_iter()
        .filter(|event| event.property("document_id") == Some(&json!(id)))
        .map(|event| event.event)
        .collect();
    let created = names.iter().filter(|n| *n == "document_created").count();
    let updated = names.iter().filter(|n| *n == "document_updated").count();
    assert_eq!(created + updated, names.len(), "{id}: {names:?}");
    (created, updated)
}

/// The rows with key `id` in both of the model's tables.
async fn race_rows<DB: Backend>(pool: &Pool<DB>, id: &str) -> i64 {
    let mut rows = 0;
    for table in ["documents", "documents_v2"] {
        rows += count(
            pool,
            format!("SELECT COUNT(*) FROM {table} WHERE id = '{id}'"),
        )
        .await;
    }
    rows
}

/// Every table a routed model's rows can be in, for reads that must find rows written under
/// an earlier route: the default table first.
#[test]
fn a_routed_model_lists_every_table_it_writes() {
    use posthog_track::flags::FlagRouted as _;
    assert_eq!(Document::tables(), ["documents", "documents_v2"]);
    assert_eq!(Note::tables(), ["notes", "notes_v2"]);
}
