//! `cargo run --example quickstart` as a newcomer runs it, with a key and a host.

mod common;

use common::example;
use posthog_track::testing::MockPostHog;

/// A proxy's `user:password@` in POSTHOG_HOST is a secret: the quickstart, which prints where
/// it delivers, shows the host redacted, as every message of the library does.
#[tokio::test(flavor = "multi_thread")]
async fn the_quickstart_never_prints_the_hosts_credentials() {
    let mock = MockPostHog::start().await;
    let host = mock
        .url()
        .replacen("http://", "http://proxy-user:hunter2@", 1);
    let mut command = std::process::Command::new(example("quickstart"));
    command
        .env("POSTHOG_API_KEY", mock.api_key())
        .env("POSTHOG_HOST", &host)
        .env_remove("POSTHOG_DISABLED");
    // Off the runtime's threads: the mock answers the example meanwhile.
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("Delivering to http://(credentials)@127.0.0.1:"),
        "{stdout}"
    );
    assert!(stdout.contains("delivered"), "{stdout}");
    assert!(
        !stdout.contains("hunter2") && !stderr.contains("hunter2"),
        "the proxy's password is printed:\n{stdout}\n{stderr}"
    );
}
