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
