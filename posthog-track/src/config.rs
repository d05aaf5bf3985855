//! Configuration: where events go, and the keys that let them in.

use std::fmt;

use crate::error::{Error, Result};
use crate::mode::Mode;

/// PostHog's US cloud ingestion host, the default.
pub const US_HOST: &str = "https://us.i.posthog.com";
/// PostHog's EU cloud ingestion host.
pub const EU_HOST: &str = "https://eu.i.posthog.com";

/// A PostHog key. Its `Debug` and `Display` never show more than its prefix.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wraps a key.
    pub fn new(key: impl Into<String>) -> Self {
        ApiKey(key.into())
    }

    /// The key itself, for the request that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    fn redacted(&self) -> String {
        // Keep the non-secret kind prefix (`phc_`, `phx_`, `phs_`) so a wrong kind of key can
        // be diagnosed from logs without revealing the key.
        let prefix: String = self.0.chars().take(4).collect();
        if self.0.len() > 8 && prefix.ends_with('_') {
            format!("{prefix}…(redacted)")
        } else {
            "(redacted)".to_owned()
        }
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKey({})", self.redacted())
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Which of PostHog's capture protocols events are sent with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum CaptureMode {
    /// `POST /batch/` with the key in the body; one answer for the whole batch (the default).
    #[default]
    V0,
    /// Capture Analytics V1, `POST /i/v1/analytics/events`: the key in `Authorization: Bearer`,
    /// `PostHog-Attempt` / `PostHog-Request-Id` / `PostHog-Request-Timestamp` headers, and a
    /// verdict per event (`ok`, `retry`, `drop`, `limited`) that the relay settles each outbox
    /// row by. Chosen with `POSTHOG_CAPTURE_MODE=v1`.
    V1,
}

impl CaptureMode {
    /// `v0` or `v1`.
    pub fn as_str(self) -> &'static str {
        match self {
            CaptureMode::V0 => "v0",
            CaptureMode::V1 => "v1",
        }
    }
}

impl std::str::FromStr for CaptureMode {
    type Err = Error;

    /// `v0` (also `batch`) or `v1`, in any case.
    fn from_str(value: &str) -> Result<Self> {
        match value.trim().to_ascii_lowercase().as_str() {
            "v0" | "batch" => Ok(CaptureMode::V0),
            "v1" => Ok(CaptureMode::V1),
            _ => Err(Error::Config(format!(
                "POSTHOG_CAPTURE_MODE must be v0 or v1, not `{value}`"
            ))),
        }
    }
}

/// How request bodies are compressed (`Content-Encoding`).
///
/// PostHog's v0 `/batch/` endpoint understands gzip only: with [`CaptureMode::V0`] every
/// choice other than [`Compression::None`] sends gzip. The v1 endpoint understands all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Compression {
    /// Plain JSON.
    None,
    /// `gzip`, at the fast level (the default).
    #[default]
    Gzip,
    /// `deflate` (zlib format, RFC 1950, as HTTP's `deflate` means).
    Deflate,
    /// `br` (Brotli).
    Brotli,
    /// `zstd` (Zstandard).
    Zstd,
}

impl Compression {
    /// The `Content-Encoding` value, `None` for plain JSON.
    pub fn content_encoding(self) -> Option<&'static str> {
        match self {
            Compression::None => None,
            Compression::Gzip => Some("gzip"),
            Compression::Deflate => Some("deflate"),
            Compression::Brotli => Some("br"),
            Compression::Zstd => Some("zstd"),
        }
    }
}

impl std::str::FromStr for Compression {
    type Err = Error;

    /// `none`, `gzip`, `deflate`, `br` (or `brotli`) or `zstd`, in any case.
    fn from_str(value: &str) -> Result<Self> {
        match value.trim().to_ascii_lowercase().as_str() {
            "none" | "off" | "identity" => Ok(Compression::None),
            "gzip" => Ok(Compression::Gzip),
            "deflate" => Ok(Compression::Deflate),
            "br" | "brotli" => Ok(Compression::Brotli),
            "zstd" => Ok(Compression::Zstd),
            _ => Err(Error::Config(format!(
                "POSTHOG_COMPRESSION must be none, gzip, deflate, br or zstd, not `{value}`"
            ))),
        }
    }
}

/// Settings of a [`Tracker`](crate::Tracker). Its `Debug` shows neither key nor any
/// credentials in the host URL.
#[derive(Clone)]
pub struct Config {
    pub(crate) api_key: Option<ApiKey>,
    pub(crate) personal_api_key: Option<ApiKey>,
    pub(crate) host: String,
    /// Where `host` was set, for the messages about it.
    pub(crate) host_source: HostSource,
    pub(crate) disabled: bool,
    pub(crate) capture_mode: CaptureMode,
    pub(crate) compression: Compression,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("api_key", &self.api_key)
            .field("personal_api_key", &self.personal_api_key)
            .field("host", &redact_host(&self.host))
            .field("disabled", &self.disabled)
            .field("capture_mode", &self.capture_mode)
            .field("compression", &self.compression)
            .finish()
    }
}

/// Whether `host` carries credentials (`https://user:password@proxy`), which an HTTP client
/// sends as a Basic `Authorization` header.
pub(crate) fn host_has_credentials(host: &str) -> bool {
    reqwest::Url::parse(host)
        .is_ok_and(|url| !url.username().is_empty() || url.password().is_some())
}

/// Why a request authenticated with `Authorization: Bearer` cannot go through a host with
/// credentials: `what` names the request, `instead` what to do (the credentials are never
/// shown).
pub(crate) fn bearer_with_credentials(what: &str, instead: &str) -> String {
    format!(
        "POSTHOG_HOST carries credentials (user:password@), which go in the Authorization \
         header, and {what} authenticates with `Authorization: Bearer`: one request cannot \
         carry both; {instead}, or let the proxy authenticate otherwise (by network, or a \
         header it adds itself)"
    )
}

/// `host` (a PostHog host or a database URL) with any `user:password@` replaced, and the
/// value of every query parameter that can carry a secret (`?password=`, `sslpassword`,
/// `token`, `api_key`, ...), for messages and logs.
pub(crate) fn redact_host(host: &str) -> String {
    let Some((scheme, rest)) = host.split_once("://") else {
        return redact_query(host);
    };
    match split_credentials(rest) {
        Some((_, after)) => format!("{scheme}://(credentials)@{}", redact_query(after)),
        None => format!("{scheme}://{}", redact_query(rest)),
    }
}

/// `rest` (a URL after `://`) split around the `@` that ends its credentials: the last `@`
/// before the query, or, with none there, the last `@` of all. A password may hold `/` or `#`
/// (and, unencoded, `?`), so the end of the authority cannot be found before the credentials
/// are; an `@` in a query (`?application_name=a@b`) is not theirs.
fn split_credentials(rest: &str) -> Option<(&str, &str)> {
    let query = rest.find('?').unwrap_or(rest.len());
    let at = rest[..query].rfind('@').or_else(|| rest.rfind('@'))?;
    Some((&rest[..at], &rest[at + 1..]))
}

/// `address` with the value of each secret query parameter replaced.
fn redact_query(address: &str) -> String {
    let Some((before, query)) = address.split_once('?') else {
        return address.to_owned();
    };
    let parameters: Vec<String> = query
        .split('&')
        .map(|parameter| match parameter.split_once('=') {
            Some((name, _)) if is_secret_parameter(name) => format!("{name}=(redacted)"),
            _ => parameter.to_owned(),
        })
        .collect();
    format!("{before}?{}", parameters.join("&"))
}

/// The secrets of `url` as they appear in it and percent-decoded (as a driver uses them, and
/// may echo them in an error): the password of its `user:password@`, and the values of its
/// query parameters that can carry one.
pub(crate) fn url_secrets(url: &str) -> Vec<String> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let (password, after) = match split_credentials(rest) {
        Some((credentials, after)) => (credentials.split_once(':').map(|(_, p)| p), after),
        None => (None, rest),
    };
    let in_query = after
        .split_once('?')
        .map(|(_, query)| query)
        .into_iter()
        .flat_map(|query| query.split('&'))
        .filter_map(|parameter| parameter.split_once('='))
        .filter(|(name, _)| is_secret_parameter(name))
        .map(|(_, value)| value);
    let mut secrets: Vec<String> = Vec::new();
    for secret in password.into_iter().chain(in_query) {
        let decoded = percent_encoding::percent_decode_str(secret).decode_utf8_lossy();
        for form in [secret, &*decoded] {
            if !form.is_empty() && !secrets.iter().any(|known| known == form) {
                secrets.push(form.to_owned());
            }
        }
    }
    secrets
}

/// Whether a URL query parameter named `name` can carry a secret; the name is compared
/// percent-decoded, as drivers read it (`p%61ssword` is `password`).
pub(crate) fn is_secret_parameter(name: &str) -> bool {
    let name = percent_encoding::percent_decode_str(name)
        .decode_utf8_lossy()
        .to_ascii_lowercase();
    [
        "pass",
        "pwd",
        "secret",
        "token",
        "key",
        "auth",
        "credential",
    ]
    .iter()
    .any(|word| name.contains(word))
}

/// What to check when the database refused the login: SQLSTATE class 28, invalid
/// authorization (PostgreSQL's unknown role or wrong password, MySQL/MariaDB's "Access denied
/// for user", 1045); `None` for any other error. Shared by `doctor` and the `posthog-track`
/// command's other subcommands (through `__cli`), which say the same.
pub fn refused_login_hint(error: &sqlx::Error) -> Option<&'static str> {
    let sqlx::Error::Database(error) = error else {
        return None;
    };
    // A SQLSTATE is five characters; SQLite's numeric codes (`283`) are not one.
    let code = error.code()?;
    (code.len() == 5 && code.starts_with("28")).then_some(
        "the database refused the user name or password in --database-url: check both (a \
         password holding `?`, `/`, `#`, `@` or `%` must be percent-encoded: `%3F`, `%2F`, \
         `%23`, `%40`, `%25`), and that the user may connect from this machine",
    )
}

/// Whether `host` sends keys and events in clear text over a network: plain `http://` to
/// anything but this machine.
pub(crate) fn is_plain_http_to_remote(host: &str) -> bool {
    let Some(rest) = host.strip_prefix("http://") else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let authority = authority.rsplit('@').next().unwrap_or_default();
    let name = if authority.starts_with('[') {
        authority
            .split(']')
            .next()
            .unwrap_or_default()
            .trim_start_matches('[')
    } else {
        authority.split(':').next().unwrap_or_default()
    };
    !(name.eq_ignore_ascii_case("localhost") || name.starts_with("127.") || name == "::1")
}

impl Default for Config {
    fn default() -> Self {
        Config {
            api_key: None,
            personal_api_key: None,
            host: US_HOST.to_owned(),
            host_source: HostSource::Env,
            disabled: false,
            capture_mode: CaptureMode::V0,
            compression: Compression::Gzip,
        }
    }
}

impl Config {
    /// Reads `POSTHOG_API_KEY`, `POSTHOG_HOST`, `POSTHOG_PERSONAL_API_KEY`, `POSTHOG_DISABLED`,
    /// `POSTHOG_CAPTURE_MODE` (`v0`, the default, or `v1`) and `POSTHOG_COMPRESSION` (`none`,
    /// `gzip`, the default, `deflate`, `br` or `zstd`). Empty variables count as unset.
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    pub(crate) fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let var = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let mut config = Config {
            api_key: var("POSTHOG_API_KEY").map(ApiKey),
            personal_api_key: var("POSTHOG_PERSONAL_API_KEY").map(ApiKey),
            ..Config::default()
        };
        if let Some(host) = var("POSTHOG_HOST") {
            config.host = normalize_host(&host, HostSource::Env)?;
        }
        if let Some(disabled) = var("POSTHOG_DISABLED") {
            config.disabled = parse_flag("POSTHOG_DISABLED", &disabled)?;
        }
        if let Some(mode) = var("POSTHOG_CAPTURE_MODE") {
            config.capture_mode = mode.parse()?;
        }
        if let Some(compression) = var("POSTHOG_COMPRESSION") {
            config.compression = compression.parse()?;
        }
        Ok(config)
    }

    /// The project API key, if any.
    pub fn api_key(&self) -> Option<&ApiKey> {
        self.api_key.as_ref()
    }

    /// The personal (or project secret) API key for local flag evaluation, if any.
    pub fn personal_api_key(&self) -> Option<&ApiKey> {
        self.personal_api_key.as_ref()
    }

    /// The PostHog host, without a trailing slash. It may hold credentials
    /// (`https://user:password@proxy`): show [`redacted_host`](Config::redacted_host) instead.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The host as it may be shown in messages and logs: credentials and secret query
    /// parameters replaced.
    pub fn redacted_host(&self) -> String {
        redact_host(&self.host)
    }

    /// The capture protocol (`POSTHOG_CAPTURE_MODE`).
    pub fn capture_mode(&self) -> CaptureMode {
        self.capture_mode
    }

    /// The compression asked for (`POSTHOG_COMPRESSION`).
    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// The `Content-Encoding` requests are actually sent with: the v0 endpoint understands
    /// only gzip, so any compression asked for becomes gzip there.
    pub fn effective_compression(&self) -> Compression {
        match (self.capture_mode, self.compression) {
            (CaptureMode::V0, Compression::None) => Compression::None,
            (CaptureMode::V0, _) => Compression::Gzip,
            (_, compression) => compression,
        }
    }

    /// What the tracker does with events under this configuration.
    pub fn mode(&self) -> Mode {
        if self.disabled {
            Mode::Disabled
        } else if self.api_key.is_none() {
            Mode::DryRun
        } else {
            Mode::Live
        }
    }
}

/// Where a PostHog host came from, for the messages that refuse it: the reader looks for it
/// there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HostSource {
    /// The `POSTHOG_HOST` environment variable.
    Env,
    /// [`TrackerBuilder::host`](crate::TrackerBuilder::host), in the application's code.
    Builder,
    /// `PushOptions::new` (the `plan push` command's `--host`, or `POSTHOG_HOST`).
    PlanPush,
}

impl HostSource {
    /// What to call a host from this source in a message about the host as set: `POSTHOG_HOST`
    /// or `.host(...)`.
    pub(crate) fn setting(self) -> &'static str {
        match self {
            HostSource::Env => "POSTHOG_HOST",
            HostSource::Builder => "the host given to `.host(...)`",
            HostSource::PlanPush => "the plan push host",
        }
    }

    /// The refused `host` (redacted), named by its source.
    fn name(self, host: &str) -> String {
        let host = redact_host(host);
        match self {
            HostSource::Env => format!("POSTHOG_HOST `{host}`"),
            HostSource::Builder => format!("the host `{host}` given to `.host(...)`"),
            HostSource::PlanPush => format!("the plan push host `{host}`"),
        }
    }
}

/// Accepts `https://host`, `https://host/`, `host` (https assumed) and the shorthands `us` and
/// `eu`; returns the URL without a trailing slash. A refusal names the host by its `source`.
pub(crate) fn normalize_host(host: &str, source: HostSource) -> Result<String> {
    let host = host.trim();
    let url = match host.to_ascii_lowercase().as_str() {
        "us" => return Ok(US_HOST.to_owned()),
        "eu" => return Ok(EU_HOST.to_owned()),
        // The scheme lower-cased, so that every later check (`http://` to a remote host is
        // warned about) sees it as written here.
        lower if lower.starts_with("http://") || lower.starts_with("https://") => {
            let (scheme, rest) = host.split_once("://").unwrap_or((host, ""));
            format!("{}://{rest}", scheme.to_ascii_lowercase())
        }
        _ if host.contains("://") => {
            return Err(Error::Config(format!(
                "{} must use http:// or https://",
                source.name(host)
            )));
        }
        _ => format!("https://{host}"),
    };
    let url = url.trim_end_matches('/').to_owned();
    let not_a_url = || {
        Error::Config(format!(
            "{} is not a URL: give `https://<host>` (`http://` for a PostHog on this \
             machine), `us` or `eu`",
            source.name(host)
        ))
    };
    let rest = url
        .split_once("://")
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    // `htp:/host` or `https//host` (a scheme misspelt, a colon or slash missing) would
    // otherwise read as a host `htp` or `https`.
    if rest.is_empty()
        || rest.contains(char::is_whitespace)
        || rest.contains(":/")
        || rest.contains("//")
    {
        return Err(not_a_url());
    }
    let parsed = reqwest::Url::parse(&url).map_err(|_| not_a_url())?;
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(not_a_url());
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(Error::Config(format!(
            "{} has a query or fragment: give the host alone, such as `{US_HOST}`",
            source.name(host)
        )));
    }
    // A path is a reverse proxy's prefix (`https://example.com/ingest`), but one that ends in
    // an endpoint is a URL copied from PostHog's docs, to which every request would 404; and
    // PostHog Cloud's hosts take no path at all.
    let path = parsed.path().trim_end_matches('/');
    if let Some(endpoint) = ENDPOINTS.iter().find(|endpoint| path.ends_with(*endpoint)) {
        return Err(Error::Config(format!(
            "{} ends in PostHog's `{endpoint}` endpoint: give the host alone (with a \
             proxy's path prefix, if any), such as `{US_HOST}`; posthog-track adds the \
             endpoints",
            source.name(host)
        )));
    }
    let cloud = parsed.host_str().is_some_and(|name| {
        let name = name.to_ascii_lowercase();
        name == "posthog.com" || name.ends_with(".posthog.com")
    });
    if cloud && !path.is_empty() {
        return Err(Error::Config(format!(
            "{} has a path, which PostHog Cloud's hosts do not take: give the host alone, \
             such as `{US_HOST}` or `{EU_HOST}`; posthog-track adds the endpoints",
            source.name(host)
        )));
    }
    Ok(url)
}

/// PostHog's API paths, which a `POSTHOG_HOST` must not include (longest first, so that the
/// message names the whole of it): those its docs give in full URLs. The legacy short ones
/// (`/e`, `/track`, `/engage`) are left out, as a reverse proxy's prefix may be named so.
const ENDPOINTS: &[&str] = &[
    "/i/v1/analytics/events",
    "/i/v1/general/events",
    "/i/v0/e",
    "/batch",
    "/capture",
    "/decide",
    "/flags",
];

/// A yes-or-no setting: `true`/`false`, `1`/`0`, `yes`/`no` or `on`/`off`, in any case; the
/// refusal lists them all.
pub(crate) fn parse_flag(name: &str, value: &str) -> Result<bool> {
    match value.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(Error::Config(format!(
            "{name} must be `true` or `false` (or `1`/`0`, `yes`/`no`, `on`/`off`), not \
             `{value}`"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(vars: &[(&str, &str)]) -> Result<Config> {
        Config::from_lookup(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    #[test]
    fn no_key_means_dry_run_on_the_us_host() {
        let config = from(&[]).unwrap();
        assert_eq!(config.mode(), Mode::DryRun);
        assert_eq!(config.host(), US_HOST);
    }

    #[test]
    fn hosts_are_normalised() {
        for (given, normalised) in [
            ("https://eu.i.posthog.com/", EU_HOST),
            ("eu", EU_HOST),
            ("posthog.example.com//", "https://posthog.example.com"),
            ("http://127.0.0.1:8000/", "http://127.0.0.1:8000"),
            // A reverse proxy's path prefix.
            ("https://example.com/ingest/", "https://example.com/ingest"),
            ("https://example.com/track", "https://example.com/track"),
            ("https://example.com/e/", "https://example.com/e"),
            ("https://US.posthog.com/", "https://US.posthog.com"),
            ("example.com:8443", "https://example.com:8443"),
            ("HTTP://PostHog.example.com", "http://PostHog.example.com"),
            ("Https://eu.i.posthog.com", EU_HOST),
        ] {
            assert_eq!(
                normalize_host(given, HostSource::Env).unwrap(),
                normalised,
                "{given}"
            );
        }
        for (refused, says) in [
            ("ftp://x", "must use http:// or https://"),
            ("https://", "is not a URL"),
            ("htp:/nowhere", "is not a URL"),
            ("https//us.i.posthog.com", "is not a URL"),
            ("https://host:port", "is not a URL"),
            ("https://us.i.posthog.com/batch/", "`/batch` endpoint"),
            ("https://eu.i.posthog.com/i/v0/e/", "`/i/v0/e` endpoint"),
            ("https://example.com/ingest/flags?v=2", "query"),
            ("https://example.com/ingest/decide", "`/decide` endpoint"),
            (
                "https://example.com/i/v1/analytics/events",
                "`/i/v1/analytics/events` endpoint",
            ),
            ("https://us.i.posthog.com/e/", "PostHog Cloud"),
            ("https://eu.posthog.com/project/123", "PostHog Cloud"),
        ] {
            let error = normalize_host(refused, HostSource::Env)
                .unwrap_err()
                .to_string();
            assert!(error.contains(says), "{refused}: {error}");
        }
    }

    /// A host is refused under the name it was given by: POSTHOG_HOST from the environment,
    /// `.host(...)` from code (it was called POSTHOG_HOST, sending the reader to an environment
    /// that does not hold it); its credentials never shown either way.
    #[test]
    fn a_refused_host_is_named_where_it_came_from() {
        let bad = "ftp://user:hunter2@proxy.example.com";
        let from_env = from(&[("POSTHOG_HOST", bad)]).unwrap_err().to_string();
        assert!(from_env.contains("POSTHOG_HOST `ftp:"), "{from_env}");
        for bad in [bad, "https://user:hunter2@us.i.posthog.com/batch/"] {
            let in_code = crate::Tracker::builder().host(bad).unwrap_err().to_string();
            assert!(
                in_code.contains("`.host(...)`") && !in_code.contains("POSTHOG_HOST"),
                "{in_code}"
            );
            assert!(!in_code.contains("hunter2"), "{in_code}");
        }
        assert!(!from_env.contains("hunter2"), "{from_env}");
    }

    /// A refused `POSTHOG_DISABLED` says which values are taken: it said "must be true or
    /// false" while `1`/`0`, `yes`/`no` and `on`/`off` are taken too.
    #[test]
    fn a_refused_flag_says_what_is_accepted() {
        let error = from(&[("POSTHOG_DISABLED", "maybe")])
            .unwrap_err()
            .to_string();
        for accepted in ["true", "false", "1", "0", "yes", "no", "on", "off"] {
            assert!(error.contains(&format!("`{accepted}`")), "{error}");
        }
        assert!(error.contains("`maybe`"), "{error}");
        for (given, disabled) in [("YES", true), ("On", true), ("0", false), ("off", false)] {
            let config = from(&[("POSTHOG_DISABLED", given)]).unwrap();
            assert_eq!(config.disabled, disabled, "{given}");
        }
    }

    #[test]
    fn keys_never_appear_in_debug_or_display() {
        let config = from(&[
            ("POSTHOG_API_KEY", "phc_supersecret123"),
            ("POSTHOG_DISABLED", "no"),
        ])
        .unwrap();
        let shown = format!("{config:?} {}", config.api_key().unwrap());
        assert!(!shown.contains("supersecret"), "{shown}");
        assert!(shown.contains("phc_"), "{shown}");
        assert_eq!(config.mode(), Mode::Live);
    }

    #[test]
    fn secrets_in_a_url_query_are_redacted() {
        let shown = redact_host(
            "postgres://db.internal/app?sslmode=require&password=hunter2&sslpassword=s3cr3t\
             &application_name=web",
        );
        assert_eq!(
            shown,
            "postgres://db.internal/app?sslmode=require&password=(redacted)\
             &sslpassword=(redacted)&application_name=web"
        );
        assert_eq!(
            redact_host("https://proxy.example.com/ph?token=abc"),
            "https://proxy.example.com/ph?token=(redacted)"
        );
        assert_eq!(
            redact_host("sqlite:app.db?mode=rwc"),
            "sqlite:app.db?mode=rwc"
        );
        assert_eq!(
            redact_host("postgres://app@db/app?p%61ssword=s3cr3t"),
            "postgres://(credentials)@db/app?p%61ssword=(redacted)"
        );
    }

    #[test]
    fn passwords_holding_url_delimiters_are_redacted() {
        for url in [
            "postgres://app:s3cr?t@127.0.0.1:9/app",
            "postgres://app:s3cr/t@127.0.0.1:9/app",
            "postgres://app:s3cr#t@127.0.0.1:9/app?sslmode=require",
            "https://user:s3cr?t@posthog.example.com",
        ] {
            let shown = redact_host(url);
            assert!(!shown.contains("s3cr"), "{url}: {shown}");
            assert!(shown.contains("(credentials)@"), "{url}: {shown}");
        }
        assert_eq!(
            redact_host("postgres://app:s3cr3t@db:5432/app?application_name=x@y/z"),
            "postgres://(credentials)@db:5432/app?application_name=x@y/z"
        );
        assert_eq!(
            url_secrets("postgres://app:s%3Fcr@db/app?password=a%2Fb&sslmode=require"),
            ["s%3Fcr", "s?cr", "a%2Fb", "a/b"]
        );
    }

    #[test]
    fn host_credentials_never_appear_in_debug() {
        let config =
            from(&[("POSTHOG_HOST", "https://user:hunter2@proxy.example.com/ph")]).unwrap();
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("user:"),
            "{shown}"
        );
        assert!(shown.contains("proxy.example.com"), "{shown}");
    }

    #[test]
    fn plain_http_is_fine_only_on_this_machine() {
        assert!(!is_plain_http_to_remote("http://127.0.0.1:8000"));
        assert!(!is_plain_http_to_remote("http://localhost"));
        assert!(!is_plain_http_to_remote("http://[::1]:9000"));
        assert!(!is_plain_http_to_remote("https://posthog.example.com"));
        assert!(is_plain_http_to_remote("http://posthog.example.com"));
        assert!(is_plain_http_to_remote("http://10.0.0.5:8000"));
        let shouted = normalize_host("HTTP://posthog.example.com", HostSource::Env).unwrap();
        assert!(is_plain_http_to_remote(&shouted), "{shouted}");
    }

    #[test]
    fn capture_mode_and_compression_come_from_the_environment() {
        let config = from(&[]).unwrap();
        assert_eq!(
            config.capture_mode(),
            CaptureMode::V0,
            "v0 stays the default"
        );
        assert_eq!(config.compression(), Compression::Gzip);
        let config = from(&[
            ("POSTHOG_CAPTURE_MODE", "V1"),
            ("POSTHOG_COMPRESSION", "zstd"),
        ])
        .unwrap();
        assert_eq!(config.capture_mode(), CaptureMode::V1);
        assert_eq!(config.effective_compression(), Compression::Zstd);
        for (name, expected) in [
            ("none", Compression::None),
            ("gzip", Compression::Gzip),
            ("deflate", Compression::Deflate),
            ("br", Compression::Brotli),
            ("brotli", Compression::Brotli),
        ] {
            assert_eq!(name.parse::<Compression>().unwrap(), expected);
        }
        let v0 = from(&[("POSTHOG_COMPRESSION", "br")]).unwrap();
        assert_eq!(
            v0.effective_compression(),
            Compression::Gzip,
            "v0 understands gzip only"
        );
        let err = from(&[("POSTHOG_CAPTURE_MODE", "v2")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("POSTHOG_CAPTURE_MODE"), "{err}");
        let err = from(&[("POSTHOG_COMPRESSION", "lz4")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("POSTHOG_COMPRESSION"), "{err}");
    }

    #[test]
    fn bad_flags_are_errors_that_name_the_variable() {
        let err = from(&[("POSTHOG_DISABLED", "maybe")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("POSTHOG_DISABLED"), "{err}");
    }
}
