//! End to end: the `axum_signup` shop served on 127.0.0.1, driven over HTTP with the headers
//! posthog-js sends, on SQLite, PostgreSQL and MariaDB. The rows must carry the request's
//! distinct id and session, and `MockPostHog` must receive the identity, group, revenue and
//! milestone events with consistent distinct ids.

use std::time::Duration;

use posthog_track::testing::{MockPostHog, ReceivedEvent};
use posthog_track::{Backend, TrackedRow, Tracker};
use posthog_track_examples::memory_database;
use posthog_track_examples::shop::{self, Account, Company, Order, Shop};
use posthog_track_tests::{database_url, isolated_mysql, isolated_postgres, tracker_for, unique};
use serde_json::{Value, json};
use sqlx::Pool;

/// The shop on an ephemeral port; returns its base URL.
async fn serve<DB: Backend>(pool: Pool<DB>, tracker: Tracker) -> String
where
    Account: TrackedRow<DB>,
    Company: TrackedRow<DB>,
    Order: TrackedRow<DB>,
{
    shop::migrate(&pool, &tracker).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let app = shop::app(Shop { pool, tracker });
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{address}")
}

/// A browser running posthog-js: every request carries its distinct id and session.
struct Browser {
    http: reqwest::Client,
    base: String,
    distinct_id: String,
    session_id: String,
}

impl Browser {
    async fn post(&self, path: &str, body: Value, extra: &[(&str, &str)]) -> Value {
        let mut request = self
            .http
            .post(format!("{}{path}", self.base))
            .header("X-POSTHOG-DISTINCT-ID", &self.distinct_id)
            .header("X-POSTHOG-SESSION-ID", &self.session_id)
            .header("content-type", "application/json")
            .body(body.to_string());
        for (name, value) in extra {
            request = request.header(*name, *value);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        assert!(status.is_success(), "{path}: {status} {text}");
        serde_json::from_str(&text).unwrap()
    }
}

type Row = (
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// The order rows with their attribution columns.
async fn read_orders<DB: Backend>(pool: &Pool<DB>) -> Vec<Row> {
    let mut conn = pool.acquire().await.unwrap();
    let rows = DB::fetch_all(&mut conn, sqlx::query(SELECT_ORDERS))
        .await
        .unwrap();
    rows.iter()
        .map(|row| {
            (
                DB::text(row, 0).unwrap(),
                DB::text(row, 1).unwrap(),
                DB::optional_text(row, 2).unwrap(),
                DB::optional_text(row, 3).unwrap(),
                DB::optional_text(row, 4).unwrap(),
            )
        })
        .collect()
}

async fn scenario<DB: Backend>(pool: Pool<DB>)
where
    Account: TrackedRow<DB>,
    Company: TrackedRow<DB>,
    Order: TrackedRow<DB>,
{
    let mock = MockPostHog::start().await;
    let tracker = tracker_for(&mock).build();
    let base = serve(pool.clone(), tracker.clone()).await;
    let mut browser = Browser {
        http: reqwest::Client::new(),
        base,
        distinct_id: unique("anon"),
        session_id: unique("session"),
    };
    let anonymous_id = browser.distinct_id.clone();

    let signup = browser
        .post(
            "/signup",
            json!({"email": "ada@example.com", "company": "Engines"}),
            &[],
        )
        .await;
    let user_id = signup["user_id"].as_str().unwrap().to_owned();
    let company_id = signup["company_id"].as_str().unwrap().to_owned();
    // posthog-js identifies too: from now on the browser sends the user's id.
    browser.distinct_id = user_id.clone();
    let order = browser
        .post(
            "/orders",
            json!({"user_id": user_id, "revenue": 49.5, "currency": "EUR"}),
            &[("x-utm-source", "newsletter")],
        )
        .await;
    let order_id = order["order_id"].as_str().unwrap().to_owned();
    browser
        .post("/plan", json!({"user_id": user_id, "plan": "pro"}), &[])
        .await;

    // The row records who, in which session, from which campaign.
    let rows = read_orders(&pool).await;
    assert_eq!(
        rows,
        vec![(
            order_id.clone(),
            user_id.clone(),
            Some(user_id.clone()),
            Some(browser.session_id.clone()),
            Some("newsletter".to_owned()),
        )]
    );

    tracker.flush().await.unwrap();
    let events = mock
        .wait_for_events(8, Duration::from_secs(10))
        .await
        .unwrap();
    mock.assert_no_duplicates();
    let named = |name: &str| -> Vec<ReceivedEvent> {
        events.iter().filter(|e| e.event == name).cloned().collect()
    };
    let one = |name: &str| -> ReceivedEvent {
        let found = named(name);
        assert_eq!(found.len(), 1, "{name}: {found:?}");
        found.into_iter().next().unwrap()
    };
    let session = json!(browser.session_id);
    let groups = json!({"company": company_id});

    // Signup identifies the person, merging the anonymous visitor; the plan change sends the
    // changed person property alone.
    let identifies = named("$identify");
    assert_eq!(identifies.len(), 2, "{identifies:?}");
    let (identify, plan_change) = (&identifies[0], &identifies[1]);
    assert_eq!(identify.distinct_id, user_id);
    assert_eq!(
        identify.properties["$anon_distinct_id"],
        json!(anonymous_id)
    );
    assert_eq!(
        identify.properties["$set"],
        json!({"email": "ada@example.com", "plan": "free"})
    );
    assert_eq!(identify.properties["$session_id"], session);

    let signed_up = one("user_signed_up");
    assert_eq!(signed_up.distinct_id, user_id);
    assert_eq!(signed_up.properties["$groups"], groups);
    assert_eq!(signed_up.properties["$session_id"], session);

    let group = one("$groupidentify");
    assert_eq!(group.distinct_id, format!("$company_{company_id}"));
    assert_eq!(group.properties["$group_type"], json!("company"));
    assert_eq!(group.properties["$group_key"], json!(company_id));
    assert_eq!(
        group.properties["$group_set"],
        json!({"company_id": company_id, "name": "Engines"})
    );
    assert_eq!(one("company_created").distinct_id, user_id);

    let completed = one("order_completed");
    assert_eq!(completed.distinct_id, user_id);
    assert_eq!(completed.properties["order_id"], json!(order_id));
    assert_eq!(completed.properties["revenue"], json!(49.5));
    assert_eq!(completed.properties["currency"], json!("EUR"));
    assert_eq!(completed.properties["utm_source"], json!("newsletter"));
    assert_eq!(completed.properties["$session_id"], session);
    assert_eq!(completed.properties["$groups"], groups);
    assert!(completed.properties.get("posthog_distinct_id").is_none());

    let upgraded = one("plan_upgraded");
    assert_eq!(upgraded.distinct_id, user_id);
    assert_eq!(upgraded.properties["previous_plan"], json!("free"));
    assert_eq!(upgraded.properties["plan"], json!("pro"));
    assert_eq!(plan_change.distinct_id, user_id);
    assert_eq!(plan_change.properties["$set"], json!({"plan": "pro"}));
    assert!(plan_change.properties.get("$anon_distinct_id").is_none());
    assert_eq!(one("account_updated").properties["plan"], json!("pro"));
    tracker.shutdown(Duration::from_secs(5)).await.unwrap();
}

const SELECT_ORDERS: &str =
    "SELECT id, user_id, posthog_distinct_id, posthog_session_id, utm_source FROM orders";

#[tokio::test]
async fn sqlite() {
    let pool = memory_database().await.unwrap();
    scenario(pool).await;
}

#[tokio::test]
async fn postgres() {
    if let Some(url) = database_url("POSTGRES_URL") {
        scenario(isolated_postgres(&url, "signup_http").await).await;
    }
}

#[tokio::test]
async fn mariadb() {
    if let Some(url) = database_url("MYSQL_URL") {
        scenario(isolated_mysql(&url, "signup_http").await).await;
    }
}

/// a hostile 300-byte X-POSTHOG-DISTINCT-ID (well within hyper's header limits) must
/// not make the signup fail: analytics must not break a request.
#[tokio::test]
async fn long_distinct_id_header_does_not_break_signup() {
    let Some(url) = database_url("POSTGRES_URL") else {
        return;
    };
    let pool = isolated_postgres(&url, "signup_long_header").await;
    let mock = MockPostHog::start().await;
    let base = serve(pool, tracker_for(&mock).build()).await;
    let response = reqwest::Client::new()
        .post(format!("{base}/signup"))
        .header("X-POSTHOG-DISTINCT-ID", "a".repeat(300))
        .header("content-type", "application/json")
        .body(json!({"email": "eve@example.com", "company": "Evil"}).to_string())
        .send()
        .await
        .unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    assert!(status.is_success(), "{status} {text}");
}
