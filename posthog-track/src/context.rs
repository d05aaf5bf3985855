//! The request a write happens in: who (the PostHog distinct id the browser uses), which
//! session, and whatever else the backend wants every event of the request to carry.
//!
//! posthog-js sends the first two to your backend when `__add_tracing_headers` is on:
//! `X-POSTHOG-DISTINCT-ID` and `X-POSTHOG-SESSION-ID`. A transaction begun with a context
//! ([`TrackedTransaction::with_context`](crate::TrackedTransaction::with_context)) stamps
//! `$session_id` and the context's properties on its events, uses its distinct id for models
//! without their own, merges the anonymous visitor into the person an `identify` model
//! creates, and fills the model fields marked `#[tracked(context = "...")]`.

use std::fmt;

use serde_json::{Map, Value};

/// The longest distinct id or session id [`TrackingContext::from_headers`] keeps, in
/// characters (as posthog-python's integrations cut them).
pub const MAX_HEADER_ID_CHARS: usize = 1000;

/// The header posthog-js puts the browser's distinct id in.
pub const DISTINCT_ID_HEADER: &str = "x-posthog-distinct-id";
/// The header posthog-js puts the session id in.
pub const SESSION_ID_HEADER: &str = "x-posthog-session-id";

/// Who, in which session, caused the writes of a request.
///
/// posthog-js sends the first two to your backend when `__add_tracing_headers` lists its host:
/// `X-POSTHOG-DISTINCT-ID` and `X-POSTHOG-SESSION-ID`. A transaction begun with a context
/// ([`TrackedTransaction::with_context`](crate::TrackedTransaction::with_context)) stamps
/// `$session_id` and the context's properties on its events, uses its distinct id for models
/// without their own, merges the anonymous visitor into the person an `identify` model
/// creates, and fills the model fields marked `#[tracked(context = "...")]`. With the `axum`
/// feature it is an extractor.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrackingContext {
    distinct_id: Option<String>,
    session_id: Option<String>,
    anonymous_id: Option<String>,
    properties: ContextProperties,
}

/// The context's extra properties. Their values are user data, so `Debug` (which ends up in
/// logs) lists only their keys.
#[derive(Clone, Default, PartialEq)]
struct ContextProperties(Map<String, Value>);

impl fmt::Debug for ContextProperties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

impl TrackingContext {
    /// An empty context: no distinct id, no session, no properties.
    pub fn new() -> Self {
        TrackingContext::default()
    }

    /// The context posthog-js's headers describe. Missing, empty or non-UTF-8 headers are
    /// left out, and so is a distinct id PostHog takes for a bug (`"undefined"`, `"null"`);
    /// nothing here fails, since analytics must not break a request. The values come
    /// from whoever sent the request, so they are cleaned as PostHog's own SDKs clean them:
    /// control characters removed, surrounding whitespace trimmed, and cut to
    /// [`MAX_HEADER_ID_CHARS`] characters (a megabyte-long session id would otherwise make
    /// every event of the request too large to stage, and the write fail).
    pub fn from_headers(headers: &http::HeaderMap) -> Self {
        let header = |name: &str| {
            let value = headers.get(name)?.to_str().ok()?;
            let cleaned: String = value
                .chars()
                .filter(|c| !c.is_control())
                .collect::<String>()
                .trim()
                .chars()
                .take(MAX_HEADER_ID_CHARS)
                .collect();
            (!cleaned.is_empty()).then_some(cleaned)
        };
        TrackingContext {
            // An id PostHog takes for a bug (`"undefined"`, `"null"`, ...) is no id: it would
            // make the events of every such request one person.
            distinct_id: header(DISTINCT_ID_HEADER)
                .filter(|id| !crate::event::is_illegal_merge_id(id)),
            session_id: header(SESSION_ID_HEADER),
            ..TrackingContext::default()
        }
    }

    /// Sets the distinct id: the person the request acts for.
    pub fn with_distinct_id(mut self, distinct_id: impl Into<String>) -> Self {
        self.distinct_id = Some(distinct_id.into());
        self
    }

    /// Sets the session id (`$session_id` on every event).
    pub fn with_session_id(mut self, session_id: impl Into<String>) -> Self {
        self.session_id = Some(session_id.into());
        self
    }

    /// Sets the anonymous id to merge into the person an `identify` model creates. Without
    /// it, the request's distinct id plays that part: before signup, the distinct id
    /// posthog-js sends is the visitor's anonymous one.
    pub fn with_anonymous_id(mut self, anonymous_id: impl Into<String>) -> Self {
        self.anonymous_id = Some(anonymous_id.into());
        self
    }

    /// Adds a property every event of the transaction carries (a marketing source, an app
    /// version); a `#[tracked(context = "property.<key>")]` field can store it too.
    pub fn with_property(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.properties.0.insert(key.into(), value.into());
        self
    }

    /// The distinct id, if the request carries one. A blank one (empty, whitespace or
    /// invisible characters) is none, as everywhere a distinct id is read.
    pub fn distinct_id(&self) -> Option<&str> {
        self.distinct_id
            .as_deref()
            .filter(|id| !crate::event::is_blank(id))
    }

    /// The session id, if the request carries one. A blank one (empty, whitespace or invisible
    /// characters) is none: as `$session_id` it would put every such request in one session.
    pub fn session_id(&self) -> Option<&str> {
        self.session_id
            .as_deref()
            .filter(|id| !crate::event::is_blank(id))
    }

    /// The anonymous id to merge: the one set, else the distinct id. One PostHog refuses to
    /// merge (blank, or an id it takes for a bug, such as `"undefined"` or `"null"`) is no id.
    pub fn anonymous_id(&self) -> Option<&str> {
        [self.anonymous_id.as_deref(), self.distinct_id()]
            .into_iter()
            .flatten()
            .find(|id| !crate::event::is_illegal_merge_id(id))
    }

    /// The extra properties.
    pub fn properties(&self) -> &Map<String, Value> {
        &self.properties.0
    }

    /// A property as text, for a `#[tracked(context = "property.<key>")]` column: a string as
    /// is, any other value as JSON, null as none.
    pub fn property_text(&self, key: &str) -> Option<String> {
        match self.properties.0.get(key)? {
            Value::Null => None,
            Value::String(text) => Some(text.clone()),
            other => Some(other.to_string()),
        }
    }
}

/// A field that `#[tracked(context = "...")]` fills at insert: a `String` takes the value when
/// the context has one, an `Option<String>` becomes `Some` of it. Without a value the field
/// keeps what the code put there.
#[diagnostic::on_unimplemented(
    message = "a `context` field must be `String` or `Option<String>`, not `{Self}`",
    label = "filled from the request context at insert"
)]
pub trait ContextValue {
    /// Stores `value`.
    fn fill(&mut self, value: String);
}

impl ContextValue for String {
    fn fill(&mut self, value: String) {
        *self = value;
    }
}

impl ContextValue for Option<String> {
    fn fill(&mut self, value: String) {
        *self = Some(value);
    }
}

#[cfg(feature = "axum")]
mod axum_extractor {
    use super::TrackingContext;

    /// `TrackingContext` as an axum extractor: built from posthog-js's headers. It never
    /// rejects a request.
    impl<S: Send + Sync> axum::extract::FromRequestParts<S> for TrackingContext {
        type Rejection = std::convert::Infallible;

        async fn from_request_parts(
            parts: &mut http::request::Parts,
            _state: &S,
        ) -> Result<Self, Self::Rejection> {
            Ok(TrackingContext::from_headers(&parts.headers))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Debug output ends up in logs: it names the context's properties, never their values.
    #[test]
    fn debug_lists_property_keys_without_values() {
        let context = TrackingContext::new()
            .with_distinct_id("user-1")
            .with_property("email", "private@example.com");
        let shown = format!("{context:?}");
        assert!(shown.contains("\"email\""), "{shown}");
        assert!(!shown.contains("private@example.com"), "{shown}");
        assert!(shown.contains("user-1"), "{shown}");
    }

    #[test]
    fn reads_posthog_js_headers_case_insensitively_and_ignores_blank_ones() {
        let mut headers = http::HeaderMap::new();
        headers.insert("X-POSTHOG-DISTINCT-ID", "anon-123".parse().unwrap());
        headers.insert("X-PostHog-Session-Id", "  ".parse().unwrap());
        let context = TrackingContext::from_headers(&headers);
        assert_eq!(context.distinct_id(), Some("anon-123"));
        assert_eq!(context.session_id(), None);
        assert_eq!(context.anonymous_id(), Some("anon-123"));
        assert_eq!(
            context.with_anonymous_id("anon-0").anonymous_id(),
            Some("anon-0")
        );
    }

    #[test]
    fn properties_as_text() {
        let context = TrackingContext::new()
            .with_property("utm_source", "newsletter")
            .with_property("campaign_id", 7)
            .with_property("cleared", Value::Null);
        assert_eq!(
            context.property_text("utm_source").as_deref(),
            Some("newsletter")
        );
        assert_eq!(context.property_text("campaign_id").as_deref(), Some("7"));
        assert_eq!(context.property_text("cleared"), None);
        assert_eq!(context.property_text("missing"), None);
    }
}
