//! Pushing the tracking plan to PostHog: the descriptions and property types of the plan
//! become those of PostHog's event and property definitions (Data management), through
//! PostHog's app API and a personal API key.
//!
//! Only what differs is patched. PostHog creates a definition when it first ingests the event
//! or property, and the API cannot create one ahead of that: such names are listed as not yet
//! seen, and the next push after their first event describes them.
//!
//! ```no_run
//! # async fn demo() -> posthog_track::Result<()> {
//! use posthog_track::ApiKey;
//! use posthog_track::plan::{PlanPush, PushOptions, TrackingPlan};
//!
//! let plan = TrackingPlan::from_json(&std::fs::read_to_string("tracking-plan.json").unwrap())
//!     .unwrap();
//! let options = PushOptions::new("https://us.i.posthog.com", 12345, ApiKey::new("phx_..."))?;
//! let push = PlanPush::new(options);
//! let changes = push.plan_changes(&plan).await?;
//! for change in &changes {
//!     println!("{change}");
//! }
//! push.apply(&changes).await?;
//! # Ok(()) }
//! ```

use std::time::Duration;

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::TrackingPlan;
use super::compare::{
    DefinitionChange, DefinitionKind, EventDefinition, PropertyDefinition, definition_changes,
};
use crate::client::USER_AGENT_VALUE;
use crate::client::transport::transport_reason;
use crate::config::{ApiKey, HostSource, normalize_host};
use crate::error::{Error, Result};

/// PostHog's US cloud app host (the API for definitions; events go to the ingestion host).
pub const US_APP_HOST: &str = "https://us.posthog.com";
/// PostHog's EU cloud app host.
pub const EU_APP_HOST: &str = "https://eu.posthog.com";

impl std::fmt::Debug for PushOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushOptions")
            .field("host", &self.redacted_host())
            .field("project_id", &self.project_id)
            .field("personal_api_key", &self.personal_api_key)
            .field("page_size", &self.page_size)
            .field("timeout", &self.timeout)
            .finish()
    }
}

const DEFAULT_PAGE_SIZE: usize = 100;
/// A runaway `next` chain stops here instead of looping forever.
const MAX_PAGES: usize = 10_000;

/// Where and as whom to push the plan. Its `Debug` shows neither the key nor credentials in
/// the host.
#[derive(Clone)]
pub struct PushOptions {
    host: String,
    project_id: u64,
    personal_api_key: ApiKey,
    page_size: usize,
    timeout: Duration,
}

impl PushOptions {
    /// `host` may be the app host (`https://us.posthog.com`), an ingestion host
    /// (`https://us.i.posthog.com` maps to `https://us.posthog.com`, `eu.i` to `eu`), the
    /// shorthands `us` and `eu`, or a self-hosted URL. `personal_api_key` needs the scopes
    /// `event_definition:read`/`write` and `property_definition:read`/`write`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when `host` is not a URL, or when the key is a project API key
    /// (`phc_...`, which PostHog's app API refuses with a bare 401).
    pub fn new(host: &str, project_id: u64, personal_api_key: ApiKey) -> Result<PushOptions> {
        if personal_api_key.expose().starts_with("phc_") {
            return Err(Error::Config(
                "the personal API key is a project API key (phc_...): plan push needs a \
                 personal API key (phx_..., created under your user's settings) with the \
                 event_definition and property_definition read and write scopes"
                    .to_owned(),
            ));
        }
        Ok(PushOptions {
            host: app_host(host)?,
            project_id,
            personal_api_key,
            page_size: DEFAULT_PAGE_SIZE,
            timeout: Duration::from_secs(30),
        })
    }

    /// Definitions asked for per request (100 by default).
    #[must_use]
    pub fn page_size(mut self, page_size: usize) -> PushOptions {
        self.page_size = page_size.max(1);
        self
    }

    /// The timeout of each request (30 s by default).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> PushOptions {
        self.timeout = timeout;
        self
    }

    /// The app host requests go to, without a trailing slash. It may hold credentials: show
    /// [`redacted_host`](PushOptions::redacted_host) instead.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The host as it may be shown in messages and logs: credentials and secret query
    /// parameters replaced.
    pub fn redacted_host(&self) -> String {
        crate::config::redact_host(&self.host)
    }

    /// The PostHog project.
    pub fn project_id(&self) -> u64 {
        self.project_id
    }
}

/// The app host for `host`: PostHog cloud's ingestion hosts (`us.i.posthog.com`,
/// `eu.i.posthog.com`) serve no app API, so they map to `us.posthog.com` and
/// `eu.posthog.com`; other hosts are kept (normalised like `POSTHOG_HOST`).
///
/// # Errors
///
/// [`Error::Config`] when `host` is not a URL.
pub(crate) fn app_host(host: &str) -> Result<String> {
    let url = normalize_host(host, HostSource::PlanPush)?;
    let (scheme, rest) = url.split_once("://").unwrap_or(("https", url.as_str()));
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let lower = authority.to_ascii_lowercase();
    let mapped = match lower.strip_suffix(".i.posthog.com") {
        Some(region) if !region.contains('.') => format!("{region}.posthog.com"),
        _ => return Ok(url),
    };
    Ok(format!("{scheme}://{mapped}{path}"))
}

/// One page of a PostHog list endpoint.
#[derive(Deserialize)]
struct Page<T> {
    #[serde(default)]
    next: Option<String>,
    results: Vec<T>,
}

/// A client of PostHog's definitions API, for pushing the tracking plan.
#[derive(Debug, Clone)]
pub struct PlanPush {
    http: reqwest::Client,
    options: PushOptions,
}

impl PlanPush {
    /// A client for these options.
    pub fn new(options: PushOptions) -> PlanPush {
        let http = reqwest::Client::builder()
            .timeout(options.timeout)
            .connect_timeout(options.timeout.min(Duration::from_secs(10)))
            .build()
            .unwrap_or_default();
        PlanPush { http, options }
    }

    /// The options in force.
    pub fn options(&self) -> &PushOptions {
        &self.options
    }

    /// Every event definition of the project, following PostHog's paging.
    ///
    /// # Errors
    ///
    /// [`Error::Api`] when PostHog is unreachable, refuses the key (401/403) or answers badly.
    pub async fn event_definitions(&self) -> Result<Vec<EventDefinition>> {
        self.list("event_definitions/?").await
    }

    /// Every event property definition of the project (`type=event`), following the paging.
    ///
    /// # Errors
    ///
    /// As [`event_definitions`](PlanPush::event_definitions).
    pub async fn property_definitions(&self) -> Result<Vec<PropertyDefinition>> {
        self.list("property_definitions/?type=event&").await
    }

    /// The minimal changes that make PostHog's definitions match `plan` (see
    /// [`definition_changes`]). Reads only; nothing is changed.
    ///
    /// # Errors
    ///
    /// As [`event_definitions`](PlanPush::event_definitions).
    pub async fn plan_changes(&self, plan: &TrackingPlan) -> Result<Vec<DefinitionChange>> {
        let events = self.event_definitions().await?;
        let properties = self.property_definitions().await?;
        Ok(definition_changes(plan, &events, &properties))
    }

    /// Sends the `PATCH` of each [`DefinitionChange::Update`], in order, and returns how many
    /// were sent; [`DefinitionChange::NotYetSeen`] entries are skipped.
    ///
    /// # Errors
    ///
    /// [`Error::Api`] at the first refused request; the earlier ones stay applied, and
    /// computing the changes again lists only what is left.
    pub async fn apply(&self, changes: &[DefinitionChange]) -> Result<usize> {
        let mut applied = 0;
        for change in changes {
            let DefinitionChange::Update {
                kind,
                id,
                name,
                description,
                property_type,
            } = change
            else {
                continue;
            };
            let mut body = Map::new();
            if let Some((_, to)) = description {
                body.insert("description".to_owned(), Value::String(to.clone()));
            }
            if let Some((_, to)) = property_type {
                body.insert("property_type".to_owned(), Value::String(to.clone()));
            }
            let collection = match kind {
                DefinitionKind::Event => "event_definitions",
                DefinitionKind::Property => "property_definitions",
            };
            // The id is PostHog's answer, and goes into the path: one holding `../`, `?` or
            // `#` would send the PATCH (with the personal key) to another endpoint.
            if id.is_empty()
                || !id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(Error::Api {
                    status: None,
                    reason: format!(
                        "updating {kind} `{name}`: PostHog's answer gave it the id {id:?},                          which is not an id (a UUID); nothing was sent for it"
                    ),
                    source: None,
                });
            }
            let url = format!("{}/{collection}/{id}/", self.project_url());
            let request = self
                .http
                .patch(url)
                .header(CONTENT_TYPE, "application/json")
                .body(Value::Object(body).to_string());
            let what = format!("updating {kind} `{name}`");
            self.send(request, &what).await?;
            tracing::info!("PostHog: updated {kind} definition `{name}`");
            applied += 1;
        }
        Ok(applied)
    }

    fn project_url(&self) -> String {
        format!(
            "{}/api/projects/{}",
            self.options.host, self.options.project_id
        )
    }

    async fn list<T: DeserializeOwned>(&self, path_and_query: &str) -> Result<Vec<T>> {
        let mut url = format!(
            "{}/{path_and_query}limit={}",
            self.project_url(),
            self.options.page_size
        );
        let mut all = Vec::new();
        for _ in 0..MAX_PAGES {
            let what = format!("listing {}", path_and_query.split('/').next().unwrap_or(""));
            let text = self.send(self.http.get(&url), &what).await?;
            let page: Page<T> = serde_json::from_str(&text).map_err(|error| Error::Api {
                status: None,
                reason: format!("{what}: PostHog's answer is not the expected JSON: {error}"),
                source: Some(Box::new(error)),
            })?;
            all.extend(page.results);
            match page.next.filter(|next| !next.is_empty()) {
                Some(next) => url = self.rebase(&next),
                None => return Ok(all),
            }
        }
        Err(Error::Api {
            status: None,
            reason: format!("listing definitions: more than {MAX_PAGES} pages; stopped"),
            source: None,
        })
    }

    /// PostHog's `next` link, on the configured host: the key only ever goes there, even if a
    /// proxy makes PostHog spell its own address differently.
    fn rebase(&self, next: &str) -> String {
        let host = &self.options.host;
        if next.starts_with(&format!("{host}/")) {
            return next.to_owned();
        }
        let origin_end = host
            .find("://")
            .map(|i| i + 3)
            .and_then(|start| host[start..].find('/').map(|i| start + i))
            .unwrap_or(host.len());
        let path = match next.find("://") {
            Some(i) => next[i + 3..].find('/').map_or("/", |p| &next[i + 3 + p..]),
            None => next,
        };
        format!("{}{path}", &host[..origin_end])
    }

    /// Sends `request` with the key and returns the body of a 2xx answer.
    async fn send(&self, request: reqwest::RequestBuilder, what: &str) -> Result<String> {
        let key = &self.options.personal_api_key;
        if crate::config::host_has_credentials(&self.options.host) {
            return Err(Error::Api {
                status: None,
                reason: format!(
                    "{what}: {}",
                    crate::config::bearer_with_credentials(
                        "PostHog's API (with the personal API key)",
                        "give `--host` without them",
                    )
                ),
                source: None,
            });
        }
        let response = request
            .header(USER_AGENT, USER_AGENT_VALUE)
            .header(AUTHORIZATION, format!("Bearer {}", key.expose()))
            .send()
            .await
            .map_err(|error| Error::Api {
                status: None,
                reason: format!(
                    "{what}: {} ({})",
                    transport_reason(&error),
                    self.options.redacted_host()
                ),
                // Without its URL: the host may carry credentials, which never go into errors.
                source: Some(Box::new(error.without_url())),
            })?;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        if status.is_success() {
            return Ok(body);
        }
        let hint = match status.as_u16() {
            401 => {
                "the personal API key was refused; check POSTHOG_PERSONAL_API_KEY and the project"
            }
            403 => {
                "the personal API key lacks a scope (event_definition:read/write, property_definition:read/write) or access to this project"
            }
            402 => "descriptions of definitions need a PostHog plan with data management",
            404 => "not found; check the project id and host",
            _ => "PostHog refused the request",
        };
        let detail = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v.get("detail").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_default();
        // Redacted before it is cut short: a key across the cut would keep its start.
        let detail = if key.expose().is_empty() {
            detail
        } else {
            detail.replace(key.expose(), "(redacted)")
        };
        let detail: String = detail.chars().take(300).collect();
        let reason = if detail.is_empty() {
            format!("{what}: {status}: {hint}")
        } else {
            format!("{what}: {status}: {hint} ({detail})")
        };
        Err(Error::Api {
            status: Some(status.as_u16()),
            reason,
            source: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// a host's `user:password@` is a credential: neither Debug nor errors show it.
    #[test]
    fn debug_hides_host_credentials() {
        let options = PushOptions::new(
            "https://deploy:hunter2pw@posthog.internal",
            1,
            ApiKey::new("phx_personal_1234"),
        )
        .unwrap();
        let shown = format!("{options:?}");
        assert!(!shown.contains("hunter2pw"), "{shown}");
    }

    #[tokio::test]
    async fn a_transport_error_hides_host_credentials() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        let options = PushOptions::new(
            &format!("http://deploy:hunter2pw@{address}"),
            1,
            ApiKey::new("phx_personal_1234"),
        )
        .unwrap();
        let error = PlanPush::new(options)
            .event_definitions()
            .await
            .unwrap_err();
        let shown = format!("{error}");
        assert!(!shown.contains("hunter2pw"), "{shown}");
    }

    /// the key echoed in an error's `detail` is redacted before it is cut to 300
    /// chars (as transport.rs does), or a prefix of it survives.
    #[tokio::test]
    async fn an_echoed_key_is_redacted_before_the_detail_is_cut() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let key = "phx_abcdefghijklmnopqrstuvwxyz0123456789";
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let detail = format!("{}{key}", "x".repeat(280));
        let body = serde_json::json!({ "detail": detail }).to_string();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 8192];
            let _ = socket.read(&mut buf).await;
            let response = format!(
                "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            socket.write_all(response.as_bytes()).await.unwrap();
        });
        let options = PushOptions::new(&format!("http://{address}"), 1, ApiKey::new(key)).unwrap();
        let error = PlanPush::new(options)
            .event_definitions()
            .await
            .unwrap_err();
        let shown = format!("{error}");
        assert!(!shown.contains("phx_abcdefghij"), "{shown}");
    }

    #[test]
    fn ingestion_hosts_map_to_app_hosts() {
        for (ingestion, app) in [
            ("https://us.i.posthog.com", US_APP_HOST),
            ("https://eu.i.posthog.com/", EU_APP_HOST),
            ("us", US_APP_HOST),
            ("eu", EU_APP_HOST),
            ("https://us.posthog.com", US_APP_HOST),
            ("posthog.example.com", "https://posthog.example.com"),
            ("http://127.0.0.1:8000/", "http://127.0.0.1:8000"),
        ] {
            assert_eq!(app_host(ingestion).unwrap(), app, "{ingestion}");
        }
        assert!(app_host("ftp://x").is_err());
    }

    #[test]
    fn next_links_stay_on_the_configured_host() {
        let push = PlanPush::new(
            PushOptions::new("http://127.0.0.1:9", 1, ApiKey::new("phx_secret")).unwrap(),
        );
        assert_eq!(
            push.rebase("http://127.0.0.1:9/api/projects/1/x/?offset=2"),
            "http://127.0.0.1:9/api/projects/1/x/?offset=2"
        );
        assert_eq!(
            push.rebase("https://evil.example/api/projects/1/x/?offset=2"),
            "http://127.0.0.1:9/api/projects/1/x/?offset=2"
        );
    }

    #[test]
    fn options_do_not_show_the_key() {
        let options = PushOptions::new("us", 1, ApiKey::new("phx_supersecretpersonalkey")).unwrap();
        let shown = format!("{options:?} {:?}", PlanPush::new(options.clone()));
        assert!(!shown.contains("supersecret"), "{shown}");
    }
}
