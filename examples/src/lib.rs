//! The models of the examples, in a library so that the examples share them and the tracking
//! plan test (`tests/tracking_plan.rs`) sees them.

pub mod shop;

use chrono::{DateTime, Utc};
use posthog_track::{Backend, TrackedModel};
use sqlx::Pool;

/// An in-memory SQLite database. One connection that never closes: each in-memory connection
/// is a database of its own.
pub async fn memory_database() -> Result<sqlx::SqlitePool, sqlx::Error> {
    sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect("sqlite::memory:")
        .await
}

/// Creates the tables of `User` and `Document` by running their migrations, the same files
/// the derive checks the models against at compile time. (The shop's are `shop::migrate`.)
pub async fn migrate(pool: &sqlx::SqlitePool) -> Result<(), sqlx::Error> {
    run_migration(pool, include_str!("../migrations/0001_create_users.sql")).await?;
    run_migration(
        pool,
        include_str!("../migrations/0002_create_documents.sql"),
    )
    .await
}

/// Runs one migration file on any backend, statement by statement. The examples' files have
/// no `;` inside a statement, which is what makes this split safe.
pub async fn run_migration<DB: Backend>(pool: &Pool<DB>, sql: &str) -> Result<(), sqlx::Error> {
    let mut conn = pool.acquire().await?;
    for statement in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        let query = sqlx::query(sqlx::AssertSqlSafe(statement.to_owned()));
        DB::execute(&mut conn, query).await?;
    }
    Ok(())
}

/// A person who signed up.
#[derive(Debug, Clone, TrackedModel)]
#[tracked(
    table = "users",
    // Checked against the migrations at compile time: a new column fails the build until the
    // model accounts for it.
    migrations = "migrations",
    migrations_dialect = "sqlite",
    distinct_id = id,
    insert_event = "user_signed_up",
    update_event = "user_updated"
)]
pub struct User {
    /// The primary key, sent as `user_id`; also the PostHog distinct id.
    #[tracked(key, property = "user_id")]
    pub id: String,
    /// An event property and a `$set` person property.
    #[tracked(person)]
    pub email: String,
    /// Going from free to a paid plan fires `plan_upgraded`.
    #[tracked(property, milestone(event = "plan_upgraded", when = plan_upgraded))]
    pub plan: String,
    #[tracked(skip = "credential; never leaves the database")]
    pub password_hash: String,
    /// Filled in by the database and read back by `insert`.
    #[tracked(generated, property)]
    pub created_at: DateTime<Utc>,
}

/// Going from the free plan to any paid one.
pub fn plan_upgraded(before: &String, after: &String) -> bool {
    before == "free" && after != "free"
}

/// A document, written to `documents` or, for users in the `test` variant of the
/// `documents-v2` flag, to `documents_v2`.
#[derive(Debug, Clone, TrackedModel)]
#[tracked(
    table = "documents",
    migrations = "migrations",
    migrations_dialect = "sqlite",
    distinct_id = owner,
    insert_event = "document_created",
    // Users in variant `test` of flag `documents-v2` write to `documents_v2`.
    table_variant(flag = "documents-v2", variant = "test", table = "documents_v2")
)]
pub struct Document {
    #[tracked(key, property = "document_id")]
    pub id: String,
    #[tracked(property)]
    pub owner: String,
    #[tracked(property)]
    pub title: String,
}
