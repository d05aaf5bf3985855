//! The `posthog-track` command as an operator meets it. (Being an integration test of this
//! package also makes `cargo test --workspace` build the binary, which the fault matrix in
//! `tests/faults.rs` runs as separate relay processes.)

use std::process::Command;

fn command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_posthog-track"));
    command
        .env_remove("POSTHOG_API_KEY")
        .env_remove("POSTHOG_DISABLED")
        .env("RUST_LOG", "off");
    command
}

fn scratch_database(name: &str) -> (std::path::PathBuf, String) {
    let dir = std::env::temp_dir().join(format!("posthog-track-cli-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite:{}?mode=rwc", dir.join("app.db").display());
    (dir, url)
}

/// Runs `args` with `--database-url` on a fresh SQLite database; the run must fail. Returns
/// what it said on stderr.
fn failing_stderr(name: &str, args: &[&str]) -> String {
    let (dir, url) = scratch_database(name);
    let output = command()
        .args(args)
        .args(["--database-url", &url])
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(dir);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "{stderr}");
    stderr
}

#[test]
fn a_relay_without_a_key_refuses_and_exits_non_zero() {
    let stderr = failing_stderr("keyless", &["relay"]);
    assert!(stderr.contains("no POSTHOG_API_KEY"), "{stderr}");
}

#[test]
fn a_missing_outbox_says_how_to_create_it() {
    let stderr = failing_stderr("missing", &["outbox", "status"]);
    assert!(stderr.contains("tracker.migrate(&pool)"), "{stderr}");
}

#[test]
fn outbox_migrate_creates_the_tables_records_the_version_and_is_idempotent() {
    let (dir, url) = scratch_database("migrate");
    for _ in 0..2 {
        let output = command()
            .args(["outbox", "migrate", "--database-url", &url])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{stdout} {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            stdout.contains(&format!(
                "outbox schema version {}",
                posthog_track::outbox::SCHEMA_VERSION
            )),
            "{stdout}"
        );
    }
    let output = command()
        .args(["outbox", "status", "--database-url", &url])
        .output()
        .unwrap();
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("pending: 0"));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn doctor_fails_a_broken_set_up_and_says_why_in_json() {
    let (dir, url) = scratch_database("doctor");
    // A closed port: nothing answers there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let output = command()
        .args(["doctor", "--json", "--timeout", "2", "--database-url", &url])
        .env("POSTHOG_API_KEY", "phx_a_personal_key_0123")
        .env("POSTHOG_HOST", format!("http://{closed}"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "{stdout}");
    let diagnosis: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(diagnosis["healthy"], false);
    let verdict = |name: &str| {
        diagnosis["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|check| check["check"] == name)
            .map(|check| check["verdict"].as_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    assert_eq!(verdict("project key"), "fail");
    assert_eq!(verdict("host answers"), "fail");
    assert_eq!(verdict("database"), "ok");
    assert_eq!(verdict("outbox table"), "fail");
    assert!(!stdout.contains("a_personal_key_0123"), "{stdout}");
    let _ = std::fs::remove_dir_all(dir);
}

/// `--help` is where an operator looks up an option: each one says what it is, beyond the
/// environment variable or default clap adds.
#[test]
fn every_option_of_every_command_is_explained_in_its_help() {
    let commands: [&[&str]; 8] = [
        &["relay"],
        &["doctor"],
        &["outbox", "migrate"],
        &["outbox", "status"],
        &["outbox", "purge"],
        &["outbox", "requeue"],
        &["plan", "show"],
        &["plan", "push"],
    ];
    let mut unexplained = Vec::new();
    for path in commands {
        let output = command().args(path).arg("--help").output().unwrap();
        let help = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(output.status.success(), "{help}");
        // An option's line is its flags, then (after two spaces) its text, or its text on the
        // lines below when clap puts it there.
        let mut options: Vec<(String, String)> = Vec::new();
        for line in help.lines().skip_while(|line| *line != "Options:").skip(1) {
            let line = line.trim_start();
            if line.starts_with('-') {
                let (flags, text) = line.split_once("  ").unwrap_or((line, ""));
                options.push((flags.to_owned(), text.to_owned()));
            } else if let Some((_, text)) = options.last_mut() {
                text.push(' ');
                text.push_str(line);
            }
        }
        assert!(!options.is_empty(), "no options in {help}");
        for (flags, text) in options {
            // What clap adds by itself does not explain the option.
            let mut explained = text.clone();
            while let Some(start) = explained.find('[') {
                let end = explained[start..]
                    .find(']')
                    .map_or(explained.len(), |end| start + end + 1);
                explained.replace_range(start..end, "");
            }
            if explained.trim().is_empty() {
                unexplained.push(format!("{} {flags}", path.join(" ")));
            }
        }
    }
    assert!(
        unexplained.is_empty(),
        "options without help: {unexplained:?}"
    );
}

/// The doctor's advice on a missing outbox is a command to copy: run as given (the database
/// named only by --database-url, not DATABASE_URL), it must create the outbox, not fail for
/// want of the URL.
#[test]
fn the_doctors_outbox_advice_runs_as_given() {
    let (dir, url) = scratch_database("doctor-advice");
    let output = command()
        .env_remove("DATABASE_URL")
        .args(["doctor", "--json", "--timeout", "1", "--database-url", &url])
        .env("POSTHOG_HOST", "http://127.0.0.1:9")
        .output()
        .unwrap();
    let diagnosis: serde_json::Value =
        serde_json::from_str(&String::from_utf8_lossy(&output.stdout)).unwrap();
    let detail = diagnosis["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|check| check["check"] == "outbox table")
        .map(|check| check["detail"].as_str().unwrap().to_owned())
        .unwrap();
    let advice = detail
        .split('`')
        .find(|part| part.starts_with("posthog-track outbox migrate"))
        .unwrap_or_else(|| panic!("no command in {detail:?}"))
        .replace("<the same URL>", &url);
    let output = command()
        .env_remove("DATABASE_URL")
        .args(advice.split_whitespace().skip(1))
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(dir);
    assert!(
        output.status.success(),
        "`{advice}` failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `--metrics-addr localhost:9464` is what many would type; it is refused (the address is
/// bound, not resolved), and the refusal must say what to give instead, not only "invalid
/// socket address syntax".
#[test]
fn a_metrics_address_given_as_a_host_name_says_what_to_give() {
    let output = command()
        .args(["relay", "--database-url", "sqlite:unused.db"])
        .args(["--metrics-addr", "localhost:9464"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("an IP address and a port") && stderr.contains("127.0.0.1:9464"),
        "{stderr}"
    );
}
