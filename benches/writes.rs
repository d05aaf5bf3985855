//! Tracked insert vs plain sqlx insert, side by side in one run, plus the cost of the event
//! mapping alone.
//!
//! ```text
//! cargo bench -p posthog-track-benches --bench writes            # SQLite only (two settings)
//! POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test \
//!     cargo bench -p posthog-track-benches --bench writes        # SQLite and PostgreSQL
//! ```
//!
//! Then the bulk write, the same way: `User::insert_all` of 1,000 rows in one transaction
//! (multi-row INSERT ... RETURNING, 1,000 events staged and written to the outbox) against the
//! plain sqlx a user would write, `QueryBuilder::push_values` of the same rows with
//! `RETURNING created_at` in one transaction. Target: tracked / plain <= 1.3. A third side,
//! plain sqlx reading every column back as `insert_all` does, shows how much of the gap is the
//! read-back rather than the tracking.
//!
//! Knobs, to check that it runs at a small size: `POSTHOG_TRACK_BENCH_ROUNDS` (default 100
//! rounds of single writes; the bulk comparison runs a fifth as many, at least 1) and
//! `POSTHOG_TRACK_BENCH_BULK_ROWS` (default 1,000 rows per bulk write).
//!
//! Each round runs a batch of plain inserts and a batch of tracked inserts on the same
//! connection, alternating which goes first, so drift in the machine's load hits both alike.
//! Every write is one transaction: BEGIN, INSERT ... RETURNING created_at, COMMIT; the tracked
//! one also stages `user_signed_up` and writes it to the outbox before COMMIT. Reported figures
//! are medians of per-write times over all rounds.

use std::hint::black_box;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use posthog_track::testing::MockPostHog;
use posthog_track::{Backend, TrackedModel, TrackedRow, Tracker};
use posthog_track_benches::User;
use sqlx::Pool;

const BATCH: usize = 50;

/// A size knob from the environment.
fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .filter(|value| *value > 0)
        .unwrap_or(default)
}

/// Rounds of single writes per side.
fn rounds() -> usize {
    knob("POSTHOG_TRACK_BENCH_ROUNDS", 100)
}

/// Rows per bulk write.
fn bulk_rows() -> usize {
    knob("POSTHOG_TRACK_BENCH_BULK_ROWS", 1_000)
}

fn user(n: usize, run: &str) -> User {
    User::sample(format!("bench-{run}-{n}"), n as u64)
}

#[tokio::main]
async fn main() {
    println!(
        "posthog-track write benchmark: {} rounds x {BATCH} writes per side; bulk: {} rounds x \
         {} rows per side\n",
        rounds(),
        (rounds() / 5).max(1),
        bulk_rows()
    );
    staging();

    let mock = MockPostHog::start().await;
    for (label, synchronous, relay_to, connections) in [
        (
            "SQLite (file, WAL, synchronous=FULL: sqlx's default)",
            sqlx::sqlite::SqliteSynchronous::Full,
            None,
            1,
        ),
        (
            "SQLite (file, WAL, synchronous=NORMAL)",
            sqlx::sqlite::SqliteSynchronous::Normal,
            None,
            1,
        ),
        (
            "SQLite (file, WAL, synchronous=NORMAL), relay delivering to a local PostHog meanwhile",
            sqlx::sqlite::SqliteSynchronous::Normal,
            Some(&mock),
            2,
        ),
    ] {
        let dir = std::env::temp_dir().join(format!("posthog-track-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(dir.join("bench.db"))
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
            .synchronous(synchronous)
            .busy_timeout(Duration::from_secs(30));
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(connections)
            .connect_with(options)
            .await
            .unwrap();
        compare(
            label,
            &pool,
            "CREATE TABLE bench_users (id TEXT PRIMARY KEY, email TEXT NOT NULL, plan TEXT NOT NULL, \
             seats INTEGER NOT NULL, password_hash TEXT NOT NULL, \
             created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')))",
            "INSERT INTO bench_users (id, email, plan, seats, password_hash) VALUES (?, ?, ?, ?, ?) \
             RETURNING created_at",
            relay_to,
        )
        .await;
        pool.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    match std::env::var("POSTGRES_URL") {
        Ok(url) => {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .connect(&url)
                .await
                .unwrap();
            compare(
                "PostgreSQL (loopback TCP)",
                &pool,
                "CREATE TABLE bench_users (id TEXT PRIMARY KEY, email TEXT NOT NULL, \
                 plan TEXT NOT NULL, seats BIGINT NOT NULL, password_hash TEXT NOT NULL, \
                 created_at TIMESTAMPTZ NOT NULL DEFAULT now())",
                "INSERT INTO bench_users (id, email, plan, seats, password_hash) \
                 VALUES ($1, $2, $3, $4, $5) RETURNING created_at",
                None,
            )
            .await;
        }
        Err(_) => println!("PostgreSQL: skipped (set POSTGRES_URL to include it)"),
    }
}

/// The event mapping without I/O: what a tracked insert adds in CPU before it talks to the
/// database.
fn staging() {
    let row = user(1, "staging");
    let mut events = Vec::with_capacity(1024);
    let mut samples = Vec::new();
    for _ in 0..200 {
        let start = Instant::now();
        for _ in 0..1000 {
            posthog_track::__private::stage_insert_event_detached(&row, "", &mut events).unwrap();
            black_box(&events);
            events.clear();
        }
        samples.push(start.elapsed() / 1000);
    }
    let event = {
        posthog_track::__private::stage_insert_event_detached(&row, "", &mut events).unwrap();
        events.pop().unwrap()
    };
    println!(
        "event mapping (stage user_signed_up, {} byte payload, no I/O): median {:.2} us per row\n",
        event.payload.len(),
        micros(median(&mut samples))
    );
}

async fn compare<DB>(
    name: &str,
    pool: &Pool<DB>,
    create: &'static str,
    plain_insert: &'static str,
    relay_to: Option<&MockPostHog>,
) where
    DB: Backend + PlainInsert,
    User: TrackedRow<DB>,
{
    DB::reset(pool, create).await;
    let tracker = match relay_to {
        Some(mock) => Tracker::builder()
            .api_key(mock.api_key())
            .host(mock.url())
            .unwrap()
            .build(),
        // Live, so that commits write the outbox, with no relay: only the write is measured.
        None => Tracker::builder()
            .api_key("phc_bench")
            .external_relay(true)
            .build(),
    };
    tracker.migrate(pool).await.unwrap();
    if relay_to.is_some() {
        tracker.start_relay(pool.clone()).unwrap();
    }
    let run = uuid::Uuid::new_v4().simple().to_string();

    // Warm up both paths: connection caches, prepared statements, page cache.
    let mut next = 0;
    for _ in 0..BATCH {
        next += 1;
        DB::plain(pool, plain_insert, &user(next, &run)).await;
        next += 1;
        tracked(&tracker, pool, user(next, &run)).await;
    }

    let (mut plain_samples, mut tracked_samples) = (Vec::new(), Vec::new());
    for round in 0..rounds() {
        for side in [round % 2, 1 - round % 2] {
            for _ in 0..BATCH {
                next += 1;
                let row = user(next, &run);
                let start = Instant::now();
                if side == 0 {
                    DB::plain(pool, plain_insert, &row).await;
                    plain_samples.push(start.elapsed());
                } else {
                    tracked(&tracker, pool, row).await;
                    tracked_samples.push(start.elapsed());
                }
            }
        }
    }
    let plain = median(&mut plain_samples);
    let tracked = median(&mut tracked_samples);
    println!("{name}");
    println!(
        "  plain sqlx insert (BEGIN, INSERT ... RETURNING, COMMIT): median {:>8.1} us",
        micros(plain)
    );
    println!(
        "  tracked insert (same + event staged + outbox row):      median {:>8.1} us",
        micros(tracked)
    );
    println!(
        "  tracked / plain: {:.3}\n",
        tracked.as_secs_f64() / plain.as_secs_f64()
    );
    if relay_to.is_none() {
        compare_bulk(&tracker, pool, &run).await;
    }
    if let Some(mock) = relay_to {
        let delivered_during = mock.unique_uuids().len();
        tracker.shutdown(Duration::from_secs(30)).await.unwrap();
        println!(
            "  relay: {delivered_during} of {} tracked events already delivered when the last write \
             returned; {} after shutdown's flush\n",
            tracked_samples.len() + BATCH,
            mock.unique_uuids().len()
        );
    }
    DB::cleanup(pool).await;
}

/// `insert_all` of `bulk_rows()` rows against `QueryBuilder::push_values` of the same rows,
/// each in one transaction, alternating which goes first.
async fn compare_bulk<DB>(tracker: &Tracker, pool: &Pool<DB>, run: &str)
where
    DB: Backend + PlainInsert,
    User: TrackedRow<DB>,
{
    let rows = bulk_rows();
    let mut next = 0;
    let mut batch = || {
        let batch: Vec<User> = (0..rows)
            .map(|n| user(next + n, &format!("{run}-bulk")))
            .collect();
        next += rows;
        batch
    };
    // Warm-up.
    DB::plain_bulk(pool, &batch(), ReadBack::Generated).await;
    DB::plain_bulk(pool, &batch(), ReadBack::EveryColumn).await;
    tracked_bulk(tracker, pool, &batch()).await;

    // Three sides per round, in a rotating order: plain reading back `created_at` (what a
    // user would write), plain reading back every column as `insert_all` does (its share of
    // the gap is the read-back, not the tracking), and tracked.
    let mut samples: [Vec<Duration>; 3] = Default::default();
    for round in 0..(rounds() / 5).max(1) {
        for offset in 0..3 {
            let side = (round + offset) % 3;
            let rows = batch();
            let start = Instant::now();
            match side {
                0 => DB::plain_bulk(pool, &rows, ReadBack::Generated).await,
                1 => DB::plain_bulk(pool, &rows, ReadBack::EveryColumn).await,
                _ => tracked_bulk(tracker, pool, &rows).await,
            }
            samples[side].push(start.elapsed());
        }
    }
    let [plain, plain_every_column, tracked] = samples.map(|mut side| median(&mut side));
    println!(
        "  plain sqlx bulk insert ({rows} rows, QueryBuilder::push_values ... RETURNING created_at): \
         median {:>9.1} us",
        micros(plain)
    );
    println!(
        "  plain sqlx bulk insert, RETURNING every column decoded (as insert_all reads back):   \
         median {:>9.1} us",
        micros(plain_every_column)
    );
    println!(
        "  tracked insert_all ({rows} rows + {rows} events to the outbox):                        \
         median {:>9.1} us",
        micros(tracked)
    );
    println!(
        "  bulk tracked / plain: {:.3} (target <= 1.3); tracked / plain reading every column: \
         {:.3}\n",
        tracked.as_secs_f64() / plain.as_secs_f64(),
        tracked.as_secs_f64() / plain_every_column.as_secs_f64()
    );
}

/// What a plain bulk insert reads back.
#[derive(Clone, Copy)]
enum ReadBack {
    /// `RETURNING created_at`: only what the database generated.
    Generated,
    /// `RETURNING` every column, decoded: the rows as stored, as `insert_all` returns them.
    EveryColumn,
}

async fn tracked_bulk<DB: Backend>(tracker: &Tracker, pool: &Pool<DB>, rows: &[User])
where
    User: TrackedRow<DB>,
{
    let mut tx = tracker.begin(pool).await.unwrap();
    black_box(User::insert_all(rows, &mut tx).await.unwrap());
    tx.commit().await.unwrap();
}

async fn tracked<DB: Backend>(tracker: &Tracker, pool: &Pool<DB>, row: User)
where
    User: TrackedRow<DB>,
{
    let mut tx = tracker.begin(pool).await.unwrap();
    black_box(row.insert(&mut tx).await.unwrap());
    tx.commit().await.unwrap();
}

/// The hand-written sqlx code a user would write instead, per backend.
trait PlainInsert: Backend {
    async fn reset(pool: &Pool<Self>, create: &'static str);
    async fn plain(pool: &Pool<Self>, sql: &'static str, row: &User);
    /// One transaction, one `INSERT ... VALUES (...), ... RETURNING ...` per
    /// `PLAIN_BULK_ROWS` rows (within every backend's bind limit).
    async fn plain_bulk(pool: &Pool<Self>, rows: &[User], read_back: ReadBack);
    async fn cleanup(pool: &Pool<Self>);
}

/// Rows per plain bulk statement: five parameters each, under SQLite's 32,766.
const PLAIN_BULK_ROWS: usize = 6_000;

macro_rules! plain_insert {
    ($db:ty) => {
        impl PlainInsert for $db {
            async fn reset(pool: &Pool<Self>, create: &'static str) {
                sqlx::query("DROP TABLE IF EXISTS bench_users")
                    .execute(pool)
                    .await
                    .unwrap();
                sqlx::query(create).execute(pool).await.unwrap();
            }

            async fn plain(pool: &Pool<Self>, sql: &'static str, row: &User) {
                let mut tx = pool.begin().await.unwrap();
                let created_at: DateTime<Utc> = sqlx::query_scalar(sql)
                    .bind(&row.id)
                    .bind(&row.email)
                    .bind(&row.plan)
                    .bind(row.seats)
                    .bind(&row.password_hash)
                    .fetch_one(&mut *tx)
                    .await
                    .unwrap();
                black_box(created_at);
                tx.commit().await.unwrap();
            }

            async fn plain_bulk(pool: &Pool<Self>, rows: &[User], read_back: ReadBack) {
                let mut tx = pool.begin().await.unwrap();
                for chunk in rows.chunks(PLAIN_BULK_ROWS) {
                    let mut query = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO bench_users (id, email, plan, seats, password_hash) ",
                    );
                    query.push_values(chunk, |mut values, row| {
                        values
                            .push_bind(&row.id)
                            .push_bind(&row.email)
                            .push_bind(&row.plan)
                            .push_bind(row.seats)
                            .push_bind(&row.password_hash);
                    });
                    match read_back {
                        ReadBack::Generated => {
                            query.push(" RETURNING created_at");
                            let created: Vec<DateTime<Utc>> = query
                                .build_query_scalar()
                                .fetch_all(&mut *tx)
                                .await
                                .unwrap();
                            black_box(created);
                        }
                        ReadBack::EveryColumn => {
                            query.push(
                                " RETURNING id, email, plan, seats, password_hash, created_at",
                            );
                            let stored: Vec<(String, String, String, i64, String, DateTime<Utc>)> =
                                query.build_query_as().fetch_all(&mut *tx).await.unwrap();
                            black_box(stored);
                        }
                    }
                }
                tx.commit().await.unwrap();
            }

            async fn cleanup(pool: &Pool<Self>) {
                sqlx::query("DROP TABLE IF EXISTS bench_users")
                    .execute(pool)
                    .await
                    .unwrap();
                sqlx::query("DELETE FROM posthog_outbox WHERE distinct_id LIKE 'bench-%'")
                    .execute(pool)
                    .await
                    .unwrap();
            }
        }
    };
}

plain_insert!(sqlx::Sqlite);
plain_insert!(sqlx::Postgres);

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}
