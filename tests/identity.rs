//! Who PostHog attributes events to: distinct ids of tracked writes and untyped events, the
//! request's anonymous visitor merged by `$identify`, `$create_alias`, and groups.

use posthog_track::testing::MockPostHog;
use posthog_track::{
    Backend, Error, Event, EventOptions, TrackedModel, TrackedRow, Tracker, TrackingContext,
};
use posthog_track_examples::memory_database;
use posthog_track_tests::{execute, on_every_backend, tracker_for};
use serde_json::Value;
use sqlx::Pool;

#[derive(Debug, Clone, TrackedModel)]
#[tracked(table = "visits", distinct_id = visitor, insert_event = "visit_recorded")]
pub struct Visit {
    #[tracked(key, property = "visit_id")]
    pub id: String,
    #[tracked(skip = "who visited; blank when unknown")]
    pub visitor: String,
}

#[derive(Debug, Clone, TrackedModel)]
#[tracked(table = "members", distinct_id = id, identify, insert_event = "member_joined")]
pub struct Member {
    #[tracked(key, property = "member_id")]
    pub id: String,
    #[tracked(person)]
    pub email: String,
}

async fn pool() -> sqlx::SqlitePool {
    let pool = memory_database().await.unwrap();
    for table in [
        "CREATE TABLE visits (id TEXT PRIMARY KEY, visitor TEXT NOT NULL)",
        "CREATE TABLE members (id TEXT PRIMARY KEY, email TEXT NOT NULL)",
    ] {
        sqlx::query(table).execute(&pool).await.unwrap();
    }
    pool
}

fn visit(id: &str, visitor: &str) -> Visit {
    Visit {
        id: id.into(),
        visitor: visitor.into(),
    }
}

/// A distinct id of nothing but whitespace is no id, as an empty one is: PostHog's capture
/// takes `" "` as a person of its own (every such event lands on one person, and PostHog
/// refuses to merge it), so the next source decides and, with none, the write or capture is
/// refused with `MissingDistinctId`. Whitespace ids reached the wire.
#[tokio::test]
async fn a_blank_distinct_id_is_no_id() {
    let pool = pool().await;
    let tracker = Tracker::builder().build();
    tracker.migrate(&pool).await.unwrap();
    let mut tx = tracker
        .begin(&pool)
        .await
        .unwrap()
        .with_context(TrackingContext::new().with_distinct_id("visitor-1"));
    visit("v1", " \t ").insert(&mut tx).await.unwrap();
    assert_eq!(tx.staged()[0].distinct_id, "visitor-1");
    tx.set_distinct_id("   ");
    visit("v2", "").insert(&mut tx).await.unwrap();
    assert_eq!(
        tx.staged()[1].distinct_id,
        "visitor-1",
        "a blank transaction id does not hide the request's"
    );
    tx.rollback().await.unwrap();

    let mut tx = tracker
        .begin(&pool)
        .await
        .unwrap()
        .with_context(TrackingContext::new().with_distinct_id("  "));
    let error = visit("v3", " ").insert(&mut tx).await.unwrap_err();
    assert!(matches!(error, Error::MissingDistinctId { .. }), "{error}");
    let error = tx
        .capture(Event::new("clicked").distinct_id("\n"))
        .unwrap_err();
    assert!(matches!(error, Error::MissingDistinctId { .. }), "{error}");
    assert!(tx.staged().is_empty());
    tx.rollback().await.unwrap();

    let error = tracker
        .capture(Event::new("clicked").distinct_id("  "))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::MissingDistinctId { .. }), "{error}");
    let error = tracker
        .identify(" ", Event::person().set("plan", "pro"))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::MissingDistinctId { .. }), "{error}");
}

/// `MissingDistinctId` says where a distinct id comes from. It told every caller to "give the
/// model `#[tracked(distinct_id = <field>)]`", also a model that has one (whose field was blank
/// for this row) and an event captured by hand, which has no model at all.
#[tokio::test]
async fn a_missing_distinct_id_says_where_one_comes_from() {
    let pool = pool().await;
    let tracker = Tracker::builder().build();
    tracker.migrate(&pool).await.unwrap();
    let mut tx = tracker.begin(&pool).await.unwrap();
    let error = visit("v5", "").insert(&mut tx).await.unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("must hold one for the row written"),
        "a model with a distinct_id field: {message}"
    );
    tx.rollback().await.unwrap();
    let message = tracker
        .capture(Event::new("clicked"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("Event::distinct_id"),
        "an event captured by hand: {message}"
    );
}

/// The `$anon_distinct_id` of a new person's `$identify` is never blank: a blank anonymous id
/// (or a blank request distinct id standing in for it) is no anonymous id. It was sent, and
/// PostHog refused the merge with an ingestion warning.
#[tokio::test]
async fn a_blank_anonymous_id_is_never_merged() {
    let pool = pool().await;
    let tracker = Tracker::builder().build();
    tracker.migrate(&pool).await.unwrap();
    let contexts = [
        TrackingContext::new()
            .with_distinct_id("visitor-2")
            .with_anonymous_id(" "),
        TrackingContext::new().with_distinct_id("\t"),
        TrackingContext::new().with_anonymous_id(""),
    ];
    for (n, context) in contexts.into_iter().enumerate() {
        let mut tx = tracker.begin(&pool).await.unwrap().with_context(context);
        Member {
            id: format!("m{n}"),
            email: format!("m{n}@example.com"),
        }
        .insert(&mut tx)
        .await
        .unwrap();
        let identify = tx
            .staged()
            .iter()
            .map(|event| event.json())
            .find(|event| event["event"] == "$identify")
            .expect("an identify model sends $identify");
        let anonymous = &identify["properties"]["$anon_distinct_id"];
        assert!(
            anonymous.is_null() || anonymous == "visitor-2",
            "context {n}: {identify}"
        );
        tx.rollback().await.unwrap();
    }
}

/// `$create_alias` with a blank alias would ask PostHog to merge a person with nobody: it is
/// refused with a typed error before anything is queued. It was sent.
#[tokio::test]
async fn alias_refuses_a_blank_alias() {
    let mock = MockPostHog::start().await;
    let tracker = tracker_for(&mock).build();
    for alias in ["", "  "] {
        let error = tracker.alias("user-1", alias).await.unwrap_err();
        assert!(matches!(error, Error::MissingDistinctId { .. }), "{error}");
    }
    tracker.alias("user-1", "anon-1").await.unwrap();
    tracker.flush().await.unwrap();
    let aliases: Vec<Value> = mock
        .events()
        .iter()
        .map(|event| event.properties["alias"].clone())
        .collect();
    assert_eq!(aliases, ["anon-1"]);
}

/// An event's options (`process_person_profile`, `cookieless_mode`, `disable_skew_correction`,
/// `product_tour_id`) mean the same on v0 as on v1. Only v1 reads the `options` object; v1's
/// capture turns it into `$process_person_profile`, `$cookieless_mode`, `$ignore_sent_at` and
/// `$product_tour_id`, which is what v0 reads (and what posthog-rs writes for v0). On v0 (the
/// default) the options were ignored: `process_person_profile(false)` still made a person
/// profile. An option wins over a property of the same name, as it does in v1's capture
/// (which writes its properties after the event's).
#[tokio::test]
async fn event_options_reach_posthog_on_v0_too() {
    let mock = MockPostHog::start().await;
    let tracker = tracker_for(&mock).build();
    let options = EventOptions::new()
        .process_person_profile(false)
        .cookieless_mode(true)
        .disable_skew_correction(true)
        .product_tour_id("tour-1");
    tracker
        .capture(
            Event::new("tour_step")
                .distinct_id("u1")
                .options(options.clone()),
        )
        .await
        .unwrap();
    tracker
        .capture(
            Event::new("tour_step")
                .distinct_id("u2")
                .property("$product_tour_id", "own")
                .options(options),
        )
        .await
        .unwrap();
    tracker.flush().await.unwrap();
    assert_eq!(mock.requests()[0].path, "/batch/");
    let events = mock.events();
    let properties = &events[0].properties;
    assert_eq!(properties["$process_person_profile"], false, "{properties}");
    assert_eq!(properties["$cookieless_mode"], true, "{properties}");
    assert_eq!(properties["$ignore_sent_at"], true, "{properties}");
    assert_eq!(properties["$product_tour_id"], "tour-1", "{properties}");
    let raw = &mock.requests()[0].body["batch"][1];
    assert_eq!(raw["properties"]["$product_tour_id"], "tour-1", "{raw}");
    assert_eq!(
        mock.requests()[0]
            .body
            .to_string()
            .matches("$product_tour_id")
            .count(),
        2,
        "one key per event"
    );
}

/// Options a `before_send` hook sets or changes (through the event's `options` key) mean the
/// same on v0 as on v1 too: v0 got only the event's own options, as they were before the hook.
#[tokio::test]
async fn options_a_hook_sets_reach_posthog_on_v0_too() {
    let mock = MockPostHog::start().await;
    let tracker = tracker_for(&mock)
        .before_send(|mut event| {
            event["options"] = serde_json::json!({
                "process_person_profile": false,
                "product_tour_id": "from-hook",
            });
            Some(event)
        })
        .build();
    tracker
        .capture(
            Event::new("tour_step")
                .distinct_id("u1")
                .options(EventOptions::new().process_person_profile(true)),
        )
        .await
        .unwrap();
    tracker.flush().await.unwrap();
    let properties = &mock.events()[0].properties;
    assert_eq!(properties["$process_person_profile"], false, "{properties}");
    assert_eq!(properties["$product_tour_id"], "from-hook", "{properties}");
}

#[derive(Debug, Clone, TrackedModel)]
#[tracked(table = "subscribers", distinct_id = id, identify)]
pub struct Subscriber {
    #[tracked(key, property = "subscriber_id")]
    pub id: String,
    #[tracked(person)]
    pub email: String,
}

/// A backfill attributes no event to a blank distinct id: such a row is skipped as
/// unattributed, as one without an id is. Its `$set` was sent with `"distinct_id": ""`, which
/// PostHog's capture refuses.
#[tokio::test]
async fn a_backfill_skips_rows_with_a_blank_distinct_id() {
    let pool = memory_database().await.unwrap();
    sqlx::query("CREATE TABLE subscribers (id TEXT PRIMARY KEY, email TEXT NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO subscribers VALUES ('s1', 'a@x'), ('', 'b@x'), ('  ', 'c@x')")
        .execute(&pool)
        .await
        .unwrap();
    let mock = MockPostHog::start().await;
    let tracker = tracker_for(&mock).build();
    tracker.migrate(&pool).await.unwrap();
    let report = tracker.backfill::<Subscriber>(&pool).run().await.unwrap();
    tracker.flush().await.unwrap();
    let ids: Vec<String> = mock
        .events()
        .into_iter()
        .map(|event| event.distinct_id)
        .collect();
    assert_eq!(ids, ["s1"], "{report}");
    assert_eq!(report.skipped_unattributed, 2, "{report}");
}

#[derive(Debug, Clone, TrackedModel)]
#[tracked(table = "teams", group_type = "team", group_key = slug, insert_event = "team_created")]
pub struct Team {
    #[tracked(key, property = "team_slug")]
    pub slug: String,
    #[tracked(property, group = "company")]
    pub company: String,
    #[tracked(skip = "who created it")]
    pub owner: String,
}

/// A blank group key (empty or whitespace) is no group, as a blank distinct id is no person:
/// it is left out of `$groups`, a group model with a blank key sends no `$groupidentify`, and
/// `Tracker::group_identify` refuses a blank type or key with a typed error. Blank keys were
/// sent: PostHog ignores a `$groupidentify` whose key is empty (the call looked successful)
/// and makes a whitespace key one group of every such row.
#[tokio::test]
async fn a_blank_group_key_is_no_group() {
    let pool = memory_database().await.unwrap();
    sqlx::query(
        "CREATE TABLE teams (slug TEXT PRIMARY KEY, company TEXT NOT NULL, owner TEXT NOT NULL)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let mock = MockPostHog::start().await;
    let tracker = tracker_for(&mock).build();
    tracker.migrate(&pool).await.unwrap();
    let mut tx = tracker.begin(&pool).await.unwrap();
    tx.set_distinct_id("owner-1");
    for (slug, company) in [("core", " "), (" ", "acme")] {
        Team {
            slug: slug.into(),
            company: company.into(),
            owner: "owner-1".into(),
        }
        .insert(&mut tx)
        .await
        .unwrap();
    }
    let staged: Vec<Value> = tx.staged().iter().map(|event| event.json()).collect();
    tx.rollback().await.unwrap();
    for event in &staged {
        let groups = &event["properties"]["$groups"];
        for (group_type, key) in groups.as_object().into_iter().flatten() {
            assert!(
                !key.as_str().unwrap_or_default().trim().is_empty(),
                "blank {group_type} key: {event}"
            );
        }
        if event["event"] == "$groupidentify" {
            assert_eq!(event["properties"]["$group_key"], "core", "{event}");
        }
    }
    assert_eq!(
        staged
            .iter()
            .filter(|event| event["event"] == "$groupidentify")
            .count(),
        1,
        "{staged:?}"
    );

    for (group_type, key) in [("company", ""), ("company", "  "), (" ", "acme")] {
        let error = tracker
            .group_identify(group_type, key, serde_json::Map::new())
            .await
            .unwrap_err();
        assert!(matches!(error, Error::InvalidGroup { .. }), "{error}");
    }
    tracker.flush().await.unwrap();
    assert!(mock.events().is_empty(), "{:?}", mock.events());

    // A backfill of the group model, likewise: the blank-keyed row is unattributed.
    sqlx::query("INSERT INTO teams VALUES ('core', 'acme', 'o'), (' ', 'acme', 'o')")
        .execute(&pool)
        .await
        .unwrap();
    let report = tracker.backfill::<Team>(&pool).run().await.unwrap();
    tracker.flush().await.unwrap();
    let keys: Vec<Value> = mock
        .events()
        .iter()
        .map(|event| event.properties["$group_key"].clone())
        .collect();
    assert_eq!(keys, ["core"], "{report}");
    assert_eq!(report.skipped_unattributed, 1, "{report}");
}

/// A name or id of only invisible characters (zero-width space, joiners, word joiner, byte
/// order mark: Unicode's default-ignorable code points, with or without whitespace) is blank,
/// as a whitespace one is: nobody can see, type or query it in PostHog. `"\u{200b}"` passed
/// where `" "` was refused: staged as an event name, sent as a distinct id or a group type.
#[tokio::test]
async fn a_name_or_id_of_invisible_characters_is_blank() {
    let invisible = ["\u{200b}", "\u{feff}", " \u{2060}\u{200d} ", "\u{200c}\t"];
    let pool = pool().await;
    let tracker = Tracker::builder().build();
    tracker.migrate(&pool).await.unwrap();
    let mut tx = tracker.begin(&pool).await.unwrap();
    tx.set_distinct_id("user-1");
    for name in invisible {
        let error = tx.capture(Event::new(name)).unwrap_err();
        assert!(
            matches!(&error, Error::InvalidEventName { event } if event == name),
            "{name:?}: {error}"
        );
        // A blank id is none: the transaction's decides.
        tx.capture(Event::new("clicked").distinct_id(name)).unwrap();
        let staged = tx.staged();
        assert_eq!(staged.last().unwrap().distinct_id, "user-1", "{name:?}");
    }
    assert_eq!(tx.staged().len(), invisible.len(), "{:?}", tx.staged());
    tx.rollback().await.unwrap();

    let mock = MockPostHog::start().await;
    let sender = tracker_for(&mock).build();
    for name in invisible {
        let error = sender
            .capture(Event::new(name).distinct_id("user-1"))
            .await
            .unwrap_err();
        assert!(matches!(error, Error::InvalidEventName { .. }), "{error}");
        let error = sender
            .capture(Event::new("clicked").distinct_id(name))
            .await
            .unwrap_err();
        assert!(matches!(error, Error::MissingDistinctId { .. }), "{error}");
        let error = sender
            .group_identify(name, "acme", serde_json::Map::new())
            .await
            .unwrap_err();
        assert!(matches!(error, Error::InvalidGroup { .. }), "{error}");
        a_hook_that_renames_to_is_refused(&mock, Value::from(name)).await;
    }
    sender.flush().await.unwrap();
    assert!(mock.events().is_empty(), "{:?}", mock.events());
}

/// What a `before_send` hook returns is checked as a staged event is: a hook that blanks or
/// removes the distinct id, or makes the event larger than PostHog accepts, gets the same
/// typed errors (`MissingDistinctId`, `EventTooLarge`) from `capture` and from `commit`
/// (before the database commits), and nothing is sent. Such events were queued or written to
/// the outbox and sent, for PostHog to refuse.
#[tokio::test]
async fn before_send_cannot_send_what_posthog_refuses() {
    let mock = MockPostHog::start().await;
    let tracker = tracker_for(&mock)
        .before_send(|mut event| {
            match event["event"].as_str() {
                Some("blanked") => event["distinct_id"] = " ".into(),
                Some("removed") => {
                    event.as_object_mut()?.remove("distinct_id");
                }
                Some("inflated") => {
                    event["properties"]["blob"] = "x".repeat(1024 * 1024).into();
                }
                _ => {}
            }
            Some(event)
        })
        .build();
    for name in ["blanked", "removed"] {
        let error = tracker
            .capture(Event::new(name).distinct_id("u1"))
            .await
            .unwrap_err();
        assert!(
            matches!(error, Error::MissingDistinctId { .. }),
            "{name}: {error}"
        );
    }
    let error = tracker
        .capture(Event::new("inflated").distinct_id("u1"))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::EventTooLarge { .. }), "{error}");

    let pool = pool().await;
    tracker.migrate(&pool).await.unwrap();
    let mut tx = tracker.begin(&pool).await.unwrap();
    visit("v1", "u1").insert(&mut tx).await.unwrap();
    tx.capture(Event::new("blanked").distinct_id("u1")).unwrap();
    let error = tx.commit().await.unwrap_err();
    assert!(matches!(error, Error::MissingDistinctId { .. }), "{error}");
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM visits")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 0, "the transaction did not commit");

    tracker
        .capture(Event::new("kept").distinct_id("u1"))
        .await
        .unwrap();
    tracker.flush().await.unwrap();
    let names: Vec<String> = mock.events().into_iter().map(|event| event.event).collect();
    assert_eq!(names, ["kept"]);
}

/// The request's anonymous visitor is merged into one person: the first `identify` row a
/// transaction inserts. Each row's `$identify` carried the same `$anon_distinct_id`, so
/// PostHog merged the visitor into whichever row it processed first (rows are different
/// distinct ids, so different partitions) and refused the others with ingestion warnings. On
/// PostgreSQL the rows' events are also written by their inserts' own statements (`fold`),
/// which render them twice: the visitor still goes to the first row only.
async fn the_anonymous_visitor_is_merged_into_one_person<DB: Backend>(pool: &Pool<DB>, _url: &str)
where
    Member: TrackedRow<DB>,
{
    execute(
        pool,
        "CREATE TABLE members (id VARCHAR(100) PRIMARY KEY, email VARCHAR(100) NOT NULL)",
    )
    .await;
    let mock = MockPostHog::start().await;
    let tracker = tracker_for(&mock).external_relay(true).build();
    tracker.migrate(pool).await.unwrap();
    let member = |id: &str| Member {
        id: id.into(),
        email: format!("{id}@example.com"),
    };
    // A first insert in a transaction of its own: on PostgreSQL the next ones fold.
    let mut tx = tracker.begin(pool).await.unwrap();
    member("warm-up").insert(&mut tx).await.unwrap();
    tx.commit().await.unwrap();

    let visitor = TrackingContext::new().with_distinct_id("visitor-7");
    let mut tx = tracker
        .begin(pool)
        .await
        .unwrap()
        .with_context(visitor.clone());
    member("first").insert(&mut tx).await.unwrap();
    member("second").insert(&mut tx).await.unwrap();
    Member::insert_all(&[member("third"), member("fourth")], &mut tx)
        .await
        .unwrap();
    let merged: Vec<(Value, Value)> = tx
        .staged()
        .iter()
        .map(|event| event.json())
        .filter(|event| event["event"] == "$identify")
        .map(|event| {
            (
                event["distinct_id"].clone(),
                event["properties"]["$anon_distinct_id"].clone(),
            )
        })
        .collect();
    tx.commit().await.unwrap();
    let expected: [(Value, Value); 4] = [
        ("first".into(), "visitor-7".into()),
        ("second".into(), Value::Null),
        ("third".into(), Value::Null),
        ("fourth".into(), Value::Null),
    ];
    assert_eq!(merged, expected);
    // What the outbox held, as PostHog receives it.
    tracker.relay(pool.clone()).drain().await.unwrap();
    let mut received: Vec<(Value, Value)> = mock
        .events()
        .into_iter()
        .filter(|event| event.event == "$identify" && event.distinct_id != "warm-up")
        .map(|event| {
            (
                event.distinct_id.into(),
                event.properties["$anon_distinct_id"].clone(),
            )
        })
        .collect();
    received.sort_by_key(|(id, _)| {
        ["first", "second", "third", "fourth"]
            .iter()
            .position(|name| id == name)
    });
    assert_eq!(received, expected);
    // The rule holds within a transaction: a new one (which cannot see what another merged)
    // merges the visitor into its own first row.
    let mut tx = tracker.begin(pool).await.unwrap().with_context(visitor);
    Member::insert_all(&[member("fifth"), member("sixth")], &mut tx)
        .await
        .unwrap();
    let anonymous: Vec<Value> = tx
        .staged()
        .iter()
        .map(|event| event.json())
        .filter(|event| event["event"] == "$identify")
        .map(|event| event["properties"]["$anon_distinct_id"].clone())
        .collect();
    tx.rollback().await.unwrap();
    assert_eq!(anonymous, ["visitor-7".into(), Value::Null]);
}
on_every_backend!(the_anonymous_visitor_is_merged_into_one_person);

/// A blank session id is no session: `with_session_id("")` or whitespace stamped
/// `$session_id` with it on every event of the transaction, putting the events of every such
/// request in one session (a whitespace one) or in none with a property that says otherwise.
#[tokio::test]
async fn a_blank_session_id_is_no_session() {
    let pool = pool().await;
    let tracker = Tracker::builder().build();
    tracker.migrate(&pool).await.unwrap();
    for session in ["", "  "] {
        let context = TrackingContext::new()
            .with_distinct_id("visitor-3")
            .with_session_id(session);
        let mut tx = tracker.begin(&pool).await.unwrap().with_context(context);
        visit("v1", "visitor-3").insert(&mut tx).await.unwrap();
        let event = tx.staged()[0].json();
        tx.rollback().await.unwrap();
        assert!(
            event["properties"].get("$session_id").is_none(),
            "{session:?}: {event}"
        );
    }
}

/// A `before_send` hook may give a number as the distinct id (v0's capture reads it as its
/// text); it is sent as that text, which v1's capture requires (a number there fails the
/// event). It was sent as a number, and v1 dropped the event.
#[tokio::test]
async fn a_numeric_distinct_id_from_a_hook_is_sent_as_text() {
    let mock = MockPostHog::start().await;
    let tracker = tracker_for(&mock)
        .capture_mode(posthog_track::CaptureMode::V1)
        .before_send(|mut event| {
            event["distinct_id"] = 42.into();
            Some(event)
        })
        .build();
    tracker
        .capture(Event::new("counted").distinct_id("u1"))
        .await
        .unwrap();
    let flushed = tracker.flush().await;
    let events = mock.events();
    assert_eq!(events.len(), 1, "{flushed:?}");
    assert_eq!(events[0].raw["distinct_id"], "42");
}

#[derive(Debug, Clone, TrackedModel)]
#[tracked(table = "purchases", distinct_id = buyer, insert_event = "purchase_made")]
pub struct Purchase {
    #[tracked(key, property = "purchase_id")]
    pub id: String,
    #[tracked(property)]
    pub buyer: String,
    #[tracked(skip = "attribution column", context = "distinct_id")]
    pub visitor: Option<String>,
}

/// A blank request distinct id fills no `context = "distinct_id"` column: the column is
/// there to join with PostHog's ids, and no event of the request carries a blank one. It was
/// filled with the blank id.
#[tokio::test]
async fn a_blank_request_distinct_id_fills_no_attribution_column() {
    let pool = memory_database().await.unwrap();
    sqlx::query("CREATE TABLE purchases (id TEXT PRIMARY KEY, buyer TEXT NOT NULL, visitor TEXT)")
        .execute(&pool)
        .await
        .unwrap();
    let tracker = Tracker::builder().build();
    tracker.migrate(&pool).await.unwrap();
    let context = TrackingContext::new().with_distinct_id("  ");
    let mut tx = tracker.begin(&pool).await.unwrap().with_context(context);
    let stored = Purchase {
        id: "p1".into(),
        buyer: "user-1".into(),
        visitor: None,
    }
    .insert(&mut tx)
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(stored.visitor, None);
}

/// Distinct ids PostHog refuses to merge because they come from a bug (`"undefined"`,
/// `"null"`, `"[object Object]"`, `"0"`, `"anonymous"`, ... and their quoted forms): a request
/// header holding one carries no distinct id (it made every such request's events one person),
/// no `$identify` merges one as the anonymous visitor, and `alias` refuses one. They were all
/// sent, and PostHog refused the merges with ingestion warnings.
#[tokio::test]
async fn ids_posthog_refuses_to_merge_are_not_sent_as_merges() {
    for id in [
        "undefined",
        "null",
        "\"null\"",
        "'undefined'",
        "[object Object]",
        "NaN",
        "0",
        "Anonymous",
        "not_authenticated",
    ] {
        let mut headers = axum::http::HeaderMap::new();
        headers.insert(
            "x-posthog-distinct-id",
            axum::http::HeaderValue::from_str(id).unwrap(),
        );
        assert_eq!(
            TrackingContext::from_headers(&headers).distinct_id(),
            None,
            "{id}"
        );
    }
    let mut headers = axum::http::HeaderMap::new();
    headers.insert(
        "x-posthog-distinct-id",
        axum::http::HeaderValue::from_static("nan"),
    );
    assert_eq!(
        TrackingContext::from_headers(&headers).distinct_id(),
        Some("nan"),
        "only `NaN` is refused, as in PostHog"
    );

    let pool = pool().await;
    let tracker = Tracker::builder().build();
    tracker.migrate(&pool).await.unwrap();
    let context = TrackingContext::new()
        .with_distinct_id("visitor-5")
        .with_anonymous_id("undefined");
    let mut tx = tracker.begin(&pool).await.unwrap().with_context(context);
    Member {
        id: "m-illegal".into(),
        email: "m@example.com".into(),
    }
    .insert(&mut tx)
    .await
    .unwrap();
    let identify = tx
        .staged()
        .iter()
        .map(|event| event.json())
        .find(|event| event["event"] == "$identify")
        .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(
        identify["properties"]["$anon_distinct_id"], "visitor-5",
        "{identify}"
    );

    let mock = MockPostHog::start().await;
    let tracker = tracker_for(&mock).build();
    for (distinct_id, alias) in [("user-1", "undefined"), ("null", "anon-1")] {
        let error = tracker.alias(distinct_id, alias).await.unwrap_err();
        assert!(matches!(error, Error::MissingDistinctId { .. }), "{error}");
    }
    tracker.flush().await.unwrap();
    assert!(mock.events().is_empty(), "{:?}", mock.events());
}

/// A group's `$groupidentify` is sent as the group (`$<type>_<key>`), not as the request's
/// person, so it carries no `$session_id`: PostHog's sessions take their distinct id from
/// their latest event, and this one shares its write's timestamp, so a session could be
/// attributed to `$team_core` (a person that does not exist) instead of the visitor. It
/// carried the request's session id.
#[tokio::test]
async fn a_group_identify_joins_no_session() {
    let pool = memory_database().await.unwrap();
    sqlx::query(
        "CREATE TABLE teams (slug TEXT PRIMARY KEY, company TEXT NOT NULL, owner TEXT NOT NULL)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let tracker = Tracker::builder().build();
    tracker.migrate(&pool).await.unwrap();
    let context = TrackingContext::new()
        .with_distinct_id("visitor-8")
        .with_session_id("0190a1b2-0000-7000-8000-000000000008");
    let mut tx = tracker.begin(&pool).await.unwrap().with_context(context);
    Team {
        slug: "core".into(),
        company: "acme".into(),
        owner: "visitor-8".into(),
    }
    .insert(&mut tx)
    .await
    .unwrap();
    let staged: Vec<Value> = tx.staged().iter().map(|event| event.json()).collect();
    tx.rollback().await.unwrap();
    let (group, own): (Vec<&Value>, Vec<&Value>) = staged
        .iter()
        .partition(|event| event["event"] == "$groupidentify");
    assert_eq!((group.len(), own.len()), (1, 1), "{staged:?}");
    assert_eq!(group[0]["distinct_id"], "$team_core");
    assert!(
        group[0]["properties"].get("$session_id").is_none(),
        "{}",
        group[0]
    );
    assert_eq!(
        own[0]["properties"]["$session_id"],
        "0190a1b2-0000-7000-8000-000000000008"
    );
}

/// An event with an empty or whitespace name was staged, committed to the outbox and sent,
/// for PostHog to refuse (or to ingest as a nameless event): a poison event found long after
/// the code that made it. Staging refuses it with `InvalidEventName`, as a missing distinct id
/// is refused, and so does an event that `before_send` leaves without a name.
#[tokio::test]
async fn an_event_without_a_name_is_refused_where_it_is_staged() {
    let pool = pool().await;
    let tracker = Tracker::builder().build();
    tracker.migrate(&pool).await.unwrap();
    let mut tx = tracker.begin(&pool).await.unwrap();
    tx.set_distinct_id("user-1");
    for name in ["", " ", "\t\n"] {
        let error = tx.capture(Event::new(name)).unwrap_err();
        assert!(
            matches!(&error, Error::InvalidEventName { event } if event == name),
            "{error}"
        );
        assert!(
            error.to_string().contains("Event::new"),
            "says how to fix: {error}"
        );
    }
    assert!(tx.staged().is_empty());
    tx.capture(Event::new("clicked")).unwrap();
    tx.commit().await.unwrap();

    let error = tracker
        .capture(Event::new(" ").distinct_id("user-1"))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::InvalidEventName { .. }), "{error}");

    for renamed in [
        Value::from(""),
        Value::from("  "),
        Value::Null,
        Value::from(7),
    ] {
        a_hook_that_renames_to_is_refused(&MockPostHog::start().await, renamed).await;
    }
}

/// A `before_send` hook that renames every event to `renamed` (a blank or missing name):
/// the capture is refused as an invalid event name.
async fn a_hook_that_renames_to_is_refused(mock: &MockPostHog, renamed: Value) {
    let hooked = tracker_for(mock)
        .before_send(move |mut event| {
            event["event"] = renamed.clone();
            Some(event)
        })
        .build();
    let error = hooked
        .capture(Event::new("clicked").distinct_id("user-1"))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::InvalidEventName { .. }), "{error}");
}
