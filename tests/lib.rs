//! Shared helpers for the integration tests: which databases to run against.
//!
//! SQLite always runs. PostgreSQL and MariaDB run when `POSTGRES_URL` / `MYSQL_URL` are set;
//! unset, their tests print a notice and pass, except under `CI=true`, where a missing URL
//! fails the test so CI can never silently skip a backend.

/// The URL in `var`, or `None` (with a printed notice) when the backend is not configured.
///
/// # Panics
///
/// When `var` is unset and `CI=true`: CI must test every backend.
pub fn database_url(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ if std::env::var("CI").is_ok_and(|ci| ci == "true") => {
            panic!("{var} must be set when CI=true; .ci/run exports it")
        }
        _ => {
            eprintln!("note: {var} is not set; skipping this backend (set it to run the test)");
            None
        }
    }
}

/// A name no other test run uses, for distinct ids and rows that must not collide with
/// concurrent runs against a shared server.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// A tracker builder aimed at `mock`, with retries fast enough for tests.
pub fn tracker_for(mock: &posthog_track::testing::MockPostHog) -> posthog_track::TrackerBuilder {
    posthog_track::Tracker::builder()
        .api_key(mock.api_key())
        .host(mock.url())
        .expect("MockPostHog's URL is a valid host")
        .backoff(posthog_track::Backoff {
            initial: std::time::Duration::from_millis(10),
            max: std::time::Duration::from_millis(200),
        })
}

/// A mock that answers every request only after `delay` (then accepts it): a worker stays busy
/// with what it sent while the test fills its queue.
pub async fn slow_mock(delay: std::time::Duration) -> posthog_track::testing::MockPostHog {
    let mock = posthog_track::testing::MockPostHog::start().await;
    mock.set_outage(Some(posthog_track::testing::Reply::Delay(
        delay,
        Box::new(posthog_track::testing::Reply::Accept),
    )));
    mock
}

/// A started mock, the tracker `build` makes for it (migrated on `pool`) and a distinct id
/// [`unique`] to this run: the opening of a delivery scenario.
///
/// # Panics
///
/// When the outbox cannot be migrated.
pub async fn migrated_tracker<DB: posthog_track::Backend>(
    pool: &sqlx::Pool<DB>,
    build: impl FnOnce(&posthog_track::testing::MockPostHog) -> posthog_track::Tracker,
    tag: &str,
) -> (
    posthog_track::testing::MockPostHog,
    posthog_track::Tracker,
    String,
) {
    let mock = posthog_track::testing::MockPostHog::start().await;
    let tracker = build(&mock);
    tracker.migrate(pool).await.unwrap();
    (mock, tracker, unique(tag))
}

/// The events named `name` that `mock` accepted.
pub fn events_named(
    mock: &posthog_track::testing::MockPostHog,
    name: &str,
) -> Vec<posthog_track::testing::ReceivedEvent> {
    mock.events()
        .into_iter()
        .filter(|event| event.event == name)
        .collect()
}

/// Inserts `row` in a transaction of its own from `tracker` on `pool`, and commits it.
///
/// # Panics
///
/// When the transaction cannot begin, the insert fails or the commit does.
pub async fn insert_committed<DB, M>(
    tracker: &posthog_track::Tracker,
    pool: &sqlx::Pool<DB>,
    row: M,
) -> M
where
    DB: posthog_track::Backend,
    M: posthog_track::TrackedRow<DB> + Send,
{
    let mut tx = tracker.begin(pool).await.unwrap();
    let stored = row.insert(&mut tx).await.unwrap();
    tx.commit().await.unwrap();
    stored
}

/// Captures `count` events named `name` for `distinct_id` through `tracker`, numbered by their
/// property `n` from 0.
///
/// # Panics
///
/// When a capture is refused.
pub async fn capture_numbered(
    tracker: &posthog_track::Tracker,
    name: &str,
    distinct_id: &str,
    count: u32,
) {
    for n in 0..count {
        tracker
            .capture(
                posthog_track::Event::new(name.to_owned())
                    .distinct_id(distinct_id)
                    .property("n", n),
            )
            .await
            .unwrap();
    }
}

/// The error of `result`, which must be a timeout with `pending` events still undelivered
/// (`context` says which case failed).
///
/// # Panics
///
/// When `result` is not such a timeout.
pub fn assert_timed_out<T: std::fmt::Debug>(
    result: Result<T, posthog_track::Error>,
    pending: u64,
    context: &str,
) -> posthog_track::Error {
    let error = result.unwrap_err();
    assert!(
        matches!(&error, posthog_track::Error::Timeout { pending: left, .. } if *left == pending),
        "{context}: {error}"
    );
    error
}

/// A pool on a fresh schema of its own (dropped and recreated), so that concurrent tests never
/// share tables.
///
/// # Panics
///
/// When the server cannot be reached.
pub async fn isolated_postgres(url: &str, scenario: &str) -> sqlx::PgPool {
    use std::str::FromStr as _;
    let schema = format!("pt_{scenario}");
    let options = sqlx::postgres::PgConnectOptions::from_str(url)
        .unwrap()
        .options([("search_path", schema.as_str())]);
    recreated(
        url,
        format!("DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"),
        options,
    )
    .await
}

/// A pool on a fresh database of its own (dropped and recreated); see [`isolated_postgres`].
///
/// # Panics
///
/// When the server cannot be reached.
pub async fn isolated_mysql(url: &str, scenario: &str) -> sqlx::MySqlPool {
    use std::str::FromStr as _;
    // Prefixed by the URL's own database, so that runs against different databases of one
    // server (parallel checkouts) never share a scenario's database.
    let base = url
        .rsplit_once('/')
        .map(|(_, db)| db.split('?').next().unwrap_or_default())
        .filter(|db| !db.is_empty() && *db != "test")
        .map(|db| format!("{db}_"))
        .unwrap_or_default();
    let mut database = format!("pt_{base}{scenario}");
    if database.len() > 64 {
        // MySQL's limit; keep the name unique with a digest of what was cut.
        let digest = database
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
                (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
            });
        database = format!("{}_{digest:016x}", &database[..47]);
    }
    let options = sqlx::mysql::MySqlConnectOptions::from_str(url)
        .unwrap()
        .database(&database);
    recreated(
        url,
        format!("DROP DATABASE IF EXISTS {database}; CREATE DATABASE {database}"),
        options,
    )
    .await
}

/// [`isolated_mysql`] whose every connection first runs `session`, a `SET` that changes the
/// session (its isolation level, its clock).
///
/// # Panics
///
/// When the server cannot be reached or refuses `session`.
pub async fn isolated_mysql_with_session(
    url: &str,
    scenario: &str,
    session: &'static str,
) -> sqlx::MySqlPool {
    use std::str::FromStr as _;
    let isolated = isolated_mysql(url, scenario).await;
    let database: String = sqlx::query_scalar("SELECT DATABASE()")
        .fetch_one(&isolated)
        .await
        .unwrap();
    isolated.close().await;
    let options = sqlx::mysql::MySqlConnectOptions::from_str(url)
        .unwrap()
        .database(&database);
    sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(8)
        .after_connect(move |connection, _| {
            Box::pin(async move {
                sqlx::query(session).execute(&mut *connection).await?;
                Ok(())
            })
        })
        .connect_with(options)
        .await
        .unwrap()
}

/// Runs `recreate` (drop and create a schema or database) on a connection of its own to `url`,
/// then opens a pool with `options` on what it created.
async fn recreated<DB>(
    url: &str,
    recreate: String,
    options: <DB::Connection as sqlx::Connection>::Options,
) -> sqlx::Pool<DB>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    let admin = sqlx::Pool::<DB>::connect(url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(recreate))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    sqlx::pool::PoolOptions::<DB>::new()
        .max_connections(8)
        .connect_with(options)
        .await
        .unwrap()
}

/// The events in `tracker`'s outbox on `pool` that `keep` selects (a database may be shared by
/// tests).
///
/// # Panics
///
/// When the outbox cannot be read.
pub async fn outbox_events<DB: posthog_track::Backend>(
    tracker: &posthog_track::Tracker,
    pool: &sqlx::Pool<DB>,
    keep: impl FnMut(&posthog_track::outbox::OutboxEvent) -> bool,
) -> Vec<posthog_track::outbox::OutboxEvent> {
    let mut events = tracker.outbox(pool).events().await.unwrap();
    events.retain(keep);
    events
}

/// Runs `sql` (statements the test wrote itself) on a connection from `pool`.
///
/// # Panics
///
/// When the statement fails.
pub async fn execute<DB: posthog_track::Backend>(pool: &sqlx::Pool<DB>, sql: impl Into<String>) {
    let mut conn = pool.acquire().await.unwrap();
    DB::execute(&mut conn, sqlx::query(sqlx::AssertSqlSafe(sql.into())))
        .await
        .unwrap();
}

/// Commits `count` events named `name` for distinct id `tag`, in transactions of `per_tx`,
/// then rolls one more transaction back (its `rolled_back` event must never arrive); returns
/// the uuids committed.
///
/// # Panics
///
/// When a transaction cannot begin or commit.
pub async fn commit_events<DB: posthog_track::Backend>(
    tracker: &posthog_track::Tracker,
    pool: &sqlx::Pool<DB>,
    tag: &str,
    name: &str,
    count: usize,
    per_tx: usize,
) -> std::collections::BTreeSet<uuid::Uuid> {
    use posthog_track::Event;
    let mut committed = std::collections::BTreeSet::new();
    let mut n = 0;
    while n < count {
        let mut tx = tracker.begin(pool).await.unwrap();
        tx.set_distinct_id(tag.to_owned());
        for _ in 0..per_tx.min(count - n) {
            tx.capture(
                Event::new(name.to_owned())
                    .property("n", n as u64)
                    .property("tag", tag),
            )
            .unwrap();
            n += 1;
        }
        committed.extend(tx.staged().iter().map(|event| event.uuid));
        tx.commit().await.unwrap();
    }
    let mut tx = tracker.begin(pool).await.unwrap();
    tx.set_distinct_id(tag.to_owned());
    tx.capture(Event::new("rolled_back").property("tag", tag))
        .unwrap();
    tx.rollback().await.unwrap();
    committed
}

/// The uuids `mock` accepted for distinct id `tag` (a database may be shared by tests).
pub fn received(
    mock: &posthog_track::testing::MockPostHog,
    tag: &str,
) -> std::collections::BTreeSet<uuid::Uuid> {
    mock.events()
        .into_iter()
        .filter(|event| event.distinct_id == tag)
        .map(|event| event.uuid)
        .collect()
}

/// A SQLite database in a file of its own (WAL, as services run it), its URL, and the folder
/// to remove afterwards.
///
/// # Panics
///
/// When the file cannot be created.
pub async fn sqlite_file(prefix: &str) -> (sqlx::SqlitePool, String, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(unique(prefix));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("outbox.db");
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&file)
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .busy_timeout(std::time::Duration::from_secs(30));
    let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
    (pool, format!("sqlite:{}", file.display()), dir)
}

/// The PostgreSQL URL whose connections use `schema` (for other processes).
pub fn with_search_path(url: &str, schema: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}options=-c%20search_path%3D{schema}")
}

/// The `posthog-track` command, built beside the test binaries (the tests crate enables `cli`).
///
/// # Panics
///
/// When it was not built.
pub fn posthog_track_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let binary = dir.join(format!("posthog-track{}", std::env::consts::EXE_SUFFIX));
    assert!(
        binary.exists(),
        "{} is missing: run the tests with `cargo test --workspace`, which builds it (or \
         `cargo build -p posthog-track --features cli` first)",
        binary.display()
    );
    binary
}

/// `posthog-track relay` on `url` delivering to `mock`, logging at `log` (`RUST_LOG`), its
/// stdout discarded; add arguments and spawn it.
pub fn relay_command(
    url: &str,
    mock: &posthog_track::testing::MockPostHog,
    log: &str,
) -> std::process::Command {
    let mut command = std::process::Command::new(posthog_track_binary());
    command
        .args(["relay", "--database-url", url])
        .env("POSTHOG_API_KEY", mock.api_key())
        .env("POSTHOG_HOST", mock.url())
        .env("RUST_LOG", log)
        .stdout(std::process::Stdio::null());
    command
}

/// Serves `app` on a free local port, for the rest of the test; its URL (`http://127.0.0.1:N`).
///
/// # Panics
///
/// When no local port can be bound.
pub async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{address}")
}

/// A web site that answers every request with 200 and an HTML page (a catch-all route, a
/// parked domain, a captive portal): what a wrong `POSTHOG_HOST` may answer. Its URL.
pub async fn html_site() -> String {
    page_site(
        axum::http::StatusCode::OK,
        "<!doctype html><html><body>Welcome to our shop</body></html>",
    )
    .await
    .0
}

/// What nginx answers plain HTTP sent to its HTTPS port with: 400 and an HTML page, to every
/// request (a `POSTHOG_HOST` of `http://` where the proxy speaks HTTPS). Its URL, and the
/// number of requests it answered.
pub async fn https_port_site() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    page_site(
        axum::http::StatusCode::BAD_REQUEST,
        "<html>\r\n<head><title>400 The plain HTTP request was sent to HTTPS port\
         </title></head>\r\n<body>\r\n<center><h1>400 Bad Request</h1></center>\r\n\
         <center>The plain HTTP request was sent to HTTPS port</center>\r\n\
         <hr><center>nginx</center>\r\n</body>\r\n</html>\r\n",
    )
    .await
}

/// A site that answers every request with `status` and the HTML `page`: its URL, and the
/// number of requests it answered.
async fn page_site(
    status: axum::http::StatusCode,
    page: &'static str,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = answered.clone();
    let url = serve(axum::Router::new().fallback(move || {
        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async move { (status, axum::response::Html(page)) }
    }))
    .await;
    (url, answered)
}

/// A child process's stderr, written to a file of its own that the test reads while the
/// process runs: pass [`StderrLog::file`] to `Command::stderr`. The file is removed on drop.
pub struct StderrLog {
    path: std::path::PathBuf,
}

impl StderrLog {
    /// A new, empty log in the temporary directory, named after `name`.
    pub fn new(name: &str) -> Self {
        Self {
            path: std::env::temp_dir().join(unique(name)),
        }
    }

    /// The file the process writes to (created, or emptied).
    ///
    /// # Panics
    ///
    /// When the temporary directory is not writable.
    pub fn file(&self) -> std::fs::File {
        std::fs::File::create(&self.path).unwrap()
    }

    /// Everything written so far.
    pub fn text(&self) -> String {
        std::fs::read_to_string(&self.path).unwrap_or_default()
    }

    /// Waits until a whole line (ended by its newline) with `needle` in it has been written,
    /// for at most `within`; everything written so far, whether or not it came (the caller
    /// asserts on it, with the log in its message).
    pub async fn wait_for(&self, needle: &str, within: std::time::Duration) -> String {
        let started = std::time::Instant::now();
        loop {
            let text = self.text();
            let whole_lines = &text[..text.rfind('\n').map_or(0, |end| end + 1)];
            if whole_lines.contains(needle) || started.elapsed() >= within {
                return text;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

impl Drop for StderrLog {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Waits for `child` to exit, for at most `within`: its exit status, or `None` if it still
/// runs (the caller decides whether to kill it).
///
/// # Panics
///
/// When the process's status cannot be read.
pub async fn exit_within(
    child: &mut std::process::Child,
    within: std::time::Duration,
) -> Option<std::process::ExitStatus> {
    let started = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if started.elapsed() >= within {
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// posthog-track's log events at `level` or more severe, each as its message followed by its
/// other fields (`message field=value ...`), collected by a `tracing` layer: install it with
/// `tracing_subscriber::registry().with(logs.clone())`.
#[derive(Clone)]
pub struct LogLines {
    level: tracing::Level,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl LogLines {
    /// Collects events at `level` (`INFO` takes `WARN` and `ERROR` too).
    pub fn at(level: tracing::Level) -> Self {
        Self {
            level,
            lines: std::sync::Arc::default(),
        }
    }

    /// The lines collected so far, which are then forgotten.
    ///
    /// # Panics
    ///
    /// When a thread panicked while it added a line.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.lines.lock().unwrap())
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for LogLines {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Fields(String);
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0.insert_str(0, &format!("{value:?}"));
                } else {
                    self.0.push_str(&format!(" {}={value:?}", field.name()));
                }
            }
        }
        let metadata = event.metadata();
        if metadata.target().starts_with("posthog_track") && *metadata.level() <= self.level {
            let mut fields = Fields(String::new());
            event.record(&mut fields);
            if let Ok(mut lines) = self.lines.lock() {
                lines.push(fields.0);
            }
        }
    }
}

/// Runs a scenario, failing it after ten minutes: a test that hangs (a CI run once waited 90
/// minutes on one) fails with its name instead of stalling the whole suite.
pub async fn bounded<T>(scenario: &str, run: impl std::future::Future<Output = T>) -> T {
    const LIMIT: std::time::Duration = std::time::Duration::from_secs(600);
    match tokio::time::timeout(LIMIT, run).await {
        Ok(done) => done,
        Err(_) => panic!("scenario `{scenario}` did not finish in {LIMIT:?}: it hangs"),
    }
}

/// Runs `async fn $scenario<DB: Backend>(pool: &Pool<DB>, url: &str)` as three tests: on a
/// SQLite file, on a PostgreSQL schema and on a MariaDB database of its own (the URL reaches
/// the same database, for other processes). Scenario names must be unique across test files.
#[macro_export]
macro_rules! on_every_backend {
    ($scenario:ident) => {
        mod $scenario {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let (pool, url, dir) = $crate::sqlite_file(stringify!($scenario)).await;
                $crate::bounded(stringify!($scenario), super::$scenario(&pool, &url)).await;
                pool.close().await;
                let _ = std::fs::remove_dir_all(&dir);
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some(url) = $crate::database_url("POSTGRES_URL") else {
                    return;
                };
                let scenario = stringify!($scenario);
                let pool = $crate::isolated_postgres(&url, scenario).await;
                let url = $crate::with_search_path(&url, &format!("pt_{scenario}"));
                $crate::bounded(scenario, super::$scenario(&pool, &url)).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mysql() {
                let Some(url) = $crate::database_url("MYSQL_URL") else {
                    return;
                };
                let pool = $crate::isolated_mysql(&url, stringify!($scenario)).await;
                let database: String = sqlx::query_scalar("SELECT DATABASE()")
                    .fetch_one(&pool)
                    .await
                    .unwrap();
                let url = format!("{}/{database}", url.rsplit_once('/').unwrap().0);
                $crate::bounded(stringify!($scenario), super::$scenario(&pool, &url)).await;
            }
        }
    };
}

/// `url` with a proxy's credentials (`proxyuser:hunter2pw@`) in it: what a test of a host with
/// credentials passes as `POSTHOG_HOST`. The password never appears in what it asserts on.
pub fn with_credentials(url: &str) -> String {
    url.replacen("://", "://proxyuser:hunter2pw@", 1)
}
