//! Backfill of existing rows (`tracker.backfill::<M>(&pool)`) on every backend, delivered to
//! MockPostHog: one person update per row, no new uuids on a rerun, exactly once across an
//! interruption (a dropped future, and a process killed with SIGKILL), `properties([...])`,
//! historical insert events, the throttle, dry runs, group models, and the typed errors for
//! bad names.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone as _, Utc};
use posthog_track::backfill::BackfillModel;
use posthog_track::testing::MockPostHog;
use posthog_track::{
    Backend, Backfill, BackfillPool, BackfillReport, Dialect, Error, TrackedModel, Tracker,
};
use posthog_track_tests::{events_named, execute, on_every_backend, tracker_for};
use sqlx::Pool;

/// A person whose rows existed before posthog-track did.
#[derive(Debug, Clone, PartialEq, TrackedModel)]
#[tracked(table = "bf_people", distinct_id = id, insert_event = "person_signed_up")]
struct Person {
    #[tracked(key, property = "person_id")]
    id: i64,
    #[tracked(person)]
    email: String,
    #[tracked(person = "plan_name")]
    plan: String,
    #[tracked(person_once)]
    trial_ends_at: Option<DateTime<Utc>>,
    #[tracked(property)]
    created_at: DateTime<Utc>,
}

/// A company: a group model with a text key.
#[derive(Debug, Clone, TrackedModel)]
#[tracked(table = "bf_companies", group_type = "company", group_key = slug)]
struct Company {
    #[tracked(key, property)]
    slug: String,
    #[tracked(property)]
    seats: i64,
    #[tracked(skip = "internal notes")]
    notes: String,
}

/// A seat of a member in a team: a composite key, read in `(team, member)` order.
#[derive(Debug, Clone, TrackedModel)]
#[tracked(table = "bf_seats", distinct_id = member)]
struct Seat {
    #[tracked(key, property)]
    team: String,
    #[tracked(key, property)]
    member: i64,
    #[tracked(person)]
    role: String,
}

/// The people of `bf_people` through a model that names no distinct id (its tracked writes
/// take the transaction's): a backfill has none to take.
#[derive(Debug, Clone, TrackedModel)]
#[tracked(table = "bf_people")]
struct Unattributed {
    #[tracked(key, property = "person_id")]
    id: i64,
    #[tracked(person)]
    email: String,
    #[tracked(property)]
    created_at: DateTime<Utc>,
}

/// A group whose owner's email is a person property, but with no distinct id to give it to.
#[derive(Debug, Clone, TrackedModel)]
#[tracked(table = "bf_owned_companies", group_type = "company", group_key = slug)]
struct OwnedCompany {
    #[tracked(key, property)]
    slug: String,
    #[tracked(property)]
    seats: i64,
    #[tracked(person)]
    owner_email: String,
}

/// The people of `bf_people` through a model with no person property: only its insert
/// events (`with_events`) can be backfilled.
#[derive(Debug, Clone, TrackedModel)]
#[tracked(table = "bf_people", distinct_id = id, insert_event = "person_signed_up")]
struct Signups {
    #[tracked(key, property = "person_id")]
    id: i64,
    #[tracked(property)]
    email: String,
    #[tracked(property)]
    created_at: DateTime<Utc>,
}

/// A pool that `M` can be backfilled from: what a scenario of `M` runs on, the bound stated
/// once here rather than on every scenario.
trait Source<M>: BackfillPool<M> {
    type Db: Backend;

    /// The pool itself, for the statements the scenario runs around the backfill.
    fn sqlx(&self) -> &Pool<Self::Db>;
}

impl<DB: Backend, M> Source<M> for Pool<DB>
where
    Pool<DB>: BackfillPool<M>,
{
    type Db = DB;

    fn sqlx(&self) -> &Pool<DB> {
        self
    }
}

fn timestamp_type(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Postgres => "TIMESTAMPTZ",
        Dialect::MySql => "DATETIME(6)",
        Dialect::Sqlite => "TEXT",
    }
}

fn created_at(id: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap() + chrono::Duration::minutes(id)
}

/// Creates `bf_people` with `rows` rows (ids 1..=rows) and the outbox.
async fn people<DB: Backend>(tracker: &Tracker, pool: &Pool<DB>, rows: i64) {
    tracker.migrate(pool).await.unwrap();
    let ddl = format!(
        "CREATE TABLE bf_people (id BIGINT PRIMARY KEY, email VARCHAR(200) NOT NULL, \
         plan VARCHAR(50) NOT NULL, trial_ends_at {ts} NULL, created_at {ts} NOT NULL)",
        ts = timestamp_type(DB::DIALECT)
    );
    execute(pool, ddl).await;
    // Plain inserts, as the data was written before the model was tracked.
    let mut id = 1;
    while id <= rows {
        let chunk = (rows - id + 1).min(500);
        let mut sql =
            "INSERT INTO bf_people (id, email, plan, trial_ends_at, created_at) VALUES ".to_owned();
        for i in 0..chunk {
            let n = id + i;
            if i > 0 {
                sql.push_str(", ");
            }
            let trial = if n % 2 == 0 {
                quote_ts::<DB>(created_at(n) + chrono::Duration::days(14))
            } else {
                "NULL".to_owned()
            };
            sql.push_str(&format!(
                "({n}, 'p{n}@example.com', '{}', {trial}, {})",
                if n % 3 == 0 { "pro" } else { "free" },
                quote_ts::<DB>(created_at(n))
            ));
        }
        execute(pool, sql).await;
        id += chunk;
    }
}

/// A timestamp literal each backend reads back as that instant.
fn quote_ts<DB: Backend>(at: DateTime<Utc>) -> String {
    match DB::DIALECT {
        Dialect::Postgres => format!("'{}'", at.to_rfc3339()),
        Dialect::MySql => format!("'{}'", at.format("%Y-%m-%d %H:%M:%S%.6f")),
        Dialect::Sqlite => format!("'{}'", at.to_rfc3339()),
    }
}

/// The `$set` events the mock accepted, by distinct id.
fn person_updates(mock: &MockPostHog) -> BTreeMap<String, Vec<serde_json::Value>> {
    let mut by_person: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    for event in mock.events() {
        if event.event == "$set" {
            by_person
                .entry(event.distinct_id.clone())
                .or_default()
                .push(event.properties.clone());
        }
    }
    by_person
}

fn all_ids(rows: i64) -> BTreeSet<String> {
    (1..=rows).map(|id| id.to_string()).collect()
}

/// Exactly one `$set` reached `mock` for each of the rows 1..=`rows`.
fn assert_one_update_per_row(mock: &MockPostHog, rows: i64) {
    let updates = person_updates(mock);
    assert_eq!(
        updates.keys().cloned().collect::<BTreeSet<_>>(),
        all_ids(rows)
    );
    assert!(updates.values().all(|events| events.len() == 1));
}

/// Runs `backfill`, which must fail; returns its error.
async fn run_err<M: BackfillModel>(backfill: Backfill<'_, M>) -> Error {
    backfill.run().await.expect_err("the backfill must fail")
}

/// Runs `backfill`, which must succeed.
async fn run_ok<M: BackfillModel>(backfill: Backfill<'_, M>) -> BackfillReport {
    backfill.run().await.unwrap()
}

/// A mock and a tracker delivering to it.
async fn tracking() -> (MockPostHog, Tracker) {
    let mock = MockPostHog::start().await;
    let tracker = tracker_for(&mock).build();
    (mock, tracker)
}

/// A mock, a tracker delivering to it, the outbox, and `table (columns)` (SQL column
/// definitions) holding `rows` (SQL tuples of every column, in order), inserted in one
/// statement as the data was written before the model was tracked.
async fn seeded<DB: Backend>(
    pool: &Pool<DB>,
    table: &str,
    columns: &str,
    rows: impl Iterator<Item = String>,
) -> (MockPostHog, Tracker) {
    let (mock, tracker) = tracking().await;
    tracker.migrate(pool).await.unwrap();
    execute(pool, format!("CREATE TABLE {table} ({columns})")).await;
    let values: Vec<String> = rows.collect();
    execute(
        pool,
        format!("INSERT INTO {table} VALUES {}", values.join(", ")),
    )
    .await;
    (mock, tracker)
}

/// `bf_companies`: a text key, and notes that are no property.
const COMPANY_COLUMNS: &str =
    "slug VARCHAR(100) PRIMARY KEY, seats BIGINT NOT NULL, notes TEXT NOT NULL";

/// 1,050 companies: `co-00000` with no seats to `co-01049` with 1,049.
fn companies() -> impl Iterator<Item = String> {
    (0..1_050).map(|n| format!("('co-{n:05}', {n}, 'secret')"))
}

/// `bf_seats`: a key of two columns.
const SEAT_COLUMNS: &str = "team VARCHAR(50) NOT NULL, member BIGINT NOT NULL, \
                            role VARCHAR(50) NOT NULL, PRIMARY KEY (team, member)";

/// Five teams of 50 members, each team with a role of its own.
fn seats() -> impl Iterator<Item = String> {
    (0..5).flat_map(|team| {
        (1..=50).map(move |member| format!("('team-{team}', {member}, 'r{team}')"))
    })
}

/// 10,000 rows: exactly one `$set` per row with the person properties as they are; a second
/// run stages nothing, and a restarted run only resends the same uuids.
async fn backfill_person_updates(pool: &impl Source<Person>, _url: &str) {
    let (mock, tracker) = tracking().await;
    people(&tracker, pool.sqlx(), 10_000).await;

    let report = run_ok(tracker.backfill::<Person>(pool)).await;
    assert_eq!((report.rows, report.events), (10_000, 10_000), "{report}");
    assert_eq!(report.person_updates, 10_000);
    assert!(report.complete && !report.already_complete);
    tracker.flush().await.unwrap();

    let updates = person_updates(&mock);
    assert_eq!(updates.len(), 10_000);
    assert!(updates.values().all(|events| events.len() == 1));
    assert_eq!(
        updates.keys().cloned().collect::<BTreeSet<_>>(),
        all_ids(10_000)
    );
    let six = &updates["6"][0];
    assert_eq!(
        six["$set"],
        serde_json::json!({"email": "p6@example.com", "plan_name": "pro"})
    );
    assert_eq!(
        six["$set_once"]["trial_ends_at"],
        serde_json::json!(created_at(6) + chrono::Duration::days(14))
    );
    assert!(
        updates["7"][0].get("$set_once").is_none(),
        "None is left out"
    );
    mock.assert_no_duplicates();
    let first_uuids = mock.unique_uuids();

    let again = run_ok(tracker.backfill::<Person>(pool)).await;
    assert!(again.already_complete, "{again}");
    assert_eq!((again.rows, again.events), (0, 0));

    let restarted = run_ok(tracker.backfill::<Person>(pool).restart()).await;
    assert_eq!(restarted.rows, 10_000, "{restarted}");
    tracker.flush().await.unwrap();
    assert_eq!(
        mock.unique_uuids(),
        first_uuids,
        "a rerun adds no new uuids"
    );
}
on_every_backend!(backfill_person_updates);

/// A run stopped half-way (after a whole page) and resumed delivers each row once.
async fn backfill_resumes_where_it_stopped(pool: &impl Source<Person>, _url: &str) {
    let (mock, tracker) = tracking().await;
    people(&tracker, pool.sqlx(), 10_000).await;

    let first = run_ok(tracker.backfill::<Person>(pool).max_rows(5_000)).await;
    assert_eq!(first.rows, 5_000);
    assert!(!first.complete && first.resumed_from.is_none(), "{first}");
    assert!(first.checkpoint_kept, "{first}");
    assert!(
        first.to_string().contains("the next run resumes"),
        "{first}"
    );
    let second = run_ok(tracker.backfill::<Person>(pool)).await;
    assert_eq!(second.rows, 5_000, "{second}");
    assert_eq!(second.resumed_from.as_deref(), Some("5000"));
    assert!(second.complete);
    tracker.flush().await.unwrap();

    assert_one_update_per_row(&mock, 10_000);
    assert_eq!(mock.events().len(), 10_000, "each row delivered once");
}
on_every_backend!(backfill_resumes_where_it_stopped);

/// A run dropped at an arbitrary point (a crash: the page in flight rolls back with its
/// checkpoint) and run again delivers each row exactly once.
async fn backfill_survives_a_crash(pool: &impl Source<Person>, _url: &str) {
    let (mock, tracker) = tracking().await;
    people(&tracker, pool.sqlx(), 3_000).await;

    // Dropped 50 ms after its first page committed, however long that page took on a busy
    // machine (a fixed timeout could end before any page committed, and nothing was resumed):
    // 3,000 events at 5,000/s need 600 ms, so the run is still going.
    let first_page = std::sync::Arc::new(tokio::sync::Notify::new());
    let committed = first_page.clone();
    let run = tracker
        .backfill::<Person>(pool)
        .rate(5_000)
        .on_progress(move |_| committed.notify_one())
        .run();
    tokio::select! {
        finished = run => panic!("3,000 events at 5,000/s outlast the first page: {finished:?}"),
        () = async {
            first_page.notified().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        } => {}
    }
    // A dropped future is not a dead process: the page commit it had already sent may still
    // land after the timeout, moving the checkpoint under the resumed run. The resumed run
    // then refuses with `BackfillConflict` (the guard against two runs at once), and running
    // it again resumes from where the crashed run really stopped, as an operator would.
    let resumed = match tracker.backfill::<Person>(pool).run().await {
        Err(Error::BackfillConflict { .. }) => run_ok(tracker.backfill::<Person>(pool)).await,
        other => other.unwrap(),
    };
    assert!(resumed.complete, "{resumed}");
    assert!(resumed.rows < 3_000, "it resumed: {resumed}");
    tracker.flush().await.unwrap();
    assert_one_update_per_row(&mock, 3_000);
}
on_every_backend!(backfill_survives_a_crash);

/// The environment variable that makes [`backfill_child_process`] run: the database URL.
const CHILD_URL: &str = "POSTHOG_TRACK_BACKFILL_CHILD_URL";

/// A backfill process killed with SIGKILL half-way (a real crash: no destructor runs, no
/// commit is in flight from a dead process) and resumed by another process delivers each row
/// exactly once.
async fn backfill_survives_kill_9(pool: &impl Source<Person>, url: &str) {
    let (mock, tracker) = tracking().await;
    people(&tracker, pool.sqlx(), 3_000).await;

    // This test binary again, running only `backfill_child_process`.
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "backfill_child_process",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD_URL, url)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let at_kill = loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the backfill process ended before it was killed: {status}");
        }
        let progress = checkpoint(pool.sqlx()).await;
        if progress.is_some_and(|(rows, _)| rows >= 500) {
            child.kill().unwrap();
            child.wait().unwrap();
            break checkpoint(pool.sqlx()).await.unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "the backfill process made no progress"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(
        at_kill.1, 0,
        "killed half-way, not after the last page: {at_kill:?}"
    );

    let resumed = run_ok(tracker.backfill::<Person>(pool)).await;
    assert!(resumed.complete, "{resumed}");
    assert_eq!(
        resumed.rows,
        3_000 - u64::try_from(at_kill.0).unwrap(),
        "it resumed after the last page the killed process committed: {resumed}"
    );
    tracker.flush().await.unwrap();
    assert_one_update_per_row(&mock, 3_000);
}
on_every_backend!(backfill_survives_kill_9);

/// The child of [`backfill_survives_kill_9`]: backfills `Person` from the database in
/// `POSTHOG_TRACK_BACKFILL_CHILD_URL`, slowly, until it is killed. It stages into the outbox
/// and delivers nothing (the test's own tracker does). Does nothing when run on its own.
#[tokio::test]
#[ignore = "run by backfill_survives_kill_9 as its child process"]
async fn backfill_child_process() {
    let Ok(url) = std::env::var(CHILD_URL) else {
        return;
    };
    let tracker = Tracker::builder()
        .api_key("phc_child")
        .host("http://127.0.0.1:9")
        .unwrap()
        .external_relay(true)
        .build();
    async fn backfill<DB: Backend>(tracker: &Tracker, pool: Pool<DB>)
    where
        Pool<DB>: BackfillPool<Person>,
    {
        tracker
            .backfill::<Person>(&pool)
            .rate(2_000)
            .run()
            .await
            .unwrap();
    }
    if url.starts_with("postgres") {
        backfill(&tracker, sqlx::PgPool::connect(&url).await.unwrap()).await;
    } else if url.starts_with("mysql") {
        backfill(&tracker, sqlx::MySqlPool::connect(&url).await.unwrap()).await;
    } else {
        backfill(&tracker, sqlx::SqlitePool::connect(&url).await.unwrap()).await;
    }
}

/// The one checkpoint of the database, once a page committed: rows done, and whether the
/// backfill finished (1).
async fn checkpoint<DB: Backend>(pool: &Pool<DB>) -> Option<(i64, i64)> {
    let mut conn = pool.acquire().await.unwrap();
    let query = sqlx::query("SELECT rows_done, done FROM posthog_backfill");
    let rows = DB::fetch_all(&mut conn, query).await.ok()?;
    let row = rows.first()?;
    Some((DB::int(row, 0).unwrap(), DB::int(row, 1).unwrap()))
}

/// `properties([...])` sends only those person properties; bad names are typed errors that
/// list the valid ones, before anything is staged.
async fn backfill_only_chosen_properties(pool: &impl Source<Person>, _url: &str) {
    let (mock, tracker) = tracking().await;
    people(&tracker, pool.sqlx(), 300).await;

    match run_err(tracker.backfill::<Person>(pool).properties(["nope"])).await {
        Error::UnknownColumn { name, valid, .. } => {
            assert_eq!(name, "nope");
            assert_eq!(valid, ["email", "plan_name", "trial_ends_at"]);
        }
        other => panic!("expected UnknownColumn, got {other:?}"),
    }
    match run_err(tracker.backfill::<Person>(pool).with_events("signup_date")).await {
        Error::UnknownColumn { valid, .. } => assert_eq!(valid, ["trial_ends_at", "created_at"]),
        other => panic!("expected UnknownColumn, got {other:?}"),
    }
    match run_err(tracker.backfill::<Person>(pool).with_events("email")).await {
        error @ Error::NotATimestamp { .. } => {
            let Error::NotATimestamp { valid, .. } = &error else {
                unreachable!()
            };
            assert_eq!(valid, &["trial_ends_at", "created_at"], "{error}");
        }
        other => panic!("expected NotATimestamp, got {other:?}"),
    }
    assert!(
        tracker.outbox(pool.sqlx()).is_empty().await.unwrap(),
        "nothing staged"
    );

    // By property name or by field name.
    let report = run_ok(tracker.backfill::<Person>(pool).properties(["plan"])).await;
    assert_eq!(report.events, 300, "{report}");
    let only_trial = run_ok(
        tracker
            .backfill::<Person>(pool)
            .properties(["trial_ends_at"]),
    )
    .await;
    assert_eq!(
        only_trial.events, 150,
        "rows without a trial have nothing to send"
    );
    assert_eq!(only_trial.skipped_empty, 150);
    tracker.flush().await.unwrap();
    let updates = person_updates(&mock);
    assert_eq!(updates.len(), 300);
    for (id, events) in &updates {
        let id: i64 = id.parse().unwrap();
        let plan_only = events
            .iter()
            .find(|event| event.get("$set").is_some())
            .unwrap();
        let plan = if id % 3 == 0 { "pro" } else { "free" };
        assert_eq!(plan_only["$set"], serde_json::json!({"plan_name": plan}));
        assert!(plan_only.get("$set_once").is_none());
        assert_eq!(events.len(), if id % 2 == 0 { 2 } else { 1 });
        if let Some(trial) = events.iter().find(|event| event.get("$set_once").is_some()) {
            assert!(trial.get("$set").is_none());
            assert_eq!(trial["$set_once"].as_object().unwrap().len(), 1);
        }
    }
}
on_every_backend!(backfill_only_chosen_properties);

/// `with_events`: the insert event per row, dated by the column, in `historical_migration`
/// requests; person updates go in ordinary requests.
async fn backfill_historical_insert_events(pool: &impl Source<Person>, _url: &str) {
    let (mock, tracker) = tracking().await;
    people(&tracker, pool.sqlx(), 200).await;

    let report = run_ok(tracker.backfill::<Person>(pool).with_events("created_at")).await;
    assert_eq!((report.rows, report.events), (200, 400), "{report}");
    assert_eq!(report.insert_events, 200);
    tracker.flush().await.unwrap();

    let signups = events_named(&mock, "person_signed_up");
    assert_eq!(signups.len(), 200);
    for event in &signups {
        let id: i64 = event.distinct_id.parse().unwrap();
        let at = DateTime::parse_from_rfc3339(&event.timestamp).unwrap();
        assert_eq!(at, created_at(id), "dated by created_at");
        assert_eq!(event.properties["person_id"], id);
    }
    let requests = mock.requests();
    let historical_events = |historical: bool| {
        requests
            .iter()
            .filter(|request| request.status == 200 && request.historical_migration == historical)
            .flat_map(|request| {
                request.body["batch"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .map(|event| event["event"].as_str().unwrap_or_default().to_owned())
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(
        historical_events(true),
        BTreeSet::from(["person_signed_up".to_owned()])
    );
    assert_eq!(
        historical_events(false),
        BTreeSet::from(["$set".to_owned()])
    );
}
on_every_backend!(backfill_historical_insert_events);

/// The throttle: 1,000 events at 2,000 per second take at least 0.45 s (within 10 % of the
/// 0.5 s the rate allows); unthrottled, the same run has no such floor to respect.
async fn backfill_throttle(pool: &impl Source<Person>, _url: &str) {
    let (_mock, tracker) = tracking().await;
    people(&tracker, pool.sqlx(), 1_000).await;
    let mut seen = Vec::new();
    let started = Instant::now();
    let report = run_ok(
        tracker
            .backfill::<Person>(pool)
            .rate(2_000)
            .on_progress(|progress| seen.push(progress.events)),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(report.events, 1_000);
    assert!(took >= Duration::from_millis(450), "too fast: {took:?}");
    // Pages of a tenth of a second of events: the callback saw every page.
    assert_eq!(seen.len(), 5, "{seen:?}");
    assert_eq!(seen.last(), Some(&1_000));
    #[allow(clippy::cast_precision_loss)]
    let rate = report.events as f64 / took.as_secs_f64();
    assert!(
        rate <= 2_200.0,
        "{rate} events/s is over the rate by more than 10 %"
    );
}
on_every_backend!(backfill_throttle);

/// A dry run counts and shows a sample, stages nothing and leaves the checkpoint alone.
async fn backfill_dry_run(pool: &impl Source<Person>, _url: &str) {
    let (mock, tracker) = tracking().await;
    people(&tracker, pool.sqlx(), 1_200).await;
    let report = run_ok(
        tracker
            .backfill::<Person>(pool)
            .with_events("created_at")
            .dry_run()
            .sample(3),
    )
    .await;
    assert!(report.dry_run && report.complete, "{report}");
    assert_eq!((report.rows, report.events), (1_200, 2_400));
    assert_eq!(report.sample.len(), 3);
    assert_eq!(report.sample[0].event, "$set");
    assert_eq!(report.sample[0].distinct_id, "1");
    assert!(tracker.outbox(pool.sqlx()).is_empty().await.unwrap());
    // Stopped early, a dry run does not claim that the next run resumes: nothing was kept.
    let stopped = run_ok(
        tracker
            .backfill::<Person>(pool)
            .dry_run()
            .page_size(100)
            .max_rows(200),
    )
    .await;
    assert_eq!(stopped.rows, 200, "{stopped}");
    assert!(!stopped.complete && !stopped.checkpoint_kept, "{stopped}");
    assert!(
        stopped.to_string().contains("nothing was kept")
            && !stopped.to_string().contains("resumes"),
        "{stopped}"
    );
    let real = run_ok(tracker.backfill::<Person>(pool).with_events("created_at")).await;
    assert_eq!(
        real.events, 2_400,
        "the dry run did not move the checkpoint"
    );
    assert_eq!(
        real.resumed_from, None,
        "the dry run did not move the checkpoint"
    );
    let sampled = &report.sample[0];
    tracker.flush().await.unwrap();
    assert!(
        mock.unique_uuids().contains(&sampled.uuid),
        "a dry run shows the very uuids a run stages"
    );
}
on_every_backend!(backfill_dry_run);

/// A model without a distinct id is refused before a row is read, rather than a run that
/// skips every row and reports itself complete.
async fn backfill_without_a_distinct_id_is_refused(pool: &impl Source<Unattributed>, _url: &str) {
    let (_mock, tracker) = tracking().await;
    people(&tracker, pool.sqlx(), 3).await;
    for (backfill, what) in [
        (tracker.backfill::<Unattributed>(pool), "person updates"),
        (
            tracker
                .backfill::<Unattributed>(pool)
                .with_events("created_at"),
            "insert events",
        ),
    ] {
        match run_err(backfill).await {
            error @ Error::BackfillWithoutDistinctId { .. } => {
                let message = error.to_string();
                assert!(
                    message.contains(what) && message.contains("distinct_id = <field>"),
                    "{message}"
                );
            }
            other => panic!("expected BackfillWithoutDistinctId, got {other:?}"),
        }
    }
    assert!(tracker.outbox(pool.sqlx()).is_empty().await.unwrap());
}
on_every_backend!(backfill_without_a_distinct_id_is_refused);

/// A group model with person fields and no distinct id: its person updates are refused up
/// front too, and a backfill of its group properties alone runs.
async fn backfill_of_a_group_without_a_distinct_id(pool: &impl Source<OwnedCompany>, _url: &str) {
    let (mock, tracker) = tracking().await;
    tracker.migrate(pool.sqlx()).await.unwrap();
    execute(
        pool.sqlx(),
        "CREATE TABLE bf_owned_companies (slug VARCHAR(50) PRIMARY KEY, seats BIGINT NOT NULL, \
         owner_email VARCHAR(100) NOT NULL)",
    )
    .await;
    execute(
        pool.sqlx(),
        "INSERT INTO bf_owned_companies VALUES ('a', 1, 'a@x'), ('b', 2, 'b@x')",
    )
    .await;
    for backfill in [
        tracker.backfill::<OwnedCompany>(pool),
        tracker
            .backfill::<OwnedCompany>(pool)
            .properties(["seats", "owner_email"]),
    ] {
        match run_err(backfill).await {
            Error::BackfillWithoutDistinctId { what, .. } => assert_eq!(what, "person updates"),
            other => panic!("expected BackfillWithoutDistinctId, got {other:?}"),
        }
    }
    let report = run_ok(tracker.backfill::<OwnedCompany>(pool).properties(["seats"])).await;
    assert_eq!(
        (report.group_updates, report.skipped_unattributed),
        (2, 0),
        "{report}"
    );
    tracker.flush().await.unwrap();
    assert_eq!(events_named(&mock, "$groupidentify").len(), 2);
}
on_every_backend!(backfill_of_a_group_without_a_distinct_id);

/// Without an API key the tracker prints the events and the checkpoint does not move: the
/// run with the key still sends every row.
async fn backfill_without_a_key_keeps_no_checkpoint(pool: &impl Source<Person>, _url: &str) {
    let printing = Tracker::builder().build();
    people(&printing, pool.sqlx(), 5).await;
    let printed = run_ok(printing.backfill::<Person>(pool)).await;
    assert_eq!((printed.rows, printed.events), (5, 5), "{printed}");
    assert!(printing.outbox(pool.sqlx()).is_empty().await.unwrap());

    let mock = MockPostHog::start().await;
    let tracker = tracker_for(&mock).build();
    let sent = run_ok(tracker.backfill::<Person>(pool)).await;
    assert_eq!(sent.events, 5, "{sent}");
    assert!(!sent.already_complete);
}
on_every_backend!(backfill_without_a_key_keeps_no_checkpoint);

/// A group model: one `$groupidentify` per row, paginated by a text key.
async fn backfill_groups(pool: &impl Source<Company>, _url: &str) {
    let (mock, tracker) = seeded(pool.sqlx(), "bf_companies", COMPANY_COLUMNS, companies()).await;

    let report = run_ok(tracker.backfill::<Company>(pool).page_size(100)).await;
    assert_eq!(
        (report.rows, report.group_updates),
        (1_050, 1_050),
        "{report}"
    );
    assert_eq!(report.pages, 11);
    tracker.flush().await.unwrap();
    let events = mock.events();
    assert_eq!(events.len(), 1_050);
    let acme = events
        .iter()
        .find(|event| event.distinct_id == "$company_co-00042")
        .unwrap();
    assert_eq!(acme.event, "$groupidentify");
    assert_eq!(acme.properties["$group_type"], "company");
    assert_eq!(acme.properties["$group_key"], "co-00042");
    assert_eq!(
        acme.properties["$group_set"],
        serde_json::json!({"slug": "co-00042", "seats": 42})
    );
    let keys: BTreeSet<_> = events
        .iter()
        .map(|event| event.distinct_id.clone())
        .collect();
    assert_eq!(keys.len(), 1_050);

    let only_seats = run_ok(
        tracker
            .backfill::<Company>(pool)
            .properties(["seats"])
            .dry_run()
            .sample(1),
    )
    .await;
    assert_eq!(
        only_seats.sample[0].json()["properties"]["$group_set"],
        serde_json::json!({"seats": 0})
    );
    match run_err(tracker.backfill::<Company>(pool).properties(["notes"])).await {
        Error::UnknownColumn { valid, .. } => assert_eq!(valid, ["slug", "seats"]),
        other => panic!("a skipped field is not a property: {other:?}"),
    }
}
on_every_backend!(backfill_groups);

/// A historical event that PostHog refuses is dead-lettered with its flag, and requeued it is
/// still sent as `historical_migration`.
async fn backfill_historical_flag_survives_dead_letters(pool: &impl Source<Person>, _url: &str) {
    let (mock, tracker) = tracking().await;
    people(&tracker, pool.sqlx(), 3).await;
    mock.reject_events_where(|event| event["event"] == "person_signed_up");
    tracker
        .backfill::<Person>(pool)
        .with_events("created_at")
        .run()
        .await
        .unwrap();
    // Dead-lettered by the background relay, or by the flush: either way, not delivered.
    let _ = tracker.flush().await;
    let outbox = tracker.outbox(pool.sqlx());
    assert_eq!(outbox.status().await.unwrap().dead, 3);

    mock.clear();
    mock.reject_events_where(|_| false);
    assert_eq!(outbox.requeue(None).await.unwrap(), 3);
    tracker.flush().await.unwrap();
    let requests = mock.requests();
    let signups: Vec<_> = requests
        .iter()
        .filter(|request| request.status == 200)
        .collect();
    assert!(!signups.is_empty());
    assert!(
        signups.iter().all(|request| request.historical_migration),
        "{signups:#?}"
    );
    assert_eq!(mock.events().len(), 3);
}
on_every_backend!(backfill_historical_flag_survives_dead_letters);

/// A restarted run over events still waiting in the outbox stages none of them twice; a row
/// that changed since gets a new event (new content, new uuid).
async fn backfill_restart_skips_pending_events(pool: &impl Source<Person>, _url: &str) {
    let mock = MockPostHog::start().await;
    // Nothing is delivered: the first run's events stay in the outbox.
    let tracker = tracker_for(&mock).external_relay(true).build();
    people(&tracker, pool.sqlx(), 40).await;
    let first = run_ok(tracker.backfill::<Person>(pool)).await;
    assert_eq!(first.events, 40);
    execute(
        pool.sqlx(),
        "UPDATE bf_people SET plan = 'enterprise' WHERE id = 7",
    )
    .await;

    let restarted = run_ok(tracker.backfill::<Person>(pool).restart()).await;
    assert_eq!(restarted.rows, 40, "{restarted}");
    assert_eq!(restarted.already_in_outbox, 39);
    assert_eq!(restarted.events, 1, "only the changed row");
    let events = tracker.outbox(pool.sqlx()).events().await.unwrap();
    assert_eq!(events.len(), 41);
    let uuids: BTreeSet<_> = events.iter().map(|event| event.uuid).collect();
    assert_eq!(uuids.len(), 41, "no uuid twice in the outbox");
    let seven: Vec<_> = events.iter().filter(|e| e.distinct_id == "7").collect();
    assert_eq!(
        seven[1].payload["properties"]["$set"]["plan_name"],
        "enterprise"
    );
}
on_every_backend!(backfill_restart_skips_pending_events);

/// An insert event happened once, when its row was created: a rerun stages it under the same
/// uuid whatever changed in the row or the model since, so PostHog counts it once. Its uuid
/// hashed its properties, so a `.restart()` after a row's update, or the backfill of a model
/// with a field more or less (a new checkpoint), staged a second signup under a new uuid for
/// every such row (found in a trial: all 3,000 signups again once the model gained a field).
/// A person update still gets a new uuid when the row's person properties changed: that one
/// must reach PostHog.
async fn an_insert_event_is_staged_once_whatever_changed_since<DB: Backend>(
    pool: &Pool<DB>,
    _url: &str,
) where
    Pool<DB>: BackfillPool<Person> + BackfillPool<Signups>,
{
    let mock = MockPostHog::start().await;
    // Nothing is delivered: every run's events stay in the outbox, to be compared there.
    let tracker = tracker_for(&mock).external_relay(true).build();
    people(&tracker, pool, 40).await;
    let first = run_ok(tracker.backfill::<Person>(pool).with_events("created_at")).await;
    assert_eq!((first.events, first.insert_events), (80, 40), "{first}");
    execute(
        pool,
        "UPDATE bf_people SET plan = 'enterprise' WHERE id = 7",
    )
    .await;

    let restarted = run_ok(
        tracker
            .backfill::<Person>(pool)
            .with_events("created_at")
            .restart(),
    )
    .await;
    assert_eq!(
        (restarted.already_in_outbox, restarted.events),
        (79, 1),
        "only the changed row's person update is new: {restarted}"
    );
    // The same rows through a model whose insert event has other properties: a checkpoint of
    // its own, whose first run stages every signup again (it does not look in the outbox),
    // under the uuids PostHog already has.
    let signups = run_ok(tracker.backfill::<Signups>(pool).with_events("created_at")).await;
    assert_eq!(signups.insert_events, 40, "{signups}");
    let events = tracker.outbox(pool).events().await.unwrap();
    let signups: Vec<_> = events
        .iter()
        .filter(|event| event.event == "person_signed_up")
        .collect();
    let uuids: BTreeSet<_> = signups.iter().map(|event| event.uuid).collect();
    assert_eq!(
        (signups.len(), uuids.len()),
        (80, 40),
        "every signup staged twice, under one uuid"
    );
}
on_every_backend!(an_insert_event_is_staged_once_whatever_changed_since);

/// A composite key: pages follow `(team, member)` with a row-value comparison, and the
/// checkpoint keeps both parts.
async fn backfill_composite_key(pool: &impl Source<Seat>, _url: &str) {
    let (mock, tracker) = seeded(pool.sqlx(), "bf_seats", SEAT_COLUMNS, seats()).await;

    let first = run_ok(tracker.backfill::<Seat>(pool).page_size(7).max_rows(105)).await;
    assert_eq!(first.rows, 105, "{first}");
    let rest = run_ok(tracker.backfill::<Seat>(pool).page_size(7)).await;
    assert_eq!(rest.rows, 145, "{rest}");
    assert_eq!(rest.resumed_from.as_deref(), Some("[\"team-2\",5]"));
    tracker.flush().await.unwrap();
    let events = mock.events();
    assert_eq!(events.len(), 250);
    assert_eq!(
        mock.unique_uuids().len(),
        250,
        "one uuid per (team, member)"
    );
    let roles: BTreeSet<(String, String)> = events
        .iter()
        .map(|event| {
            (
                event.distinct_id.clone(),
                event.properties["$set"]["role"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            )
        })
        .collect();
    assert_eq!(roles.len(), 250, "every seat once");
}
on_every_backend!(backfill_composite_key);

/// `VmRSS` or `VmHWM` of this process in KiB, from `/proc/self/status` (Linux).
fn memory_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with(field))?;
    line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Constant memory: a backfill of 1,000,000 rows on SQLite (`BACKFILL_RSS_ROWS` to change)
/// holds one page at a time, so the resident set after the first tenth of the rows does not
/// grow with the rest. Prints the peak RSS. Ignored by default (a minute or two):
///
/// ```text
/// cargo test -p posthog-track-tests --test backfill -- --ignored constant_memory --nocapture
/// ```
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a million rows: run by hand to measure peak RSS"]
async fn constant_memory() {
    let rows: i64 = std::env::var("BACKFILL_RSS_ROWS")
        .ok()
        .and_then(|rows| rows.parse().ok())
        .unwrap_or(1_000_000);
    let (pool, _url, dir) = posthog_track_tests::sqlite_file("backfill_rss").await;
    let mock = MockPostHog::start().await;
    // Staging only: nothing is delivered, so the figure is the backfill's own.
    let tracker = tracker_for(&mock).external_relay(true).build();
    tracker.migrate(&pool).await.unwrap();
    sqlx::query(
        "CREATE TABLE bf_people (id BIGINT PRIMARY KEY, email TEXT NOT NULL, plan TEXT NOT NULL, \
         trial_ends_at TEXT NULL, created_at TEXT NOT NULL)",
    )
    .execute(&pool)
    .await
    .unwrap();
    // Filled inside SQLite, so the test's own memory stays out of the figure.
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) \
         INSERT INTO bf_people SELECT i, 'p' || i || '@example.com', \
         CASE WHEN i % 3 = 0 THEN 'pro' ELSE 'free' END, NULL, '2024-01-01T00:00:00Z' FROM n",
    )
    .bind(rows)
    .execute(&pool)
    .await
    .unwrap();
    let before = memory_kib("VmRSS:").unwrap_or(0);
    let mut samples: Vec<(u64, u64)> = Vec::new();
    let started = Instant::now();
    let report = tracker
        .backfill::<Person>(&pool)
        .with_events("created_at")
        .page_size(1_000)
        .on_progress(|progress| {
            if progress.rows % 50_000 == 0 {
                samples.push((progress.rows, memory_kib("VmRSS:").unwrap_or(0)));
            }
        })
        .run()
        .await
        .unwrap();
    let took = started.elapsed();
    let peak = memory_kib("VmHWM:").unwrap_or(0);
    println!(
        "backfill of {} rows ({} events) on SQLite in {took:.1?}: RSS before {} MiB, peak \
         (VmHWM) {} MiB; RSS by rows read: {:?}",
        report.rows,
        report.events,
        before / 1024,
        peak / 1024,
        samples
            .iter()
            .map(|(rows, kib)| format!("{rows}: {} MiB", kib / 1024))
            .collect::<Vec<_>>()
    );
    assert_eq!(report.rows, u64::try_from(rows).unwrap());
    let tenth = samples
        .iter()
        .find(|(read, _)| *read >= report.rows / 10)
        .map_or(before, |(_, kib)| *kib);
    let last = samples.last().map_or(0, |(_, kib)| *kib);
    assert!(
        last <= tenth + 32 * 1024,
        "memory grew with the rows read: {} MiB after a tenth, {} MiB at the end",
        tenth / 1024,
        last / 1024
    );
    pool.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// An event property holding a map (a `HashMap` serialises in an order of its own each time).
#[derive(Debug, Clone, TrackedModel)]
#[tracked(table = "bf_tagged", distinct_id = owner)]
struct Tagged {
    #[tracked(key, property)]
    id: i64,
    #[tracked(property)]
    owner: String,
    #[tracked(property)]
    tags: sqlx::types::Json<std::collections::HashMap<String, i64>>,
    #[tracked(property)]
    created_at: DateTime<Utc>,
}

/// `.restart()` over unchanged rows stages the same uuids, also for a row with a map-valued
/// property: the insert events' uuids hashed the properties as written, in the map's order of
/// the moment, so every rerun staged every event again (PostHog would count each twice).
async fn historical_uuids_are_stable_with_a_map_property<DB: Backend>(pool: &Pool<DB>, _url: &str)
where
    Pool<DB>: BackfillPool<Tagged>,
{
    let dialect = DB::DIALECT;
    let columns = format!(
        "id BIGINT PRIMARY KEY, owner VARCHAR(50) NOT NULL, tags TEXT NOT NULL, created_at {} NOT NULL",
        timestamp_type(dialect)
    );
    let columns = if dialect == Dialect::Postgres {
        columns.replace("tags TEXT", "tags JSONB")
    } else {
        columns
    };
    let rows: Vec<String> = (1..=10)
        .map(|id| {
            format!(
                "({id}, 'o{id}', '{{\"a\":1,\"b\":2,\"c\":3,\"d\":4,\"e\":5,\"f\":6,\"g\":7,\"h\":8}}', {})",
                quote_ts::<DB>(created_at(id))
            )
        })
        .collect();
    let mock = MockPostHog::start().await;
    let tracker = tracker_for(&mock).external_relay(true).build();
    tracker.migrate(pool).await.unwrap();
    execute(pool, format!("CREATE TABLE bf_tagged ({columns})")).await;
    execute(
        pool,
        format!("INSERT INTO bf_tagged VALUES {}", rows.join(", ")),
    )
    .await;
    let first = run_ok(tracker.backfill::<Tagged>(pool).with_events("created_at")).await;
    assert_eq!(first.events, 10, "{first}");
    let again = run_ok(
        tracker
            .backfill::<Tagged>(pool)
            .with_events("created_at")
            .restart(),
    )
    .await;
    assert_eq!(
        (again.already_in_outbox, again.events),
        (10, 0),
        "unchanged rows, same uuids: {again}"
    );
}
on_every_backend!(historical_uuids_are_stable_with_a_map_property);

/// Another model of `bf_people`, whose person properties are not `Person`'s.
#[derive(Debug, Clone, TrackedModel)]
#[tracked(table = "bf_people", distinct_id = id)]
struct Billing {
    #[tracked(key, property = "person_id")]
    id: i64,
    #[tracked(skip = "Person's")]
    email: String,
    #[tracked(person = "billing_plan")]
    plan: String,
    #[tracked(skip = "Person's")]
    trial_ends_at: Option<DateTime<Utc>>,
    #[tracked(skip = "Person's")]
    created_at: DateTime<Utc>,
}

/// A backfill of one model does not mark another model's backfill of the same table complete
/// (their checkpoints were named by the table and what they send alone, so `Billing` found
/// `Person`'s complete and sent nothing).
async fn two_models_of_one_table_keep_their_own_checkpoints<DB: Backend>(
    pool: &Pool<DB>,
    _url: &str,
) where
    Pool<DB>: BackfillPool<Person> + BackfillPool<Billing>,
{
    let (mock, tracker) = tracking().await;
    people(&tracker, pool, 5).await;
    let person = run_ok(tracker.backfill::<Person>(pool)).await;
    assert_eq!(person.events, 5, "{person}");
    let billing = run_ok(tracker.backfill::<Billing>(pool)).await;
    assert_eq!(
        (billing.already_complete, billing.events),
        (false, 5),
        "billing_plan was never sent: {billing}"
    );
    tracker.flush().await.unwrap();
    assert!(
        mock.events()
            .iter()
            .any(|e| e.properties["$set"].get("billing_plan").is_some())
    );
}
on_every_backend!(two_models_of_one_table_keep_their_own_checkpoints);

/// A person with a float person property.
#[derive(Debug, Clone, TrackedModel)]
#[tracked(table = "bf_lifetime", distinct_id = id)]
struct Lifetime {
    #[tracked(key, property)]
    id: String,
    #[tracked(person)]
    ltv: f64,
}

/// A backfill's `$set` carries the float the row holds, as a live write of the row does (it
/// came back from a JSON round trip rounded: 504.73202138100004 as 504.732021381).
async fn person_floats_are_sent_exactly<DB: Backend>(pool: &Pool<DB>, _url: &str)
where
    Pool<DB>: BackfillPool<Lifetime>,
    Lifetime: posthog_track::TrackedRow<DB>,
{
    let (_mock, tracker) = tracking().await;
    tracker.migrate(pool).await.unwrap();
    let real = match DB::DIALECT {
        Dialect::Postgres => "DOUBLE PRECISION",
        Dialect::MySql => "DOUBLE",
        Dialect::Sqlite => "REAL",
    };
    execute(
        pool,
        format!("CREATE TABLE bf_lifetime (id VARCHAR(50) PRIMARY KEY, ltv {real} NOT NULL)"),
    )
    .await;
    let mut tx = tracker.begin(pool).await.unwrap();
    let stored = Lifetime {
        id: "u1".into(),
        ltv: 504.732_021_381_000_04,
    }
    .insert(&mut tx)
    .await
    .unwrap();
    // Payload text: `StagedEvent::json()` parses with serde_json's default (lossy) floats.
    let exact = format!("\"ltv\":{}", serde_json::to_string(&stored.ltv).unwrap());
    assert!(
        tx.staged()[0].payload.contains(&exact),
        "{}",
        tx.staged()[0].payload
    );
    tx.commit().await.unwrap();
    let report = run_ok(tracker.backfill::<Lifetime>(pool).dry_run()).await;
    assert!(
        report.sample[0].payload.contains(&exact),
        "live: {exact}; backfill: {}",
        report.sample[0].payload
    );
}
on_every_backend!(person_floats_are_sent_exactly);

/// A reading keyed by its timestamp.
#[derive(Debug, Clone, TrackedModel)]
#[tracked(table = "bf_readings", distinct_id = sensor)]
struct Reading {
    #[tracked(key, property)]
    at: DateTime<Utc>,
    #[tracked(property)]
    sensor: String,
    #[tracked(person)]
    value: i64,
}

/// A timestamp key stored as text in another format than sqlx binds (SQLite's own
/// `strftime('%Y-%m-%dT%H:%M:%fZ')`, JavaScript's `toISOString()`): SQLite compares the text,
/// so each page's last row sorted after its own checkpoint and was read again, for ever (20
/// rows read and staged from 3 before `max_rows` stopped it). The run now stops at once and
/// says why; PostgreSQL and MariaDB compare timestamps and read each row once.
async fn a_key_stored_unlike_its_binding_stops_the_backfill<DB: Backend>(
    pool: &Pool<DB>,
    _url: &str,
) where
    Pool<DB>: BackfillPool<Reading>,
{
    let at = |second: u32| match DB::DIALECT {
        Dialect::Sqlite => format!("'2024-01-01T00:00:0{second}.000Z'"),
        Dialect::Postgres => format!("'2024-01-01T00:00:0{second}Z'"),
        Dialect::MySql => format!("'2024-01-01 00:00:0{second}'"),
    };
    let columns = format!(
        "at {} PRIMARY KEY, sensor VARCHAR(50) NOT NULL, value BIGINT NOT NULL",
        timestamp_type(DB::DIALECT)
    );
    let rows = (1..=3).map(|second| format!("({}, 's{second}', {second})", at(second)));
    let (_mock, tracker) = seeded(pool, "bf_readings", &columns, rows).await;
    let backfill = tracker.backfill::<Reading>(pool).page_size(2).max_rows(20);
    if DB::DIALECT == Dialect::Sqlite {
        let error = run_err(backfill).await;
        assert!(
            matches!(&error, Error::Unsupported { reason, .. } if reason.contains("compares text")),
            "{error}"
        );
    } else {
        let report = run_ok(backfill).await;
        assert_eq!((report.rows, report.complete), (3, true), "{report}");
    }
}
on_every_backend!(a_key_stored_unlike_its_binding_stops_the_backfill);

/// A company managed by a person: a group model with a distinct id and a person property.
#[derive(Debug, Clone, TrackedModel)]
#[tracked(
    table = "bf_managed_companies",
    group_type = "company",
    group_key = slug,
    distinct_id = manager
)]
struct ManagedCompany {
    #[tracked(key, property)]
    slug: String,
    #[tracked(property)]
    seats: i64,
    #[tracked(property)]
    manager: String,
    #[tracked(person)]
    manager_email: String,
}

/// `properties([...])` naming only a group model's person property sends those person
/// updates and no `$groupidentify` (one with an empty `$group_set` per row was staged too).
async fn only_person_properties_of_a_group_send_no_group_updates(
    pool: &impl Source<ManagedCompany>,
    _url: &str,
) {
    let (mock, tracker) = seeded(
        pool.sqlx(),
        "bf_managed_companies",
        "slug VARCHAR(50) PRIMARY KEY, seats BIGINT NOT NULL, manager VARCHAR(50) NOT NULL, \
         manager_email VARCHAR(100) NOT NULL",
        ["('a', 1, 'm1', 'm1@x')", "('b', 2, 'm2', 'm2@x')"]
            .into_iter()
            .map(str::to_owned),
    )
    .await;
    let report = run_ok(
        tracker
            .backfill::<ManagedCompany>(pool)
            .properties(["manager_email"]),
    )
    .await;
    assert_eq!(
        (report.person_updates, report.group_updates, report.events),
        (2, 0, 2),
        "{report}"
    );
    tracker.flush().await.unwrap();
    assert!(events_named(&mock, "$groupidentify").is_empty());
    assert_eq!(events_named(&mock, "$set").len(), 2);

    // Naming a group property too sends both.
    let both = run_ok(
        tracker
            .backfill::<ManagedCompany>(pool)
            .properties(["manager_email", "seats"]),
    )
    .await;
    assert_eq!((both.person_updates, both.group_updates), (2, 2), "{both}");
}
on_every_backend!(only_person_properties_of_a_group_send_no_group_updates);

/// `properties([])` chooses nothing to send: the run is refused, as one of a model with
/// nothing to backfill is, instead of reading every row, staging nothing and marking the
/// backfill complete.
async fn an_empty_property_list_is_refused(pool: &impl Source<Person>, _url: &str) {
    let (_mock, tracker) = tracking().await;
    people(&tracker, pool.sqlx(), 3).await;
    let error = run_err(
        tracker
            .backfill::<Person>(pool)
            .properties(Vec::<String>::new()),
    )
    .await;
    assert!(
        matches!(error, Error::NothingToBackfill { .. }),
        "{error:?}"
    );
    // With insert events there is still something to send.
    let report = run_ok(
        tracker
            .backfill::<Person>(pool)
            .properties(Vec::<String>::new())
            .with_events("created_at"),
    )
    .await;
    assert_eq!(
        (report.person_updates, report.insert_events),
        (0, 3),
        "{report}"
    );
}
on_every_backend!(an_empty_property_list_is_refused);

/// The same with a group model: no `$groupidentify` with an empty `$group_set` per row.
async fn an_empty_property_list_of_a_group_is_refused(pool: &impl Source<Company>, _url: &str) {
    let (_mock, tracker) = seeded(pool.sqlx(), "bf_companies", COMPANY_COLUMNS, companies()).await;
    let error = run_err(
        tracker
            .backfill::<Company>(pool)
            .properties(Vec::<String>::new()),
    )
    .await;
    assert!(
        matches!(error, Error::NothingToBackfill { .. }),
        "{error:?}"
    );
    assert!(tracker.outbox(pool.sqlx()).is_empty().await.unwrap());
}
on_every_backend!(an_empty_property_list_of_a_group_is_refused);

/// A signup whose timestamp sqlx reads in the local time zone.
#[derive(Debug, Clone, TrackedModel)]
#[tracked(table = "bf_local_signups", distinct_id = id, insert_event = "signed_up")]
struct LocalSignup {
    #[tracked(key, property)]
    id: i64,
    #[tracked(person)]
    email: String,
    #[tracked(property)]
    created_at: DateTime<chrono::Local>,
}

/// `with_events` dates insert events by a `DateTime<Local>` column as by a `DateTime<Utc>`
/// one (it failed with `NotATimestamp`: only `Utc` and `FixedOffset` were timestamps).
async fn with_events_dates_by_a_local_timestamp<DB: Backend>(pool: &Pool<DB>, _url: &str)
where
    Pool<DB>: BackfillPool<LocalSignup>,
{
    let columns = format!(
        "id BIGINT PRIMARY KEY, email VARCHAR(100) NOT NULL, created_at {} NOT NULL",
        timestamp_type(DB::DIALECT)
    );
    let rows = (1..=2).map(|id| format!("({id}, 'p{id}@x', {})", quote_ts::<DB>(created_at(id))));
    let (mock, tracker) = seeded(pool, "bf_local_signups", &columns, rows).await;
    let report = run_ok(
        tracker
            .backfill::<LocalSignup>(pool)
            .with_events("created_at"),
    )
    .await;
    assert_eq!(report.insert_events, 2, "{report}");
    tracker.flush().await.unwrap();
    let signups = events_named(&mock, "signed_up");
    assert_eq!(signups.len(), 2);
    for event in signups {
        let id: i64 = event.distinct_id.parse().unwrap();
        let at = DateTime::parse_from_rfc3339(&event.timestamp).unwrap();
        assert_eq!(at, created_at(id));
    }
}
on_every_backend!(with_events_dates_by_a_local_timestamp);

/// Two processes starting the same backfill at once, before either made its checkpoint (or
/// the checkpoint table): one backfills and the other finds it complete or stops with
/// `BackfillConflict`; neither fails on the other's `CREATE TABLE` or checkpoint `INSERT`.
async fn two_first_runs_at_once(pool: &impl Source<Person>, _url: &str) {
    let (_mock, tracker) = tracking().await;
    people(&tracker, pool.sqlx(), 20).await;
    for attempt in 0..10 {
        execute(pool.sqlx(), "DROP TABLE IF EXISTS posthog_backfill").await;
        let (a, b) = tokio::join!(
            tracker.backfill::<Person>(pool).page_size(5).run(),
            tracker.backfill::<Person>(pool).page_size(5).run(),
        );
        for result in [a, b] {
            match result {
                Ok(_) | Err(Error::BackfillConflict { .. }) => {}
                Err(other) => panic!("attempt {attempt}: {other:?}"),
            }
        }
    }
}
on_every_backend!(two_first_runs_at_once);

/// A row updated (by a tracked write) while the backfill holds its page: the backfill's `$set`
/// must not carry the value from before that update, or, committed after the update's own
/// `$set`, it puts the old value back in PostHog. The update commits between the page's read
/// and its commit (held there by a `before_send` hook), or, when the page's read waits for
/// the update's lock, half a second later.
async fn a_row_updated_during_a_page_is_not_sent_stale<DB: Backend>(pool: &Pool<DB>, _url: &str)
where
    Pool<DB>: BackfillPool<Person>,
    Person: posthog_track::TrackedRow<DB>,
{
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex, mpsc};

    let mock = MockPostHog::start().await;
    let (read_tx, read_rx) = mpsc::channel::<()>();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let done_rx = Mutex::new(done_rx);
    let armed = Arc::new(AtomicBool::new(true));
    let hook_armed = armed.clone();
    let tracker = tracker_for(&mock)
        .before_send(move |event| {
            // The backfill's update of person 1, staged from the row it read: let the tracked
            // update commit now, before the page does.
            if event["event"] == "$set"
                && event["distinct_id"] == "1"
                && hook_armed.swap(false, Ordering::SeqCst)
            {
                let _ = read_tx.send(());
                let _ = done_rx
                    .lock()
                    .unwrap()
                    .recv_timeout(Duration::from_secs(10));
            }
            Some(event)
        })
        .build();
    people(&tracker, pool, 3).await;

    let mut update = tracker.begin(pool).await.unwrap();
    let person = Person {
        id: 1,
        email: "new@example.com".to_owned(),
        plan: "free".to_owned(),
        trial_ends_at: None,
        created_at: created_at(1),
    };
    person.update(&mut update).await.unwrap();
    let committer = tokio::spawn(async move {
        let _ =
            tokio::task::spawn_blocking(move || read_rx.recv_timeout(Duration::from_millis(500)))
                .await;
        armed.store(false, Ordering::SeqCst);
        update.commit().await.unwrap();
        let _ = done_tx.send(());
    });
    let report = run_ok(tracker.backfill::<Person>(pool)).await;
    committer.await.unwrap();
    assert_eq!(report.person_updates, 3, "{report}");
    tracker.flush().await.unwrap();

    let emails: Vec<serde_json::Value> = mock
        .events()
        .iter()
        .filter(|event| event.distinct_id == "1")
        .filter_map(|event| event.properties.get("$set")?.get("email").cloned())
        .collect();
    assert_eq!(
        emails.last(),
        Some(&serde_json::json!("new@example.com")),
        "the email PostHog ends with, of {emails:?}"
    );
}
on_every_backend!(a_row_updated_during_a_page_is_not_sent_stale);

/// A `with_events` column that holds no timestamp is refused before a row is read, also on
/// an empty table (the run completed there, and its checkpoint said done).
async fn a_with_events_column_of_no_timestamp_is_refused_on_an_empty_table(
    pool: &impl Source<Person>,
    _url: &str,
) {
    let (_mock, tracker) = tracking().await;
    people(&tracker, pool.sqlx(), 0).await;
    match run_err(tracker.backfill::<Person>(pool).with_events("email")).await {
        Error::NotATimestamp { column, valid, .. } => {
            assert_eq!(column, "email");
            assert_eq!(valid, ["trial_ends_at", "created_at"]);
        }
        other => panic!("expected NotATimestamp, got {other:?}"),
    }
}
on_every_backend!(a_with_events_column_of_no_timestamp_is_refused_on_an_empty_table);

/// A name a backfill cannot use is refused with the names it can: for `with_events` the
/// timestamp fields (it listed every field, `email` among them, which `with_events` then
/// refused), and for `properties` of a model with no person property, what to do instead
/// (it printed "valid names: " and nothing after it).
async fn refused_names_list_only_the_usable_ones(pool: &impl Source<Signups>, _url: &str) {
    let (_mock, tracker) = tracking().await;
    people(&tracker, pool.sqlx(), 0).await;
    match run_err(tracker.backfill::<Signups>(pool).with_events("signup_date")).await {
        error @ Error::UnknownColumn { .. } => {
            let Error::UnknownColumn { valid, .. } = &error else {
                unreachable!()
            };
            assert_eq!(valid, &["created_at"], "{error}");
        }
        other => panic!("expected UnknownColumn, got {other:?}"),
    }
    match run_err(tracker.backfill::<Signups>(pool).properties(["email"])).await {
        error @ Error::UnknownColumn { .. } => {
            let message = error.to_string();
            assert!(
                message.ends_with(
                    "it has none (no `person` or `person_once` field): backfill its insert \
                     events with `.with_events(\"<timestamp column>\")`, without `properties`"
                ),
                "{message}"
            );
        }
        other => panic!("expected UnknownColumn, got {other:?}"),
    }
}
on_every_backend!(refused_names_list_only_the_usable_ones);

/// The same properties named in another order, or one of them twice, are the same backfill:
/// once complete, it is not run again (it was, under a checkpoint of its own).
async fn the_order_of_chosen_properties_is_the_same_backfill(
    pool: &impl Source<Person>,
    _url: &str,
) {
    let (_mock, tracker) = tracking().await;
    people(&tracker, pool.sqlx(), 3).await;
    let first = run_ok(
        tracker
            .backfill::<Person>(pool)
            .properties(["email", "plan"]),
    )
    .await;
    assert_eq!(first.person_updates, 3, "{first}");
    for names in [
        vec!["plan", "email"],
        vec!["plan_name", "email"],
        vec!["email", "plan", "email"],
    ] {
        let again = run_ok(tracker.backfill::<Person>(pool).properties(names.clone())).await;
        assert!(
            again.already_complete && again.events == 0,
            "{names:?}: {again}"
        );
        assert_eq!(again.checkpoint, first.checkpoint);
    }
}
on_every_backend!(the_order_of_chosen_properties_is_the_same_backfill);

/// The index entries MariaDB read on this connection so far.
async fn rows_read(conn: &mut sqlx::MySqlConnection) -> i64 {
    let (_, value): (String, String) =
        sqlx::query_as("SHOW SESSION STATUS LIKE 'Handler_read_next'")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
    value.parse().unwrap()
}

/// A page of a composite key costs its own rows on MariaDB, not every row before it: the
/// row-value comparison `(team, member) > (?, ?)` is no range for MariaDB's optimiser (MySQL
/// 5.7+, PostgreSQL and SQLite use the index), so each page scanned the key index from the
/// start, and a backfill cost rows² / (2 x page size) reads. A pool of one connection, whose
/// session counters are the run's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn composite_key_pages_read_only_their_rows_on_mariadb() {
    let Some(url) = posthog_track_tests::database_url("MYSQL_URL") else {
        return;
    };
    let pool = posthog_track_tests::isolated_mysql(&url, "bf_composite_cost").await;
    let rows = 20_000;
    let (_mock, tracker) = seeded(
        &pool,
        "bf_seats",
        SEAT_COLUMNS,
        (1..=rows).map(|member| format!("('team-0', {member}, 'r')")),
    )
    .await;
    let database: String = sqlx::query_scalar("SELECT DATABASE()")
        .fetch_one(&pool)
        .await
        .unwrap();
    let single = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(1)
        .connect(&format!("{}/{database}", url.rsplit_once('/').unwrap().0))
        .await
        .unwrap();
    let before = rows_read(&mut single.acquire().await.unwrap()).await;
    let report = run_ok(tracker.backfill::<Seat>(&single).page_size(100).dry_run()).await;
    let read = rows_read(&mut single.acquire().await.unwrap()).await - before;
    assert_eq!(report.rows, rows as u64, "{report}");
    assert!(read < 3 * rows, "{read} index entries read for {rows} rows");
}

/// A flag-routed model: users in the flag's `test` variant have their rows in another table.
#[derive(Debug, Clone, TrackedModel)]
#[tracked(
    table = "bf_documents",
    distinct_id = owner,
    table_variant(flag = "documents-v2", variant = "test", table = "bf_documents_v2")
)]
struct RoutedDocument {
    #[tracked(key, property)]
    id: i64,
    #[tracked(property)]
    owner: String,
    #[tracked(person)]
    title: String,
}

/// A backfill of a routed model is refused before a row is read: it paged through the
/// model's default table alone, so the rows of the variant tables were never sent, and the
/// run said it was complete.
async fn a_routed_model_is_refused(pool: &impl Source<RoutedDocument>, _url: &str) {
    let columns = "id BIGINT PRIMARY KEY, owner VARCHAR(50) NOT NULL, title VARCHAR(50) NOT NULL";
    let (_mock, tracker) = seeded(
        pool.sqlx(),
        "bf_documents",
        columns,
        ["(1, 'u1', 'a')", "(2, 'u2', 'b')"]
            .into_iter()
            .map(str::to_owned),
    )
    .await;
    execute(
        pool.sqlx(),
        format!("CREATE TABLE bf_documents_v2 ({columns})"),
    )
    .await;
    execute(
        pool.sqlx(),
        "INSERT INTO bf_documents_v2 VALUES (3, 'u3', 'c'), (4, 'u4', 'd')",
    )
    .await;
    for backfill in [
        tracker.backfill::<RoutedDocument>(pool),
        tracker.backfill::<RoutedDocument>(pool).dry_run(),
    ] {
        match backfill.run().await {
            Err(Error::Unsupported { reason, .. }) => {
                assert!(reason.contains("table_variant"), "{reason}");
            }
            other => panic!("expected Unsupported, got {other:?}"),
        }
    }
    assert!(tracker.outbox(pool.sqlx()).is_empty().await.unwrap());
}
on_every_backend!(a_routed_model_is_refused);

/// A transaction that locks one of a page's rows, then another the page has locked already,
/// deadlocks with the page's shared lock; when the database picks the backfill, the page is
/// read again once the other transaction is done, rather than the run failing.
async fn a_page_that_loses_a_deadlock_is_read_again<DB: Backend>(pool: &Pool<DB>, _url: &str)
where
    Pool<DB>: BackfillPool<Person>,
{
    let (mock, tracker) = tracking().await;
    people(&tracker, pool, 3).await;
    let mut other = pool.begin().await.unwrap();
    DB::execute(
        &mut other,
        sqlx::query("UPDATE bf_people SET plan = 'x' WHERE id = 2"),
    )
    .await
    .unwrap();
    let backfill = tokio::spawn({
        let tracker = tracker.clone();
        let pool = pool.clone();
        async move { tracker.backfill::<Person>(&pool).run().await }
    });
    // The page has locked row 1 and waits for row 2.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = DB::execute(
        &mut other,
        sqlx::query("UPDATE bf_people SET plan = 'y' WHERE id = 1"),
    )
    .await;
    match second {
        Ok(_) => other.commit().await.unwrap(),
        // The database picked this transaction instead: the backfill goes on.
        Err(_) => other.rollback().await.unwrap(),
    }
    let report = backfill
        .await
        .unwrap()
        .expect("the backfill reads the page again");
    assert_eq!((report.rows, report.person_updates), (3, 3), "{report}");
    tracker.flush().await.unwrap();
    assert_one_update_per_row(&mock, 3);
}
on_every_backend!(a_page_that_loses_a_deadlock_is_read_again);

/// A key updated while a page waits for that row's lock: on PostgreSQL the locked read handed
/// back the row's new version in the old one's place, out of key order, and when it was the
/// page's last row the checkpoint jumped to its new key, past rows never read (4 and 5 here).
/// Every row must be read, wherever its key went.
async fn a_key_moved_while_its_page_waits_skips_no_row<DB: Backend>(pool: &Pool<DB>, _url: &str)
where
    Pool<DB>: BackfillPool<Person>,
{
    let (mock, tracker) = tracking().await;
    people(&tracker, pool, 5).await;
    let mut other = pool.begin().await.unwrap();
    DB::execute(
        &mut other,
        sqlx::query("UPDATE bf_people SET id = 100 WHERE id = 3"),
    )
    .await
    .unwrap();
    let backfill = tokio::spawn({
        let tracker = tracker.clone();
        let pool = pool.clone();
        async move { tracker.backfill::<Person>(&pool).page_size(3).run().await }
    });
    // The first page has read rows 1 and 2 and waits for row 3.
    tokio::time::sleep(Duration::from_millis(300)).await;
    other.commit().await.unwrap();
    let report = backfill.await.unwrap().unwrap();
    assert!(report.complete, "{report}");
    tracker.flush().await.unwrap();
    let sent: BTreeSet<String> = person_updates(&mock).into_keys().collect();
    let expected: BTreeSet<String> = ["1", "2", "4", "5", "100"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(sent, expected, "{report}");
}
on_every_backend!(a_key_moved_while_its_page_waits_skips_no_row);

/// Events a `before_send` hook drops are not staged, and the report does not count them.
async fn events_dropped_by_before_send_are_not_counted(pool: &impl Source<Person>, _url: &str) {
    let mock = MockPostHog::start().await;
    let tracker = tracker_for(&mock)
        .before_send(|event| (event["distinct_id"] != "2").then_some(event))
        .build();
    people(&tracker, pool.sqlx(), 3).await;
    let report = run_ok(tracker.backfill::<Person>(pool).with_events("created_at")).await;
    assert_eq!(
        (report.events, report.person_updates, report.insert_events),
        (4, 2, 2),
        "{report}"
    );
    tracker.flush().await.unwrap();
    assert_eq!(mock.events().len(), 4);
}
on_every_backend!(events_dropped_by_before_send_are_not_counted);

/// A member keyed by a nullable unique column (an optional external id).
#[derive(Debug, Clone, TrackedModel)]
#[tracked(table = "bf_nullable_keys", distinct_id = email)]
struct NullableKeyed {
    #[tracked(key, property)]
    external_id: Option<i64>,
    #[tracked(property)]
    email: String,
    #[tracked(person)]
    plan: String,
}

/// A key column holding NULLs: keyset pagination (`key > last`) never reads a NULL key, and
/// a page ending on one (NULLs sort first on MySQL and SQLite) was followed by `key > NULL`,
/// which reads nothing: the run said complete with 3 of 5 rows never sent (on PostgreSQL,
/// where NULLs sort last, the 2 NULL-keyed rows were left out, complete too). The run now
/// fails and says why: on MySQL and SQLite at the page holding the NULL (nothing staged), on
/// PostgreSQL when it would have marked itself complete (the rows before were sent); a second
/// run fails the same way rather than find the backfill complete.
async fn a_key_column_holding_nulls_is_refused<DB: Backend>(pool: &Pool<DB>, _url: &str)
where
    Pool<DB>: BackfillPool<NullableKeyed>,
{
    let columns = "external_id BIGINT NULL UNIQUE, email VARCHAR(50) NOT NULL, \
                   plan VARCHAR(50) NOT NULL";
    let rows = ["(NULL, 'a@x', 'free')", "(NULL, 'b@x', 'free')"]
        .into_iter()
        .map(str::to_owned)
        .chain((1..=3).map(|n| format!("({n}, 'u{n}@x', 'pro')")));
    let (mock, tracker) = seeded(pool, "bf_nullable_keys", columns, rows).await;
    for _ in 0..2 {
        let backfill = tracker.backfill::<NullableKeyed>(pool).page_size(2);
        let error = run_err(backfill).await;
        assert!(
            matches!(&error, Error::Unsupported { reason, .. } if reason.contains("NULL")),
            "{error}"
        );
    }
    tracker.flush().await.unwrap();
    let sent = mock.events().len();
    let expected = if DB::DIALECT == Dialect::Postgres {
        3
    } else {
        0
    };
    assert_eq!(
        sent, expected,
        "the rows with a key, once each on PostgreSQL"
    );
}
on_every_backend!(a_key_column_holding_nulls_is_refused);

/// PostgreSQL's `'infinity'` and `'-infinity'` in a timestamp column (a common "no end"
/// value) are out of chrono's range, and sqlx's decoder panics on them (`NaiveDateTime +
/// TimeDelta overflowed`): the backfill that read such a row panicked. It now fails with a
/// decode error that names the column, and sends nothing of the page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_an_infinite_timestamp_fails_the_backfill_without_a_panic() {
    let Some(url) = posthog_track_tests::database_url("POSTGRES_URL") else {
        return;
    };
    let pool = posthog_track_tests::isolated_postgres(&url, "bf_infinity").await;
    let (mock, tracker) = tracking().await;
    people(&tracker, &pool, 3).await;
    for value in ["infinity", "-infinity"] {
        execute(
            &pool,
            format!("UPDATE bf_people SET trial_ends_at = '{value}' WHERE id = 2"),
        )
        .await;
        let error = run_err(tracker.backfill::<Person>(&pool).restart()).await;
        let shown = error.to_string();
        assert!(
            matches!(&error, Error::Database(sqlx::Error::ColumnDecode { .. }))
                && shown.contains("trial_ends_at"),
            "{value}: {shown}"
        );
    }
    tracker.flush().await.unwrap();
    assert!(mock.events().is_empty(), "nothing of the page is sent");
}

/// A field whose type does not fit its column (`DateTime<Utc>` over a PostgreSQL `TIMESTAMP`,
/// which has no time zone) is a decode error naming the column, not sqlx's column number
/// ("error occurred while decoding column 3: mismatched types", found in a trial), which left
/// the user counting columns of a `SELECT` they never wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_field_of_the_wrong_type_names_its_column() {
    let Some(url) = posthog_track_tests::database_url("POSTGRES_URL") else {
        return;
    };
    let pool = posthog_track_tests::isolated_postgres(&url, "bf_naive").await;
    let (_mock, tracker) = tracking().await;
    people(&tracker, &pool, 3).await;
    execute(
        &pool,
        "ALTER TABLE bf_people ALTER COLUMN trial_ends_at TYPE TIMESTAMP",
    )
    .await;
    let error = run_err(tracker.backfill::<Person>(&pool)).await;
    let shown = error.to_string();
    assert!(
        matches!(&error, Error::Database(sqlx::Error::ColumnDecode { .. }))
            && shown.contains("\"trial_ends_at\"")
            && shown.contains("TIMESTAMP"),
        "{shown}"
    );
}

/// The checkpoint's counters at the top of BIGINT (a row edited by hand, or copied from
/// another database): `rows_done + page` and `generation + 1` overflowed, which panics in
/// debug builds (and wrapped in release ones). The counters now stop at the top (the
/// generation, a fence that only has to change, wraps), and the run and a restart complete.
async fn a_checkpoint_at_the_top_of_bigint_is_resumed<DB: Backend>(pool: &Pool<DB>, _url: &str)
where
    Pool<DB>: BackfillPool<Person>,
{
    let (mock, tracker) = tracking().await;
    people(&tracker, pool, 20).await;
    let first = run_ok(tracker.backfill::<Person>(pool).max_rows(10)).await;
    assert_eq!(first.rows, 10, "{first}");
    let top = "9223372036854775807";
    execute(
        pool,
        format!(
            "UPDATE posthog_backfill SET rows_done = {top}, events = {top}, generation = {top}"
        ),
    )
    .await;
    let second = run_ok(tracker.backfill::<Person>(pool)).await;
    assert!(second.complete && second.rows == 10, "{second}");
    tracker.flush().await.unwrap();
    assert_one_update_per_row(&mock, 20);
    let sent = mock.unique_uuids();
    execute(
        pool,
        format!("UPDATE posthog_backfill SET generation = {top}"),
    )
    .await;
    let restarted = run_ok(tracker.backfill::<Person>(pool).restart()).await;
    assert!(restarted.complete && restarted.rows == 20, "{restarted}");
    tracker.flush().await.unwrap();
    assert_eq!(
        mock.unique_uuids(),
        sent,
        "the restart resends the same events"
    );
}
on_every_backend!(a_checkpoint_at_the_top_of_bigint_is_resumed);
