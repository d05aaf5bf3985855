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

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::TrackingPlan;
use crate::client::USER_AGENT_VALUE;
use crate::client::transport::transport_reason;
use crate::config::{ApiKey, normalize_host};
use crate::error::{Error, Result};

/// PostHog's US cloud app host (the API for definitions; events go to the ingestion host).
pub const US_APP_HOST: &str = "https://us.posthog.com";
/// PostHog's EU cloud app host.
pub const EU_APP_HOST: &str = "https://eu.posthog.com";

const DEFAULT_PAGE_SIZE: usize = 100;
/// A runaway `next` chain stops here instead of looping forever.
const MAX_PAGES: usize = 10_000;

/// Where and as whom to push the plan.
#[derive(Debug, Clone)]
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
    /// [`Error::Config`] when `host` is not a URL.
    pub fn new(host: &str, project_id: u64, personal_api_key: ApiKey) -> Result<PushOptions> {
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

    /// The app host requests go to, without a trailing slash.
    pub fn host(&self) -> &str {
        &self.host
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
pub fn app_host(host: &str) -> Result<String> {
    let url = normalize_host(host)?;
    let (scheme, rest) = url.split_once("://").unwrap_or(("https", url.as_str()));
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let lower = authority.to_ascii_lowercase();
    let mapped = match lower.strip_suffix(".i.posthog.com") {
        Some(region) if !region.contains('.') => format!("{region}.posthog.com"),
        _ => return Ok(url),
    };
    Ok(format!("{scheme}://{mapped}{path}"))
}

/// Which kind of PostHog definition a change is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DefinitionKind {
    /// An event definition.
    Event,
    /// An event property definition.
    Property,
}

impl fmt::Display for DefinitionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DefinitionKind::Event => "event",
            DefinitionKind::Property => "property",
        })
    }
}

/// One difference between the plan and PostHog's definitions.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DefinitionChange {
    /// A `PATCH` of an existing definition; only the fields that differ are sent.
    Update {
        /// Event or property.
        kind: DefinitionKind,
        /// PostHog's id of the definition.
        id: String,
        /// The event's or property's name.
        name: String,
        /// The description, from what PostHog holds (`""` for none) to the plan's.
        description: Option<(String, String)>,
        /// The property type, from what PostHog holds (`None` for none) to the plan's
        /// (`String`, `Numeric`, `Boolean` or `DateTime`).
        property_type: Option<(Option<String>, String)>,
    },
    /// The plan describes it but PostHog has not ingested it yet, so it has no definition to
    /// patch; the first push after its first event describes it.
    NotYetSeen {
        /// Event or property.
        kind: DefinitionKind,
        /// The event's or property's name.
        name: String,
    },
}

impl DefinitionChange {
    /// The change is a request to PostHog (not a note about an unseen name).
    pub fn is_patch(&self) -> bool {
        matches!(self, DefinitionChange::Update { .. })
    }
}

impl fmt::Display for DefinitionChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DefinitionChange::Update {
                kind,
                name,
                description,
                property_type,
                ..
            } => {
                write!(f, "PATCH {kind} {name}:")?;
                let mut separator = " ";
                if let Some((from, to)) = description {
                    write!(f, "{separator}description {from:?} -> {to:?}")?;
                    separator = ", ";
                }
                if let Some((from, to)) = property_type {
                    let from = from
                        .as_ref()
                        .map_or("null".to_owned(), |t| format!("{t:?}"));
                    write!(f, "{separator}property_type {from} -> {to:?}")?;
                }
                Ok(())
            }
            DefinitionChange::NotYetSeen { kind, name } => write!(
                f,
                "SKIP {kind} {name}: not yet seen by PostHog, will be described on the next push"
            ),
        }
    }
}

/// An event definition as PostHog's API returns it (the fields this crate uses).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct EventDefinition {
    /// Its id (a UUID).
    pub id: String,
    /// The event's name.
    pub name: String,
    /// Its description, if any.
    #[serde(default)]
    pub description: Option<String>,
}

/// An event property definition as PostHog's API returns it (the fields this crate uses).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PropertyDefinition {
    /// Its id (a UUID).
    pub id: String,
    /// The property's name.
    pub name: String,
    /// Its description, if any.
    #[serde(default)]
    pub description: Option<String>,
    /// `String`, `Numeric`, `Boolean`, `DateTime`, `Duration`, or none yet.
    #[serde(default)]
    pub property_type: Option<String>,
}

/// The PostHog property type for a plan JSON type, or `None` to leave PostHog's alone
/// (objects, arrays, `any`).
pub fn posthog_property_type(json_type: &str) -> Option<&'static str> {
    match json_type {
        "string" => Some("String"),
        "number" | "integer" => Some("Numeric"),
        "boolean" => Some("Boolean"),
        "date-time" | "datetime" | "timestamp" | "date" => Some("DateTime"),
        _ => None,
    }
}

/// What the plan says about one name, merged over every event that carries it.
#[derive(Default)]
struct Wanted {
    description: String,
    /// The first event's type, and whether every later one agreed.
    property_type: Option<Option<&'static str>>,
    conflicting_types: bool,
}

impl Wanted {
    fn describe(&mut self, description: &str) {
        // The first non-empty description wins; the plan is sorted, so this is stable.
        if self.description.is_empty() {
            self.description = description.to_owned();
        }
    }

    fn typed(&mut self, ty: Option<&'static str>) {
        match self.property_type {
            None => self.property_type = Some(ty),
            Some(first) if first != ty => self.conflicting_types = true,
            Some(_) => {}
        }
    }

    /// `None`: leave PostHog's type alone (no type it can hold, or the events disagree).
    fn property_type(&self) -> Option<&'static str> {
        if self.conflicting_types {
            None
        } else {
            self.property_type.flatten()
        }
    }
}

/// The minimal changes that make PostHog's `events` and `properties` match `plan`: a
/// description is patched only when the plan has a non-empty one that differs; a property type
/// only when every event of the plan agrees on a type PostHog can hold and it differs (a
/// `DateTime` that the plan calls a string stays `DateTime`: dates travel as strings).
pub fn definition_changes(
    plan: &TrackingPlan,
    events: &[EventDefinition],
    properties: &[PropertyDefinition],
) -> Vec<DefinitionChange> {
    let mut wanted_events: BTreeMap<&str, Wanted> = BTreeMap::new();
    let mut wanted_properties: BTreeMap<&str, Wanted> = BTreeMap::new();
    for event in &plan.events {
        wanted_events
            .entry(&event.event)
            .or_default()
            .describe(&event.description);
        // PostHog's own properties (`$groups`, `$anon_distinct_id`) keep PostHog's definitions.
        for property in event.properties.iter().filter(|p| !p.name.starts_with('$')) {
            let wanted = wanted_properties.entry(&property.name).or_default();
            wanted.describe(&property.description);
            wanted.typed(posthog_property_type(&property.json_type));
        }
    }

    let mut changes = Vec::new();
    let existing_events: BTreeMap<&str, &EventDefinition> =
        events.iter().map(|e| (e.name.as_str(), e)).collect();
    for (name, wanted) in &wanted_events {
        if wanted.description.is_empty() {
            continue;
        }
        match existing_events.get(name) {
            None => changes.push(DefinitionChange::NotYetSeen {
                kind: DefinitionKind::Event,
                name: (*name).to_owned(),
            }),
            Some(existing) => {
                let current = existing.description.clone().unwrap_or_default();
                if current != wanted.description {
                    changes.push(DefinitionChange::Update {
                        kind: DefinitionKind::Event,
                        id: existing.id.clone(),
                        name: (*name).to_owned(),
                        description: Some((current, wanted.description.clone())),
                        property_type: None,
                    });
                }
            }
        }
    }

    let existing_properties: BTreeMap<&str, &PropertyDefinition> =
        properties.iter().map(|p| (p.name.as_str(), p)).collect();
    for (name, wanted) in &wanted_properties {
        if wanted.description.is_empty() && wanted.property_type().is_none() {
            continue;
        }
        let Some(existing) = existing_properties.get(name) else {
            changes.push(DefinitionChange::NotYetSeen {
                kind: DefinitionKind::Property,
                name: (*name).to_owned(),
            });
            continue;
        };
        let current = existing.description.clone().unwrap_or_default();
        let description = (!wanted.description.is_empty() && current != wanted.description)
            .then(|| (current, wanted.description.clone()));
        let current_type = existing.property_type.as_deref().filter(|t| !t.is_empty());
        let property_type = match (wanted.property_type(), current_type) {
            (None, _) => None,
            (Some(want), Some(have)) if want == have => None,
            (Some("String"), Some("DateTime")) => None,
            (Some(want), have) => Some((have.map(str::to_owned), want.to_owned())),
        };
        if description.is_some() || property_type.is_some() {
            changes.push(DefinitionChange::Update {
                kind: DefinitionKind::Property,
                id: existing.id.clone(),
                name: (*name).to_owned(),
                description,
                property_type,
            });
        }
    }
    changes
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
                    self.options.host
                ),
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
        let detail: String = detail.chars().take(300).collect();
        let detail = if key.expose().is_empty() {
            detail
        } else {
            detail.replace(key.expose(), "(redacted)")
        };
        let reason = if detail.is_empty() {
            format!("{what}: {status}: {hint}")
        } else {
            format!("{what}: {status}: {hint} ({detail})")
        };
        Err(Error::Api {
            status: Some(status.as_u16()),
            reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingestion_hosts_map_to_app_hosts() {
        assert_eq!(app_host("https://us.i.posthog.com").unwrap(), US_APP_HOST);
        assert_eq!(app_host("https://eu.i.posthog.com/").unwrap(), EU_APP_HOST);
        assert_eq!(app_host("us").unwrap(), US_APP_HOST);
        assert_eq!(app_host("eu").unwrap(), EU_APP_HOST);
        assert_eq!(app_host("https://us.posthog.com").unwrap(), US_APP_HOST);
        assert_eq!(
            app_host("posthog.example.com").unwrap(),
            "https://posthog.example.com"
        );
        assert_eq!(
            app_host("http://127.0.0.1:8000/").unwrap(),
            "http://127.0.0.1:8000"
        );
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
