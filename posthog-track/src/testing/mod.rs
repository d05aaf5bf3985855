//! Test helpers, behind the `testing` feature: [`MockPostHog`], a local PostHog for this
//! crate's tests and for yours.

mod mock_server;

pub use mock_server::{
    ApiRequest, MockDefinition, MockPostHog, ReceivedEvent, ReceivedRequest, Reply, WaitTimeout,
};
