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
//! It also serves PostHog's v1 endpoint (`/i/v1/analytics/events`, used with
//! [`CaptureMode::V1`](crate::CaptureMode::V1)): it checks the bearer key and the v1 body,
//! decodes gzip, deflate, br and zstd, records every request with its headers
//! ([`ReceivedRequest::header`]) and answers each event with a verdict. Script verdicts to
//! test your own handling of them:
//!
//! ```no_run
//! # async fn demo() {
//! use posthog_track::testing::{MockPostHog, MockVerdict, Reply};
//! use posthog_track::{CaptureMode, Compression, Tracker};
//!
//! let mock = MockPostHog::start().await;
//! let tracker = Tracker::builder()
//!     .api_key(mock.api_key())
//!     .host(mock.url())
//!     .unwrap()
//!     .capture_mode(CaptureMode::V1)
//!     .compression(Compression::Zstd)
//!     .build();
//! // The next request: its first event is stored, the second must be sent again (after the
//! // answer's Retry-After of 2 s), the third is dropped for good.
//! mock.script([Reply::Verdicts {
//!     verdicts: vec![MockVerdict::Ok, MockVerdict::Retry, MockVerdict::Drop("invalid_event".into())],
//!     retry_after: Some(2),
//! }]);
//! // ... three events, tracker.flush().await ...
//! let requests = mock.requests();
//! assert_eq!(requests[1].header("PostHog-Attempt"), Some("2"));
//! assert_eq!(requests[1].header("PostHog-Request-Id"), requests[0].header("PostHog-Request-Id"));
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
    ApiRequest, MockDefinition, MockPostHog, MockVerdict, ReceivedEvent, ReceivedRequest, Reply,
    WaitTimeout,
};
