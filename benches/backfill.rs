//! Backfill throughput: rows per second read and staged by `tracker.backfill::<User>(&pool)`
//! on SQLite and PostgreSQL, and the process's peak memory, which must not grow with the
//! table (keyset pagination keeps one page in memory).
//!
//! ```text
//! cargo bench -p posthog-track-benches --bench backfill                  # SQLite, 100,000 rows
//! POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test \
//!     cargo bench -p posthog-track-benches --bench backfill              # and PostgreSQL
//! BACKFILL_BENCH_ROWS=1000000 BACKFILL_BENCH_ONLY=sqlite \
//!     cargo bench -p posthog-track-benches --bench backfill              # peak RSS, 1M rows
//! ```
//!
//! The rows are written by plain SQL first (the data a backfill finds). The tracker delivers
//! nothing (`external_relay`), so the figures are the backfill's own: read a page, build one
//! `$set` per row (and the historical `user_signed_up` with `with_events`), write them to the
//! outbox with the checkpoint, commit. Peak RSS is the process's high-water mark (`VmHWM`)
//! after the SQLite runs.

use std::time::Instant;

use chrono::{DateTime, Utc};
use posthog_track::testing::MockPostHog;
use posthog_track::{BackfillPool, TrackedModel, Tracker};
use sqlx::Pool;

#[derive(Debug, Clone, TrackedModel)]
#[tracked(table = "bench_backfill_users", distinct_id = id, insert_event = "user_signed_up")]
pub struct User {
    #[tracked(key, property = "user_id")]
    pub id: i64,
    #[tracked(person)]
    pub email: String,
    #[tracked(person)]
    pub plan: String,
    #[tracked(skip = "credential")]
    pub password_hash: String,
    #[tracked(property)]
    pub created_at: DateTime<Utc>,
}

#[tokio::main]
async fn main() {
    let rows: i64 = std::env::var("BACKFILL_BENCH_ROWS")
        .ok()
        .and_then(|rows| rows.parse().ok())
        .unwrap_or(100_000);
    let only = std::env::var("BACKFILL_BENCH_ONLY").unwrap_or_default();
    let mock = MockPostHog::start().await;
    let tracker = Tracker::builder()
        .api_key(mock.api_key())
        .host(mock.url())
        .expect("the mock's URL is a host")
        .external_relay(true)
        .build();
    println!("backfill of {rows} rows (rows/s; events/s)");

    if only.is_empty() || only == "sqlite" {
        let dir = std::env::temp_dir().join(format!("backfill-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(dir.join("bench.db"))
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
            .synchronous(sqlx::sqlite::SqliteSynchronous::Normal);
        let pool = sqlx::SqlitePool::connect_with(options)
            .await
            .expect("SQLite file");
        tracker.migrate(&pool).await.expect("outbox");
        sqlx::query(
            "CREATE TABLE bench_backfill_users (id INTEGER PRIMARY KEY, email TEXT NOT NULL, \
             plan TEXT NOT NULL, password_hash TEXT NOT NULL, created_at TEXT NOT NULL)",
        )
        .execute(&pool)
        .await
        .expect("table");
        sqlx::query(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) \
             INSERT INTO bench_backfill_users \
             SELECT i, 'user' || i || '@example.com', CASE WHEN i % 4 = 0 THEN 'pro' ELSE 'free' END, \
                    'argon2', strftime('%Y-%m-%dT%H:%M:%fZ', '2024-01-01', '+' || i || ' seconds') \
             FROM n",
        )
        .bind(rows)
        .execute(&pool)
        .await
        .expect("fill");
        run("SQLite", &tracker, &pool).await;
        println!("  peak RSS (VmHWM): {}", peak_rss());
        pool.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    if only.is_empty() || only == "postgres" {
        match std::env::var("POSTGRES_URL") {
            Ok(url) => {
                let pool = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(4)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            sqlx::Executor::execute(&mut *conn, "SET search_path TO bench_backfill")
                                .await
                                .map(|_| ())
                        })
                    })
                    .connect(&url)
                    .await
                    .expect("PostgreSQL");
                sqlx::raw_sql(
                    "DROP SCHEMA IF EXISTS bench_backfill CASCADE; CREATE SCHEMA bench_backfill",
                )
                .execute(&pool)
                .await
                .expect("schema");
                tracker.migrate(&pool).await.expect("outbox");
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "CREATE TABLE bench_backfill_users (id BIGINT PRIMARY KEY, email TEXT NOT NULL, \
                     plan TEXT NOT NULL, password_hash TEXT NOT NULL, created_at TIMESTAMPTZ NOT NULL); \
                     INSERT INTO bench_backfill_users SELECT i, 'user' || i || '@example.com', \
                     CASE WHEN i % 4 = 0 THEN 'pro' ELSE 'free' END, 'argon2', \
                     TIMESTAMPTZ '2024-01-01' + i * INTERVAL '1 second' \
                     FROM generate_series(1, {rows}) AS i"
                )))
                .execute(&pool)
                .await
                .expect("fill");
                run("PostgreSQL", &tracker, &pool).await;
                sqlx::raw_sql("DROP SCHEMA bench_backfill CASCADE")
                    .execute(&pool)
                    .await
                    .expect("drop schema");
            }
            Err(_) => println!("PostgreSQL: skipped (set POSTGRES_URL to include it)"),
        }
    }
}

/// Two backfills of the same rows: person updates alone, then with historical insert events.
async fn run<DB: posthog_track::Backend>(name: &str, tracker: &Tracker, pool: &Pool<DB>)
where
    Pool<DB>: BackfillPool<User>,
{
    for with_events in [false, true] {
        let started = Instant::now();
        let mut backfill = tracker.backfill::<User>(pool);
        if with_events {
            backfill = backfill.with_events("created_at");
        }
        let report = backfill.run().await.expect("backfill");
        let seconds = started.elapsed().as_secs_f64();
        #[allow(clippy::cast_precision_loss)]
        let (rows, events) = (report.rows as f64 / seconds, report.events as f64 / seconds);
        println!(
            "{name:<11} {:<28} {rows:>10.0} rows/s {events:>10.0} events/s  ({} rows in {seconds:.2} s)",
            if with_events {
                "$set + historical insert"
            } else {
                "$set per row"
            },
            report.rows
        );
    }
}

/// The process's peak resident set size, from `/proc/self/status` (Linux).
fn peak_rss() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmHWM:"))
                .map(|line| line.trim_start_matches("VmHWM:").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown (no /proc/self/status)".to_owned())
}
