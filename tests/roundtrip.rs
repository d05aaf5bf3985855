//! Round trips through real databases: every tracked write on SQLite, PostgreSQL and MariaDB,
//! checked against the rows the database holds and the events the outbox holds.

use chrono::{DateTime, Utc};
use posthog_track::outbox::OutboxEvent;
use posthog_track::{Backend, Error, TrackedModel, TrackedRow, Tracker};
use posthog_track_tests::{database_url, unique};
use serde_json::{Value, json};
use sqlx::Pool;

#[derive(Debug, Clone, PartialEq, TrackedModel, sqlx::FromRow)]
#[tracked(
    table = "rt_accounts",
    distinct_id = owner,
    insert_event = "account_created",
    update_event = "account_updated",
    delete_event = "account_deleted"
)]
struct Account {
    #[tracked(key, generated, property = "account_id")]
    id: i64,
    #[tracked(property)]
    owner: String,
    #[tracked(person)]
    email: String,
    #[tracked(person_once)]
    first_referrer: String,
    #[tracked(property, milestone(event = "plan_upgraded", when = upgraded))]
    plan: String,
    #[tracked(property)]
    nickname: Option<String>,
    #[tracked(skip = "secret; must never reach PostHog")]
    secret: String,
    // `order` is reserved in every dialect: only a quoted identifier works.
    #[tracked(property = "sort_order", column = "order")]
    #[sqlx(rename = "order")]
    sort_order: i64,
    #[tracked(generated, property)]
    created_at: DateTime<Utc>,
}

fn upgraded(before: &String, after: &String) -> bool {
    before == "free" && after != "free"
}

/// Composite key, nothing generated in it: MySQL reads `joined_at` back by the key.
#[derive(Debug, Clone, PartialEq, TrackedModel)]
#[tracked(table = "rt_memberships")]
struct Membership {
    #[tracked(key, property)]
    account: String,
    #[tracked(key, property)]
    team: String,
    #[tracked(property)]
    role: String,
    #[tracked(generated, property)]
    joined_at: DateTime<Utc>,
}

const SQLITE_SCHEMA: &[&str] = &[
    r#"CREATE TABLE IF NOT EXISTS rt_accounts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        owner TEXT NOT NULL, email TEXT NOT NULL, first_referrer TEXT NOT NULL,
        plan TEXT NOT NULL, nickname TEXT, secret TEXT NOT NULL, "order" INTEGER NOT NULL,
        created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')))"#,
    r#"CREATE TABLE IF NOT EXISTS rt_memberships (
        account TEXT NOT NULL, team TEXT NOT NULL, role TEXT NOT NULL,
        joined_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
        PRIMARY KEY (account, team))"#,
];

const POSTGRES_SCHEMA: &[&str] = &[
    r#"CREATE TABLE IF NOT EXISTS rt_accounts (
        id BIGSERIAL PRIMARY KEY,
        owner TEXT NOT NULL, email TEXT NOT NULL, first_referrer TEXT NOT NULL,
        plan TEXT NOT NULL, nickname TEXT, secret TEXT NOT NULL, "order" BIGINT NOT NULL,
        created_at TIMESTAMPTZ NOT NULL DEFAULT now())"#,
    r#"CREATE TABLE IF NOT EXISTS rt_memberships (
        account TEXT NOT NULL, team TEXT NOT NULL, role TEXT NOT NULL,
        joined_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        PRIMARY KEY (account, team))"#,
];

const MYSQL_SCHEMA: &[&str] = &[
    r#"CREATE TABLE IF NOT EXISTS rt_accounts (
        id BIGINT AUTO_INCREMENT PRIMARY KEY,
        owner VARCHAR(100) NOT NULL, email TEXT NOT NULL, first_referrer TEXT NOT NULL,
        plan TEXT NOT NULL, nickname TEXT, secret TEXT NOT NULL, `order` BIGINT NOT NULL,
        created_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6))
        ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"#,
    r#"CREATE TABLE IF NOT EXISTS rt_memberships (
        account VARCHAR(100) NOT NULL, team VARCHAR(100) NOT NULL, role TEXT NOT NULL,
        joined_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
        PRIMARY KEY (account, team)) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"#,
];

// Strings that break naive SQL or JSON building; they must come back byte for byte.
const TRICKY_EMAIL: &str = "o'brien+\"quoted\"@example.com";
const TRICKY_NICKNAME: &str = "Zoë 🚀 名前'); DROP TABLE rt_accounts; --";

#[tokio::test]
async fn sqlite_round_trip() {
    let pool = sqlx::SqlitePool::connect("sqlite::memory:").await.unwrap();
    round_trip(&pool).await;
}

#[tokio::test]
async fn postgres_round_trip() {
    if let Some(pool) = connected::<sqlx::Postgres>("POSTGRES_URL").await {
        round_trip(&pool).await;
    }
}

#[tokio::test]
async fn mysql_round_trip() {
    if let Some(pool) = connected::<sqlx::MySql>("MYSQL_URL").await {
        round_trip(&pool).await;
    }
}

/// A pool on the database `var` names, when it names one.
async fn connected<DB: Backend>(var: &str) -> Option<Pool<DB>> {
    let url = database_url(var)?;
    Some(Pool::<DB>::connect(&url).await.unwrap())
}

fn new_account(owner: &str) -> Account {
    Account {
        id: 0,
        owner: owner.to_owned(),
        email: TRICKY_EMAIL.to_owned(),
        first_referrer: "newsletter".to_owned(),
        plan: "free".to_owned(),
        nickname: None,
        secret: "hunter2".to_owned(),
        sort_order: 7,
        created_at: DateTime::<Utc>::UNIX_EPOCH,
    }
}

/// The whole scenario, once per backend. The bounds are what raw sqlx needs to read rows back
/// generically; the tracked writes themselves need only `DB: Backend`.
async fn round_trip<DB>(pool: &Pool<DB>)
where
    DB: TestDb,
    Account: TrackedRow<DB>,
    Membership: TrackedRow<DB>,
{
    DB::create_tables(pool).await;
    // Live, so that commits write the outbox, and no relay: the test reads what was committed.
    let tracker = Tracker::builder()
        .api_key("phc_roundtrip")
        .external_relay(true)
        .build();
    tracker.migrate(pool).await.unwrap();
    let owner = unique("owner");

    // Insert: generated columns come back, tricky values are stored verbatim.
    let mut tx = tracker.begin(pool).await.unwrap();
    let account = new_account(&owner).insert(&mut tx).await.unwrap();
    assert!(account.id > 0, "the generated id is read back");
    assert!(
        account.created_at > DateTime::<Utc>::UNIX_EPOCH,
        "created_at is read back"
    );
    let staged = tx.staged().to_vec();
    tx.commit().await.unwrap();
    assert_eq!(staged.len(), 1);
    let stored = DB::fetch_account(pool, account.id)
        .await
        .expect("the row is committed");
    assert_eq!(
        stored, account,
        "the row as stored equals the row insert returned"
    );

    // update_changed writes only changed columns: a column changed behind the model's back
    // survives, and a no-op sends no statement at all.
    DB::set_nickname(pool, account.id, TRICKY_NICKNAME).await;
    let mut upgraded = account.clone();
    upgraded.plan = "pro".to_owned();
    let mut tx = tracker.begin(pool).await.unwrap();
    assert_eq!(upgraded.update_changed(&account, &mut tx).await.unwrap(), 1);
    assert_eq!(
        upgraded.update_changed(&upgraded, &mut tx).await.unwrap(),
        0
    );
    tx.commit().await.unwrap();
    let stored = DB::fetch_account(pool, account.id).await.unwrap();
    assert_eq!(stored.plan, "pro");
    assert_eq!(
        stored.nickname.as_deref(),
        Some(TRICKY_NICKNAME),
        "update_changed must not write the unchanged nickname"
    );

    // update writes every non-key column, NULL included.
    let mut renamed = upgraded.clone();
    renamed.email = "zoë@example.com".to_owned();
    let mut tx = tracker.begin(pool).await.unwrap();
    renamed.update(&mut tx).await.unwrap();
    tx.commit().await.unwrap();
    let stored = DB::fetch_account(pool, account.id).await.unwrap();
    assert_eq!(
        stored.nickname, None,
        "update writes every column, so the NULL is written"
    );
    assert_eq!(stored.email, "zoë@example.com");

    // Nothing changed means nothing sent: even a vanished row is not an error then.
    let mut tx = tracker.begin(pool).await.unwrap();
    let mut other_key = renamed.clone();
    other_key.id += 1_000_000;
    assert!(matches!(
        other_key.update_changed(&renamed, &mut tx).await,
        Err(Error::KeyChanged {
            table: "rt_accounts"
        })
    ));
    assert!(matches!(
        other_key.update(&mut tx).await,
        Err(Error::RowNotFound { .. })
    ));
    assert!(tx.staged().is_empty(), "failed writes stage nothing");
    tx.rollback().await.unwrap();

    // Delete.
    let mut tx = tracker.begin(pool).await.unwrap();
    renamed.delete(&mut tx).await.unwrap();
    tx.commit().await.unwrap();
    assert!(DB::fetch_account(pool, account.id).await.is_none());

    // The outbox holds exactly the committed events, in order.
    let events = outbox_events(&tracker, pool, &owner).await;
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        names,
        [
            "account_created",
            "account_updated",
            "plan_upgraded",
            "account_updated",
            "account_deleted"
        ]
    );
    let created_at = serde_json::to_value(account.created_at).unwrap();
    let common = |event: &OutboxEvent| {
        assert_eq!(event.distinct_id, owner);
        assert!(
            event.timestamp.ends_with('Z'),
            "UTC timestamp: {}",
            event.timestamp
        );
        assert!(DateTime::parse_from_rfc3339(&event.timestamp).is_ok());
        assert_eq!(event.payload["uuid"], json!(event.uuid.to_string()));
        assert_eq!(event.payload["timestamp"], json!(event.timestamp));
        assert_eq!(event.property("$lib"), Some(&json!("posthog-track")));
        assert_eq!(
            event.property("secret"),
            None,
            "skipped fields never leave the database"
        );
    };
    events.iter().for_each(common);

    assert_eq!(
        properties(&events[0]),
        json!({
            "account_id": account.id, "owner": owner, "email": TRICKY_EMAIL,
            "first_referrer": "newsletter", "plan": "free", "nickname": null,
            "sort_order": 7, "created_at": created_at,
            "$set": {"email": TRICKY_EMAIL},
            "$set_once": {"first_referrer": "newsletter"},
        })
    );
    assert_eq!(
        properties(&events[1]),
        json!({"account_id": account.id, "plan": "pro"}),
        "update_changed sends the key and the changed properties only"
    );
    assert_eq!(
        properties(&events[2]),
        json!({
            "account_id": account.id, "owner": owner, "email": TRICKY_EMAIL,
            "first_referrer": "newsletter", "plan": "pro", "nickname": null,
            "sort_order": 7, "created_at": created_at, "previous_plan": "free",
        }),
        "the milestone carries the new row and the previous plan"
    );
    assert_eq!(
        events[1].timestamp, events[2].timestamp,
        "one write, one timestamp"
    );
    assert_ne!(events[1].uuid, events[2].uuid);
    assert_eq!(
        properties(&events[3])["$set"],
        json!({"email": "zoë@example.com"})
    );
    assert_eq!(properties(&events[3])["nickname"], json!(null));
    assert_eq!(properties(&events[4]), json!({"account_id": account.id}));

    let checks = Checks {
        tracker: &tracker,
        pool,
    };
    checks.rollback_and_drop_leave_nothing().await;
    checks.composite_keys().await;
    checks.own_queries_share_the_transaction().await;
}

/// The checks after the writes of [`round_trip`], on its tracker and pool.
struct Checks<'a, DB: Backend> {
    tracker: &'a Tracker,
    pool: &'a Pool<DB>,
}

impl<DB> Checks<'_, DB>
where
    DB: TestDb,
    Account: TrackedRow<DB>,
    Membership: TrackedRow<DB>,
{
    async fn rollback_and_drop_leave_nothing(&self) {
        let owner = unique("rolled-back");
        let mut tx = self.tracker.begin(self.pool).await.unwrap();
        new_account(&owner).insert(&mut tx).await.unwrap();
        tx.rollback().await.unwrap();
        {
            let mut tx = self.tracker.begin(self.pool).await.unwrap();
            new_account(&owner).insert(&mut tx).await.unwrap();
            // Dropped without commit.
        }
        let rows = DB::count_owned(self.pool, &owner).await;
        assert_eq!(rows, 0, "no row survives a rollback or a drop");
        assert!(
            outbox_events(self.tracker, self.pool, &owner)
                .await
                .is_empty(),
            "and no event either"
        );
    }

    async fn composite_keys(&self) {
        let account = unique("member");
        let mut tx = self.tracker.begin(self.pool).await.unwrap();
        tx.set_distinct_id(account.clone());
        let membership = Membership {
            account: account.clone(),
            team: "core".to_owned(),
            role: "viewer".to_owned(),
            joined_at: DateTime::<Utc>::UNIX_EPOCH,
        }
        .insert(&mut tx)
        .await
        .unwrap();
        assert!(membership.joined_at > DateTime::<Utc>::UNIX_EPOCH);
        let mut promoted = membership.clone();
        promoted.role = "admin".to_owned();
        assert_eq!(
            promoted.update_changed(&membership, &mut tx).await.unwrap(),
            1
        );
        tx.commit().await.unwrap();

        let events = outbox_events(self.tracker, self.pool, &account).await;
        let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
        assert_eq!(
            names,
            ["membership_created", "membership_updated"],
            "default event names"
        );
        assert_eq!(
            properties(&events[1]),
            json!({"account": account, "team": "core", "role": "admin"})
        );

        // Without a distinct id anywhere, a write is refused rather than sent anonymously.
        let mut tx = self.tracker.begin(self.pool).await.unwrap();
        let error = promoted.delete(&mut tx).await.unwrap_err();
        assert!(matches!(error, Error::MissingDistinctId { .. }), "{error}");
    }

    async fn own_queries_share_the_transaction(&self) {
        let owner = unique("own-query");
        let mut tx = self.tracker.begin(self.pool).await.unwrap();
        let account = new_account(&owner).insert(&mut tx).await.unwrap();
        // A plain sqlx query inside the tracked transaction sees the uncommitted row ...
        assert_eq!(DB::count_id_in(&mut tx, account.id).await, 1);
        // ... and rolls back with it.
        tx.rollback().await.unwrap();
        assert_eq!(DB::count_owned(self.pool, &owner).await, 0);
    }
}

/// This test's events: the outbox is shared with every other test on the same server.
async fn outbox_events<DB: Backend>(
    tracker: &Tracker,
    pool: &Pool<DB>,
    distinct_id: &str,
) -> Vec<OutboxEvent> {
    let events = tracker.outbox(pool).events().await.unwrap();
    events
        .into_iter()
        .filter(|event| event.distinct_id == distinct_id)
        .collect()
}

/// The event's properties without the library stamps, for whole-object comparison.
fn properties(event: &OutboxEvent) -> Value {
    let mut properties = event.payload["properties"].clone();
    if let Some(map) = properties.as_object_mut() {
        map.remove("$lib");
        map.remove("$lib_version");
    }
    properties
}

/// The raw sqlx queries the checks need, once per backend: the placeholders differ, and
/// concrete types keep sqlx's executor bounds out of the generic scenario.
trait TestDb: Backend {
    async fn create_tables(pool: &Pool<Self>);
    /// Changes a column behind the model's back.
    async fn set_nickname(pool: &Pool<Self>, id: i64, nickname: &str);
    async fn fetch_account(pool: &Pool<Self>, id: i64) -> Option<Account>;
    async fn count_owned(pool: &Pool<Self>, owner: &str) -> i64;
    async fn count_id_in(connection: &mut Self::Connection, id: i64) -> i64;
}

macro_rules! impl_test_db {
    ($db:ty, $schema:expr, $p1:literal, $p2:literal) => {
        impl TestDb for $db {
            async fn create_tables(pool: &Pool<Self>) {
                for statement in $schema {
                    sqlx::raw_sql(sqlx::AssertSqlSafe(*statement))
                        .execute(pool)
                        .await
                        .unwrap();
                }
            }

            async fn set_nickname(pool: &Pool<Self>, id: i64, nickname: &str) {
                sqlx::query(concat!(
                    "UPDATE rt_accounts SET nickname = ",
                    $p1,
                    " WHERE id = ",
                    $p2
                ))
                .bind(nickname)
                .bind(id)
                .execute(pool)
                .await
                .unwrap();
            }

            async fn fetch_account(pool: &Pool<Self>, id: i64) -> Option<Account> {
                sqlx::query_as(concat!("SELECT * FROM rt_accounts WHERE id = ", $p1))
                    .bind(id)
                    .fetch_optional(pool)
                    .await
                    .unwrap()
            }

            async fn count_owned(pool: &Pool<Self>, owner: &str) -> i64 {
                sqlx::query_scalar(concat!(
                    "SELECT COUNT(*) FROM rt_accounts WHERE owner = ",
                    $p1
                ))
                .bind(owner)
                .fetch_one(pool)
                .await
                .unwrap()
            }

            async fn count_id_in(connection: &mut Self::Connection, id: i64) -> i64 {
                sqlx::query_scalar(concat!("SELECT COUNT(*) FROM rt_accounts WHERE id = ", $p1))
                    .bind(id)
                    .fetch_one(connection)
                    .await
                    .unwrap()
            }
        }
    };
}

impl_test_db!(sqlx::Sqlite, SQLITE_SCHEMA, "?", "?");
impl_test_db!(sqlx::Postgres, POSTGRES_SCHEMA, "$1", "$2");
impl_test_db!(sqlx::MySql, MYSQL_SCHEMA, "?", "?");
