//! A small web service that ties database rows to PostHog's picture of each user: signup
//! identifies the person, orders store who and which session bought them, and every event
//! joins the browser's session. `cargo run --example axum_signup` serves it; the end-to-end
//! test (`tests/signup_http.rs`) drives it over HTTP on SQLite, PostgreSQL and MariaDB.
//!
//! The browser runs posthog-js with `__add_tracing_headers`, so each request carries
//! `X-POSTHOG-DISTINCT-ID` and `X-POSTHOG-SESSION-ID`; the [`TrackingContext`] extractor reads
//! them.

use axum::Router;
use axum::extract::{Json, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use posthog_track::{
    Backend, TrackedModel, TrackedRow, TrackedTransaction, Tracker, TrackingContext,
};
use serde::Deserialize;
use serde_json::json;
use sqlx::Pool;

/// A customer company: a PostHog group, so its insert sends `$groupidentify`.
#[derive(Debug, Clone, TrackedModel)]
#[tracked(
    table = "companies",
    migrations = "migrations",
    migrations_dialect = "sqlite",
    group_type = "company",
    group_key = id,
    insert_event = "company_created"
)]
pub struct Company {
    #[tracked(key, property = "company_id")]
    pub id: String,
    /// Shown in PostHog as the group's name.
    #[tracked(property)]
    pub name: String,
}

/// A user account. `identify`: signup sends `$identify`, merging the anonymous visitor who
/// signed up into the new person.
#[derive(Debug, Clone, TrackedModel)]
#[tracked(
    table = "accounts",
    migrations = "migrations",
    migrations_dialect = "sqlite",
    distinct_id = id,
    identify,
    insert_event = "user_signed_up",
    update_event = "account_updated"
)]
pub struct Account {
    #[tracked(key, property = "user_id")]
    pub id: String,
    /// The person's email (`$set`).
    #[tracked(person)]
    pub email: String,
    /// Free to paid fires `plan_upgraded`.
    #[tracked(person, milestone(event = "plan_upgraded", when = crate::plan_upgraded))]
    pub plan: String,
    /// Every event of the account is attributed to its company (`$groups`).
    #[tracked(property, group = "company")]
    pub company_id: String,
    /// The visitor's id before signup, kept with the row.
    #[tracked(
        skip = "attribution column; PostHog already has it as $anon_distinct_id",
        context = "distinct_id"
    )]
    pub anonymous_id: Option<String>,
}

/// A purchase. The row records who (distinct id), in which session, and from which marketing
/// source it was bought, so revenue can be grouped by them in SQL and followed in PostHog.
#[derive(Debug, Clone, TrackedModel)]
#[tracked(
    table = "orders",
    migrations = "migrations",
    migrations_dialect = "sqlite",
    distinct_id = user_id,
    insert_event = "order_completed"
)]
pub struct Order {
    #[tracked(key, property = "order_id")]
    pub id: String,
    #[tracked(property)]
    pub user_id: String,
    #[tracked(property, group = "company")]
    pub company_id: String,
    /// PostHog revenue analytics reads `revenue` and `currency`.
    #[tracked(property)]
    pub revenue: f64,
    #[tracked(property)]
    pub currency: String,
    #[tracked(
        skip = "attribution column: the distinct id is the event's own",
        context = "distinct_id"
    )]
    pub posthog_distinct_id: Option<String>,
    #[tracked(
        skip = "attribution column: stamped as $session_id",
        context = "session_id"
    )]
    pub posthog_session_id: Option<String>,
    /// The marketing source the request context carried.
    #[tracked(property, context = "property.utm_source")]
    pub utm_source: Option<String>,
}

/// The shop's tables, from the same migration file the models are checked against at compile
/// time (portable SQL: it runs on all three databases), and the outbox.
pub async fn migrate<DB: Backend>(pool: &Pool<DB>, tracker: &Tracker) -> posthog_track::Result<()> {
    crate::run_migration(pool, include_str!("../migrations/0003_create_shop.sql")).await?;
    tracker.migrate(pool).await
}

/// What the handlers share.
pub struct Shop<DB: Backend> {
    pub pool: Pool<DB>,
    pub tracker: Tracker,
}

impl<DB: Backend> Shop<DB> {
    /// A tracked transaction whose events carry the request's context.
    async fn begin(
        &self,
        context: TrackingContext,
    ) -> posthog_track::Result<TrackedTransaction<'static, DB>> {
        Ok(self.tracker.begin(&self.pool).await?.with_context(context))
    }
}

impl<DB: Backend> Clone for Shop<DB> {
    fn clone(&self) -> Self {
        Shop {
            pool: self.pool.clone(),
            tracker: self.tracker.clone(),
        }
    }
}

/// `POST /signup`, `POST /orders`, `POST /plan`.
pub fn app<DB: Backend>(shop: Shop<DB>) -> Router
where
    Account: TrackedRow<DB>,
    Company: TrackedRow<DB>,
    Order: TrackedRow<DB>,
{
    Router::new()
        .route("/signup", post(signup::<DB>))
        .route("/orders", post(place_order::<DB>))
        .route("/plan", post(change_plan::<DB>))
        .with_state(shop)
}

#[derive(Deserialize)]
pub struct SignupRequest {
    pub email: String,
    pub company: String,
}

/// Creates the company and the account in one transaction; the events commit with them.
async fn signup<DB: Backend>(
    State(shop): State<Shop<DB>>,
    context: TrackingContext,
    Json(request): Json<SignupRequest>,
) -> Result<Response, AppError>
where
    Account: TrackedRow<DB>,
    Company: TrackedRow<DB>,
{
    let account_id = format!("user-{}", uuid::Uuid::new_v4().simple());
    let company_id = format!("company-{}", uuid::Uuid::new_v4().simple());
    let mut tx = shop.begin(context).await?;
    let account = Account {
        id: account_id.clone(),
        email: request.email,
        plan: "free".into(),
        company_id: company_id.clone(),
        anonymous_id: None, // filled from the request context
    }
    .insert(&mut tx)
    .await?;
    // From here on the request acts for the new user, not the anonymous visitor.
    tx.set_distinct_id(&account_id);
    Company {
        id: company_id.clone(),
        name: request.company,
    }
    .insert(&mut tx)
    .await?;
    tx.commit().await?;
    let body = json!({"user_id": account.id, "company_id": company_id});
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

#[derive(Deserialize)]
pub struct OrderRequest {
    pub user_id: String,
    pub revenue: f64,
    pub currency: String,
}

/// The landing page's `utm_source`, which the frontend keeps and sends along.
pub const UTM_SOURCE_HEADER: &str = "x-utm-source";

/// Stores the order with its attribution columns filled from the request context.
async fn place_order<DB: Backend>(
    State(shop): State<Shop<DB>>,
    headers: HeaderMap,
    context: TrackingContext,
    Json(request): Json<OrderRequest>,
) -> Result<Response, AppError>
where
    Account: TrackedRow<DB>,
    Order: TrackedRow<DB>,
{
    let source = headers
        .get(UTM_SOURCE_HEADER)
        .and_then(|value| value.to_str().ok());
    let context = match source {
        Some(source) => context.with_property("utm_source", source),
        None => context,
    };
    let mut tx = shop.begin(context).await?;
    let account = load_account(&mut tx, &request.user_id).await?;
    let order = Order {
        id: format!("order-{}", uuid::Uuid::new_v4().simple()),
        user_id: account.id,
        company_id: account.company_id,
        revenue: request.revenue,
        currency: request.currency,
        posthog_distinct_id: None,
        posthog_session_id: None,
        utm_source: None,
    }
    .insert(&mut tx)
    .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(json!({"order_id": order.id}))).into_response())
}

#[derive(Deserialize)]
pub struct PlanRequest {
    pub user_id: String,
    pub plan: String,
}

/// Changes the plan; going from free to paid is the `plan_upgraded` milestone.
async fn change_plan<DB: Backend>(
    State(shop): State<Shop<DB>>,
    context: TrackingContext,
    Json(request): Json<PlanRequest>,
) -> Result<Response, AppError>
where
    Account: TrackedRow<DB>,
{
    let mut tx = shop.begin(context).await?;
    let before = load_account(&mut tx, &request.user_id).await?;
    let mut after = before.clone();
    after.plan = request.plan;
    after.update_changed(&before, &mut tx).await?;
    tx.commit().await?;
    Ok(Json(json!({"user_id": after.id, "plan": after.plan})).into_response())
}

/// The account with this id, locked for the rest of the transaction.
async fn load_account<DB: Backend>(
    tx: &mut TrackedTransaction<'_, DB>,
    id: &str,
) -> Result<Account, AppError>
where
    Account: TrackedRow<DB>,
{
    Account::load_for_update(&id.to_owned(), tx)
        .await?
        .ok_or(AppError::NotFound("no such user"))
}

/// A handler's failure, as an HTTP answer.
#[derive(Debug)]
pub enum AppError {
    NotFound(&'static str),
    Tracking(posthog_track::Error),
}

impl From<posthog_track::Error> for AppError {
    fn from(error: posthog_track::Error) -> Self {
        AppError::Tracking(error)
    }
}

impl From<sqlx::Error> for AppError {
    fn from(error: sqlx::Error) -> Self {
        AppError::Tracking(error.into())
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        match self {
            AppError::NotFound(what) => (StatusCode::NOT_FOUND, what).into_response(),
            AppError::Tracking(error) => {
                tracing::error!(%error, "request failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
            }
        }
    }
}

/// The SQL of `revenue_attribution`: revenue by the attribution columns the rows store.
pub const REVENUE_BY_ATTRIBUTION: &str = "SELECT posthog_distinct_id, posthog_session_id, \
     utm_source, currency, COUNT(*), SUM(revenue) FROM orders \
     GROUP BY posthog_distinct_id, posthog_session_id, utm_source, currency \
     ORDER BY posthog_distinct_id, posthog_session_id, utm_source";
