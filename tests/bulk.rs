//! `insert_all` and `upsert` on SQLite, PostgreSQL and MariaDB: they store the same rows and
//! stage the same events as their one-row equivalents (`insert` per row; `insert` or
//! `update`), generated columns included; `insert_all` splits at the backend's bind limit; a
//! rollback leaves neither rows nor events.

use chrono::{DateTime, Utc};
use posthog_track::{
    Backend, Dialect, Error, StagedEvent, TrackedModel, TrackedRow, Tracker, TrackingContext,
    Upserted,
};
use posthog_track_tests::{on_every_backend, outbox_events, unique};
use serde_json::{Value, json};
use sqlx::Pool;
use uuid::Uuid;

/// A key the database generates, person properties, a group, a milestone, a skipped column
/// and a generated timestamp.
#[derive(Debug, Clone, PartialEq, TrackedModel)]
#[tracked(
    table = "bk_accounts",
    distinct_id = owner,
    identify,
    insert_event = "account_opened",
    update_event = "account_changed"
)]
struct Account {
    #[tracked(key, generated, property = "account_id")]
    id: i64,
    #[tracked(property)]
    owner: String,
    #[tracked(person)]
    email: String,
    #[tracked(property, group = "company")]
    company: String,
    #[tracked(property, milestone(event = "account_upgraded"))]
    plan: String,
    #[tracked(skip = "secret; never leaves the database")]
    secret: String,
    #[tracked(generated, property)]
    created_at: DateTime<Utc>,
}

/// Not derived (the key is `generated`), written by hand to reach the runtime's own refusal.
impl posthog_track::Upsertable for Account {}

/// A key written from Rust (the upsert's kind of model), and generated columns.
#[derive(Debug, Clone, PartialEq, TrackedModel)]
#[tracked(table = "bk_profiles", distinct_id = id, identify)]
struct Profile {
    #[tracked(key, property = "user_id")]
    id: String,
    #[tracked(person)]
    email: String,
    #[tracked(person_once)]
    referrer: Option<String>,
    #[tracked(property, milestone(event = "profile_upgraded"))]
    plan: String,
    #[tracked(generated, property)]
    created_at: DateTime<Utc>,
}

/// A composite key and nothing but keys to update (every other column is generated).
#[derive(Debug, Clone, PartialEq, TrackedModel)]
#[tracked(table = "bk_members", distinct_id = account)]
struct Member {
    #[tracked(key, property)]
    account: String,
    #[tracked(key, property)]
    team: String,
    #[tracked(generated, property)]
    joined_at: DateTime<Utc>,
}

/// Seventeen columns written per row, so a few thousand rows cross every bind limit.
#[derive(Debug, Clone, PartialEq, TrackedModel)]
#[tracked(table = "bk_wide", distinct_id = owner)]
struct Wide {
    #[tracked(key, property)]
    id: i64,
    #[tracked(property)]
    owner: String,
    #[tracked(property)]
    c1: i64,
    #[tracked(property)]
    c2: i64,
    #[tracked(property)]
    c3: i64,
    #[tracked(property)]
    c4: i64,
    #[tracked(property)]
    c5: i64,
    #[tracked(property)]
    c6: i64,
    #[tracked(property)]
    c7: i64,
    #[tracked(property)]
    c8: i64,
    #[tracked(property)]
    c9: i64,
    #[tracked(property)]
    c10: i64,
    #[tracked(property)]
    c11: i64,
    #[tracked(property)]
    c12: i64,
    #[tracked(property)]
    c13: i64,
    #[tracked(property)]
    c14: Option<String>,
    #[tracked(property)]
    c15: String,
}

/// Filled from the request context; the distinct id may be missing.
#[derive(Debug, Clone, PartialEq, TrackedModel)]
#[tracked(table = "bk_visits", distinct_id = visitor)]
struct Visit {
    #[tracked(key, property = "visit_id")]
    id: String,
    #[tracked(property)]
    visitor: Option<String>,
    #[tracked(property, context = "session_id")]
    session: Option<String>,
}

/// The tables in `dialect`'s column types: a key or indexed text column, a key the database
/// generates, a stored timestamp that defaults to the insert's time, a wide integer, and the
/// table options.
fn schema(dialect: Dialect) -> String {
    let (text_key, generated_key, inserted_at, int, options) = match dialect {
        Dialect::Sqlite => (
            "TEXT",
            "INTEGER PRIMARY KEY AUTOINCREMENT",
            "TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
            "INTEGER",
            "",
        ),
        Dialect::Postgres => (
            "TEXT",
            "BIGSERIAL PRIMARY KEY",
            "TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()",
            "BIGINT",
            "",
        ),
        Dialect::MySql => (
            "VARCHAR(100)",
            "BIGINT AUTO_INCREMENT PRIMARY KEY",
            "TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)",
            "BIGINT",
            " ENGINE=InnoDB",
        ),
    };
    let wide_columns: Vec<String> = (1..=13).map(|n| format!("c{n} {int} NOT NULL")).collect();
    let wide_columns = wide_columns.join(", ");
    format!(
        "CREATE TABLE bk_visits (id {text_key} PRIMARY KEY, visitor TEXT, session TEXT){options};
         CREATE TABLE bk_accounts (id {generated_key}, owner {text_key} NOT NULL,
             email TEXT NOT NULL, company TEXT NOT NULL, plan TEXT NOT NULL,
             secret TEXT NOT NULL, created_at {inserted_at}){options};
         CREATE TABLE bk_profiles (id {text_key} PRIMARY KEY, email TEXT NOT NULL,
             referrer TEXT, plan TEXT NOT NULL, created_at {inserted_at}){options};
         CREATE TABLE bk_members (account {text_key} NOT NULL, team {text_key} NOT NULL,
             joined_at {inserted_at}, PRIMARY KEY (account, team)){options};
         CREATE TABLE bk_wide (id {int} PRIMARY KEY, owner {text_key} NOT NULL, {wide_columns},
             c14 TEXT, c15 TEXT NOT NULL){options};"
    )
}

/// The tables, once per backend (concrete types keep sqlx's executor bounds out of the
/// generic scenarios).
trait Schema: Backend {
    async fn create_tables(pool: &Pool<Self>);
}

macro_rules! impl_schema {
    ($db:ty) => {
        impl Schema for $db {
            async fn create_tables(pool: &Pool<Self>) {
                sqlx::raw_sql(sqlx::AssertSqlSafe(schema(Self::DIALECT)))
                    .execute(pool)
                    .await
                    .unwrap();
            }
        }
    };
}

impl_schema!(sqlx::Sqlite);
impl_schema!(sqlx::Postgres);
impl_schema!(sqlx::MySql);

/// Live, so that commits write the outbox, without a relay: the test reads what committed.
async fn tracker<DB: Schema>(pool: &Pool<DB>) -> Tracker {
    DB::create_tables(pool).await;
    let tracker = Tracker::builder()
        .api_key("phc_bulk")
        .external_relay(true)
        .build();
    tracker.migrate(pool).await.unwrap();
    tracker
}

fn accounts(owner: &str, count: usize) -> Vec<Account> {
    (0..count)
        .map(|n| Account {
            id: 0,
            owner: format!("{owner}-{n}"),
            email: format!("o'brien+{n}@example.com"),
            company: format!("company-{}", n % 3),
            plan: if n % 2 == 0 { "free" } else { "pro" }.to_owned(),
            secret: "hunter2".to_owned(),
            created_at: DateTime::<Utc>::UNIX_EPOCH,
        })
        .collect()
}

fn profile(id: &str, plan: &str) -> Profile {
    Profile {
        id: id.to_owned(),
        email: format!("{id}@example.com"),
        referrer: Some("newsletter".to_owned()),
        plan: plan.to_owned(),
        created_at: DateTime::<Utc>::UNIX_EPOCH,
    }
}

/// An event without what differs between two writes of the same row: uuid, timestamp, the
/// library stamps, and the values of `generated` columns (`generated`), which the caller
/// checks against the stored rows.
fn comparable(event: &StagedEvent, generated: &[&str]) -> Value {
    let mut properties = event.json()["properties"].clone();
    if let Some(map) = properties.as_object_mut() {
        for key in ["$lib", "$lib_version"].iter().chain(generated) {
            map.remove(*key);
        }
        if let Some(Value::Object(group_set)) = map.get_mut("$group_set") {
            for key in generated {
                group_set.remove(*key);
            }
        }
    }
    json!({"event": event.event, "distinct_id": event.distinct_id, "properties": properties})
}

fn comparable_all(events: &[StagedEvent], generated: &[&str]) -> Vec<Value> {
    events.iter().map(|e| comparable(e, generated)).collect()
}

/// Account as inserted, without the generated columns.
fn without_generated(account: &Account) -> Account {
    Account {
        id: 0,
        created_at: DateTime::<Utc>::UNIX_EPOCH,
        ..account.clone()
    }
}

/// `insert_all` stores the rows, returns them as stored and stages the events that one
/// `insert` per row does; a rollback leaves nothing.
async fn insert_all_matches_insert<DB: Schema>(pool: &Pool<DB>, _url: &str)
where
    Account: TrackedRow<DB>,
    Member: TrackedRow<DB>,
{
    let tracker = tracker(pool).await;
    insert_all_scenario(&tracker, pool, "returning").await;
    if DB::DIALECT == Dialect::MySql {
        // The same on MariaDB without its RETURNING: as MySQL reads rows back (by key, and
        // by the consecutive AUTO_INCREMENT ids of the chunk).
        posthog_track::__private::ignore_mariadb_returning(true);
        insert_all_scenario(&tracker, pool, "mysql").await;
        posthog_track::__private::ignore_mariadb_returning(false);
    }
}

async fn insert_all_scenario<DB: Backend>(tracker: &Tracker, pool: &Pool<DB>, tag: &str)
where
    Account: TrackedRow<DB>,
    Member: TrackedRow<DB>,
{
    let owner = unique(tag);
    let rows = accounts(&owner, 7);

    // One insert per row, rolled back.
    let mut tx = tracker.begin(pool).await.unwrap();
    let mut one_by_one = Vec::new();
    for row in &rows {
        one_by_one.push(row.clone().insert(&mut tx).await.unwrap());
    }
    let events_one = tx.staged().to_vec();
    tx.rollback().await.unwrap();

    // insert_all, rolled back: nothing remains.
    let mut tx = tracker.begin(pool).await.unwrap();
    let rolled_back = Account::insert_all(&rows, &mut tx).await.unwrap();
    assert_eq!(tx.staged().len(), events_one.len());
    tx.rollback().await.unwrap();
    let mut tx = tracker.begin(pool).await.unwrap();
    for row in &rolled_back {
        assert_eq!(
            Account::load_for_update(&row.id, &mut tx).await.unwrap(),
            None
        );
    }
    tx.rollback().await.unwrap();
    let outbox = tracker.outbox(pool).events().await.unwrap();
    assert!(
        !outbox.iter().any(|e| e.distinct_id.starts_with(&owner)),
        "a rolled back insert_all stages nothing"
    );

    // insert_all, committed.
    let mut tx = tracker.begin(pool).await.unwrap();
    let stored = Account::insert_all(&rows, &mut tx).await.unwrap();
    let events_all = tx.staged().to_vec();
    tx.commit().await.unwrap();

    // The same rows, in order, with their generated columns read back.
    assert_eq!(stored.len(), rows.len());
    assert_eq!(
        stored.iter().map(without_generated).collect::<Vec<_>>(),
        one_by_one.iter().map(without_generated).collect::<Vec<_>>()
    );
    let mut tx = tracker.begin(pool).await.unwrap();
    for row in &stored {
        assert!(row.id > 0, "the generated id is read back");
        assert!(row.created_at > DateTime::<Utc>::UNIX_EPOCH);
        assert_eq!(
            Account::load_for_update(&row.id, &mut tx)
                .await
                .unwrap()
                .as_ref(),
            Some(row),
            "the row returned is the row stored"
        );
    }
    tx.rollback().await.unwrap();
    let ids: Vec<i64> = stored.iter().map(|row| row.id).collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted, ids, "distinct ids, in insertion order");

    // The same events, in the same order; their generated values are the stored rows'.
    let generated = ["account_id", "created_at"];
    assert_eq!(
        comparable_all(&events_all, &generated),
        comparable_all(&events_one, &generated)
    );
    let opened: Vec<&StagedEvent> = events_all
        .iter()
        .filter(|e| e.event == "account_opened")
        .collect();
    assert_eq!(opened.len(), rows.len());
    for (event, row) in opened.iter().zip(&stored) {
        let properties = &event.json()["properties"];
        assert_eq!(properties["account_id"], json!(row.id));
        assert_eq!(
            properties["created_at"],
            serde_json::to_value(row.created_at).unwrap()
        );
        assert_eq!(properties["$groups"], json!({"company": row.company}));
        assert_eq!(properties["secret"], Value::Null);
    }
    let names: Vec<&str> = events_all.iter().map(|e| e.event.as_ref()).collect();
    assert_eq!(&names[..2], ["account_opened", "$identify"]);

    // What committed is what was staged.
    let committed: Vec<_> = outbox_events(tracker, pool, |e| e.distinct_id.starts_with(&owner))
        .await
        .into_iter()
        .map(|e| e.uuid)
        .collect();
    assert_eq!(
        committed,
        events_all.iter().map(|e| e.uuid).collect::<Vec<_>>()
    );

    // A composite key and a generated column: matched back by the key.
    let account = unique(&format!("{tag}-member"));
    let members: Vec<Member> = ["core", "web", "data"]
        .into_iter()
        .map(|team| Member {
            account: account.clone(),
            team: team.to_owned(),
            joined_at: DateTime::<Utc>::UNIX_EPOCH,
        })
        .collect();
    let mut tx = tracker.begin(pool).await.unwrap();
    let stored = Member::insert_all(&members, &mut tx).await.unwrap();
    assert_eq!(
        stored.iter().map(|m| m.team.as_str()).collect::<Vec<_>>(),
        ["core", "web", "data"]
    );
    for member in &stored {
        assert!(member.joined_at > DateTime::<Utc>::UNIX_EPOCH);
        let key = (member.account.clone(), member.team.clone());
        assert_eq!(
            Member::load_for_update(&key, &mut tx)
                .await
                .unwrap()
                .as_ref(),
            Some(member)
        );
    }
    assert_eq!(tx.staged().len(), 3);
    tx.rollback().await.unwrap();

    // Nothing to insert: no statement, no event.
    let mut tx = tracker.begin(pool).await.unwrap();
    assert!(Account::insert_all(&[], &mut tx).await.unwrap().is_empty());
    assert!(tx.staged().is_empty());
    tx.rollback().await.unwrap();
}
on_every_backend!(insert_all_matches_insert);

/// More rows than one statement may bind on any backend (17 parameters per row: 1,927 rows
/// per statement on SQLite, 3,855 on PostgreSQL and MySQL): every row is stored and returned
/// in order, with its event.
async fn insert_all_splits_at_the_bind_limit<DB: Schema>(pool: &Pool<DB>, _url: &str)
where
    Wide: TrackedRow<DB>,
{
    let tracker = tracker(pool).await;
    let owner = unique("wide");
    let count: i64 = 4_000;
    let rows: Vec<Wide> = (0..count)
        .map(|n| Wide {
            id: n,
            owner: owner.clone(),
            c1: n,
            c2: n * 2,
            c3: n * 3,
            c4: 4,
            c5: 5,
            c6: 6,
            c7: 7,
            c8: 8,
            c9: 9,
            c10: 10,
            c11: 11,
            c12: 12,
            c13: -n,
            c14: (n % 2 == 0).then(|| format!("even {n}")),
            c15: format!("row {n}"),
        })
        .collect();
    let mut tx = tracker.begin(pool).await.unwrap();
    let stored = Wide::insert_all(&rows, &mut tx).await.unwrap();
    assert_eq!(stored, rows, "every row, as given, in order");
    let staged = tx.staged().to_vec();
    assert_eq!(staged.len(), rows.len());
    for (event, row) in staged.iter().zip(&rows) {
        let properties = &event.json()["properties"];
        assert_eq!(properties["id"], json!(row.id));
        assert_eq!(properties["c15"], json!(row.c15));
    }
    tx.commit().await.unwrap();
    let mut tx = tracker.begin(pool).await.unwrap();
    for n in [0, 1_926, 1_927, 3_854, 3_855, count - 1] {
        assert_eq!(
            Wide::load_for_update(&n, &mut tx).await.unwrap().as_ref(),
            Some(&rows[usize::try_from(n).unwrap()])
        );
    }
    tx.rollback().await.unwrap();
    // Committed in the order they were staged (the outbox's ids are its delivery order),
    // across the outbox's own statements of 500 events each.
    let committed: Vec<Uuid> = outbox_events(&tracker, pool, |e| e.distinct_id == owner)
        .await
        .iter()
        .map(|e| e.uuid)
        .collect();
    let staged: Vec<Uuid> = staged.iter().map(|e| e.uuid).collect();
    assert_eq!(committed, staged, "every event, in the order it was staged");
}
on_every_backend!(insert_all_splits_at_the_bind_limit);

/// `upsert` of a new row is `insert`; of an existing row, `update` (also when nothing
/// changed, which MySQL reports like an insert); the generated column is read back either
/// way; a rollback leaves nothing.
async fn upsert_matches_insert_and_update<DB: Schema>(pool: &Pool<DB>, _url: &str)
where
    Profile: TrackedRow<DB>,
    Account: TrackedRow<DB>,
    Member: TrackedRow<DB>,
{
    let tracker = tracker(pool).await;
    let id = unique("upsert");
    let generated = ["created_at"];

    // A new row: what `insert` would have done.
    let mut tx = tracker.begin(pool).await.unwrap();
    profile(&id, "free").insert(&mut tx).await.unwrap();
    let insert_events = tx.staged().to_vec();
    tx.rollback().await.unwrap();

    let mut tx = tracker.begin(pool).await.unwrap();
    let upserted = profile(&id, "free").upsert(&mut tx).await.unwrap();
    assert!(upserted.was_inserted(), "{upserted:?}");
    let created = upserted.into_row();
    assert!(created.created_at > DateTime::<Utc>::UNIX_EPOCH);
    assert_eq!(
        comparable_all(tx.staged(), &generated),
        comparable_all(&insert_events, &generated)
    );
    assert_eq!(
        tx.staged()[0].json()["properties"]["created_at"],
        serde_json::to_value(created.created_at).unwrap()
    );
    tx.commit().await.unwrap();

    // An existing row, changed: what `update` would have done, and no milestone.
    let mut changed = created.clone();
    changed.plan = "pro".to_owned();
    changed.email = "new@example.com".to_owned();
    let mut tx = tracker.begin(pool).await.unwrap();
    changed.update(&mut tx).await.unwrap();
    let update_events = tx.staged().to_vec();
    tx.rollback().await.unwrap();

    let mut tx = tracker.begin(pool).await.unwrap();
    let mut input = changed.clone();
    input.created_at = DateTime::<Utc>::UNIX_EPOCH;
    let upserted = input.upsert(&mut tx).await.unwrap();
    let Upserted::Updated(updated) = upserted else {
        panic!("expected an update, got {upserted:?}");
    };
    assert_eq!(
        updated, changed,
        "the generated column is read back unchanged"
    );
    assert_eq!(
        comparable_all(tx.staged(), &[]),
        comparable_all(&update_events, &[])
    );
    let names: Vec<&str> = tx.staged().iter().map(|e| e.event.as_ref()).collect();
    assert_eq!(names, ["profile_updated", "$identify"]);
    tx.commit().await.unwrap();
    let mut tx = tracker.begin(pool).await.unwrap();
    assert_eq!(
        Profile::load_for_update(&id, &mut tx).await.unwrap(),
        Some(changed.clone())
    );
    tx.rollback().await.unwrap();

    // An existing row written with the values it has: still an update.
    let mut tx = tracker.begin(pool).await.unwrap();
    let upserted = changed.clone().upsert(&mut tx).await.unwrap();
    assert_eq!(upserted, Upserted::Updated(changed.clone()));
    assert_eq!(
        comparable_all(tx.staged(), &[]),
        comparable_all(&update_events, &[])
    );
    tx.rollback().await.unwrap();

    // A row inserted earlier in the same transaction exists for the upsert too.
    let fresh = unique("upsert-same-tx");
    let mut tx = tracker.begin(pool).await.unwrap();
    profile(&fresh, "free").insert(&mut tx).await.unwrap();
    let upserted = profile(&fresh, "team").upsert(&mut tx).await.unwrap();
    assert!(!upserted.was_inserted(), "{upserted:?}");
    assert_eq!(upserted.row().plan, "team");
    tx.rollback().await.unwrap();

    // Nothing but keys and generated columns: the existing row still comes back.
    let member = Member {
        account: unique("upsert-member"),
        team: "core".to_owned(),
        joined_at: DateTime::<Utc>::UNIX_EPOCH,
    };
    let mut tx = tracker.begin(pool).await.unwrap();
    let first = member.clone().upsert(&mut tx).await.unwrap();
    assert!(first.was_inserted());
    let second = member.clone().upsert(&mut tx).await.unwrap();
    assert_eq!(second, Upserted::Updated(first.row().clone()));
    let names: Vec<&str> = tx.staged().iter().map(|e| e.event.as_ref()).collect();
    assert_eq!(names, ["member_created", "member_updated"]);
    tx.rollback().await.unwrap();

    // Rolled back: neither the row nor its events.
    let gone = unique("upsert-rolled-back");
    let mut tx = tracker.begin(pool).await.unwrap();
    assert!(
        profile(&gone, "free")
            .upsert(&mut tx)
            .await
            .unwrap()
            .was_inserted()
    );
    tx.rollback().await.unwrap();
    let mut tx = tracker.begin(pool).await.unwrap();
    assert_eq!(
        Profile::load_for_update(&gone, &mut tx).await.unwrap(),
        None
    );
    tx.rollback().await.unwrap();

    // A generated key cannot conflict: calling `upsert` on such a model is a compile error
    // (`Upsertable` is not derived for it; tests/ui/fail/upsert_generated_key.rs). A hand-written
    // `impl Upsertable` (below) still gets a refusal before anything is written or staged.
    let owner = unique("upsert-generated");
    let mut tx = tracker.begin(pool).await.unwrap();
    let error = accounts(&owner, 1)
        .remove(0)
        .upsert(&mut tx)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, Error::Unsupported { operation, reason, .. }
            if operation == "upsert into `bk_accounts`" && reason.contains("generated")),
        "{error:?}"
    );
    assert!(tx.staged().is_empty());
    tx.rollback().await.unwrap();

    let outbox = tracker.outbox(pool).events().await.unwrap();
    let names: Vec<&str> = outbox
        .iter()
        .filter(|e| e.distinct_id == id || e.distinct_id == gone)
        .map(|e| e.event.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "profile_created",
            "$identify",
            "profile_updated",
            "$identify"
        ],
        "the committed upserts' events, and nothing of the rolled back ones"
    );
}
on_every_backend!(upsert_matches_insert_and_update);

/// `context` fields are filled as `insert` fills them, and a call that fails half-way stages
/// nothing (the rows it wrote go with the transaction's rollback).
async fn insert_all_fills_context_and_stages_all_or_nothing<DB: Schema>(pool: &Pool<DB>, _url: &str)
where
    Visit: TrackedRow<DB>,
{
    let tracker = tracker(pool).await;
    let visit = |id: &str, visitor: Option<&str>| Visit {
        id: unique(id),
        visitor: visitor.map(str::to_owned),
        session: None,
    };
    let context = || TrackingContext::new().with_session_id("session-1");
    let visitor = unique("visitor");
    let rows = vec![visit("a", Some(&visitor)), visit("b", Some(&visitor))];

    let mut tx = tracker.begin(pool).await.unwrap().with_context(context());
    let mut one_by_one = Vec::new();
    for row in &rows {
        one_by_one.push(row.clone().insert(&mut tx).await.unwrap());
    }
    let events_one = tx.staged().to_vec();
    tx.rollback().await.unwrap();

    let mut tx = tracker.begin(pool).await.unwrap().with_context(context());
    let stored = Visit::insert_all(&rows, &mut tx).await.unwrap();
    assert_eq!(stored, one_by_one);
    assert_eq!(stored[1].session.as_deref(), Some("session-1"));
    assert_eq!(
        comparable_all(tx.staged(), &[]),
        comparable_all(&events_one, &[])
    );
    assert_eq!(
        tx.staged()[0].json()["properties"]["$session_id"],
        "session-1"
    );
    assert_eq!(rows[0].session, None, "the caller's rows are not changed");
    tx.rollback().await.unwrap();

    // The third row has no distinct id anywhere: the call fails, and the events of the first
    // two are not left staged.
    let mut tx = tracker.begin(pool).await.unwrap();
    let mut rows = rows.clone();
    rows.push(visit("c", None));
    let error = Visit::insert_all(&rows, &mut tx).await.unwrap_err();
    assert!(
        matches!(error, Error::MissingDistinctId { .. }),
        "{error:?}"
    );
    assert!(tx.staged().is_empty(), "{:?}", tx.staged());
    tx.rollback().await.unwrap();
}
on_every_backend!(insert_all_fills_context_and_stages_all_or_nothing);

/// A time series keyed by device and instant.
#[derive(Debug, Clone, PartialEq, TrackedModel)]
#[tracked(table = "bk_samples", distinct_id = device)]
struct Sample {
    #[tracked(key, property)]
    device: String,
    #[tracked(key, property)]
    at: DateTime<Utc>,
    #[tracked(property)]
    value: i64,
}

/// `insert_all` returns what `insert` returns for rows whose key the database keeps at its own
/// precision (a timestamp with nanoseconds: PostgreSQL and MariaDB keep microseconds); it
/// failed with RowNotFound, matching the stored rows to the given ones by key.
async fn insert_all_keys_stored_at_the_database_precision<DB: Schema>(pool: &Pool<DB>, _url: &str)
where
    Sample: TrackedRow<DB>,
{
    let tracker = tracker(pool).await;
    let ts = match DB::DIALECT {
        Dialect::Postgres => "TIMESTAMPTZ",
        Dialect::MySql => "DATETIME(6)",
        Dialect::Sqlite => "TEXT",
    };
    posthog_track_tests::execute(
        pool,
        format!(
            "CREATE TABLE bk_samples (device VARCHAR(50) NOT NULL, at {ts} NOT NULL, \
             value BIGINT NOT NULL, PRIMARY KEY (device, at))"
        ),
    )
    .await;
    let at = DateTime::<Utc>::from_timestamp(1_700_000_000, 123_456_789).unwrap();
    let row = |device: &str| Sample {
        device: device.to_owned(),
        at,
        value: 1,
    };
    let mut tx = tracker.begin(pool).await.unwrap();
    let one = row("one").insert(&mut tx).await.unwrap();
    let all = Sample::insert_all(&[row("all"), row("both")], &mut tx)
        .await
        .unwrap();
    let stored: Vec<(&str, DateTime<Utc>)> = all
        .iter()
        .map(|row| (row.device.as_str(), row.at))
        .collect();
    assert_eq!(
        stored,
        [("all", one.at), ("both", one.at)],
        "insert_all as insert"
    );
    tx.rollback().await.unwrap();

    if DB::DIALECT == Dialect::MySql {
        // MySQL, without RETURNING, reads the rows back by their keys: it failed with
        // RowNotFound too (the keys read back are not the keys given).
        posthog_track::__private::ignore_mariadb_returning(true);
        let mut tx = tracker.begin(pool).await.unwrap();
        let all = Sample::insert_all(&[row("mysql-all"), row("mysql-both")], &mut tx).await;
        posthog_track::__private::ignore_mariadb_returning(false);
        let all = all.unwrap();
        let stored: Vec<(&str, DateTime<Utc>)> = all
            .iter()
            .map(|row| (row.device.as_str(), row.at))
            .collect();
        assert_eq!(
            stored,
            [("mysql-all", one.at), ("mysql-both", one.at)],
            "insert_all as insert, without RETURNING"
        );
        tx.rollback().await.unwrap();
    }
}
on_every_backend!(insert_all_keys_stored_at_the_database_precision);

/// How many of the rows with these `ids` are in `bk_visits`, as committed.
async fn committed_visits<DB: Backend>(pool: &Pool<DB>, ids: &[&str]) -> usize {
    let list: Vec<String> = ids.iter().map(|id| format!("'{id}'")).collect();
    let sql = format!("SELECT id FROM bk_visits WHERE id IN ({})", list.join(", "));
    let mut connection = pool.acquire().await.unwrap();
    DB::fetch_all(&mut connection, sqlx::query(sqlx::AssertSqlSafe(sql)))
        .await
        .unwrap()
        .len()
}

/// A write that fails after its statement wrote the row (here: the row has no distinct id, so
/// no event can be staged for it) leaves the transaction unable to commit that row without its
/// events: `commit` fails and rolls back. It committed the rows of `insert`, `insert_all` and
/// the deletion of `delete` with no event at all (the insert on SQLite and MariaDB, and on
/// PostgreSQL when it does not fold).
async fn a_failed_write_never_commits_rows_without_events<DB: Schema>(pool: &Pool<DB>, _url: &str)
where
    Visit: TrackedRow<DB>,
{
    let tracker = tracker(pool).await;
    let visitor = unique("visitor");
    let visit = |visitor: Option<&str>| Visit {
        id: unique("v"),
        visitor: visitor.map(str::to_owned),
        session: None,
    };
    let events_of = |ids: Vec<String>| {
        let tracker = &tracker;
        async move {
            outbox_events(tracker, pool, |event| {
                event
                    .property("visit_id")
                    .and_then(Value::as_str)
                    .is_some_and(|id| ids.iter().any(|wanted| wanted == id))
            })
            .await
            .len()
        }
    };

    // insert
    let lone = visit(None);
    let mut tx = tracker.begin(pool).await.unwrap();
    let error = lone.clone().insert(&mut tx).await.unwrap_err();
    assert!(
        matches!(error, Error::MissingDistinctId { .. }),
        "{error:?}"
    );
    // (A folded insert on PostgreSQL renders its events first and fails before writing; the
    // commit then commits nothing of it.)
    let committed = tx.commit().await;
    assert_eq!(
        committed_visits(pool, &[&lone.id]).await,
        0,
        "insert: the row has no event (commit: {committed:?})"
    );

    // insert_all: the first two rows are written before the third fails
    let rows = vec![visit(Some(&visitor)), visit(Some(&visitor)), visit(None)];
    let ids: Vec<&str> = rows.iter().map(|row| row.id.as_str()).collect();
    let mut tx = tracker.begin(pool).await.unwrap();
    let error = Visit::insert_all(&rows, &mut tx).await.unwrap_err();
    assert!(
        matches!(error, Error::MissingDistinctId { .. }),
        "{error:?}"
    );
    let error = tx.commit().await.unwrap_err();
    assert!(matches!(error, Error::IncompleteWrite { .. }), "{error:?}");
    assert_eq!(committed_visits(pool, &ids).await, 0);
    assert_eq!(
        events_of(ids.iter().map(|id| id.to_string()).collect()).await,
        0
    );

    // delete: the row is deleted, its event cannot be staged
    let kept = visit(Some(&visitor));
    let mut tx = tracker.begin(pool).await.unwrap();
    kept.clone().insert(&mut tx).await.unwrap();
    tx.commit().await.unwrap();
    let mut tx = tracker.begin(pool).await.unwrap();
    let error = Visit {
        visitor: None,
        ..kept.clone()
    }
    .delete(&mut tx)
    .await
    .unwrap_err();
    assert!(
        matches!(error, Error::MissingDistinctId { .. }),
        "{error:?}"
    );
    let error = tx.commit().await.unwrap_err();
    assert!(matches!(error, Error::IncompleteWrite { .. }), "{error:?}");
    assert_eq!(committed_visits(pool, &[&kept.id]).await, 1);

    // A write whose own statement fails wrote nothing: the transaction commits as before.
    let mut tx = tracker.begin(pool).await.unwrap();
    let error = kept.clone().insert(&mut tx).await.unwrap_err();
    assert!(matches!(error, Error::Database(_)), "{error:?}");
    let fresh = visit(Some(&visitor));
    if DB::DIALECT != Dialect::Postgres {
        // (PostgreSQL aborts the transaction at the failed statement.)
        fresh.clone().insert(&mut tx).await.unwrap();
        tx.commit().await.unwrap();
        assert_eq!(committed_visits(pool, &[&fresh.id]).await, 1);
        assert_eq!(events_of(vec![fresh.id.clone()]).await, 1);
    } else {
        tx.rollback().await.unwrap();
    }
}
on_every_backend!(a_failed_write_never_commits_rows_without_events);

/// An insert whose row has no distinct id anywhere (its field, the transaction's, the
/// context's) is refused before its statement is sent: the row was inserted first and the
/// error came after, so the row sat in the caller's open transaction (a `SELECT` there saw
/// it) and the transaction could only roll back, losing the caller's other writes, on SQLite
/// and MariaDB but not on PostgreSQL when the insert folded. Now nothing is written and the
/// transaction commits as after any write that failed before writing.
async fn a_blank_distinct_id_is_refused_before_the_insert<DB: Schema>(pool: &Pool<DB>, _url: &str)
where
    Visit: TrackedRow<DB>,
{
    let tracker = tracker(pool).await;
    let visitor = unique("visitor");
    let kept = Visit {
        id: unique("v"),
        visitor: Some(visitor.clone()),
        session: None,
    };
    let mut tx = tracker.begin(pool).await.unwrap();
    kept.clone().insert(&mut tx).await.unwrap();
    for blank in [None, Some(""), Some(" \t")] {
        let lone = Visit {
            id: unique("v"),
            visitor: blank.map(str::to_owned),
            session: None,
        };
        let error = lone.clone().insert(&mut tx).await.unwrap_err();
        assert!(
            matches!(error, Error::MissingDistinctId { .. }),
            "{blank:?}: {error:?}"
        );
        let sql = format!("SELECT id FROM bk_visits WHERE id = '{}'", lone.id);
        let seen = DB::fetch_all(&mut *tx, sqlx::query(sqlx::AssertSqlSafe(sql)))
            .await
            .unwrap();
        assert!(
            seen.is_empty(),
            "{blank:?}: the refused row is in the transaction"
        );
    }
    tx.commit().await.unwrap();
    assert_eq!(committed_visits(pool, &[&kept.id]).await, 1);
}
on_every_backend!(a_blank_distinct_id_is_refused_before_the_insert);

/// An insert whose future is dropped after its first poll (its statement may be on its way to
/// the database, and sqlx finishes it on the connection's next use) leaves the transaction
/// unable to commit, even after later writes succeed: the row could otherwise commit without
/// its event. It committed the row and no event.
async fn a_cancelled_write_never_commits_rows_without_events<DB: Schema>(
    pool: &Pool<DB>,
    _url: &str,
) where
    Visit: TrackedRow<DB>,
{
    let tracker = tracker(pool).await;
    let visitor = unique("visitor");
    let visit = || Visit {
        id: unique("v"),
        visitor: Some(visitor.clone()),
        session: None,
    };
    let (cancelled, after) = (visit(), visit());
    let mut tx = tracker.begin(pool).await.unwrap();
    let finished = {
        // Polled once, then dropped.
        let mut insert = std::pin::pin!(cancelled.clone().insert(&mut tx));
        let polled =
            std::future::poll_fn(|cx| std::task::Poll::Ready(insert.as_mut().poll(cx))).await;
        polled.is_ready()
    };
    // (Refused before it sends anything when the first did not finish: on MySQL/MariaDB the
    // connection may be out of step then, see the next test.)
    let later = after.clone().insert(&mut tx).await;
    if finished {
        later.unwrap();
        // (sqlx may finish a statement within one poll: nothing was cancelled then.)
        tx.commit().await.unwrap();
        assert_eq!(committed_visits(pool, &[&cancelled.id, &after.id]).await, 2);
        return;
    }
    // A transaction that can only roll back takes no more writes.
    let error = later.unwrap_err();
    assert!(
        matches!(error, Error::IncompleteWrite { table: "bk_visits" }),
        "{error:?}"
    );
    let error = tx.commit().await.unwrap_err();
    assert!(
        matches!(error, Error::IncompleteWrite { table: "bk_visits" }),
        "{error:?}"
    );
    assert_eq!(committed_visits(pool, &[&cancelled.id, &after.id]).await, 0);
}
on_every_backend!(a_cancelled_write_never_commits_rows_without_events);

/// sqlx's MySQL connection cannot resume after a statement's future is dropped half-way (here
/// while the insert is being prepared): its next statement waits for an answer the server
/// never sends (sqlx#563). The `ROLLBACK` that `commit` and `rollback` send after a cancelled
/// write could hang there for good (a CI run hung 90 minutes on it), and the pool's slot was
/// lost. Such a connection is closed instead: both return at once, the row's locks are gone
/// and the pool goes on working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_cancelled_mid_statement_on_mariadb_neither_hangs_nor_holds_locks() {
    let Some(url) = posthog_track_tests::database_url("MYSQL_URL") else {
        return;
    };
    let pool = posthog_track_tests::isolated_mysql(&url, "bulk_cancel_mid_statement").await;
    let options = pool.connect_options();
    let proxy = slow_proxy(options.get_host(), options.get_port()).await;
    let through_proxy = async || {
        sqlx::mysql::MySqlPoolOptions::new()
            .max_connections(1)
            .connect_with((*options).clone().host("127.0.0.1").port(proxy))
            .await
            .unwrap()
    };
    cancelled_mid_statement(
        &pool,
        through_proxy,
        "SET SESSION innodb_lock_wait_timeout = 5",
    )
    .await;
}

/// The same on PostgreSQL, whose sqlx connection reads past the answers of a statement cut
/// off half-way: the `ROLLBACK` goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_cancelled_mid_statement_on_postgres_neither_hangs_nor_holds_locks() {
    let Some(url) = posthog_track_tests::database_url("POSTGRES_URL") else {
        return;
    };
    let pool = posthog_track_tests::isolated_postgres(&url, "bulk_cancel_mid_statement").await;
    let options = pool.connect_options();
    let proxy = slow_proxy(options.get_host(), options.get_port()).await;
    let through_proxy = async || {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect_with((*options).clone().host("127.0.0.1").port(proxy))
            .await
            .unwrap()
    };
    cancelled_mid_statement(&pool, through_proxy, "SET lock_timeout = '5s'").await;
}

/// Cancels an insert after its first poll on a pool of its own (`through_proxy`: one
/// connection, which has not prepared the insert yet, reaching the server through a proxy
/// that holds its answers back, so the prepare's answer is still on its way), then ends the
/// transaction with `commit` and with `rollback`: neither may hang, the row's locks must be
/// gone (`lock_timeout` bounds the wait for them) and the pool must work again.
async fn cancelled_mid_statement<DB: Schema>(
    pool: &Pool<DB>,
    through_proxy: impl AsyncFn() -> Pool<DB>,
    lock_timeout: &'static str,
) where
    Visit: TrackedRow<DB>,
{
    use std::time::Duration;
    let tracker = tracker(pool).await;
    let visitor = unique("visitor");
    for end in ["commit", "rollback"] {
        let fresh = through_proxy().await;
        let cancelled = Visit {
            id: unique("v"),
            visitor: Some(visitor.clone()),
            session: None,
        };
        let mut tx = tracker.begin(&fresh).await.unwrap();
        {
            let mut insert = std::pin::pin!(cancelled.clone().insert(&mut tx));
            let polled =
                std::future::poll_fn(|cx| std::task::Poll::Ready(insert.as_mut().poll(cx))).await;
            assert!(
                polled.is_pending(),
                "{end}: the insert finished in one poll"
            );
        }
        let ended = tokio::time::timeout(Duration::from_secs(60), async {
            match end {
                "commit" => tx.commit().await,
                _ => tx.rollback().await,
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{end} after a cancelled write hung"));
        if end == "commit" {
            let error = ended.unwrap_err();
            assert!(
                matches!(error, Error::IncompleteWrite { table: "bk_visits" }),
                "{error:?}"
            );
        } else {
            ended.unwrap();
        }
        // No lock of the cancelled insert is left: the same key is free at once.
        let mut other = pool.acquire().await.unwrap();
        DB::execute(&mut other, sqlx::query(lock_timeout))
            .await
            .unwrap();
        let row = Visit {
            visitor: Some(visitor.clone()),
            ..cancelled
        };
        let mut tx = tracker.track(sqlx::Connection::begin(&mut *other).await.unwrap());
        row.insert(&mut tx)
            .await
            .unwrap_or_else(|error| panic!("{end}: the cancelled row is still locked: {error}"));
        tx.rollback().await.unwrap();
        // The pool's one connection slot is usable again.
        let alive = tokio::time::timeout(Duration::from_secs(30), fresh.acquire())
            .await
            .unwrap_or_else(|_| panic!("{end}: the pool's connection never came back"));
        let mut alive = alive.unwrap();
        DB::execute(&mut alive, sqlx::query("SELECT 1"))
            .await
            .unwrap();
        drop(alive);
        fresh.close().await;
    }
}

/// A TCP proxy on 127.0.0.1 to the server at `host`:`port` that holds each of the server's
/// answers back for 50 ms; returns its port.
async fn slow_proxy(host: &str, port: u16) -> u16 {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let delay = std::time::Duration::from_millis(50);
    let host = if host == "localhost" {
        "127.0.0.1"
    } else {
        host
    };
    let server = tokio::net::lookup_host((host, port))
        .await
        .unwrap()
        .next()
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(upstream) = tokio::net::TcpStream::connect(server).await else {
                    return;
                };
                let (mut from_client, mut to_client) = client.into_split();
                let (mut from_server, mut to_server) = upstream.into_split();
                let requests = tokio::io::copy(&mut from_client, &mut to_server);
                let answers = async {
                    let mut buffer = vec![0; 64 * 1024];
                    loop {
                        let read = from_server.read(&mut buffer).await?;
                        if read == 0 {
                            return Ok::<_, std::io::Error>(());
                        }
                        tokio::time::sleep(delay).await;
                        to_client.write_all(&buffer[..read]).await?;
                    }
                };
                // Either side closing closes both.
                tokio::select! {
                    _ = requests => {}
                    _ = answers => {}
                }
            });
        }
    });
    address
}

/// PostgreSQL aborts a transaction at a failed statement and answers its `COMMIT` with a
/// rollback: `commit` must not report that as committed (it returned `Ok` for a transaction
/// whose earlier inserts were all gone).
async fn commit_after_a_failed_statement_is_not_ok<DB: Schema>(pool: &Pool<DB>, _url: &str)
where
    Visit: TrackedRow<DB>,
{
    let tracker = tracker(pool).await;
    let visitor = unique("visitor");
    let visit = || Visit {
        id: unique("v"),
        visitor: Some(visitor.clone()),
        session: None,
    };
    // A first insert of the model, so that the next ones fold on PostgreSQL: the commit then
    // has no outbox statement of its own left to fail on.
    let mut tx = tracker.begin(pool).await.unwrap();
    visit().insert(&mut tx).await.unwrap();
    tx.commit().await.unwrap();

    let first = visit();
    let mut tx = tracker.begin(pool).await.unwrap();
    first.clone().insert(&mut tx).await.unwrap();
    let error = first.clone().insert(&mut tx).await.unwrap_err();
    assert!(matches!(error, Error::Database(_)), "{error:?}");
    let committed = tx.commit().await;
    let rows = committed_visits(pool, &[&first.id]).await;
    assert_eq!(
        committed.is_ok(),
        rows == 1,
        "commit said {committed:?}, and {rows} row committed"
    );
}
on_every_backend!(commit_after_a_failed_statement_is_not_ok);

/// A timestamp the database keeps at microseconds, written from Rust (not `generated`).
#[derive(Debug, Clone, PartialEq, TrackedModel)]
#[tracked(table = "bk_stamped", distinct_id = id)]
struct Stamped {
    #[tracked(key, property)]
    id: String,
    #[tracked(property)]
    at: DateTime<Utc>,
}

/// `upsert` of an existing row stages exactly what `update` of it stages, for a value the
/// column keeps otherwise than given too (a timestamp with nanoseconds): it sent the stored
/// microseconds where `update` sends the value given.
async fn upsert_of_an_existing_row_stages_what_update_stages<DB: Schema>(
    pool: &Pool<DB>,
    _url: &str,
) where
    Stamped: TrackedRow<DB>,
{
    let tracker = tracker(pool).await;
    let ts = match DB::DIALECT {
        Dialect::Postgres => "TIMESTAMPTZ",
        Dialect::MySql => "DATETIME(6)",
        Dialect::Sqlite => "TEXT",
    };
    posthog_track_tests::execute(
        pool,
        format!("CREATE TABLE bk_stamped (id VARCHAR(80) PRIMARY KEY, at {ts} NOT NULL)"),
    )
    .await;
    let id = unique("stamped");
    let mut tx = tracker.begin(pool).await.unwrap();
    Stamped {
        id: id.clone(),
        at: DateTime::<Utc>::UNIX_EPOCH,
    }
    .insert(&mut tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let row = Stamped {
        id,
        at: DateTime::<Utc>::from_timestamp(1_700_000_000, 123_456_789).unwrap(),
    };
    let mut tx = tracker.begin(pool).await.unwrap();
    row.update(&mut tx).await.unwrap();
    let update_events = tx.staged().to_vec();
    tx.rollback().await.unwrap();

    let mut tx = tracker.begin(pool).await.unwrap();
    let upserted = row.clone().upsert(&mut tx).await.unwrap();
    assert!(!upserted.was_inserted(), "{upserted:?}");
    assert_eq!(
        comparable_all(tx.staged(), &[]),
        comparable_all(&update_events, &[])
    );
    tx.rollback().await.unwrap();
}
on_every_backend!(upsert_of_an_existing_row_stages_what_update_stages);

/// A key written from Rust and another unique column.
#[derive(Debug, Clone, PartialEq, TrackedModel)]
#[tracked(table = "bk_handles", distinct_id = id)]
struct Handle {
    #[tracked(key, property)]
    id: String,
    #[tracked(property)]
    handle: String,
    #[tracked(property)]
    bio: String,
}

/// An upsert whose row conflicts on another unique key than the model's key fails, on every
/// backend, with an error that says so, and the other row is not left changed. On MySQL/MariaDB
/// `ON DUPLICATE KEY UPDATE` rewrote the other row and the upsert then failed with sqlx's
/// "no rows returned by a query that expected to return at least one row".
async fn upsert_conflicting_on_another_unique_key_fails<DB: Schema>(pool: &Pool<DB>, _url: &str)
where
    Handle: TrackedRow<DB>,
{
    let tracker = tracker(pool).await;
    posthog_track_tests::execute(
        pool,
        "CREATE TABLE bk_handles (id VARCHAR(80) PRIMARY KEY, handle VARCHAR(80) NOT NULL UNIQUE, \
         bio TEXT NOT NULL)",
    )
    .await;
    let handle = unique("handle");
    let owner = Handle {
        id: unique("owner"),
        handle: handle.clone(),
        bio: "the owner's".to_owned(),
    };
    let mut tx = tracker.begin(pool).await.unwrap();
    owner.clone().insert(&mut tx).await.unwrap();
    tx.commit().await.unwrap();

    let mut tx = tracker.begin(pool).await.unwrap();
    let error = Handle {
        id: unique("other"),
        handle,
        bio: "someone else's".to_owned(),
    }
    .upsert(&mut tx)
    .await
    .unwrap_err();
    let unique_violation = match &error {
        Error::Database(sqlx::Error::Database(database)) => database.is_unique_violation(),
        Error::Unsupported { reason, .. } => reason.contains("another unique key"),
        _ => false,
    };
    assert!(unique_violation, "{error:?}");
    assert!(tx.staged().is_empty());
    let _ = tx.commit().await;
    let mut tx = tracker.begin(pool).await.unwrap();
    assert_eq!(
        Handle::load_for_update(&owner.id, &mut tx).await.unwrap(),
        Some(owner)
    );
    tx.rollback().await.unwrap();
}
on_every_backend!(upsert_conflicting_on_another_unique_key_fails);

/// InnoDB answers a deadlock by rolling back the whole transaction, not the statement: the
/// session then runs in autocommit, so a `commit` afterwards wrote the earlier writes' events
/// to the outbox, each committed on its own, for rows that were rolled back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadlock_victim_commits_no_event_without_its_row() {
    let Some(url) = posthog_track_tests::database_url("MYSQL_URL") else {
        return;
    };
    let pool = posthog_track_tests::isolated_mysql(&url, "bulk_deadlock").await;
    let tracker = tracker(&pool).await;
    let visitor = unique("visitor");
    let visit = || Visit {
        id: unique("v"),
        visitor: Some(visitor.clone()),
        session: None,
    };
    let (x, y) = (visit(), visit());
    let mut tx = tracker.begin(&pool).await.unwrap();
    x.clone().insert(&mut tx).await.unwrap();
    y.clone().insert(&mut tx).await.unwrap();
    tx.commit().await.unwrap();

    // Each transaction inserts a row, locks one of x and y, then wants the other.
    let (a, b) = (visit(), visit());
    let mut first = tracker.begin(&pool).await.unwrap();
    a.clone().insert(&mut first).await.unwrap();
    Visit::load_for_update(&x.id, &mut first).await.unwrap();
    let mut second = tracker.begin(&pool).await.unwrap();
    b.clone().insert(&mut second).await.unwrap();
    Visit::load_for_update(&y.id, &mut second).await.unwrap();
    let wants_y = {
        let y = y.id.clone();
        tokio::spawn(async move {
            let locked = Visit::load_for_update(&y, &mut first).await.map(|_| ());
            (locked, first)
        })
    };
    // Whichever asks first waits for the other, whose request then closes the cycle: InnoDB
    // makes one of them the victim.
    let second_locked = Visit::load_for_update(&x.id, &mut second).await.map(|_| ());
    let (first_locked, first) = wants_y.await.unwrap();
    assert!(
        first_locked.is_err() || second_locked.is_err(),
        "one transaction is the deadlock's victim"
    );
    // The victim goes on writing: nothing of that may commit on its own either.
    let (mut first, mut second) = (first, second);
    let (c, d) = (visit(), visit());
    let victim = if first_locked.is_err() {
        &mut first
    } else {
        &mut second
    };
    let later = if first_locked.is_err() { &c } else { &d };
    let _ = later.clone().insert(victim).await;
    let first_committed = first.commit().await;
    let second_committed = second.commit().await;
    let later_rows = committed_visits(&pool, &[&later.id]).await;
    assert_eq!(
        later_rows, 0,
        "a write after the deadlock committed on its own"
    );
    for (row, committed) in [(&a, first_committed), (&b, second_committed)] {
        let rows = committed_visits(&pool, &[&row.id]).await;
        let events = outbox_events(&tracker, &pool, |event| {
            event.property("visit_id").and_then(Value::as_str) == Some(row.id.as_str())
        })
        .await
        .len();
        assert_eq!(
            rows, events,
            "commit said {committed:?}: {rows} row(s), {events} event(s)"
        );
        assert_eq!(
            committed.is_ok(),
            rows == 1,
            "commit said {committed:?}, {rows} row(s)"
        );
    }
}

/// Concurrent upserts of the same new key, each in a transaction of its own: every one
/// succeeds, exactly one inserts and the others update, and the outbox holds the events of
/// one insert and of the updates. On MySQL/MariaDB the upsert's probe (`SELECT ... FOR
/// UPDATE` of the missing key) took gap locks that every transaction held at once, so their
/// INSERTs waited on each other and InnoDB killed all but one with a deadlock (1213).
async fn concurrent_upserts_of_a_new_key_all_succeed<DB: Schema>(pool: &Pool<DB>, _url: &str)
where
    Profile: TrackedRow<DB>,
{
    // Six, with the pool's eight connections: each transaction holds one until its commit.
    const TASKS: usize = 6;
    let tracker = tracker(pool).await;
    let id = unique("upsert-race");
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(TASKS));
    let mut tasks = Vec::new();
    for n in 0..TASKS {
        let (tracker, pool, id, barrier) =
            (tracker.clone(), pool.clone(), id.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            // Before `begin`: SQLite's takes the one write lock (BEGIN IMMEDIATE).
            barrier.wait().await;
            let mut tx = tracker.begin(&pool).await?;
            // Half the same values (MySQL reports an unchanged row like an insert), half not.
            let plan = if n % 2 == 0 { "free" } else { "pro" };
            let upserted = profile(&id, plan).upsert(&mut tx).await;
            let upserted = match upserted {
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
    let mut inserted = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(true) => inserted += 1,
            Ok(false) => {}
            Err(error) => panic!("a concurrent upsert failed: {error:?}"),
        }
    }
    assert_eq!(inserted, 1, "exactly one upsert inserts the row");
    let names: Vec<String> = tracker
        .outbox(pool)
        .events()
        .await
        .unwrap()
        .into_iter()
        .filter(|event| event.distinct_id == id && event.event != "$identify")
        .map(|event| event.event)
        .collect();
    let created = names
        .iter()
        .filter(|name| *name == "profile_created")
        .count();
    let updated = names
        .iter()
        .filter(|name| *name == "profile_updated")
        .count();
    assert_eq!(
        (created, updated, names.len()),
        (1, TASKS - 1, TASKS),
        "{names:?}"
    );

    // On one connection, an update (of a row left as it was) then an insert: what told the
    // first apart must not leak into the second.
    let mut tx = tracker.begin(pool).await.unwrap();
    let fresh = unique("upsert-race-fresh");
    let mut inserted = Vec::new();
    for (key, plan) in [
        (&id, "free"),
        (&id, "free"),
        (&fresh, "free"),
        (&fresh, "pro"),
    ] {
        let upserted = profile(key, plan).upsert(&mut tx).await.unwrap();
        inserted.push(upserted.was_inserted());
    }
    assert_eq!(inserted, [false, false, true, false]);
    tx.rollback().await.unwrap();
}
on_every_backend!(concurrent_upserts_of_a_new_key_all_succeed);
