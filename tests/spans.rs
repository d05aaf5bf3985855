//! The tracing spans of a tracked commit and of a relay round, with their counts.
//!
//! A test binary of its own. tracing keeps each callsite's interest process-wide, shared by
//! every test thread: run in parallel with `ops.rs`'s metrics scenario in one process, this
//! test's scoped subscriber saw no span at all, every time (run one after the other, both
//! passed). In a process of its own it no longer depends on what other tests' threads do.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use posthog_track::testing::MockPostHog;
use posthog_track_tests::{commit_events, sqlite_file, tracker_for, unique};

/// Spans seen by a subscriber: name -> fields recorded (at creation or later).
#[derive(Clone, Default)]
struct Spans(Arc<Mutex<BTreeMap<String, BTreeMap<String, String>>>>);

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl<S> tracing_subscriber::Layer<S> for Spans
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let name = attrs.metadata().name().to_owned();
        let mut spans = self.0.lock().unwrap();
        let fields = spans.entry(name.clone()).or_default();
        attrs.record(&mut Fields(fields));
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(name);
        }
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let Some(span) = ctx.span(id) else { return };
        let Some(name) = span.extensions().get::<String>().cloned() else {
            return;
        };
        let mut spans = self.0.lock().unwrap();
        values.record(&mut Fields(spans.entry(name).or_default()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_claim_send_and_settle_have_spans_with_counts() {
    use tracing::instrument::WithSubscriber as _;
    use tracing_subscriber::layer::SubscriberExt as _;

    let spans = Spans::default();
    let subscriber = tracing_subscriber::registry().with(spans.clone());
    let mock = MockPostHog::start().await;
    let (pool, _url, dir) = sqlite_file("ops-spans").await;
    // External delivery: the relay rounds run here, inside the subscriber.
    let tracker = tracker_for(&mock).external_relay(true).build();
    tracker.migrate(&pool).await.unwrap();
    let tag = unique("spans");
    async {
        commit_events(&tracker, &pool, &tag, "spanned", 4, 4).await;
        tracker.relay(pool.clone()).drain().await.unwrap();
    }
    .with_subscriber(subscriber)
    .await;
    let spans = spans.0.lock().unwrap().clone();
    let field = |span: &str, field: &str| {
        spans
            .get(span)
            .and_then(|fields| fields.get(field))
            .cloned()
            .unwrap_or_else(|| panic!("{span}.{field} missing: {spans:#?}"))
    };
    assert_eq!(field("posthog_track.commit", "events"), "4");
    assert_eq!(field("posthog_track.commit", "backend"), "\"SQLite\"");
    assert_eq!(field("posthog_track.claim", "rows"), "4");
    assert_eq!(field("posthog_track.send", "events"), "4");
    assert_eq!(field("posthog_track.settle", "delivered"), "4");
    assert_eq!(field("posthog_track.settle", "dead"), "0");
    pool.close().await;
    let _ = std::fs::remove_dir_all(dir);
}
