//! Test helpers, behind the `testing` feature: [`MockPostHog`], a local PostHog for this
//! crate's tests and for yours. It validates, records and, on request, misbehaves.
//!
//! ```no_run
//! # async fn demo() {
//! use posthog_track::testing::{MockPostHog, Reply};
//! use posthog_track::Tracker;
//!
//! let mock = MockPostHog::start().await;
//! let tracker = Tracker::builder().api_key(mock.api_key()).host(mock.url()).unwrap().build();
//! mock.script([Reply::Status(503), Reply::RetryAfter { status: 429, seconds: 1 }]);
//! // ... tracked writes, tracker.flush().await ...
//! let events = mock.wait_for_events(3, std::time::Duration::from_secs(5)).await.unwrap();
//! # }
//! ```
//!
//! The mock's parts: `state` (the handle, the state every endpoint shares, the records tests
//! read back, HTTP response helpers; a leaf), `capture` (scripted replies, batch decoding and
//! validation), `flags` (`/flags` and `/flags/definitions`), `app_api` (the event and property
//! definitions API), each with its `MockPostHog` methods, and `server` (listener and routing).

mod app_api;
mod capture;
mod flags;
mod server;
mod state;

pub use state::{
    ApiRequest, MockDefinition, MockPostHog, ReceivedEvent, ReceivedRequest, Reply, WaitTimeout,
};
