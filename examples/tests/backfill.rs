//! `cargo run --example backfill` with a key and a PostHog that does not answer.

mod common;

use std::time::{Duration, Instant};

use common::example;

/// PostHog unreachable (a closed port): the backfill stages its events, and the run ends with
/// the error's message and a hint, as the quickstart's does; it ended in a raw `Debug` dump
/// (`Error: Timeout { waited: 30.0s, pending: 20, reason: "..." }`).
#[test]
fn the_backfill_example_says_what_to_do_when_posthog_is_unreachable() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let started = Instant::now();
    let output = std::process::Command::new(example("backfill"))
        .env("POSTHOG_API_KEY", "phc_example")
        .env("POSTHOG_HOST", format!("http://127.0.0.1:{closed}"))
        .env("BACKFILL_USERS", "10")
        .env_remove("POSTHOG_DISABLED")
        .output()
        .unwrap();
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stdout}\n{stderr}");
    assert!(
        !stderr.contains("Timeout {") && !stderr.contains("Error: "),
        "a Debug dump:\n{stderr}"
    );
    let last: Vec<&str> = stderr.lines().rev().take(2).collect();
    assert!(
        last[1].starts_with("error: gave up waiting for delivery") && last[0].starts_with("hint: "),
        "{stderr}"
    );
    assert!(took < Duration::from_secs(25), "took {took:?}");
}
