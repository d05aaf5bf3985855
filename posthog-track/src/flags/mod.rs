//! Feature flags, evaluated locally from the definitions PostHog serves at
//! `/flags/definitions`, with PostHog's own algorithm: SHA-1 bucketing, rollout percentages,
//! multivariate variants, conditions in stored order, `early_exit`, and the property operators.
//!
//! The evaluator needs no network and no tracker:
//!
//! ```
//! use posthog_track::flags::{FlagValue, LocalEvaluator};
//!
//! let definitions = r#"{"flags": [{"key": "new-editor", "active": true,
//!     "filters": {"groups": [{"properties": [], "rollout_percentage": 100}]}}]}"#;
//! let evaluator = LocalEvaluator::from_json(definitions).unwrap();
//! assert_eq!(evaluator.evaluate("new-editor", "user-1").unwrap(), FlagValue::Enabled(true));
//! ```
//!
//! When local data cannot decide (a property the caller did not supply, a cohort or a flag
//! dependency this evaluator does not resolve), evaluation returns
//! [`FlagError::Inconclusive`]: the caller should then ask PostHog (remote evaluation), never
//! guess.

// Layers, each importing only those above it: definitions -> value -> request -> operators
// -> evaluate -> http -> {remote, poller, exposure} -> api (the `impl Tracker` block) ->
// routing.
mod api;
mod decisions;
mod definitions;
mod evaluate;
mod exposure;
mod http;
mod operators;
mod poller;
mod remote;
mod request;
pub(crate) mod routing;
mod value;

pub(crate) use decisions::RoutingState;
pub use definitions::{Condition, FlagDefinition, PropertyFilter, Variant};
pub use evaluate::LocalEvaluator;
pub(crate) use exposure::ExposureCache;
pub(crate) use poller::{DefinitionsCache, DefinitionsClient};
pub(crate) use remote::RemoteFlags;
pub use request::{FlagsRequest, FlagsSnapshot};
pub use routing::{FlagRouted, routed_table};
pub use value::{FlagError, FlagValue, Properties};
