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

/// A pool on a fresh schema of its own (dropped and recreated), so that concurrent tests never
/// share tables.
///
/// # Panics
///
/// When the server cannot be reached.
pub async fn isolated_postgres(url: &str, scenario: &str) -> sqlx::PgPool {
    use std::str::FromStr as _;
    let schema = format!("pt_{scenario}");
    let admin = sqlx::PgPool::connect(url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
    )))
    .execute(&admin)
    .await
    .unwrap();
    admin.close().await;
    let options = sqlx::postgres::PgConnectOptions::from_str(url)
        .unwrap()
        .options([("search_path", schema.as_str())]);
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .connect_with(options)
        .await
        .unwrap()
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
    let admin = sqlx::MySqlPool::connect(url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {database}; CREATE DATABASE {database}"
    )))
    .execute(&admin)
    .await
    .unwrap();
    admin.close().await;
    let options = sqlx::mysql::MySqlConnectOptions::from_str(url)
        .unwrap()
        .database(&database);
    sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(8)
        .connect_with(options)
        .await
        .unwrap()
}
