//! Revenue by who, which session and which campaign, from the rows alone, and the PostHog
//! events that tie the same rows to each user's journey.
//!
//! ```text
//! cargo run --example revenue_attribution
//! ```
//!
//! Each order row stores the request's PostHog distinct id, session id and `utm_source`
//! (`#[tracked(context = "...")]` on `shop::Order`), so one SQL query groups revenue by them;
//! the `order_completed` event carries the same ids, `revenue` and `currency`, so PostHog's
//! revenue analytics and session replays line up with the database. Offline: SQLite in
//! memory, and the events are read from the outbox.

use std::collections::BTreeMap;

use posthog_track::testing::MockPostHog;
use posthog_track::{TrackedModel, Tracker, TrackingContext};
use posthog_track_examples::shop::{self, Account, Company, Order};

/// Distinct id, session, source, currency, orders, revenue.
type RevenueRow = (
    Option<String>,
    Option<String>,
    Option<String>,
    String,
    i64,
    f64,
);

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pool = posthog_track_examples::memory_database().await?;
    // A local PostHog stands in for the real one, so the example can show what arrived.
    let posthog = MockPostHog::start().await;
    let tracker = Tracker::builder()
        .api_key(posthog.api_key())
        .host(posthog.url())?
        .build();
    shop::migrate(&pool, &tracker).await?;

    // Two visitors sign up, each in a browser session, then buy from different campaigns.
    let visits = [
        (
            "anon-ada",
            "session-ada-1",
            "ada@example.com",
            &[(49.0, "newsletter"), (15.0, "newsletter")][..],
        ),
        (
            "anon-bob",
            "session-bob-1",
            "bob@example.com",
            &[(99.0, "search")][..],
        ),
    ];
    for (anonymous_id, session_id, email, orders) in visits {
        let browser = TrackingContext::new()
            .with_distinct_id(anonymous_id)
            .with_session_id(session_id);
        let mut tx = tracker.begin(&pool).await?.with_context(browser);
        let user_id = format!("user-{}", &email[..3]);
        let company_id = format!("company-{}", &email[..3]);
        Account {
            id: user_id.clone(),
            email: email.into(),
            plan: "free".into(),
            company_id: company_id.clone(),
            anonymous_id: None,
        }
        .insert(&mut tx)
        .await?; // $identify merges anon-… into user-…
        tx.set_distinct_id(&user_id);
        Company {
            id: company_id.clone(),
            name: format!("{email}'s company"),
        }
        .insert(&mut tx)
        .await?;
        tx.commit().await?;

        for (n, (revenue, source)) in orders.iter().enumerate() {
            // After signup posthog-js sends the identified user's id.
            let browser = TrackingContext::new()
                .with_distinct_id(&user_id)
                .with_session_id(session_id)
                .with_property("utm_source", *source);
            let mut tx = tracker.begin(&pool).await?.with_context(browser);
            Order {
                id: format!("order-{}-{n}", &email[..3]),
                user_id: user_id.clone(),
                company_id: company_id.clone(),
                revenue: *revenue,
                currency: "EUR".into(),
                posthog_distinct_id: None, // filled from the context
                posthog_session_id: None,
                utm_source: None,
            }
            .insert(&mut tx)
            .await?;
            tx.commit().await?;
        }
    }

    println!("revenue by attribution ({}):", shop::REVENUE_BY_ATTRIBUTION);
    let rows: Vec<RevenueRow> = sqlx::query_as(shop::REVENUE_BY_ATTRIBUTION)
        .fetch_all(&pool)
        .await?;
    for (distinct_id, session_id, source, currency, orders, revenue) in rows {
        println!(
            "  {:<10} {:<14} {:<11} {orders} order(s)  {revenue:>6.2} {currency}",
            distinct_id.unwrap_or_default(),
            session_id.unwrap_or_default(),
            source.unwrap_or_default(),
        );
    }

    // Everything committed is delivered (the relay started with the first transaction).
    tracker.flush().await?;
    println!("\nthe same journeys as PostHog received them (by distinct id):");
    let mut journeys: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for event in posthog.events() {
        let properties = &event.properties;
        let mut line = event.event.clone();
        for key in [
            "$anon_distinct_id",
            "$session_id",
            "revenue",
            "currency",
            "utm_source",
            "$groups",
        ] {
            if !properties[key].is_null() {
                line.push_str(&format!(" {key}={}", properties[key]));
            }
        }
        journeys
            .entry(event.distinct_id.clone())
            .or_default()
            .push(line);
    }
    for (distinct_id, events) in journeys {
        println!("  {distinct_id}");
        for event in events {
            println!("    {event}");
        }
    }
    Ok(())
}
