//! The traits that `#[derive(TrackedModel)]` and `#[derive(EventSchema)]` implement, and the
//! tracked writes built on them.
//!
//! - `traits`: [`TrackedModel`] and its writes, [`TrackedRow`], [`EventSchema`].
//! - `stage`: the events a write stages (`$identify`, `$groupidentify`, `$groups`).
//! - `codegen`: what generated code builds on ([`SqlSet`], [`ModelSql`], [`ChangeMask`],
//!   [`milestone_condition`]).
//! - `route`: which table a write goes to when its model is flag-routed.
//! - `auto_increment`: MySQL's check that a `generated` key is AUTO_INCREMENT.
//! - `bulk`: writing rows and reading them back, one (`insert`) or many (`insert_all`).
//! - `upsert`: `upsert` and what it returns ([`Upserted`]).
//! - `fold`: on PostgreSQL, an inserted row and its events in one statement.

mod auto_increment;
mod bulk;
mod codegen;
mod fold;
mod route;
mod stage;
mod traits;
mod upsert;

pub use bulk::ignore_mariadb_returning;
pub use codegen::{ChangeMask, ModelSql, PerDialect, SqlSet, milestone_condition};
pub use fold::{fold_counts, fold_counts_of, fold_inserts};
pub use stage::stage_insert_event_detached;
pub(crate) use stage::with_groups;
pub use traits::{EventSchema, TrackedModel, TrackedRow, Upsertable};
pub use upsert::Upserted;
