//! Keep a sqlx data model and its PostHog product analytics in lockstep.
//!
//! `#[derive(TrackedModel)]` generates, at compile time, the SQL that writes a struct
//! (PostgreSQL, MySQL/MariaDB and SQLite) and the mapping from its columns to PostHog event
//! properties. A field that nobody decided about is a compile error, so analytics cannot
//! silently drift from the database.
//!
//! ```
//! use posthog_track::{TrackedModel, Tracker};
//!
//! #[derive(Debug, Clone, TrackedModel)]
//! #[tracked(table = "users", distinct_id = id, insert_event = "user_signed_up")]
//! pub struct User {
//!     #[tracked(key, property = "user_id")]
//!     pub id: String,
//!     #[tracked(person)]
//!     pub email: String,
//!     #[tracked(property, milestone(event = "plan_upgraded", when = upgraded))]
//!     pub plan: String,
//!     #[tracked(skip = "credential; never leaves the database")]
//!     pub password_hash: String,
//! }
//!
//! fn upgraded(before: &String, after: &String) -> bool {
//!     before == "free" && after != "free"
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> posthog_track::Result<()> {
//! let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
//! sqlx::query("CREATE TABLE users (id TEXT PRIMARY KEY, email TEXT, plan TEXT, password_hash TEXT)")
//!     .execute(&pool).await?;
//! let tracker = Tracker::builder().build();           // no API key: dry run
//! tracker.migrate(&pool).await?;                       // creates posthog_outbox
//!
//! let mut tx = tracker.begin(&pool).await?;
//! let user = User { id: "u1".into(), email: "ada@example.com".into(), plan: "free".into(),
//!                   password_hash: "argon2...".into() }
//!     .insert(&mut tx).await?;                         // stages user_signed_up
//! let mut after = user.clone();
//! after.plan = "pro".into();
//! after.update_changed(&user, &mut tx).await?;         // stages user_updated + plan_upgraded
//! let names: Vec<_> = tx.staged().iter().map(|e| e.event.to_string()).collect();
//! assert_eq!(names, ["user_signed_up", "user_updated", "plan_upgraded"]);
//! tx.commit().await?;   // rows and events commit together (a dry run prints the events)
//! tracker.flush().await?;                              // and are delivered
//! # Ok(()) }
//! ```
//!
//! Where to look:
//!
//! - [`TrackedModel`](trait@TrackedModel) and [`EventSchema`](trait@EventSchema): the writes
//!   (`insert`, `update`, `update_changed`, `delete`); the attribute reference is on the
//!   [`TrackedModel` derive](derive@TrackedModel).
//! - [`Tracker`] and [`TrackedTransaction`]: configuration, transactions, `capture`,
//!   `identify`, `flush` and `shutdown`.
//! - [`backfill`]: existing rows to PostHog through the model (`tracker.backfill::<M>(&pool)`).
//! - [`relay`] and [`outbox`]: delivery of committed events to PostHog, at least once and
//!   deduplicated by uuid.
//! - [`flags`]: remote and local feature flag evaluation, exposures, flag-routed tables.
//! - [`metrics`] and [`doctor`]: operating it (metrics, tracing spans, set-up checks).
//! - [`plan`]: the tracking plan every model contributes to, and its snapshot test.
//! - `testing` (feature `testing`): `MockPostHog`, a local PostHog for tests.

#![warn(missing_docs)]

// First, so that every module below can use its macro.
#[macro_use]
mod setters;

mod backend;
pub mod backfill;
mod builder;
mod client;
mod config;
mod context;
mod dispatch;
pub mod doctor;
mod error;
mod event;
pub mod flags;
pub mod metrics;
mod mode;
mod model;
pub mod outbox;
pub mod plan;
pub mod relay;
mod shared;
mod sync;
#[cfg(feature = "testing")]
pub mod testing;
mod tracker;
mod transaction;

pub use backend::{Backend, Dialect};
pub use backfill::{Backfill, BackfillPool, BackfillProgress, BackfillReport};
pub use client::{Backoff, DeliveryCounts, DeliveryStats};
pub use config::{ApiKey, CaptureMode, Compression, Config, EU_HOST, US_HOST};
pub use context::{DISTINCT_ID_HEADER, MAX_HEADER_ID_CHARS, SESSION_ID_HEADER, TrackingContext};
pub use dispatch::{BeforeSend, Delivery, ShutdownReport};
pub use error::{Error, Result};
pub use event::{Event, EventOptions, LIB_NAME, LIB_VERSION, StagedEvent, ToDistinctId};
pub use flags::routed_table;
pub use mode::Mode;
pub use model::{EventSchema, TrackedModel, TrackedRow, Upsertable, Upserted};
pub use posthog_derive::EventSchema;
/// Derives [`TrackedModel`](trait@TrackedModel): the SQL that writes the struct and the
/// mapping of its fields to PostHog events, checked at compile time.
///
#[doc = include_str!("attributes.md")]
pub use posthog_derive::TrackedModel;
pub use tracker::{Tracker, TrackerBuilder};
pub use transaction::TrackedTransaction;

/// What the `posthog-track` command shares with the library's messages, and hooks for its
/// tests in its debug builds. Not public API: it changes without notice.
#[doc(hidden)]
#[cfg(feature = "cli")]
pub mod __cli {
    pub use crate::config::refused_login_hint;

    /// Every relay of this process panics after its next round: the `relay` command's test
    /// that a relay task which dies stops the command (the command calls it when
    /// POSTHOG_TRACK_TEST_RELAY_PANIC is set; the library never reads that variable).
    #[cfg(debug_assertions)]
    pub fn panic_relays_after_a_round() {
        crate::relay::PANIC_AFTER_ROUND.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Re-exports for generated code. Not public API: it changes without notice.
#[doc(hidden)]
pub mod __private {
    pub use crate::backend::{Backend, Binds, BoundQuery, Column, Reads};
    pub use crate::backfill::{
        BackfillField, BackfillIsTimestamp, BackfillIsTimestampType, BackfillModel,
        BackfillNotTimestamp, BackfillNotTimestampType, BackfillPerson, BackfillRow, BackfillSpec,
        BackfillTimestamp, BackfillTimestampProbe, BackfillTimestampType, PageSql,
    };
    pub use crate::context::{ContextValue, TrackingContext};
    pub use crate::error::{Error, Result};
    pub use crate::event::{EventWriter, Section, Stager, ToDistinctId};
    pub use crate::flags::routing::TableVariant;
    pub use crate::model::{
        ChangeMask, EventSchema, ModelSql, PerDialect, SqlSet, TrackedModel, TrackedRow,
        Upsertable, fold_counts, fold_counts_of, fold_inserts, ignore_mariadb_returning,
        milestone_condition, stage_insert_event_detached,
    };
    pub use crate::plan::{
        FieldPlan, ModelEvents, ModelPlan, PersonProperty, PlanEntry, VariantPlan,
    };
    pub use inventory;
    pub use serde::Serialize;
    pub use sqlx;
    pub use std::borrow::ToOwned;
    pub use std::option::Option::{self, None, Some};
    pub use std::result::Result::{Err, Ok};
    pub use std::string::String;
    pub use std::vec;
    pub use std::vec::Vec;
}
