//! The traits that `#[derive(TrackedModel)]` and `#[derive(EventSchema)]` implement, and the
//! tracked writes built on them.
//!
//! - `traits`: [`TrackedModel`] and its writes, [`TrackedRow`], [`EventSchema`].
//! - `stage`: the events a write stages (`$identify`, `$groupidentify`, `$groups`).
//! - `codegen`: what generated code builds on ([`SqlSet`], [`ModelSql`], [`ChangeMask`],
//!   [`milestone_condition`]).
//! - `auto_increment`: MySQL's check that a `generated` key is AUTO_INCREMENT.

mod auto_increment;
mod codegen;
mod stage;
mod traits;

pub use codegen::{ChangeMask, ModelSql, SqlSet, milestone_condition};
pub use stage::stage_insert_event_detached;
pub(crate) use stage::with_groups;
pub use traits::{EventSchema, TrackedModel, TrackedRow};
