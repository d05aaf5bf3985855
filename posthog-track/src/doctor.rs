//! `doctor`: checks a set-up before the first event goes missing, and says what to fix.
//!
//! [`diagnose`] runs every check and returns a [`Diagnosis`], one [`Check`] per line, each
//! with a [`Verdict`]; `posthog-track doctor` prints it (or its JSON) and exits non-zero when
//! the set-up is not [`healthy`](Diagnosis::healthy): when something would lose events or hold
//! them back (a wrong kind of key, a host that is not PostHog or does not answer, a database
//! that cannot be reached, a missing or outdated outbox table, a delivery lag over the limit).
//!
//! ```no_run
//! # async fn check() -> posthog_track::Result<()> {
//! use posthog_track::doctor::{DoctorOptions, diagnose};
//!
//! let config = posthog_track::Config::from_env()?;
//! let diagnosis = diagnose(&config, &DoctorOptions::new().database_url("postgres://...")).await;
//! print!("{diagnosis}");
//! assert!(diagnosis.healthy());
//! # Ok(()) }
//! ```
//!
//! The requests it makes are harmless: an empty batch to `/batch/` (PostHog refuses it, and
//! takes nothing in), a flags request for the distinct id `posthog-track-doctor` (recorded
//! nowhere), and a read of the flag definitions. Keys and database passwords never appear in
//! its output.

use std::fmt;
use std::time::Duration;

use serde_json::json;

use crate::backend::{Backend, Dialect};
use crate::client::USER_AGENT_VALUE;
use crate::config::{
    ApiKey, Config, EU_HOST, US_HOST, is_plain_http_to_remote, redact_host, refused_login_hint,
    url_secrets,
};
use crate::mode::Mode;
use crate::outbox::{COLUMNS, Outbox, SCHEMA_VERSION};

/// What a check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// Fine.
    Ok,
    /// Works, but deserves a look.
    Warn,
    /// Events would be lost or held back (or a configured feature does not work): fix it.
    Fail,
    /// Not checked: it does not apply, or an earlier check failed.
    Skipped,
}

impl Verdict {
    /// `ok`, `warn`, `fail` or `skip`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Warn => "warn",
            Verdict::Fail => "fail",
            Verdict::Skipped => "skip",
        }
    }
}

/// One check and its verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Check {
    /// Stable name of the check (`mode`, `project key`, `personal key`, `host`,
    /// `host answers`, `key accepted`, `flag definitions`, `database`, `outbox table`,
    /// `outbox backlog`, and on PostgreSQL `outbox vacuum`).
    pub name: &'static str,
    /// What it found.
    pub verdict: Verdict,
    /// What it saw, and what to do about it.
    pub detail: String,
}

/// Every check of a set-up, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Diagnosis {
    /// The checks, in the order they ran.
    pub checks: Vec<Check>,
}

impl Diagnosis {
    /// Whether no check failed.
    pub fn healthy(&self) -> bool {
        self.checks
            .iter()
            .all(|check| check.verdict != Verdict::Fail)
    }

    /// The check named `name`, if it ran.
    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|check| check.name == name)
    }

    /// `{"healthy": bool, "checks": [{"check", "verdict", "detail"}...]}`, for scripts.
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "healthy": self.healthy(),
            "checks": self.checks.iter().map(|check| json!({
                "check": check.name,
                "verdict": check.verdict.as_str(),
                "detail": check.detail,
            })).collect::<Vec<_>>(),
        })
    }

    fn push(&mut self, name: &'static str, verdict: Verdict, detail: impl Into<String>) {
        self.checks.push(Check {
            name,
            verdict,
            detail: detail.into(),
        });
    }
}

impl fmt::Display for Diagnosis {
    /// One line per check: verdict, name, detail; then the overall verdict.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for check in &self.checks {
            writeln!(
                f,
                "{:<4}  {:<16}  {}",
                check.verdict.as_str(),
                check.name,
                check.detail
            )?;
        }
        if self.healthy() {
            writeln!(f, "healthy")
        } else {
            let failed = self
                .checks
                .iter()
                .filter(|check| check.verdict == Verdict::Fail)
                .count();
            writeln!(f, "NOT HEALTHY: {failed} check(s) failed")
        }
    }
}

/// What [`diagnose`] checks beyond the configuration. Its `Debug` hides the database URL's
/// credentials and secret parameters.
#[derive(Clone)]
#[non_exhaustive]
pub struct DoctorOptions {
    /// The database that holds the outbox (`postgres://`, `mysql://`, `sqlite:`); `None`
    /// skips the database checks.
    pub database_url: Option<String>,
    /// A pending event older than this fails the backlog check (default 5 minutes).
    pub max_lag: Duration,
    /// How long each request and the database connection may take (default 10 s; taken as
    /// at most a day).
    pub timeout: Duration,
}

/// The longest [`DoctorOptions::timeout`] the checks use: a longer one (`doctor --timeout
/// 18446744073709551615`) cannot be added to the clock, which panicked the database check.
const MAX_TIMEOUT: Duration = Duration::from_secs(86_400);

impl std::fmt::Debug for DoctorOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DoctorOptions")
            .field(
                "database_url",
                &self.database_url.as_deref().map(redact_host),
            )
            .field("max_lag", &self.max_lag)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Default for DoctorOptions {
    fn default() -> Self {
        DoctorOptions {
            database_url: None,
            max_lag: Duration::from_secs(300),
            timeout: Duration::from_secs(10),
        }
    }
}

impl DoctorOptions {
    /// The defaults: no database, a 5-minute lag limit, 10-second timeouts.
    pub fn new() -> Self {
        Self::default()
    }

    setters! {
        /// Checks the outbox of this database too.
        pub fn database_url(url: impl Into<String>) => database_url = Some(url.into());

        /// The delivery lag over which the backlog check fails.
        pub fn max_lag(lag: Duration) => max_lag = lag;

        /// How long each request and the database connection may take.
        pub fn timeout(timeout: Duration) => timeout = timeout;
    }
}

/// Runs every check of `config` (and of the database in `options`) and returns them all.
/// Never fails and never panics: what goes wrong is a check's verdict.
pub async fn diagnose(config: &Config, options: &DoctorOptions) -> Diagnosis {
    let options = &DoctorOptions {
        timeout: options.timeout.min(MAX_TIMEOUT),
        ..options.clone()
    };
    let mut diagnosis = Diagnosis { checks: Vec::new() };
    check_mode(config, &mut diagnosis);
    check_keys(config, &mut diagnosis);
    check_host(config, &mut diagnosis);
    check_requests(config, options, &mut diagnosis).await;
    match &options.database_url {
        Some(url) => check_database(url, options, &mut diagnosis).await,
        None => diagnosis.push(
            "database",
            Verdict::Skipped,
            "no --database-url (DATABASE_URL): the outbox was not checked",
        ),
    }
    diagnosis
}

fn check_mode(config: &Config, diagnosis: &mut Diagnosis) {
    let host = redact_host(config.host());
    match config.mode() {
        Mode::Live => diagnosis.push(
            "mode",
            Verdict::Ok,
            format!("live: events are sent to {host}"),
        ),
        Mode::DryRun => diagnosis.push(
            "mode",
            Verdict::Fail,
            "dry run, because POSTHOG_API_KEY is not set: events are printed to stdout, not \
             sent, and relays refuse to run; set POSTHOG_API_KEY to the project API key (phc_...)",
        ),
        Mode::Disabled => diagnosis.push(
            "mode",
            Verdict::Warn,
            "disabled, because POSTHOG_DISABLED is set: no event is recorded (on purpose?)",
        ),
    }
}

/// The kind of a PostHog key, from its prefix.
fn key_kind(key: &str) -> &'static str {
    match key.get(..4) {
        Some("phc_") => "project",
        Some("phx_") => "personal",
        Some("phs_") => "secret",
        _ => "unknown",
    }
}

/// What to say of a key that is set.
type KeyVerdict = fn(&ApiKey) -> (Verdict, String);

fn check_keys(config: &Config, diagnosis: &mut Diagnosis) {
    let checks: [(&'static str, Option<&ApiKey>, &'static str, KeyVerdict); 2] = [
        (
            "project key",
            config.api_key(),
            "POSTHOG_API_KEY is not set",
            project_key_verdict,
        ),
        (
            "personal key",
            config.personal_api_key(),
            "POSTHOG_PERSONAL_API_KEY is not set: flags are evaluated by PostHog, not locally",
            personal_key_verdict,
        ),
    ];
    for (name, key, unset, judge) in checks {
        match key {
            None => diagnosis.push(name, Verdict::Skipped, unset),
            Some(key) => {
                let (verdict, detail) = judge(key);
                diagnosis.push(name, verdict, detail);
            }
        }
    }
}

/// POSTHOG_API_KEY must be a project key: PostHog refuses events sent with any other.
fn project_key_verdict(key: &ApiKey) -> (Verdict, String) {
    match key_kind(key.expose()) {
        "project" => (Verdict::Ok, format!("{key} is a project API key")),
        "personal" => (
            Verdict::Fail,
            format!(
                "{key} in POSTHOG_API_KEY is a personal API key: PostHog refuses events \
                 sent with it. Use the project API key (phc_..., Project settings); a \
                 personal key belongs in POSTHOG_PERSONAL_API_KEY"
            ),
        ),
        "secret" => (
            Verdict::Fail,
            format!(
                "{key} in POSTHOG_API_KEY is a project secret key: events need the \
                 project API key (phc_...); a secret key belongs in \
                 POSTHOG_PERSONAL_API_KEY"
            ),
        ),
        _ => (
            Verdict::Warn,
            format!(
                "{key} does not start with phc_, as PostHog project API keys do; check \
                 POSTHOG_API_KEY"
            ),
        ),
    }
}

/// POSTHOG_PERSONAL_API_KEY must be a personal or project secret key: local evaluation
/// reads the flag definitions with it.
fn personal_key_verdict(key: &ApiKey) -> (Verdict, String) {
    match key_kind(key.expose()) {
        "personal" => (Verdict::Ok, format!("{key} is a personal API key")),
        "secret" => (Verdict::Ok, format!("{key} is a project secret key")),
        "project" => (
            Verdict::Fail,
            format!(
                "{key} in POSTHOG_PERSONAL_API_KEY is the project API key: local \
                 evaluation needs a personal API key (phx_...) or a project secret key \
                 (phs_...)"
            ),
        ),
        _ => (
            Verdict::Warn,
            format!(
                "{key} starts with neither phx_ nor phs_; check \
                 POSTHOG_PERSONAL_API_KEY"
            ),
        ),
    }
}

fn check_host(config: &Config, diagnosis: &mut Diagnosis) {
    let host = config.host();
    let shown = redact_host(host);
    let name = host
        .split_once("://")
        .map_or(host, |(_, rest)| rest)
        .split(['/', ':'])
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let (verdict, detail) = if config.capture_mode() == crate::config::CaptureMode::V1
        && crate::config::host_has_credentials(host)
    {
        // The relay's transport refuses it: events would wait in the outbox for ever.
        (
            Verdict::Fail,
            format!(
                "{shown}: {}",
                crate::config::bearer_with_credentials(
                    "capture v1",
                    "use capture v0 (POSTHOG_CAPTURE_MODE=v0), which sends the project key in \
                     the body",
                )
            ),
        )
    } else if host == US_HOST {
        (Verdict::Ok, format!("{shown}: PostHog Cloud US ingestion"))
    } else if host == EU_HOST {
        (Verdict::Ok, format!("{shown}: PostHog Cloud EU ingestion"))
    } else if matches!(
        name.as_str(),
        "us.posthog.com" | "eu.posthog.com" | "app.posthog.com" | "posthog.com"
    ) {
        let ingestion = if name.starts_with("eu.") {
            EU_HOST
        } else {
            US_HOST
        };
        (
            Verdict::Warn,
            format!(
                "{shown} is PostHog's app, not its ingestion host: set POSTHOG_HOST to \
                 {ingestion}"
            ),
        )
    } else if name.ends_with(".posthog.com") && !name.ends_with(".i.posthog.com") {
        (
            Verdict::Warn,
            format!("{shown} is not a PostHog ingestion host (us.i.posthog.com, eu.i.posthog.com)"),
        )
    } else if is_plain_http_to_remote(host) {
        (
            Verdict::Warn,
            format!("{shown}: plain http to another machine, keys and events travel unencrypted"),
        )
    } else {
        (
            Verdict::Ok,
            format!("{shown}: self-hosted PostHog or a proxy (checked below)"),
        )
    };
    diagnosis.push("host", verdict, detail);
}

async fn check_requests(config: &Config, options: &DoctorOptions, diagnosis: &mut Diagnosis) {
    let http = match reqwest::Client::builder()
        .timeout(options.timeout)
        .connect_timeout(options.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(http) => http,
        Err(error) => {
            diagnosis.push(
                "host answers",
                Verdict::Fail,
                format!("no HTTP client could be built: {error}"),
            );
            return;
        }
    };
    let host = config.host();
    let shown = redact_host(host);
    let project_key = config.api_key().map(|key| key.expose()).unwrap_or_default();

    // An empty batch: PostHog refuses it (400) and takes nothing in, but only a capture
    // endpoint answers it so.
    let batch = http
        .post(format!("{host}/batch/"))
        .header(reqwest::header::USER_AGENT, USER_AGENT_VALUE)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(json!({"api_key": project_key, "batch": []}).to_string())
        .send()
        .await;
    let answered = match batch {
        Err(error) => {
            diagnosis.push(
                "host answers",
                Verdict::Fail,
                format!(
                    "no answer from {shown}: {}; events wait in the outbox until it answers",
                    describe_transport_error(error)
                ),
            );
            false
        }
        Ok(response) => {
            let status = response.status().as_u16();
            let web_page = crate::client::transport::answers_with_a_web_page(&response);
            match status {
                200..=299 if web_page => {
                    diagnosis.push(
                        "host answers",
                        Verdict::Fail,
                        format!(
                            "{shown}/batch/ answered {status} with a web page (text/html): not a \
                             PostHog ingestion host (or a proxy that does not forward /batch/); \
                             relays would pause"
                        ),
                    );
                    false
                }
                400 if web_page => {
                    diagnosis.push(
                        "host answers",
                        Verdict::Fail,
                        format!(
                            "{shown}/batch/ answered {status} with a web page (text/html), where \
                             PostHog answers with JSON: a proxy or web server answers instead \
                             (nginx does so to plain http:// sent to its HTTPS port); relays \
                             would pause"
                        ),
                    );
                    false
                }
                200..=299 | 400 | 401 | 403 => {
                    diagnosis.push(
                        "host answers",
                        Verdict::Ok,
                        format!("{shown}/batch/ answers as PostHog ({status} to an empty batch)"),
                    );
                    true
                }
                300..=399 | 404 | 405 => {
                    diagnosis.push(
                        "host answers",
                        Verdict::Fail,
                        format!(
                            "{shown}/batch/ answered {status}: not a PostHog ingestion host (or a \
                             proxy that does not forward /batch/); relays would pause"
                        ),
                    );
                    false
                }
                _ => {
                    diagnosis.push(
                        "host answers",
                        Verdict::Warn,
                        format!("{shown}/batch/ answered {status}; delivery retries meanwhile"),
                    );
                    true
                }
            }
        }
    };

    if !answered || project_key.is_empty() {
        diagnosis.push(
            "key accepted",
            Verdict::Skipped,
            if answered {
                "no project key to check"
            } else {
                "the host did not answer"
            },
        );
    } else {
        // PostHog's flags endpoint knows the project keys (capture takes any and sorts them
        // out later): a flags request for a made-up user is the harmless way to ask.
        let flags = http
            .post(format!("{host}/flags/?v=2"))
            .header(reqwest::header::USER_AGENT, USER_AGENT_VALUE)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(
                json!({"api_key": project_key, "distinct_id": "posthog-track-doctor"}).to_string(),
            )
            .send()
            .await;
        let (verdict, detail) = match flags.map(|response| response.status().as_u16()) {
            Ok(200..=299) => (Verdict::Ok, "PostHog accepts the project key".to_owned()),
            Ok(status @ (401 | 403)) => (
                Verdict::Fail,
                format!(
                    "PostHog refused the project key ({status}): check POSTHOG_API_KEY against \
                     Project settings; relays would pause"
                ),
            ),
            Ok(status) => (
                Verdict::Warn,
                format!("could not tell: /flags/ answered {status}"),
            ),
            Err(error) => could_not_tell(error),
        };
        diagnosis.push("key accepted", verdict, detail);
    }

    let Some(personal) = config.personal_api_key() else {
        diagnosis.push(
            "flag definitions",
            Verdict::Skipped,
            "no personal key: local evaluation is off",
        );
        return;
    };
    if !answered || project_key.is_empty() {
        diagnosis.push(
            "flag definitions",
            Verdict::Skipped,
            "needs a project key and a host that answers",
        );
        return;
    }
    if crate::config::host_has_credentials(host) {
        diagnosis.push(
            "flag definitions",
            Verdict::Fail,
            crate::config::bearer_with_credentials(
                "loading flag definitions (with the personal API key)",
                "evaluate flags remotely (no personal key)",
            ),
        );
        return;
    }
    let definitions = http
        .get(format!("{host}/flags/definitions"))
        .query(&[("token", project_key), ("send_cohorts", "")])
        .header(reqwest::header::USER_AGENT, USER_AGENT_VALUE)
        .bearer_auth(personal.expose())
        .send()
        .await;
    let (verdict, detail) = match definitions {
        Ok(response) if response.status().is_success() => {
            let count = response
                .bytes()
                .await
                .ok()
                .and_then(|body| serde_json::from_slice::<serde_json::Value>(&body).ok())
                .and_then(|body| body.get("flags").and_then(|f| f.as_array()).map(Vec::len));
            match count {
                Some(count) => (
                    Verdict::Ok,
                    format!("the personal key reads the flag definitions ({count} flag(s))"),
                ),
                None => (
                    Verdict::Warn,
                    "the flag definitions came back in a shape this version does not know"
                        .to_owned(),
                ),
            }
        }
        Ok(response) => {
            let status = response.status().as_u16();
            match status {
                401 | 403 => (
                    Verdict::Fail,
                    format!(
                        "PostHog refused the personal key ({status}): it needs the \
                         feature_flag:read scope on this project"
                    ),
                ),
                402 => (
                    Verdict::Warn,
                    "PostHog answered 402: the project's flag quota is used up".to_owned(),
                ),
                _ => (
                    Verdict::Fail,
                    format!("/flags/definitions answered {status}"),
                ),
            }
        }
        Err(error) => could_not_tell(error),
    };
    diagnosis.push("flag definitions", verdict, detail);
}

/// The verdict on a check whose request failed: the failure says nothing about what the check
/// asks, so it warns rather than fails.
fn could_not_tell(error: reqwest::Error) -> (Verdict, String) {
    (
        Verdict::Warn,
        format!("could not tell: {}", describe_transport_error(error)),
    )
}

fn describe_transport_error(error: reqwest::Error) -> String {
    // reqwest's own text names the URL, which holds no secret here (keys travel in bodies
    // and headers), but credentials in the host would be; drop the URL.
    let error = error.without_url();
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    if let Some(advice) = crate::client::transport::tls_advice(&text) {
        text.push_str(advice);
    }
    text
}

/// `text` without the secrets of `url` (see [`url_secrets`]).
fn scrub(text: &str, url: &str) -> String {
    url_secrets(url)
        .iter()
        .fold(text.to_owned(), |text, secret| {
            text.replace(secret.as_str(), "(redacted)")
        })
}

async fn check_database(url: &str, options: &DoctorOptions, diagnosis: &mut Diagnosis) {
    let shown = redact_host(url);
    macro_rules! on {
        ($pool_options:ty, $connection:ty) => {{
            // One connection first: its error says why (a pool's says only that it timed out).
            let connect = async {
                let first = <$connection as sqlx::Connection>::connect(url).await?;
                let _ = sqlx::Connection::close(first).await;
                <$pool_options>::new()
                    .max_connections(2)
                    .acquire_timeout(options.timeout)
                    .connect(url)
                    .await
            };
            match tokio::time::timeout(options.timeout, connect).await {
                Ok(Ok(pool)) => {
                    diagnosis.push("database", Verdict::Ok, format!("{shown} connects"));
                    check_outbox(&pool, options, diagnosis).await;
                    pool.close().await;
                }
                Ok(Err(error)) => {
                    let mut why = scrub(&error.to_string(), url);
                    if matches!(error, sqlx::Error::Configuration(_)) {
                        why.push_str(URL_HINT);
                    }
                    if let Some(hint) = refused_login_hint(&error) {
                        why = format!("{why}; {hint}");
                    }
                    unreachable_database(&shown, &why, diagnosis)
                }
                Err(_) => unreachable_database(
                    &shown,
                    &format!("no connection within {:?}", options.timeout),
                    diagnosis,
                ),
            }
        }};
    }
    if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        #[cfg(feature = "postgres")]
        on!(sqlx::postgres::PgPoolOptions, sqlx::PgConnection);
        #[cfg(not(feature = "postgres"))]
        unsupported(&shown, "postgres", diagnosis);
    } else if url.starts_with("mysql:") || url.starts_with("mariadb:") {
        #[cfg(feature = "mysql")]
        on!(sqlx::mysql::MySqlPoolOptions, sqlx::MySqlConnection);
        #[cfg(not(feature = "mysql"))]
        unsupported(&shown, "mysql", diagnosis);
    } else if url.starts_with("sqlite:") {
        #[cfg(feature = "sqlite")]
        on!(sqlx::sqlite::SqlitePoolOptions, sqlx::SqliteConnection);
        #[cfg(not(feature = "sqlite"))]
        unsupported(&shown, "sqlite", diagnosis);
    } else {
        diagnosis.push(
            "database",
            Verdict::Fail,
            format!("{shown}: the URL must start with postgres://, mysql:// or sqlite:"),
        );
    }
}

#[allow(dead_code)] // used only when a backend feature is off
fn unsupported(shown: &str, feature: &str, diagnosis: &mut Diagnosis) {
    diagnosis.push(
        "database",
        Verdict::Fail,
        format!("{shown}: this build lacks the `{feature}` feature of posthog-track"),
    );
}

/// What to check when the driver cannot read a database URL: most often a password holding
/// a character that ends a URL's part.
const URL_HINT: &str = " (check the URL's form: a password holding `?`, `/`, `#`, `@` or \
     `%` must be percent-encoded: `%3F`, `%2F`, `%23`, `%40`, `%25`)";

fn unreachable_database(shown: &str, why: &str, diagnosis: &mut Diagnosis) {
    diagnosis.push(
        "database",
        Verdict::Fail,
        format!("{shown} does not connect: {why}"),
    );
    for name in ["outbox table", "outbox backlog"] {
        diagnosis.push(name, Verdict::Skipped, "the database does not connect");
    }
}

async fn check_outbox<DB: Backend>(
    pool: &sqlx::Pool<DB>,
    options: &DoctorOptions,
    diagnosis: &mut Diagnosis,
) {
    let outbox = Outbox::new(pool);
    let columns = match outbox.columns().await {
        Ok(columns) => columns,
        Err(error) => {
            diagnosis.push(
                "outbox table",
                Verdict::Fail,
                format!("could not read the outbox's columns: {error}"),
            );
            return;
        }
    };
    if columns.is_empty() {
        diagnosis.push(
            "outbox table",
            Verdict::Fail,
            "posthog_outbox does not exist: tracked commits fail until it does; run \
             `posthog-track outbox migrate --database-url <the same URL>` (or \
             `tracker.migrate(&pool)` at start-up)",
        );
        diagnosis.push("outbox backlog", Verdict::Skipped, "no outbox table");
        return;
    }
    let missing: Vec<&str> = COLUMNS
        .iter()
        .copied()
        .filter(|column| !columns.iter().any(|existing| existing == column))
        .collect();
    let version = outbox.schema_version().await;
    let (verdict, detail) = match (&missing[..], version) {
        ([], Ok(Some(version))) if version == SCHEMA_VERSION => (
            Verdict::Ok,
            format!("posthog_outbox has the expected columns, schema version {version}"),
        ),
        ([], Ok(Some(version))) if version > SCHEMA_VERSION => (
            Verdict::Warn,
            format!(
                "schema version {version} was migrated by a newer posthog-track (this one knows \
                 {SCHEMA_VERSION}); upgrade this binary"
            ),
        ),
        ([], Ok(Some(version))) => (
            Verdict::Fail,
            format!(
                "schema version {version}, this version needs {SCHEMA_VERSION}: run \
                 `posthog-track outbox migrate --database-url <the same URL>`"
            ),
        ),
        ([], Ok(None)) => (
            Verdict::Warn,
            "posthog_outbox has the expected columns but no recorded schema version (created \
             by hand?): run `posthog-track outbox migrate --database-url <the same URL>` once \
             to record it"
                .to_owned(),
        ),
        ([], Err(error)) => (
            Verdict::Warn,
            format!("posthog_outbox has the expected columns; its schema version: {error}"),
        ),
        (missing, _) => (
            Verdict::Fail,
            format!(
                "posthog_outbox lacks column(s) {} (an earlier layout): relays cannot claim \
                 from it; run `posthog-track outbox migrate --database-url <the same URL>`",
                missing.join(", ")
            ),
        ),
    };
    let usable = verdict != Verdict::Fail || missing.is_empty();
    diagnosis.push("outbox table", verdict, detail);
    if !usable {
        diagnosis.push(
            "outbox backlog",
            Verdict::Skipped,
            "the outbox table needs migrating",
        );
        return;
    }
    check_backlog(&outbox, options, diagnosis).await;
    check_vacuum(pool, diagnosis).await;
}

async fn check_backlog<DB: Backend>(
    outbox: &Outbox<'_, DB>,
    options: &DoctorOptions,
    diagnosis: &mut Diagnosis,
) {
    match outbox.status().await {
        Ok(status) => {
            let age = status.oldest_pending_age.unwrap_or_default();
            let figures = format!(
                "{} pending (oldest {}), {} dead",
                status.pending,
                if status.pending > 0 {
                    format!("{} s ago", age.as_secs())
                } else {
                    "none".to_owned()
                },
                status.dead
            );
            if age > options.max_lag {
                diagnosis.push(
                    "outbox backlog",
                    Verdict::Fail,
                    format!(
                        "{figures}: delivery lags more than {} s behind; is a relay running and \
                         delivering? see `posthog-track outbox status`",
                        options.max_lag.as_secs()
                    ),
                );
            } else if status.dead > 0 {
                let reason = status
                    .dead_reasons
                    .first()
                    .map(|(reason, count)| format!("; most common ({count}): {reason}"))
                    .unwrap_or_default();
                diagnosis.push(
                    "outbox backlog",
                    Verdict::Warn,
                    format!(
                        "{figures}{reason}; `posthog-track outbox requeue` once fixed, or \
                         `outbox purge`"
                    ),
                );
            } else {
                diagnosis.push("outbox backlog", Verdict::Ok, figures);
            }
        }
        Err(error) => diagnosis.push(
            "outbox backlog",
            Verdict::Fail,
            format!("could not read the outbox: {error}"),
        ),
    }
}

/// PostgreSQL: whether vacuum cleans the outbox. Every delivered event is a deleted row, left
/// behind as a dead tuple until vacuum reclaims it; with autovacuum off (for the server, or
/// for the table) they pile up, the table grows without bound and every claim scans more of
/// them (measured: idle delivery latency 7 ms -> 18 ms after a million deliveries).
async fn check_vacuum<DB: Backend>(pool: &sqlx::Pool<DB>, diagnosis: &mut Diagnosis) {
    if DB::DIALECT != Dialect::Postgres {
        return;
    }
    let query = sqlx::query(
        "SELECT current_setting('autovacuum'), COALESCE(array_to_string(c.reloptions, ','), ''), \
             COALESCE(s.n_dead_tup, 0)::BIGINT \
         FROM pg_class c LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid \
         WHERE c.oid = to_regclass('posthog_outbox')",
    );
    let read = async {
        let mut conn = pool.acquire().await?;
        let row = DB::fetch_one(&mut conn, query).await?;
        Ok::<_, crate::Error>((DB::text(&row, 0)?, DB::text(&row, 1)?, DB::int(&row, 2)?))
    };
    let (server, table_options, dead) = match read.await {
        Ok(found) => found,
        Err(error) => {
            diagnosis.push(
                "outbox vacuum",
                Verdict::Warn,
                format!("could not tell whether vacuum cleans posthog_outbox: {error}"),
            );
            return;
        }
    };
    let off = |value: &str| {
        matches!(
            value.trim().to_ascii_lowercase().as_str(),
            "off" | "false" | "no" | "0" | "f" | "n"
        )
    };
    let table_off = table_options.split(',').any(|option| {
        option
            .split_once('=')
            .is_some_and(|(key, value)| key.trim() == "autovacuum_enabled" && off(value))
    });
    let cause = if off(&server) {
        Some("the server runs with `autovacuum = off`")
    } else if table_off {
        Some("posthog_outbox has `autovacuum_enabled = false`")
    } else {
        None
    };
    match cause {
        Some(cause) => diagnosis.push(
            "outbox vacuum",
            Verdict::Warn,
            format!(
                "{cause}: every delivered event leaves a dead row ({dead} now), so the table \
                 grows and claims slow down; turn autovacuum on, or run \
                 `VACUUM posthog_outbox` on a schedule"
            ),
        ),
        None => diagnosis.push(
            "outbox vacuum",
            Verdict::Ok,
            format!("autovacuum cleans posthog_outbox ({dead} dead rows now)"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Database credentials never appear in Debug output (DESIGN: secrets).
    #[test]
    fn debug_hides_the_database_password() {
        let options = DoctorOptions::new().database_url("postgres://app:hunter2secret@db:5432/app");
        let shown = format!("{options:?}");
        assert!(!shown.contains("hunter2secret"), "{shown}");
    }

    #[test]
    fn key_kinds_come_from_their_prefixes() {
        // "ph€x": no panic on a multi-byte boundary.
        for (key, kind) in [
            ("phc_abc", "project"),
            ("phx_abc", "personal"),
            ("phs_abc", "secret"),
            ("abc", "unknown"),
            ("ph", "unknown"),
            ("ph€x", "unknown"),
        ] {
            assert_eq!(key_kind(key), kind, "{key}");
        }
    }

    #[test]
    fn database_passwords_are_scrubbed() {
        let url = "postgres://app:hunter2@db.internal:5432/app";
        assert_eq!(
            scrub("password authentication failed: hunter2", url),
            "password authentication failed: (redacted)"
        );
        assert_eq!(
            scrub("no password here", "sqlite:app.db"),
            "no password here"
        );
        assert!(!redact_host(url).contains("hunter2"));
        let url = "postgres://db.internal:5432/app?password=hunter2";
        assert_eq!(
            scrub("password authentication failed: hunter2", url),
            "password authentication failed: (redacted)"
        );
        assert!(!redact_host(url).contains("hunter2"));
    }

    #[test]
    fn app_hosts_are_told_apart_from_ingestion_hosts() {
        let verdict = |host: &str| {
            let config = Config {
                host: host.to_owned(),
                ..Config::default()
            };
            let mut diagnosis = Diagnosis { checks: Vec::new() };
            check_host(&config, &mut diagnosis);
            diagnosis.checks[0].verdict
        };
        assert_eq!(verdict(US_HOST), Verdict::Ok);
        assert_eq!(verdict(EU_HOST), Verdict::Ok);
        assert_eq!(verdict("https://us.posthog.com"), Verdict::Warn);
        assert_eq!(verdict("https://app.posthog.com"), Verdict::Warn);
        assert_eq!(verdict("http://posthog.example.com"), Verdict::Warn);
        assert_eq!(verdict("https://posthog.example.com"), Verdict::Ok);
    }
}
