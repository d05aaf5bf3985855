//! Many writers at once on one database while relays drain the same outbox: plain sqlx writes
//! against tracked writes, with no relay, with the tracker's in-process relay, and with two
//! standalone `posthog-track relay` processes, side by side in one run.
//!
//! ```text
//! cargo build --release -p posthog-track --features cli --bin posthog-track
//! POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test MYSQL_URL=mysql://root@127.0.0.1:3306/test \
//!     cargo bench -p posthog-track-benches --bench concurrency
//! ```
//!
//! Knobs (environment): `BENCH_SECONDS` (each measured phase, default 5), `BENCH_REPEATS`
//! (runs of every case, medians reported, default 3), `BENCH_WRITERS` (default `1,16,64`;
//! SQLite always runs one writer), `BENCH_RELAYS` (default `none,in-process,processes`),
//! `BENCH_BACKENDS` (default `sqlite,postgres,mysql`, each database only when its URL is set),
//! `BENCH_LINGER_MS` (the relays' linger; default the library's), `BENCH_WRITTEN_LEASES=1`
//! (PostgreSQL relays write leases instead of holding claims in their transaction, to compare
//! the two), `BENCH_RATE` and
//! `BENCH_RATE_WRITERS` (the paced latency case: total writes/s and writer tasks, default
//! 1000 and 16; `BENCH_RATE=0` skips it), `BENCH_IDLE_EVENTS` (single events after a quiet
//! spell, default 20; 0 skips), `BENCH_BACKLOG` (events of the PostgreSQL backlog drain by one
//! and by four relay processes, default 0: skipped; the target is 1000000), and
//! `POSTHOG_TRACK_BIN` (the `posthog-track` binary; default: beside this benchmark's target
//! directory, built by the first command above). `BENCH_FOLD=0` turns off the library's
//! one-statement insert on PostgreSQL (the row and its outbox row written together), so that
//! the tracked side writes its outbox row at commit, as on the other backends.
//!
//! Every write is one transaction: `BEGIN`, `INSERT ... RETURNING created_at` (MySQL/MariaDB:
//! `INSERT` then `SELECT created_at`), `COMMIT`; the tracked one is `user.insert(&mut tx)` +
//! `tx.commit()`, which also writes a 360-byte `user_signed_up` event to the outbox. Within a
//! run the plain and the tracked phase alternate in order, with the same relays running (idle
//! during the plain phase, as in production where they wait for events).
//!
//! PostHog is a local sink: this binary started again as a child process (`--sink`), so that
//! parsing the requests is not billed to the writers or the relays. It records when each event
//! arrived; writers record when each commit returned; commit-to-delivery latency is the
//! difference (both wall clocks of this host). Relay CPU is user + system time of the relay
//! processes from `/proc/PID/stat` (10 ms resolution) over the tracked phase and the drain
//! after it, per delivered event; for the in-process relay it cannot be told apart from the
//! writers' and is not reported.

use std::collections::HashMap;
use std::io::Read as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::str::FromStr as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http_body_util::{BodyExt as _, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use posthog_track::{Backend, TrackedModel, TrackedRow, Tracker};
use posthog_track_benches::User;
use posthog_track_benches::proc_stat::cpu_time;
use posthog_track_benches::{free_port, post, spawn_sink};
use sqlx::Pool;

/// Distinct ids of tracked writes are `w<n>`; the sink reads `n` back to match the commit.
fn user(id: String, n: u64) -> User {
    User::sample(id, n)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--sink") => sink(args[2].parse().expect("sink port")),
        _ => orchestrate(),
    }
}

// ---------------------------------------------------------------------------------------------
// Settings

struct Settings {
    seconds: Duration,
    repeats: usize,
    writers: Vec<usize>,
    relays: Vec<Relays>,
    backends: Vec<String>,
    linger_ms: Option<u64>,
    written_leases: bool,
    rate: u64,
    rate_writers: usize,
    idle_events: usize,
    backlog: u64,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(value) => value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value} is not valid")),
        Err(_) => default,
    }
}

fn env_list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_owned())
        .split(',')
        .map(|item| item.trim().to_owned())
        .filter(|item| !item.is_empty())
        .collect()
}

impl Settings {
    fn from_env() -> Settings {
        Settings {
            seconds: Duration::from_secs_f64(env_or("BENCH_SECONDS", 5.0)),
            repeats: env_or("BENCH_REPEATS", 3usize).max(1),
            writers: env_list("BENCH_WRITERS", "1,16,64")
                .iter()
                .map(|w| w.parse().expect("BENCH_WRITERS: numbers"))
                .collect(),
            relays: env_list("BENCH_RELAYS", "none,in-process,processes")
                .iter()
                .map(|mode| match mode.as_str() {
                    "none" => Relays::None,
                    "in-process" => Relays::InProcess,
                    "processes" => Relays::Processes(2),
                    other => panic!("BENCH_RELAYS: unknown mode {other}"),
                })
                .collect(),
            backends: env_list("BENCH_BACKENDS", "sqlite,postgres,mysql"),
            linger_ms: std::env::var("BENCH_LINGER_MS")
                .ok()
                .map(|v| v.parse().expect("BENCH_LINGER_MS")),
            written_leases: env_or("BENCH_WRITTEN_LEASES", 0u8) == 1,
            rate: env_or("BENCH_RATE", 1000),
            rate_writers: env_or("BENCH_RATE_WRITERS", 16usize).max(1),
            idle_events: env_or("BENCH_IDLE_EVENTS", 20usize),
            backlog: env_or("BENCH_BACKLOG", 0),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Relays {
    None,
    InProcess,
    Processes(usize),
}

impl Relays {
    fn label(self) -> String {
        match self {
            Relays::None => "none".to_owned(),
            Relays::InProcess => "in-process".to_owned(),
            Relays::Processes(n) => format!("{n} processes"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The sink

#[tokio::main(flavor = "current_thread")]
async fn sink(port: u16) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let state: Arc<std::sync::Mutex<SinkState>> = Arc::default();
    loop {
        let (stream, _) = listener.accept().await.unwrap();
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let state = state.clone();
                async move {
                    let path = request.uri().path().to_owned();
                    let gzip = request
                        .headers()
                        .get("content-encoding")
                        .is_some_and(|v| v == "gzip");
                    let body = request.into_body().collect().await?.to_bytes();
                    let reply = match path.as_str() {
                        "/stats" => {
                            let state = state.lock().unwrap();
                            format!("{} {}", state.requests, state.events)
                        }
                        "/take" => {
                            let mut state = state.lock().unwrap();
                            let arrivals = std::mem::take(&mut state.arrivals);
                            *state = SinkState::default();
                            let mut text = String::with_capacity(arrivals.len() * 24);
                            for (n, at) in arrivals {
                                text.push_str(&format!("{n} {at}\n"));
                            }
                            text
                        }
                        _ => {
                            let at = unix_micros(SystemTime::now());
                            let mut decoded = Vec::new();
                            if gzip {
                                let _ = flate2::read::GzDecoder::new(&body[..])
                                    .read_to_end(&mut decoded);
                            } else {
                                decoded = body.to_vec();
                            }
                            // Only what the benchmark reads (serde skips the rest without
                            // building it): the sink shares the machine's two cores with what
                            // is measured, and PostHog's CPU would not.
                            let batch = serde_json::from_slice::<Batch>(&decoded)
                                .map(|body| body.batch)
                                .unwrap_or_default();
                            let mut state = state.lock().unwrap();
                            state.requests += 1;
                            state.events += batch.len() as u64;
                            for event in &batch {
                                let n = event
                                    .distinct_id
                                    .as_deref()
                                    .and_then(|id| id.strip_prefix('w'))
                                    .and_then(|n| n.parse::<u64>().ok());
                                if let Some(n) = n {
                                    state.arrivals.push((n, at));
                                }
                            }
                            r#"{"status":"Ok"}"#.to_owned()
                        }
                    };
                    Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from(reply))))
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// A `/batch/` body, as far as the sink reads it.
#[derive(serde::Deserialize)]
struct Batch<'a> {
    #[serde(borrow)]
    batch: Vec<Arrival<'a>>,
}

/// One event of a batch: its distinct id (`w<n>` for the benchmark's tracked writes).
#[derive(serde::Deserialize)]
struct Arrival<'a> {
    #[serde(borrow)]
    distinct_id: Option<std::borrow::Cow<'a, str>>,
}

#[derive(Default)]
struct SinkState {
    requests: u64,
    events: u64,
    /// (writer sequence number, arrival in microseconds since the epoch)
    arrivals: Vec<(u64, u64)>,
}

fn unix_micros(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

struct Sink {
    child: Child,
    url: String,
    http: reqwest::Client,
}

impl Sink {
    async fn start() -> Sink {
        let port = free_port();
        let child = spawn_sink(port);
        let sink = Sink {
            child,
            url: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
        };
        for _ in 0..200 {
            if sink
                .http
                .get(format!("{}/stats", sink.url))
                .send()
                .await
                .is_ok()
            {
                return sink;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the sink did not start");
    }

    async fn call(&self, path: &str) -> String {
        post(&self.http, format!("{}{path}", self.url)).await
    }

    /// (requests, events) received since the last `take`.
    async fn stats(&self) -> (u64, u64) {
        let text = self.call("/stats").await;
        let mut parts = text.split_whitespace().map(|v| v.parse().unwrap_or(0));
        (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
    }

    /// The arrivals since the last `take`, and resets every count.
    async fn take(&self) -> Vec<(u64, u64)> {
        self.call("/take")
            .await
            .lines()
            .filter_map(|line| {
                let (n, at) = line.split_once(' ')?;
                Some((n.parse().ok()?, at.parse().ok()?))
            })
            .collect()
    }

    /// Waits until `expected` events arrived since the last `take`, or `timeout`.
    async fn wait_for(&self, expected: u64, timeout: Duration) -> bool {
        let started = Instant::now();
        while self.stats().await.1 < expected {
            if started.elapsed() > timeout {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Relay processes

fn relay_binary() -> PathBuf {
    if let Ok(path) = std::env::var("POSTHOG_TRACK_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let binary = dir.join(format!("posthog-track{}", std::env::consts::EXE_SUFFIX));
    assert!(
        binary.exists(),
        "{} is missing: build it with `cargo build --release -p posthog-track --features cli \
         --bin posthog-track`, or point POSTHOG_TRACK_BIN at it",
        binary.display()
    );
    binary
}

struct RelayProcesses(Vec<Child>);

impl RelayProcesses {
    fn start(count: usize, url: &str, sink: &Sink, settings: &Settings) -> RelayProcesses {
        let binary = relay_binary();
        RelayProcesses(
            (0..count)
                .map(|_| {
                    let mut command = Command::new(&binary);
                    command
                        .args(["relay", "--database-url", url, "--batch-size", "500"])
                        .env("POSTHOG_API_KEY", "phc_bench")
                        .env("POSTHOG_HOST", &sink.url)
                        .env("RUST_LOG", "posthog_track=error")
                        .stdout(Stdio::null())
                        .stderr(Stdio::null());
                    if let Some(linger) = settings.linger_ms {
                        command.args(["--linger-ms", &linger.to_string()]);
                    }
                    if settings.written_leases {
                        command.arg("--written-leases");
                    }
                    command.spawn().unwrap()
                })
                .collect(),
        )
    }

    /// User + system CPU of the relay processes so far.
    fn cpu(&self) -> Duration {
        self.0.iter().map(|child| cpu_time(child.id())).sum()
    }
}

impl Drop for RelayProcesses {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Backends

/// The plain sqlx write a user would write by hand, and the set-up, per backend.
trait Bench: Backend + Sized
where
    User: TrackedRow<Self>,
{
    const CREATE: &'static str;
    fn plain(pool: &Pool<Self>, row: &User) -> impl Future<Output = ()> + Send;
    /// An empty `bench_users` and outbox.
    /// Reclaims the space of deleted outbox rows. PostgreSQL leaves every delivered (deleted)
    /// row behind as a dead tuple until vacuum runs; where autovacuum is off (as on this
    /// project's machine), claims scan ever more of them and every later case measures the
    /// bloat, not the relay. Production servers run autovacuum; each case starts as vacuumed.
    const VACUUM: Option<&'static str> = None;
    async fn reset(pool: &Pool<Self>);
    async fn empty_outbox(pool: &Pool<Self>);
    /// Runs [`Self::VACUUM`], if any.
    async fn vacuum(pool: &Pool<Self>);
    async fn outbox_len(pool: &Pool<Self>) -> i64;
}

/// `query` with the row's five written columns bound in order: id, email, plan, seats,
/// password_hash (a macro, since each backend's plain write builds its own query type).
macro_rules! bind_user {
    ($query:expr, $row:expr) => {
        $query
            .bind(&$row.id)
            .bind(&$row.email)
            .bind(&$row.plan)
            .bind($row.seats)
            .bind(&$row.password_hash)
    };
}

/// `plain` on a backend whose INSERT returns the generated `created_at` (`RETURNING`).
macro_rules! plain_returning {
    ($insert:literal) => {
        async fn plain(pool: &Pool<Self>, row: &User) {
            let mut tx = pool.begin().await.unwrap();
            let created_at: DateTime<Utc> = bind_user!(sqlx::query_scalar($insert), row)
                .fetch_one(&mut *tx)
                .await
                .unwrap();
            std::hint::black_box(created_at);
            tx.commit().await.unwrap();
        }
    };
}

/// The set-up statements, the same text on every backend.
macro_rules! common {
    () => {
        async fn reset(pool: &Pool<Self>) {
            sqlx::raw_sql("DROP TABLE IF EXISTS bench_users")
                .execute(pool)
                .await
                .unwrap();
            sqlx::query(Self::CREATE).execute(pool).await.unwrap();
            Self::empty_outbox(pool).await;
        }
        async fn empty_outbox(pool: &Pool<Self>) {
            sqlx::raw_sql("DELETE FROM posthog_outbox; DELETE FROM posthog_outbox_dead")
                .execute(pool)
                .await
                .unwrap();
            Self::vacuum(pool).await;
        }
        async fn vacuum(pool: &Pool<Self>) {
            if let Some(vacuum) = Self::VACUUM {
                sqlx::raw_sql(vacuum).execute(pool).await.unwrap();
            }
        }
        async fn outbox_len(pool: &Pool<Self>) -> i64 {
            sqlx::query_scalar("SELECT COUNT(*) FROM posthog_outbox")
                .fetch_one(pool)
                .await
                .unwrap()
        }
    };
}

impl Bench for sqlx::Postgres {
    common!();
    const VACUUM: Option<&'static str> = Some("VACUUM posthog_outbox, posthog_outbox_dead");
    const CREATE: &'static str = "CREATE TABLE bench_users (id TEXT PRIMARY KEY, \
        email TEXT NOT NULL, plan TEXT NOT NULL, seats BIGINT NOT NULL, \
        password_hash TEXT NOT NULL, created_at TIMESTAMPTZ NOT NULL DEFAULT now())";
    plain_returning!(
        "INSERT INTO bench_users (id, email, plan, seats, password_hash) \
         VALUES ($1, $2, $3, $4, $5) RETURNING created_at"
    );
}

impl Bench for sqlx::MySql {
    common!();
    const CREATE: &'static str = "CREATE TABLE bench_users (id VARCHAR(64) PRIMARY KEY, \
        email TEXT NOT NULL, plan TEXT NOT NULL, seats BIGINT NOT NULL, \
        password_hash TEXT NOT NULL, \
        created_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6))";
    async fn plain(pool: &Pool<Self>, row: &User) {
        let mut tx = pool.begin().await.unwrap();
        bind_user!(
            sqlx::query(
                "INSERT INTO bench_users (id, email, plan, seats, password_hash) \
                 VALUES (?, ?, ?, ?, ?)",
            ),
            row
        )
        .execute(&mut *tx)
        .await
        .unwrap();
        let created_at: DateTime<Utc> =
            sqlx::query_scalar("SELECT created_at FROM bench_users WHERE id = ?")
                .bind(&row.id)
                .fetch_one(&mut *tx)
                .await
                .unwrap();
        std::hint::black_box(created_at);
        tx.commit().await.unwrap();
    }
}

impl Bench for sqlx::Sqlite {
    common!();
    const CREATE: &'static str = "CREATE TABLE bench_users (id TEXT PRIMARY KEY, \
        email TEXT NOT NULL, plan TEXT NOT NULL, seats INTEGER NOT NULL, \
        password_hash TEXT NOT NULL, \
        created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')))";
    plain_returning!(
        "INSERT INTO bench_users (id, email, plan, seats, password_hash) \
         VALUES (?, ?, ?, ?, ?) RETURNING created_at"
    );
}

/// Opens a pool of the given size.
type Connect<DB> = Box<dyn Fn(u32) -> std::pin::Pin<Box<dyn Future<Output = Pool<DB>>>>>;

/// A database to measure: pools of any size on it, and the URL relay processes use.
struct Target<DB: Backend> {
    name: &'static str,
    url: String,
    connect: Connect<DB>,
    max_writers: usize,
}

const SCHEMA: &str = "posthog_track_bench";

/// Runs `create` (of the schema or database the benchmark uses) on a connection of its own.
async fn create_on<DB>(url: &str, create: String)
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    let admin = Pool::<DB>::connect(url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(create))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
}

/// Opens pools of any size with `options`.
fn pools_on<DB: Backend>(options: <DB::Connection as sqlx::Connection>::Options) -> Connect<DB> {
    Box::new(move |size| {
        let options = options.clone();
        Box::pin(async move {
            sqlx::pool::PoolOptions::<DB>::new()
                .max_connections(size)
                .connect_with(options)
                .await
                .unwrap()
        })
    })
}

async fn postgres_target(url: &str) -> Target<sqlx::Postgres> {
    create_on::<sqlx::Postgres>(url, format!("CREATE SCHEMA IF NOT EXISTS {SCHEMA}")).await;
    let options = sqlx::postgres::PgConnectOptions::from_str(url)
        .unwrap()
        .options([("search_path", SCHEMA)]);
    let separator = if url.contains('?') { '&' } else { '?' };
    Target {
        name: "PostgreSQL",
        url: format!("{url}{separator}options=-c%20search_path%3D{SCHEMA}"),
        connect: pools_on(options),
        max_writers: usize::MAX,
    }
}

async fn mysql_target(url: &str) -> Target<sqlx::MySql> {
    create_on::<sqlx::MySql>(url, format!("CREATE DATABASE IF NOT EXISTS {SCHEMA}")).await;
    let options = sqlx::mysql::MySqlConnectOptions::from_str(url)
        .unwrap()
        .database(SCHEMA);
    let (base, _) = url.split('?').next().unwrap().rsplit_once('/').unwrap();
    Target {
        name: "MySQL/MariaDB",
        url: format!("{base}/{SCHEMA}"),
        connect: pools_on(options),
        max_writers: usize::MAX,
    }
}

fn sqlite_target(dir: &std::path::Path) -> Target<sqlx::Sqlite> {
    let path = dir.join("bench.db");
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .synchronous(sqlx::sqlite::SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(30));
    Target {
        name: "SQLite (file, WAL, synchronous=NORMAL)",
        url: format!("sqlite:{}", path.display()),
        connect: Box::new(move |size| {
            let options = options.clone();
            Box::pin(async move {
                sqlx::sqlite::SqlitePoolOptions::new()
                    .max_connections(size)
                    .connect_with(options)
                    .await
                    .unwrap()
            })
        }),
        max_writers: 1,
    }
}

// ---------------------------------------------------------------------------------------------
// Measurement

/// Sequence numbers of writes: tracked rows are `w<n>`, plain ones `p<n>`.
static NEXT: AtomicU64 = AtomicU64::new(0);

#[derive(Clone, Copy, PartialEq)]
enum Side {
    Plain,
    Tracked,
}

/// What one phase of writes did.
struct Phase {
    writes: u64,
    elapsed: Duration,
    /// Tracked writes: sequence number -> when its commit returned (microseconds since epoch).
    committed: HashMap<u64, u64>,
}

/// `writers` tasks write for `duration` (at `rate` writes/s in total when given).
async fn write_phase<DB: Bench>(
    tracker: &Tracker,
    pool: &Pool<DB>,
    side: Side,
    writers: usize,
    duration: Duration,
    rate: Option<u64>,
) -> Phase
where
    User: TrackedRow<DB>,
{
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let (tracker, pool) = (tracker.clone(), pool.clone());
        tasks.push(tokio::spawn(async move {
            let mut committed = Vec::new();
            let mut writes = 0u64;
            let mut pace = rate.map(|rate| {
                let period = Duration::from_secs_f64(writers as f64 / rate.max(1) as f64);
                let mut interval = tokio::time::interval(period);
                interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                interval
            });
            while Instant::now() < deadline {
                if let Some(pace) = &mut pace {
                    pace.tick().await;
                }
                let n = NEXT.fetch_add(1, Ordering::Relaxed);
                match side {
                    Side::Plain => DB::plain(&pool, &user(format!("p{n}"), n)).await,
                    Side::Tracked => {
                        let mut tx = tracker.begin(&pool).await.unwrap();
                        std::hint::black_box(
                            user(format!("w{n}"), n).insert(&mut tx).await.unwrap(),
                        );
                        tx.commit().await.unwrap();
                        committed.push((n, unix_micros(SystemTime::now())));
                    }
                }
                writes += 1;
            }
            (writes, committed)
        }));
    }
    let mut phase = Phase {
        writes: 0,
        elapsed: Duration::ZERO,
        committed: HashMap::new(),
    };
    for task in tasks {
        let (writes, committed) = task.await.unwrap();
        phase.writes += writes;
        phase.committed.extend(committed);
    }
    phase.elapsed = started.elapsed();
    phase
}

/// What the relays did with one tracked phase.
#[derive(Default, Clone)]
struct Delivery {
    /// Delivered while the phase ran, per second of it.
    events_per_sec: f64,
    /// Relay CPU per delivered event (relay processes only).
    cpu_per_event: Option<Duration>,
    mean_batch: f64,
    p50: Duration,
    p99: Duration,
    /// Committed but not yet delivered when the phase ended.
    behind_at_end: u64,
    /// Everything arrived within the drain timeout.
    complete: bool,
}

/// One run of one case.
#[derive(Default, Clone)]
struct Sample {
    plain: f64,
    tracked: f64,
    delivery: Option<Delivery>,
}

/// How hard a phase writes.
#[derive(Clone, Copy)]
struct Load {
    writers: usize,
    duration: Duration,
    /// Total writes/s, or as fast as they go.
    rate: Option<u64>,
}

/// Runs `write_phase` for tracked writes and measures the relays' delivery of its events.
async fn tracked_phase<DB: Bench>(rig: &Rig<'_, DB>, load: Load) -> (f64, Option<Delivery>)
where
    User: TrackedRow<DB>,
{
    let Rig {
        pool,
        tracker,
        sink,
        ..
    } = rig;
    let processes = rig.processes.as_ref();
    sink.take().await;
    let cpu_before = processes.map(RelayProcesses::cpu);
    let phase = write_phase(
        tracker,
        pool,
        Side::Tracked,
        load.writers,
        load.duration,
        load.rate,
    )
    .await;
    let writes_per_sec = phase.writes as f64 / phase.elapsed.as_secs_f64();
    if rig.relays == Relays::None {
        DB::empty_outbox(pool).await;
        return (writes_per_sec, None);
    }
    let (_, delivered_at_end) = sink.stats().await;
    let complete = sink.wait_for(phase.writes, Duration::from_secs(120)).await;
    let (requests, events) = sink.stats().await;
    let cpu = processes
        .zip(cpu_before)
        .map(|(processes, before)| processes.cpu().saturating_sub(before));
    let arrivals = sink.take().await;
    let mut latencies: Vec<Duration> = arrivals
        .iter()
        .filter_map(|(n, at)| {
            let committed = phase.committed.get(n)?;
            Some(Duration::from_micros(at.saturating_sub(*committed)))
        })
        .collect();
    latencies.sort_unstable();
    let percentile = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let delivery = Delivery {
        events_per_sec: delivered_at_end as f64 / phase.elapsed.as_secs_f64(),
        cpu_per_event: cpu.map(|cpu| cpu / u32::try_from(events.max(1)).unwrap_or(u32::MAX)),
        mean_batch: events as f64 / requests.max(1) as f64,
        p50: percentile(0.50),
        p99: percentile(0.99),
        behind_at_end: phase.writes.saturating_sub(delivered_at_end),
        complete,
    };
    if complete {
        // What autovacuum would do between runs in production (see `VACUUM`): without it the
        // relays' deleted rows pile up over the runs of a case, and later runs measure that.
        DB::vacuum(pool).await;
    } else {
        DB::empty_outbox(pool).await;
    }
    (writes_per_sec, Some(delivery))
}

/// A tracker for `relays` whose relay (if any) delivers to `sink`.
fn tracker(sink: &Sink, relays: Relays, settings: &Settings) -> Tracker {
    let mut builder = Tracker::builder()
        .api_key("phc_bench")
        .host(&sink.url)
        .unwrap()
        .external_relay(relays != Relays::InProcess)
        .held_claims(!settings.written_leases);
    if let Some(linger) = settings.linger_ms {
        builder = builder.linger(Duration::from_millis(linger));
    }
    builder.build()
}

async fn measure_backend<DB: Bench>(target: Target<DB>, settings: &Settings, sink: &Sink)
where
    User: TrackedRow<DB>,
{
    println!("## {}\n", target.name);
    let mut writer_counts: Vec<usize> = settings
        .writers
        .iter()
        .map(|&w| w.min(target.max_writers).max(1))
        .collect();
    writer_counts.dedup();
    println!(
        "| writers | relays | plain writes/s | tracked writes/s | tracked / plain (runs) | relay \
         events/s | relay CPU / event | mean batch | latency p50 | latency p99 | behind at end |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for &writers in &writer_counts {
        for &relays in &settings.relays {
            let rig = set_up(
                &target,
                u32::try_from(writers).unwrap_or(u32::MAX) + 4,
                relays,
                sink,
                settings,
            )
            .await;
            // Warm-up: connections, statement caches, relays up.
            let warm = settings.seconds.mul_f64(0.2).min(Duration::from_secs(1));
            write_phase(&rig.tracker, &rig.pool, Side::Plain, writers, warm, None).await;
            write_phase(&rig.tracker, &rig.pool, Side::Tracked, writers, warm, None).await;
            settle::<DB>(&rig.pool, relays).await;

            let mut samples = Vec::new();
            for run in 0..settings.repeats {
                let mut sample = Sample::default();
                for side in if run % 2 == 0 {
                    [Side::Plain, Side::Tracked]
                } else {
                    [Side::Tracked, Side::Plain]
                } {
                    match side {
                        Side::Plain => {
                            let phase = write_phase(
                                &rig.tracker,
                                &rig.pool,
                                Side::Plain,
                                writers,
                                settings.seconds,
                                None,
                            )
                            .await;
                            sample.plain = phase.writes as f64 / phase.elapsed.as_secs_f64();
                        }
                        Side::Tracked => {
                            let load = Load {
                                writers,
                                duration: settings.seconds,
                                rate: None,
                            };
                            let (rate, delivery) = tracked_phase(&rig, load).await;
                            sample.tracked = rate;
                            sample.delivery = delivery;
                        }
                    }
                }
                samples.push(sample);
            }
            print_row(writers, relays, &samples);
            rig.tear_down().await;
        }
    }
    let (folded, corrected) = posthog_track::__private::fold_counts();
    if folded > 0 {
        println!(
            "\nTracked inserts so far that wrote their event in the row's statement: {folded} \
             (of which {corrected} needed their outbox row corrected)"
        );
    }
    println!();
    if settings.rate > 0 {
        paced_latency(&target, settings, sink).await;
    }
    if settings.idle_events > 0 {
        idle_latency(&target, settings, sink).await;
    }
}

/// Waits until the relays emptied the outbox (or empties it when nothing delivers).
async fn settle<DB: Bench>(pool: &Pool<DB>, relays: Relays)
where
    User: TrackedRow<DB>,
{
    if relays == Relays::None {
        DB::empty_outbox(pool).await;
        return;
    }
    let started = Instant::now();
    while DB::outbox_len(pool).await > 0 && started.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    DB::empty_outbox(pool).await;
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn median_duration(mut values: Vec<Duration>) -> Duration {
    values.sort_unstable();
    values.get(values.len() / 2).copied().unwrap_or_default()
}

fn ms(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1e3)
}

fn print_row(writers: usize, relays: Relays, samples: &[Sample]) {
    let plain = median(samples.iter().map(|s| s.plain).collect());
    let tracked = median(samples.iter().map(|s| s.tracked).collect());
    let runs: Vec<String> = samples
        .iter()
        .map(|s| format!("{:.2}", s.tracked / s.plain.max(f64::MIN_POSITIVE)))
        .collect();
    let deliveries: Vec<Delivery> = samples.iter().filter_map(|s| s.delivery.clone()).collect();
    let delivery = if deliveries.is_empty() {
        "- | - | - | - | - | -".to_owned()
    } else {
        let cpu = if deliveries.iter().all(|d| d.cpu_per_event.is_some()) {
            let cpu = median_duration(deliveries.iter().filter_map(|d| d.cpu_per_event).collect());
            format!("{:.1} us", cpu.as_secs_f64() * 1e6)
        } else {
            "n/a (in the writers' process)".to_owned()
        };
        let incomplete = deliveries.iter().filter(|d| !d.complete).count();
        format!(
            "{:.0} | {cpu} | {:.0} | {} | {} | {:.0}{}",
            median(deliveries.iter().map(|d| d.events_per_sec).collect()),
            median(deliveries.iter().map(|d| d.mean_batch).collect()),
            ms(median_duration(deliveries.iter().map(|d| d.p50).collect())),
            ms(median_duration(deliveries.iter().map(|d| d.p99).collect())),
            median(deliveries.iter().map(|d| d.behind_at_end as f64).collect()),
            if incomplete > 0 {
                format!(" ({incomplete} runs not drained in 120 s)")
            } else {
                String::new()
            }
        )
    };
    println!(
        "| {writers} | {} | {plain:.0} | {tracked:.0} | {:.3} ({}) | {delivery} |",
        relays.label(),
        tracked / plain.max(f64::MIN_POSITIVE),
        runs.join(", ")
    );
}

/// A pool of `pool_size` connections on an empty `bench_users` and outbox, a tracker, and
/// the `relays` delivering for it (started: in this process, or as processes returned).
async fn set_up<'a, DB: Bench>(
    target: &Target<DB>,
    pool_size: u32,
    relays: Relays,
    sink: &'a Sink,
    settings: &Settings,
) -> Rig<'a, DB>
where
    User: TrackedRow<DB>,
{
    let pool = (target.connect)(pool_size).await;
    let tracker = tracker(sink, relays, settings);
    tracker.migrate(&pool).await.unwrap();
    DB::reset(&pool).await;
    let processes = match relays {
        Relays::Processes(n) => Some(RelayProcesses::start(n, &target.url, sink, settings)),
        _ => None,
    };
    if relays == Relays::InProcess {
        tracker.start_relay(pool.clone()).unwrap();
    }
    Rig {
        pool,
        tracker,
        sink,
        relays,
        processes,
    }
}

/// One case's set-up: a pool, a tracker whose relays (if any) deliver to the sink, and the
/// relay processes when the case runs them.
struct Rig<'a, DB: sqlx::Database> {
    pool: Pool<DB>,
    tracker: Tracker,
    sink: &'a Sink,
    relays: Relays,
    processes: Option<RelayProcesses>,
}

impl<DB: sqlx::Database> Rig<'_, DB> {
    /// Stops the relay processes, then the tracker, then closes the pool.
    async fn tear_down(self) {
        drop(self.processes);
        self.tracker.shutdown(Duration::ZERO).await.ok();
        self.pool.close().await;
    }
}

/// Commit-to-delivery latency at a fixed, moderate rate of tracked writes.
async fn paced_latency<DB: Bench>(target: &Target<DB>, settings: &Settings, sink: &Sink)
where
    User: TrackedRow<DB>,
{
    let writers = settings.rate_writers.min(target.max_writers);
    println!(
        "Paced: {} tracked writes/s from {writers} writer tasks for {:?}, medians of {} runs\n",
        settings.rate, settings.seconds, settings.repeats
    );
    println!("| relays | writes/s | mean batch | latency p50 | latency p99 | relay CPU / event |");
    println!("|---|---|---|---|---|---|");
    for relays in [Relays::InProcess, Relays::Processes(2)] {
        let rig = set_up(
            target,
            u32::try_from(writers).unwrap_or(u32::MAX) + 4,
            relays,
            sink,
            settings,
        )
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut rates = Vec::new();
        let mut deliveries = Vec::new();
        for _ in 0..settings.repeats {
            let load = Load {
                writers,
                duration: settings.seconds,
                rate: Some(settings.rate),
            };
            let (rate, delivery) = tracked_phase(&rig, load).await;
            rates.push(rate);
            deliveries.extend(delivery);
        }
        let cpu = if rig.processes.is_some() {
            format!(
                "{:.1} us",
                median_duration(deliveries.iter().filter_map(|d| d.cpu_per_event).collect())
                    .as_secs_f64()
                    * 1e6
            )
        } else {
            "n/a".to_owned()
        };
        println!(
            "| {} | {:.0} | {:.1} | {} | {} | {cpu} |",
            relays.label(),
            median(rates),
            median(deliveries.iter().map(|d| d.mean_batch).collect()),
            ms(median_duration(deliveries.iter().map(|d| d.p50).collect())),
            ms(median_duration(deliveries.iter().map(|d| d.p99).collect())),
        );
        rig.tear_down().await;
    }
    println!();
}

/// Single events after a quiet spell: how long until each arrives.
async fn idle_latency<DB: Bench>(target: &Target<DB>, settings: &Settings, sink: &Sink)
where
    User: TrackedRow<DB>,
{
    let quiet = Duration::from_millis(300);
    println!(
        "Idle: {} single tracked writes, each {quiet:?} after the previous one arrived\n",
        settings.idle_events
    );
    println!("| relays | latency p50 | latency max |");
    println!("|---|---|---|");
    for relays in [Relays::InProcess, Relays::Processes(2)] {
        let rig = set_up(target, 4, relays, sink, settings).await;
        let Rig { pool, tracker, .. } = &rig;
        tokio::time::sleep(Duration::from_secs(1)).await;
        sink.take().await;
        let mut latencies = Vec::new();
        for i in 0..settings.idle_events {
            tokio::time::sleep(quiet).await;
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let mut tx = tracker.begin(pool).await.unwrap();
            user(format!("w{n}"), n).insert(&mut tx).await.unwrap();
            tx.commit().await.unwrap();
            let committed = Instant::now();
            if !sink.wait_for(i as u64 + 1, Duration::from_secs(30)).await {
                println!(
                    "| {} | event {i} did not arrive within 30 s | |",
                    relays.label()
                );
                break;
            }
            latencies.push(committed.elapsed());
        }
        sink.take().await;
        let max = latencies.iter().max().copied().unwrap_or_default();
        println!(
            "| {} | {} | {} |",
            relays.label(),
            ms(median_duration(latencies)),
            ms(max)
        );
        rig.tear_down().await;
    }
    println!();
}

/// PostgreSQL: a backlog of `settings.backlog` events drained by one and by four relays.
async fn backlog_drain(target: &Target<sqlx::Postgres>, settings: &Settings, sink: &Sink) {
    println!(
        "Backlog drain on PostgreSQL: {} events committed before the relays start\n",
        settings.backlog
    );
    println!("| relay processes | events/s | relay CPU / event | mean batch |");
    println!("|---|---|---|---|");
    for count in [1, 4] {
        let pool = (target.connect)(4).await;
        let tracker = tracker(sink, Relays::None, settings);
        tracker.migrate(&pool).await.unwrap();
        <sqlx::Postgres as Bench>::reset(&pool).await;
        // Events as a tracked write stages them, generated by the database in bulk.
        sqlx::query(
            "INSERT INTO posthog_outbox (uuid, event, distinct_id, timestamp, payload) \
             SELECT u, 'backlog_event', 'backlog-' || g, t, \
                 json_build_object('uuid', u, 'event', 'backlog_event', \
                     'distinct_id', 'backlog-' || g, 'timestamp', t, \
                     'properties', json_build_object('n', g, 'plan', 'free', 'seats', 3, \
                         'email', 'user' || g || '@example.com', '$lib', 'posthog-track'))::text \
             FROM (SELECT g, gen_random_uuid()::text AS u, \
                 to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS t \
                 FROM generate_series(1, $1) AS g) AS rows",
        )
        .bind(i64::try_from(settings.backlog).unwrap_or(i64::MAX))
        .execute(&pool)
        .await
        .unwrap();
        sink.take().await;
        let started = Instant::now();
        let processes = RelayProcesses::start(count, &target.url, sink, settings);
        let complete = sink
            .wait_for(settings.backlog, Duration::from_secs(1800))
            .await;
        let elapsed = started.elapsed();
        let (requests, events) = sink.stats().await;
        let cpu = processes.cpu();
        println!(
            "| {count} | {:.0}{} | {:.1} us | {:.0} |",
            events as f64 / elapsed.as_secs_f64(),
            if complete { "" } else { " (incomplete)" },
            cpu.as_secs_f64() * 1e6 / events.max(1) as f64,
            events as f64 / requests.max(1) as f64,
        );
        drop(processes);
        sink.take().await;
        tracker.shutdown(Duration::ZERO).await.ok();
        pool.close().await;
    }
    println!();
}

#[tokio::main]
async fn orchestrate() {
    let settings = Settings::from_env();
    let fold = env_or("BENCH_FOLD", 1u8) == 1;
    posthog_track::__private::fold_inserts(fold);
    println!(
        "posthog-track concurrency benchmark: {:?} per phase, {} runs per case (medians), \
         writers {:?}, relays {:?}, linger {}, PostgreSQL claims {}, PostgreSQL inserts {}\n",
        settings.seconds,
        settings.repeats,
        settings.writers,
        settings
            .relays
            .iter()
            .map(|r| r.label())
            .collect::<Vec<_>>(),
        settings
            .linger_ms
            .map_or("default".to_owned(), |ms| format!("{ms} ms")),
        if settings.written_leases {
            "with written leases"
        } else {
            "held by the sending transaction"
        },
        if fold {
            "fold their events (one statement)"
        } else {
            "write their events at commit (BENCH_FOLD=0)"
        },
    );
    let sink = Sink::start().await;
    for backend in &settings.backends {
        match backend.as_str() {
            "sqlite" => {
                let dir = std::env::temp_dir()
                    .join(format!("posthog-track-concurrency-{}", std::process::id()));
                std::fs::create_dir_all(&dir).unwrap();
                measure_backend(sqlite_target(&dir), &settings, &sink).await;
                let _ = std::fs::remove_dir_all(&dir);
            }
            "postgres" => match std::env::var("POSTGRES_URL") {
                Ok(url) => {
                    let target = postgres_target(&url).await;
                    if settings.backlog > 0 {
                        backlog_drain(&target, &settings, &sink).await;
                    }
                    measure_backend(target, &settings, &sink).await;
                }
                Err(_) => println!("PostgreSQL: skipped (set POSTGRES_URL)\n"),
            },
            "mysql" => match std::env::var("MYSQL_URL") {
                Ok(url) => measure_backend(mysql_target(&url).await, &settings, &sink).await,
                Err(_) => println!("MySQL/MariaDB: skipped (set MYSQL_URL)\n"),
            },
            other => panic!("BENCH_BACKENDS: unknown backend {other}"),
        }
    }
}
