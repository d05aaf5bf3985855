//! Operating it (issue #17): every metric of the table emitted by its scenario, `doctor`
//! finding each misconfiguration, the relay command's `/metrics` and `/healthz` over HTTP, and
//! the dashboard and alert rules naming only metrics that exist. The tracing spans are checked
//! in `spans.rs`, a process of their own.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use posthog_track::doctor::{Diagnosis, DoctorOptions, Verdict, diagnose};
use posthog_track::flags::LocalEvaluator;
use posthog_track::metrics::{self as names, Kind, TABLE};
use posthog_track::testing::{MockPostHog, Reply};
use posthog_track::{Backend, Config, Event, Tracker};
use posthog_track_tests::{
    StderrLog, commit_events, database_url, isolated_postgres, on_every_backend, relay_command,
    sqlite_file, tracker_for, unique,
};
use serde_json::json;
use sqlx::Pool;

/// The process-wide debugging recorder (a recorder is global, and the relay and queue run on
/// tasks of their own).
fn snapshotter() -> &'static Snapshotter {
    static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder
            .install()
            .expect("no other recorder in this test binary");
        snapshotter
    })
}

/// A metric's name and labels.
type Series = (String, BTreeSet<(String, String)>);

/// Every (name, labels) emitted so far, with its value.
fn emitted() -> BTreeMap<Series, DebugValue> {
    snapshotter()
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let (_, key) = key.into_parts();
            let labels = key
                .labels()
                .map(|label| (label.key().to_owned(), label.value().to_owned()))
                .collect();
            ((key.name().to_owned(), labels), value)
        })
        .collect()
}

fn has(metrics: &BTreeMap<Series, DebugValue>, name: &str, label: Option<(&str, &str)>) -> bool {
    metrics.keys().any(|(emitted, labels)| {
        emitted == name
            && label.is_none_or(|(key, value)| labels.contains(&(key.to_owned(), value.to_owned())))
    })
}

fn flag_definitions() -> serde_json::Value {
    json!({"flags": [{"key": "beta", "active": true,
        "filters": {"groups": [{"properties": [], "rollout_percentage": 100}]}}]})
}

/// One scenario per row of the table; then every metric of the table has been emitted, with
/// the label value its scenario produces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_in_the_table_is_emitted_by_its_scenario() {
    snapshotter();
    let mock = MockPostHog::start().await;
    let (pool, _url, dir) = sqlite_file("ops-metrics").await;
    let tracker = tracker_for(&mock)
        .outbox_metrics_interval(Duration::from_millis(10))
        .flush_interval(Duration::from_millis(10))
        .flag_definitions(LocalEvaluator::from_json(&flag_definitions().to_string()).unwrap())
        .build();
    tracker.migrate(&pool).await.unwrap();

    // Staged, committed, delivered by the relay (batch size, latency, commit to delivery,
    // relay state, outbox gauges), after one retried request.
    mock.script([Reply::Status(503)]);
    let tag = unique("metrics");
    commit_events(&tracker, &pool, &tag, "ordered", 3, 3).await;
    tracker.flush().await.unwrap();

    // A poison event beside a good one: refused alone while the other is accepted,
    // dead-lettered.
    mock.reject_events_where(|event| event["event"] == "poison");
    let mut tx = tracker.begin(&pool).await.unwrap();
    tx.set_distinct_id(tag.clone());
    tx.capture(Event::new("poison")).unwrap();
    tx.capture(Event::new("beside_the_poison")).unwrap();
    tx.commit().await.unwrap();
    // The background relay or this flush dead-letters it (the flush fails only if it did).
    let _ = tracker.flush().await;
    let started = Instant::now();
    while tracker.outbox(&pool).status().await.unwrap().dead == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the poison event never died"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The in-memory queue: delivered after a retry; flags local and remote, an exposure.
    mock.script([Reply::Status(503)]);
    tracker
        .capture(Event::new("captured").distinct_id(tag.clone()))
        .await
        .unwrap();
    assert!(
        tracker
            .is_feature_enabled("beta", tag.as_str())
            .await
            .unwrap()
    );
    mock.set_remote_flags(
        json!({"flags": {"remote-only": {"key": "remote-only", "enabled": true}}}),
    );
    tracker
        .evaluate_flags({
            let mut request = posthog_track::flags::FlagsRequest::new(tag.clone());
            request.force_remote = true;
            request
        })
        .await
        .unwrap();
    tracker.flush().await.unwrap();

    // A queue of one whose worker is busy with what it sent (a mock that answers after
    // 300 ms): the next events find it full and are dropped as full. (Against a fast mock the
    // worker could keep up and the queue never fill.)
    let slow = posthog_track_tests::slow_mock(Duration::from_millis(300)).await;
    let small = tracker_for(&slow).queue_capacity(1).build();
    let mut full = 0;
    for n in 0..200 {
        if small
            .try_capture(
                Event::new("burst")
                    .distinct_id(tag.clone())
                    .property("n", n),
            )
            .await
            .is_err()
        {
            full += 1;
        }
    }
    assert!(full > 0, "the queue of one filled up");
    small.shutdown(Duration::from_secs(5)).await.unwrap();
    tracker.shutdown(Duration::from_secs(5)).await.ok();

    let metrics = emitted();
    let expected_labels: BTreeMap<&str, (&str, &str)> = [
        (names::EVENTS_DELIVERED, ("path", "outbox")),
        (names::EVENTS_RETRIED, ("path", "outbox")),
        (names::EVENTS_DEAD_LETTERED, ("reason", "refused")),
        (names::EVENTS_DROPPED, ("cause", "queue_full")),
        (names::FLAG_EVALUATIONS, ("source", "local")),
        (names::RELAYS, ("state", "running")),
        (names::REQUEST_DURATION, ("outcome", "delivered")),
    ]
    .into_iter()
    .collect();
    for metric in TABLE {
        let label = expected_labels.get(metric.name).copied();
        assert!(
            has(&metrics, metric.name, label),
            "{} {label:?} was not emitted; emitted: {:#?}",
            metric.name,
            metrics.keys().collect::<Vec<_>>()
        );
    }
    for (name, label) in [
        (names::EVENTS_DELIVERED, ("path", "queue")),
        (names::EVENTS_RETRIED, ("path", "queue")),
        (names::FLAG_EVALUATIONS, ("source", "remote")),
        (names::REQUEST_DURATION, ("outcome", "retry")),
        (names::REQUEST_DURATION, ("outcome", "rejected")),
    ] {
        assert!(has(&metrics, name, Some(label)), "{name} {label:?}");
    }
    // The values tell the scenario's story.
    let counter = |name: &str, label: Option<(&str, &str)>| -> u64 {
        metrics
            .iter()
            .filter(|((emitted, labels), _)| {
                emitted == name
                    && label.is_none_or(|(k, v)| labels.contains(&(k.to_owned(), v.to_owned())))
            })
            .map(|(_, value)| match value {
                DebugValue::Counter(n) => *n,
                _ => 0,
            })
            .sum()
    };
    assert!(counter(names::EVENTS_COMMITTED, None) >= 4);
    assert!(counter(names::EVENTS_DELIVERED, Some(("path", "outbox"))) >= 3);
    assert!(counter(names::EVENTS_DEAD_LETTERED, Some(("reason", "refused"))) >= 1);
    assert!(counter(names::EXPOSURES_SENT, None) >= 1);
    for metric in TABLE.iter().filter(|m| m.kind == Kind::Histogram) {
        let observed = metrics.iter().any(|((name, _), value)| {
            name == metric.name
                && matches!(value, DebugValue::Histogram(values) if !values.is_empty())
        });
        assert!(observed, "{} has no observation", metric.name);
    }
    pool.close().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// The configuration of a tracker aimed at `host` with `api_key`, and a personal key.
fn config_for(api_key: &str, host: &str) -> Config {
    Tracker::builder()
        .api_key(api_key)
        .host(host)
        .unwrap()
        .personal_api_key("phx_personal_key_123")
        .build()
        .config()
        .clone()
}

/// What `doctor` finds, with `options`, for a tracker aimed at `mock` with its key.
async fn diagnose_for(mock: &MockPostHog, options: &DoctorOptions) -> Diagnosis {
    diagnose(&config_for(mock.api_key(), &mock.url()), options).await
}

/// What `doctor` finds, as [`diagnose_for`]: it must not be healthy.
async fn diagnose_unhealthy(mock: &MockPostHog, options: &DoctorOptions) -> Diagnosis {
    let diagnosis = diagnose_for(mock, options).await;
    assert!(!diagnosis.healthy(), "{diagnosis}");
    diagnosis
}

/// What the check `name` of `diagnosis` says.
fn detail<'a>(diagnosis: &'a Diagnosis, name: &str) -> &'a str {
    &diagnosis
        .check(name)
        .unwrap_or_else(|| panic!("no check `{name}`:\n{diagnosis}"))
        .detail
}

fn verdict(diagnosis: &Diagnosis, name: &str) -> Verdict {
    diagnosis
        .check(name)
        .unwrap_or_else(|| panic!("no check `{name}`:\n{diagnosis}"))
        .verdict
}

on_every_backend!(doctor_passes_a_healthy_set_up);

async fn doctor_passes_a_healthy_set_up<DB: Backend>(pool: &Pool<DB>, url: &str) {
    let mock = MockPostHog::start().await;
    mock.set_flag_definitions(flag_definitions());
    Tracker::builder().build().migrate(pool).await.unwrap();
    let diagnosis = diagnose_for(&mock, &DoctorOptions::new().database_url(url)).await;
    // What `posthog-track doctor` prints (the README shows it).
    println!("{diagnosis}");
    assert!(diagnosis.healthy(), "{diagnosis}");
    for name in [
        "mode",
        "project key",
        "personal key",
        "host answers",
        "key accepted",
        "flag definitions",
        "database",
        "outbox table",
        "outbox backlog",
    ] {
        assert_eq!(verdict(&diagnosis, name), Verdict::Ok, "{diagnosis}");
    }
    assert!(mock.events().is_empty(), "the checks send no event");
}

// `doctor --timeout 18446744073709551615` (the largest u64, "no limit"): the checks run, rather
// than the command panicking on adding the timeout to the clock when it opens the pool.
on_every_backend!(doctor_takes_the_largest_timeout);

async fn doctor_takes_the_largest_timeout<DB: Backend>(pool: &Pool<DB>, url: &str) {
    let mock = MockPostHog::start().await;
    Tracker::builder().build().migrate(pool).await.unwrap();
    let options = DoctorOptions::new()
        .database_url(url)
        .timeout(Duration::from_secs(u64::MAX));
    let diagnosis = diagnose_for(&mock, &options).await;
    for name in ["host answers", "key accepted", "database", "outbox table"] {
        assert_eq!(verdict(&diagnosis, name), Verdict::Ok, "{diagnosis}");
    }
}

#[tokio::test]
async fn doctor_finds_a_personal_key_used_as_the_project_key() {
    let mock = MockPostHog::start().await;
    let config = config_for("phx_personal_key_123", &mock.url());
    let diagnosis = diagnose(&config, &DoctorOptions::new()).await;
    assert!(!diagnosis.healthy(), "{diagnosis}");
    assert_eq!(verdict(&diagnosis, "project key"), Verdict::Fail);
    assert_eq!(
        verdict(&diagnosis, "key accepted"),
        Verdict::Fail,
        "PostHog refuses it too"
    );
    let text = format!("{diagnosis}{}", diagnosis.to_json());
    assert!(!text.contains("personal_key_123"), "{text}");
    assert!(text.contains("POSTHOG_PERSONAL_API_KEY"), "{text}");
}

#[tokio::test]
async fn doctor_finds_a_wrong_host() {
    let mock = MockPostHog::start().await;
    // Something answers there, but not as PostHog.
    let wrong = format!("{}/not-posthog", mock.url());
    let diagnosis = diagnose(&config_for(mock.api_key(), &wrong), &DoctorOptions::new()).await;
    assert!(!diagnosis.healthy(), "{diagnosis}");
    assert_eq!(
        verdict(&diagnosis, "host answers"),
        Verdict::Fail,
        "{diagnosis}"
    );
    assert!(detail(&diagnosis, "host answers").contains("404"));
    // And nothing answers there.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let diagnosis = diagnose(
        &config_for(mock.api_key(), &format!("http://{closed}")),
        &DoctorOptions::new().timeout(Duration::from_secs(2)),
    )
    .await;
    assert_eq!(
        verdict(&diagnosis, "host answers"),
        Verdict::Fail,
        "{diagnosis}"
    );
    assert_eq!(verdict(&diagnosis, "key accepted"), Verdict::Skipped);
}

#[tokio::test]
async fn doctor_finds_a_host_answering_with_a_web_page() {
    // A site's catch-all route answers every path with 200 and a page: not PostHog, and a
    // relay aimed there would pause.
    let site = posthog_track_tests::html_site().await;
    assert_the_host_fails_as_a_web_page(&site).await;
}

/// Doctor, aimed at `site`, is unhealthy: its host answers with a web page, not as PostHog.
async fn assert_the_host_fails_as_a_web_page(site: &str) {
    let diagnosis = diagnose(
        &config_for("phc_project_key_123", site),
        &DoctorOptions::new(),
    )
    .await;
    assert!(!diagnosis.healthy(), "{diagnosis}");
    assert_eq!(
        verdict(&diagnosis, "host answers"),
        Verdict::Fail,
        "{diagnosis}"
    );
    assert!(
        detail(&diagnosis, "host answers").contains("web page"),
        "{diagnosis}"
    );
}

#[tokio::test]
async fn doctor_finds_a_host_answering_400_with_a_web_page() {
    // nginx answers plain HTTP sent to its HTTPS port with 400 and a page, to every request:
    // an empty batch gets the 400 PostHog would give it, but a relay aimed there would pause.
    let (site, _) = posthog_track_tests::https_port_site().await;
    assert_the_host_fails_as_a_web_page(&site).await;
}

#[tokio::test]
async fn doctor_says_what_to_check_about_tls_sent_to_a_plain_http_port() {
    let mock = MockPostHog::start().await;
    let host = mock.url().replacen("http://", "https://", 1);
    let diagnosis = diagnose(&config_for(mock.api_key(), &host), &DoctorOptions::new()).await;
    assert_eq!(
        verdict(&diagnosis, "host answers"),
        Verdict::Fail,
        "{diagnosis}"
    );
    let detail = detail(&diagnosis, "host answers");
    assert!(
        detail.contains("POSTHOG_HOST") && detail.contains("plain HTTP"),
        "{diagnosis}"
    );
}

#[tokio::test]
async fn doctor_finds_a_refused_personal_key() {
    let mock = MockPostHog::start().await;
    mock.set_flag_definitions_status(Some(401));
    let diagnosis = diagnose_unhealthy(&mock, &DoctorOptions::new()).await;
    assert_eq!(
        verdict(&diagnosis, "flag definitions"),
        Verdict::Fail,
        "{diagnosis}"
    );
}

#[tokio::test]
async fn doctor_finds_an_unreachable_database_without_showing_its_password() {
    let mock = MockPostHog::start().await;
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let url = format!("postgres://app:hunter2secret@{closed}/app");
    let options = DoctorOptions::new()
        .database_url(url)
        .timeout(Duration::from_secs(3));
    let diagnosis = diagnose_unhealthy(&mock, &options).await;
    assert_eq!(verdict(&diagnosis, "database"), Verdict::Fail);
    assert_eq!(verdict(&diagnosis, "outbox table"), Verdict::Skipped);
    let text = format!("{diagnosis}{}", diagnosis.to_json());
    assert!(!text.contains("hunter2secret"), "{text}");
}

on_every_backend!(doctor_finds_a_missing_outbox_table);

async fn doctor_finds_a_missing_outbox_table<DB: Backend>(_pool: &Pool<DB>, url: &str) {
    let mock = MockPostHog::start().await;
    let diagnosis = diagnose_unhealthy(&mock, &DoctorOptions::new().database_url(url)).await;
    assert_eq!(verdict(&diagnosis, "database"), Verdict::Ok, "{diagnosis}");
    assert_eq!(verdict(&diagnosis, "outbox table"), Verdict::Fail);
    assert!(detail(&diagnosis, "outbox table").contains("posthog-track outbox migrate"));
}

on_every_backend!(doctor_finds_a_large_lag);

async fn doctor_finds_a_large_lag<DB: Backend>(pool: &Pool<DB>, url: &str) {
    let mock = MockPostHog::start().await;
    // Committed, and no relay delivers them.
    let tracker = tracker_for(&mock).external_relay(true).build();
    tracker.migrate(pool).await.unwrap();
    commit_events(&tracker, pool, &unique("lag"), "waiting", 2, 2).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let impatient = DoctorOptions::new()
        .database_url(url)
        .max_lag(Duration::from_millis(500));
    let lagging = diagnose_unhealthy(&mock, &impatient).await;
    assert_eq!(verdict(&lagging, "outbox backlog"), Verdict::Fail);
    assert!(detail(&lagging, "outbox backlog").contains("2 pending"));
    let patient = diagnose_for(&mock, &DoctorOptions::new().database_url(url)).await;
    assert_eq!(
        verdict(&patient, "outbox backlog"),
        Verdict::Ok,
        "{patient}"
    );
}

/// PostgreSQL keeps every delivered (deleted) outbox row as a dead tuple until vacuum runs:
/// `doctor` warns when nothing will (autovacuum off for the server or for the table).
#[tokio::test]
async fn doctor_warns_when_nothing_vacuums_the_outbox() {
    let Some(url) = database_url("POSTGRES_URL") else {
        return;
    };
    let pool = isolated_postgres(&url, "doctor_vacuum").await;
    Tracker::builder().build().migrate(&pool).await.unwrap();
    // The doctor connects by URL: point its session at the same schema.
    let scoped = format!(
        "{url}{}options=-c%20search_path%3Dpt_doctor_vacuum",
        if url.contains('?') { '&' } else { '?' }
    );
    let mock = MockPostHog::start().await;
    let config = config_for(mock.api_key(), &mock.url());
    let options = DoctorOptions::new().database_url(&scoped);

    sqlx::query("ALTER TABLE posthog_outbox SET (autovacuum_enabled = false)")
        .execute(&pool)
        .await
        .unwrap();
    let never = diagnose(&config, &options).await;
    assert_eq!(verdict(&never, "outbox vacuum"), Verdict::Warn, "{never}");
    let detail = detail(&never, "outbox vacuum");
    assert!(detail.contains("VACUUM posthog_outbox"), "{detail}");
    assert!(never.healthy(), "a warning, not a failure: {never}");

    sqlx::query("ALTER TABLE posthog_outbox RESET (autovacuum_enabled)")
        .execute(&pool)
        .await
        .unwrap();
    let server: String = sqlx::query_scalar("SELECT current_setting('autovacuum')")
        .fetch_one(&pool)
        .await
        .unwrap();
    let table_default = diagnose(&config, &options).await;
    let expected = if server == "on" {
        Verdict::Ok
    } else {
        Verdict::Warn
    };
    assert_eq!(
        verdict(&table_default, "outbox vacuum"),
        expected,
        "server autovacuum = {server}: {table_default}"
    );
}

/// In text mode with info logs on, the relay command announces its metrics address once (it
/// printed a plain line and logged the same at info).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_command_announces_its_metrics_address_once() {
    let mock = MockPostHog::start().await;
    let (pool, url, dir) = sqlite_file("ops-announce").await;
    tracker_for(&mock).build().migrate(&pool).await.unwrap();
    let log = StderrLog::new("ops-announce.log");
    let relay = relay_command(&url, &mock, "posthog_track=info")
        .args(["--metrics-addr", "127.0.0.1:0"])
        .stderr(log.file())
        .spawn()
        .unwrap();
    let relay = KillOnDrop(relay);
    // "relaying ..." comes after the address is announced.
    let said = log
        .wait_for("relaying posthog_outbox", Duration::from_secs(30))
        .await;
    assert!(
        said.contains("relaying posthog_outbox"),
        "the relay never started:\n{said}"
    );
    let announced = said
        .lines()
        .filter(|line| line.contains("serving /metrics and /healthz"))
        .count();
    assert_eq!(announced, 1, "{said}");
    drop(relay);
    pool.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A relay command stopped with events it could not deliver says once, with their count,
/// that they wait in the outbox: with text logs at info it said so twice, as the library's
/// log line ("posthog-track stopped; events wait in the outbox ...") and as its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_command_says_once_what_waits_in_the_outbox() {
    let mock = MockPostHog::start().await;
    let (pool, url, dir) = sqlite_file("ops-left").await;
    let tracker = tracker_for(&mock).external_relay(true).build();
    tracker.migrate(&pool).await.unwrap();
    commit_events(&tracker, &pool, &unique("left"), "left", 3, 3).await;
    // PostHog is down: nothing is delivered before the stop.
    mock.set_outage(Some(Reply::Status(503)));
    let log = std::env::temp_dir().join(unique("ops-left.log"));
    let relay = relay_command(&url, &mock, "posthog_track=info")
        .args(["--shutdown-timeout", "1"])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut relay = KillOnDrop(relay);
    let started = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("relaying")
    {
        assert!(started.elapsed() < Duration::from_secs(30), "never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    std::process::Command::new("kill")
        .args(["-TERM", &relay.0.id().to_string()])
        .status()
        .unwrap();
    while relay.0.try_wait().unwrap().is_none() {
        assert!(started.elapsed() < Duration::from_secs(60), "never stopped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let said = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    let waiting: Vec<&str> = said
        .lines()
        .filter(|line| line.contains("wait in the outbox"))
        .collect();
    assert_eq!(waiting.len(), 1, "{said}");
    assert!(waiting[0].contains("3 event(s)"), "{said}");
    pool.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The relay command, run as operators run it: `/metrics` and `/healthz` over HTTP, healthy
/// while it delivers, unhealthy once paused on a configuration error, and a clean stop on
/// SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_command_serves_metrics_and_health_over_http() {
    let mock = MockPostHog::start().await;
    let (pool, url, dir) = sqlite_file("ops-relay").await;
    let tracker = tracker_for(&mock).external_relay(true).build();
    tracker.migrate(&pool).await.unwrap();
    let tag = unique("served");
    commit_events(&tracker, &pool, &tag, "served", 5, 5).await;

    let log = StderrLog::new("ops-relay.log");
    let relay = relay_command(&url, &mock, "posthog_track=info")
        .args(["--metrics-addr", "127.0.0.1:0"])
        .args(["--log-format", "json", "--shutdown-timeout", "2"])
        .stderr(log.file())
        .spawn()
        .unwrap();
    let mut relay = KillOnDrop(relay);
    let relay = &mut relay.0;
    let said = log
        .wait_for("serving /metrics and /healthz", Duration::from_secs(30))
        .await;
    // JSON logs: the address is the `bound` field of the line that announces it.
    let address = said
        .lines()
        .find_map(|line| {
            let parsed: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}"));
            (parsed["fields"]["message"] == "serving /metrics and /healthz")
                .then(|| format!("http://{}", parsed["fields"]["bound"].as_str().unwrap()))
        })
        .unwrap_or_else(|| panic!("no address announced:\n{said}"));
    mock.wait_for_events(5, Duration::from_secs(20))
        .await
        .unwrap();

    let http = reqwest::Client::new();
    let get = |path: &'static str| {
        let http = http.clone();
        let address = address.clone();
        async move {
            let response = http.get(format!("{address}{path}")).send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    let (status, health) = get("/healthz").await;
    assert_eq!(status, 200, "{health}");
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["relay"], "running");
    let (status, text) = get("/metrics").await;
    assert_eq!(status, 200);
    for line in [
        "# TYPE posthog_track_events_delivered_total counter",
        "posthog_track_events_delivered_total{path=\"outbox\"} 5",
        "posthog_track_request_duration_seconds_bucket{outcome=\"delivered\"",
        "posthog_track_relays{state=\"running\"} 1",
    ] {
        assert!(text.contains(line), "{line} missing from:\n{text}");
    }

    // A wrong key from now on: the relay pauses, and /healthz says so.
    mock.set_outage(Some(Reply::Status(401)));
    commit_events(&tracker, &pool, &tag, "held", 1, 1).await;
    let started = Instant::now();
    let health = loop {
        let (status, body) = get("/healthz").await;
        if status == 503 {
            break body;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "never unhealthy: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["relay"], "paused", "{health}");
    let (_, text) = get("/metrics").await;
    assert!(
        text.contains("posthog_track_relays{state=\"paused\"} 1"),
        "{text}"
    );

    // SIGTERM: a clean stop within the deadline.
    let stopping = Instant::now();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &relay.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = loop {
        if let Some(status) = relay.try_wait().unwrap() {
            break status;
        }
        assert!(
            stopping.elapsed() < Duration::from_secs(10),
            "still running after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
    let said = log.text();
    assert!(
        said.lines()
            .any(|line| line.starts_with('{') && line.contains("\"level\"")),
        "JSON log lines:\n{said}"
    );
    assert_eq!(
        tracker.outbox(&pool).status().await.unwrap().pending,
        1,
        "the held event waits"
    );
    pool.close().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// A child process that a failing test does not leave behind.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Every `posthog_track_*` name in the dashboard and the alert rules is a metric of the
/// table (histograms with Prometheus's `_bucket`, `_sum` and `_count` series).
#[test]
fn the_dashboard_and_alerts_name_only_metrics_that_exist() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let known: BTreeSet<String> = TABLE
        .iter()
        .flat_map(|metric| match metric.kind {
            Kind::Histogram => ["_bucket", "_sum", "_count", ""]
                .iter()
                .map(|suffix| format!("{}{suffix}", metric.name))
                .collect::<Vec<_>>(),
            _ => vec![metric.name.to_owned()],
        })
        .collect();
    for file in ["ops/grafana-dashboard.json", "ops/prometheus-alerts.yml"] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let names = metric_names(&text);
        assert!(names.len() >= 3, "{file} names {names:?}");
        for name in &names {
            assert!(
                known.contains(name),
                "{file} names `{name}`, which no metric is"
            );
        }
        for must in [
            names::OUTBOX_OLDEST_PENDING_AGE,
            names::OUTBOX_DEAD,
            names::RELAYS,
        ] {
            assert!(names.contains(must), "{file} lacks {must}");
        }
    }
    serde_json::from_str::<serde_json::Value>(
        &std::fs::read_to_string(root.join("ops/grafana-dashboard.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
}

/// The `posthog_track_...` identifiers in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("posthog_track_") {
        let start = i + at;
        let preceded =
            start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if !preceded {
            names.insert(text[start..end].to_owned());
        }
        i = end;
    }
    names
}

/// The command line says which command fixes a missing outbox or key, and `relay --drain`
/// says what it delivered. (Two workers: the commands block one while the mock answers on the
/// other.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_names_the_fix_and_reports_a_drain() {
    let (pool, url, dir) = sqlite_file("cli_hints").await;
    let mock = MockPostHog::start().await;
    let command = |args: &[&str]| {
        let mut command = std::process::Command::new(posthog_track_tests::posthog_track_binary());
        command
            .args(args)
            .args(["--database-url", url.as_str()])
            .env("POSTHOG_API_KEY", mock.api_key())
            .env("POSTHOG_HOST", mock.url())
            .env_remove("POSTHOG_DISABLED");
        command
    };
    let failed = |mut command: std::process::Command| {
        let output = command.output().unwrap();
        assert!(!output.status.success());
        String::from_utf8_lossy(&output.stderr).into_owned()
    };

    let missing = failed(command(&["outbox", "status"]));
    assert!(
        missing.contains("hint: create it with `posthog-track outbox migrate"),
        "{missing}"
    );
    let mut no_plan = std::process::Command::new(posthog_track_tests::posthog_track_binary());
    no_plan
        .args(["plan", "show", "--plan"])
        .arg(dir.join("no-such-plan.json"));
    let no_plan = failed(no_plan);
    assert!(
        no_plan.contains("hint: the plan file is written by the test")
            && no_plan.contains("POSTHOG_TRACK_UPDATE_PLAN=1"),
        "{no_plan}"
    );
    let mut unreadable = std::process::Command::new(posthog_track_tests::posthog_track_binary());
    unreadable.args([
        "outbox",
        "status",
        "--database-url",
        "postgres://app:s3cr?t@127.0.0.1:9/app",
    ]);
    let unreadable = failed(unreadable);
    assert!(
        unreadable.contains("must be percent-encoded") && !unreadable.contains("s3cr"),
        "{unreadable}"
    );
    let mut keyless = command(&["relay", "--drain"]);
    keyless.env_remove("POSTHOG_API_KEY");
    let keyless = failed(keyless);
    assert!(keyless.contains("hint: set POSTHOG_API_KEY"), "{keyless}");

    let tracker = tracker_for(&mock).external_relay(true).build();
    tracker.migrate(&pool).await.unwrap();
    commit_events(&tracker, &pool, &unique("drain"), "drained", 3, 3).await;
    let output = command(&["relay", "--drain", "--timeout", "30"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.starts_with("drained: 3 event(s) delivered in "),
        "{stdout}"
    );
    assert!(
        stdout.contains("; 0 committed since wait in the outbox"),
        "{stdout}"
    );
    assert_eq!(mock.events().len(), 3);
    pool.close().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// A database password never shows in doctor's report, whatever it holds (`?`, `/`), and
/// neither does a secret query parameter, even percent-encoded.
#[tokio::test]
async fn doctor_never_shows_a_database_password() {
    let mock = MockPostHog::start().await;
    let config = Tracker::builder()
        .api_key(mock.api_key())
        .host(mock.url())
        .unwrap()
        .build()
        .config()
        .clone();
    for url in [
        "postgres://app:s3cr?t@127.0.0.1:9/app",
        "postgres://app:s3cr/t@127.0.0.1:9/app",
        "postgres://app@127.0.0.1:9/app?p%61ssword=s3cr3t",
        "mysql://app@127.0.0.1:9/app?password=s3cr3t",
    ] {
        let options = DoctorOptions::new()
            .database_url(url)
            .timeout(Duration::from_secs(2));
        let diagnosis = diagnose(&config, &options).await;
        let text = format!("{diagnosis}\n{}", diagnosis.to_json());
        assert!(!text.contains("s3cr"), "{url}: {text}");
    }
    // A password that breaks the URL's form is named as the likely cause.
    let options = DoctorOptions::new()
        .database_url("postgres://app:s3cr?t@127.0.0.1:9/app")
        .timeout(Duration::from_secs(2));
    let text = diagnose(&config, &options).await.to_string();
    assert!(text.contains("must be percent-encoded: `%3F`"), "{text}");
}

/// A user name or password the database refuses (SQLSTATE class 28): `doctor` says what to
/// check, as the `relay` and `outbox` commands do; it showed the server's error alone ("role
/// ... does not exist", "Access denied for user ...").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_says_what_to_do_about_refused_credentials() {
    let config = Tracker::builder().build().config().clone();
    for var in ["POSTGRES_URL", "MYSQL_URL"] {
        let Some(url) = database_url(var) else {
            continue;
        };
        // The same server, as a user that does not exist.
        let (scheme, rest) = url.split_once("://").unwrap();
        let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
        let url = format!("{scheme}://posthog_track_no_such_user:hunter2@{host}");
        let options = DoctorOptions::new()
            .database_url(&url)
            .timeout(Duration::from_secs(10));
        let diagnosis = diagnose(&config, &options).await;
        assert_eq!(
            verdict(&diagnosis, "database"),
            Verdict::Fail,
            "{diagnosis}"
        );
        let database = detail(&diagnosis, "database");
        assert!(
            database.contains("the database refused the user name or password"),
            "{var}: {database}"
        );
        let text = format!("{diagnosis}\n{}", diagnosis.to_json());
        assert!(!text.contains("hunter2"), "{var}: {text}");
    }
}

mod hosts {
    use posthog_track::Tracker;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Any `POSTHOG_HOST` is accepted or refused with an error, never a panic.
        #[test]
        fn any_host_is_accepted_or_refused(host in "\\PC{0,60}") {
            let _ = Tracker::builder().host(&host).map(|builder| builder.build());
        }

        /// A password in the host's URL, whatever characters it holds, appears neither in the
        /// error that refuses the host nor in the Debug output of a tracker that accepted it.
        #[test]
        fn a_host_password_never_shows(
            user in "[a-z]{1,8}",
            password in "Zq9[A-Za-z0-9?/#%:!&=.]{4,16}",
            host in "[a-z]{1,10}(\\.[a-z]{2,6}){0,2}",
            tail in "(/[a-z]{0,8})?(\\?[a-z]{1,6}=[a-z0-9]{0,6})?",
        ) {
            let url = format!("https://{user}:{password}@{host}{tail}");
            let shown = match Tracker::builder().host(&url) {
                Ok(builder) => format!("{:?}", builder.build().config()),
                Err(error) => format!("{error} {error:?}"),
            };
            prop_assert!(!shown.contains(&password), "{url}: {shown}");
        }
    }
}

/// the `relay` command's start-up line names the host without the `user:password@`
/// a proxy's POSTHOG_HOST may carry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_start_line_hides_host_credentials() {
    let (pool, url, _dir) = sqlite_file("relay_host").await;
    let mock = MockPostHog::start().await;
    Tracker::builder().build().migrate(&pool).await.unwrap();
    let host = mock
        .url()
        .replacen("http://", "http://relayuser:hunter2pw@", 1);
    let mut child = std::process::Command::new(posthog_track_tests::posthog_track_binary())
        .args(["relay", "--database-url", url.as_str()])
        .env("POSTHOG_API_KEY", mock.api_key())
        .env("POSTHOG_HOST", &host)
        .env_remove("POSTHOG_DISABLED")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    child.kill().unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("relaying"), "{stderr}");
    assert!(!stderr.contains("hunter2pw"), "{stderr}");
}

/// clap prints the current value of an `env = ...` argument in `--help`: a POSTHOG_HOST with
/// credentials (a proxy's `user:password@`) and a DATABASE_URL's password were shown.
#[test]
fn the_command_line_help_does_not_print_secrets_from_the_environment() {
    let binary = posthog_track_tests::posthog_track_binary();
    for args in [
        vec!["plan", "push", "--help"],
        vec!["relay", "--help"],
        vec!["doctor", "--help"],
        vec!["outbox", "migrate", "--help"],
        vec!["outbox", "status", "--help"],
        vec!["outbox", "purge", "--help"],
        vec!["outbox", "requeue", "--help"],
    ] {
        let output = std::process::Command::new(&binary)
            .args(&args)
            .env("POSTHOG_HOST", "https://deploy:hunter2pw@posthog.internal")
            .env("DATABASE_URL", "postgres://app:s3cretdbpw@db.internal/app")
            .env("POSTHOG_PROJECT_ID", "1")
            .output()
            .unwrap();
        let shown = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{shown}");
        assert!(
            !shown.contains("hunter2pw") && !shown.contains("s3cretdbpw"),
            "`posthog-track {}` prints a secret:\n{shown}",
            args.join(" ")
        );
    }
}

// Flag definitions are loaded with `Authorization: Bearer`; through a host with credentials
// the tracker refuses to load them, and doctor says so instead of sending two Authorization
// headers (it reported whatever the server made of them).
#[tokio::test]
async fn doctor_finds_a_host_with_credentials_for_flag_definitions() {
    let mock = MockPostHog::start().await;
    let host = posthog_track_tests::with_credentials(&mock.url());
    let diagnosis = diagnose(&config_for(mock.api_key(), &host), &DoctorOptions::new()).await;
    assert_eq!(
        verdict(&diagnosis, "flag definitions"),
        Verdict::Fail,
        "{diagnosis}"
    );
    assert!(detail(&diagnosis, "flag definitions").contains("credentials"));
    let text = format!("{diagnosis}{}", diagnosis.to_json());
    assert!(!text.contains("hunter2pw"), "{text}");
    assert!(mock.flag_definitions_requests().is_empty());
    assert_eq!(
        verdict(&diagnosis, "host"),
        Verdict::Ok,
        "v0 sends Basic auth: fine"
    );

    // Capture v1 authenticates with Bearer too: the relay would send nothing.
    let config = Tracker::builder()
        .api_key(mock.api_key())
        .host(&host)
        .unwrap()
        .capture_mode(posthog_track::CaptureMode::V1)
        .build()
        .config()
        .clone();
    let diagnosis = diagnose(&config, &DoctorOptions::new()).await;
    assert_eq!(verdict(&diagnosis, "host"), Verdict::Fail, "{diagnosis}");
    assert!(detail(&diagnosis, "host").contains("capture v1"));
    assert!(!format!("{diagnosis}").contains("hunter2pw"));
}

/// The command runs against databases that require TLS (managed PostgreSQL services do): it
/// was built without TLS in sqlx, so `sslmode=require` failed with "SQLx was built without TLS
/// support" and the relay could not run there at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_connects_over_tls() {
    let Some(url) = database_url("POSTGRES_URL") else {
        return;
    };
    let pool = isolated_postgres(&url, "cli_tls").await;
    let ssl: String = sqlx::query_scalar("SHOW ssl")
        .fetch_one(&pool)
        .await
        .unwrap();
    if ssl != "on" {
        eprintln!("note: this PostgreSQL server has ssl off; skipping the TLS connection");
        return;
    }
    let mock = MockPostHog::start().await;
    tracker_for(&mock).build().migrate(&pool).await.unwrap();
    let tls_url = format!(
        "{}&sslmode=require",
        posthog_track_tests::with_search_path(&url, "pt_cli_tls")
    );
    let output = std::process::Command::new(posthog_track_tests::posthog_track_binary())
        .args(["outbox", "status", "--database-url", tls_url.as_str()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("pending: 0"),
        "{stderr}"
    );
}

/// A database URL whose server does not answer (a closed port, a wrong host): the command says
/// why (the connection was refused) and what to check, at once, rather than "pool timed out
/// while waiting for an open connection" after 30 s; and never the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_says_why_the_database_does_not_connect() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    for scheme in ["postgres", "mysql"] {
        let url = format!("{scheme}://app:hunter2@127.0.0.1:{closed}/app");
        let output = std::process::Command::new(posthog_track_tests::posthog_track_binary())
            .args(["outbox", "status", "--database-url", &url])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("refused") && !stderr.contains("pool timed out"),
            "{stderr}"
        );
        assert!(stderr.contains("hint: check the host and port"), "{stderr}");
        assert!(!stderr.contains("hunter2"), "{stderr}");
    }
}

/// A user name or password the server refuses: the error ("role ... does not exist", "Access
/// denied for user ...") came with no hint, where every other connection failure says what to
/// check in --database-url.
#[test]
fn the_command_line_says_what_to_do_about_refused_credentials() {
    for var in ["POSTGRES_URL", "MYSQL_URL"] {
        let Some(url) = database_url(var) else {
            continue;
        };
        // The same server, as a user that does not exist.
        let (scheme, rest) = url.split_once("://").unwrap();
        let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
        let url = format!("{scheme}://posthog_track_no_such_user:hunter2@{host}");
        let output = std::process::Command::new(posthog_track_tests::posthog_track_binary())
            .args(["outbox", "status", "--database-url", &url])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{var}: {stderr}");
        assert!(
            stderr.contains("hint: the database refused the user name or password"),
            "{var}: {stderr}"
        );
        assert!(!stderr.contains("hunter2"), "{var}: {stderr}");
    }
}

/// A SQLite file that does not exist (a typo in the path, or the app's database not created
/// yet): "unable to open database file" alone, with no hint, left the operator guessing.
#[test]
fn the_command_line_says_what_to_do_about_a_missing_sqlite_file() {
    let missing = std::env::temp_dir()
        .join(posthog_track_tests::unique("no-such-dir"))
        .join("app.db");
    let output = std::process::Command::new(posthog_track_tests::posthog_track_binary())
        .args(["outbox", "status", "--database-url"])
        .arg(format!("sqlite:{}", missing.display()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("hint: check the SQLite file's path in --database-url"),
        "{stderr}"
    );
    assert!(!missing.exists(), "the command created a database");
}

/// `sslmode=require` against a server that offers no TLS: the hint named the host and port
/// (a network error's), not the TLS settings that are what is wrong.
#[test]
fn the_command_line_says_what_to_do_about_a_failed_tls_handshake() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // A PostgreSQL server without TLS: it answers the SSLRequest with `N`.
    let server = std::thread::spawn(move || {
        let (mut socket, _) = listener.accept().unwrap();
        let mut request = [0u8; 8];
        socket.read_exact(&mut request).unwrap();
        socket.write_all(b"N").unwrap();
    });
    let output = std::process::Command::new(posthog_track_tests::posthog_track_binary())
        .args(["outbox", "status", "--database-url"])
        .arg(format!(
            "postgres://app:hunter2@127.0.0.1:{port}/app?sslmode=require"
        ))
        .output()
        .unwrap();
    server.join().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("hint: the TLS handshake with the database failed: check the sslmode"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

/// `--log-format json` promises one JSON object per line on stderr, for log collectors: the
/// relay's own lines (relaying, serving, stopping) and a failed command's error and hint were
/// plain text among them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_json_on_every_line() {
    let (pool, url, dir) = sqlite_file("json_lines").await;
    let mock = MockPostHog::start().await;
    Tracker::builder().build().migrate(&pool).await.unwrap();
    let log = StderrLog::new("json-lines.log");
    let mut relay = relay_command(&url, &mock, "posthog_track=info")
        .args(["--log-format", "json", "--metrics-addr", "127.0.0.1:0"])
        .stderr(log.file())
        .spawn()
        .unwrap();
    log.wait_for("relaying", Duration::from_secs(60)).await;
    std::process::Command::new("kill")
        .args(["-TERM", &relay.id().to_string()])
        .status()
        .unwrap();
    let status = relay.wait().unwrap();
    let mut failed = std::process::Command::new(posthog_track_tests::posthog_track_binary());
    failed.args(["--log-format", "json", "outbox", "status", "--database-url"]);
    failed.arg(format!(
        "sqlite:{}",
        dir.join("missing").join("app.db").display()
    ));
    let failed = failed.output().unwrap();
    let text = format!("{}{}", log.text(), String::from_utf8_lossy(&failed.stderr));
    assert!(status.success(), "{text}");
    assert!(!failed.status.success(), "{text}");
    assert!(text.contains("relaying") && text.contains("hint"), "{text}");
    for line in text.lines() {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "not JSON: {line}\n{text}"
        );
    }
    pool.close().await;
    let _ = std::fs::remove_dir_all(dir);
}

// `outbox requeue --id N` with an id no dead event has (a mistyped id) printed `requeued: 0`
// and succeeded: the operator was never told. It now says which ids no dead event has, and
// nothing else, exits non-zero, and requeues nothing, not even the ids that are dead.

on_every_backend!(requeue_of_an_unknown_id_says_so);

async fn requeue_of_an_unknown_id_says_so<DB: Backend>(pool: &Pool<DB>, url: &str) {
    let mock = MockPostHog::start().await;
    mock.reject_events_where(|event| event["event"] == "poison");
    let tracker = tracker_for(&mock).external_relay(true).build();
    tracker.migrate(pool).await.unwrap();
    let mut tx = tracker.begin(pool).await.unwrap();
    tx.set_distinct_id(unique("requeue_unknown"));
    tx.capture(Event::new("poison")).unwrap();
    // Accepted in the same round, so the refusal is the event's fault: it is dead-lettered.
    tx.capture(Event::new("delivered")).unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        tracker.relay(pool.clone()).run_once().await.unwrap().dead,
        1
    );
    let dead = tracker.outbox(pool).events().await.unwrap()[0].id;
    let missing = dead + 1000;
    let requeue = |ids: &[i64]| {
        let mut command = std::process::Command::new(posthog_track_tests::posthog_track_binary());
        command.args(["outbox", "requeue", "--database-url", url]);
        for id in ids {
            command.args(["--id", &id.to_string()]);
        }
        let output = command.env_remove("POSTHOG_API_KEY").output().unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let still_dead = || async { tracker.outbox(pool).status().await.unwrap().dead };

    let (ok, out, err) = requeue(&[missing]);
    assert!(!ok, "a mistyped id is not a success: {out}{err}");
    assert!(
        err.contains(&format!("no dead event has id {missing}")),
        "{out}{err}"
    );
    assert!(!out.contains("requeued"), "{out}");

    let (ok, out, err) = requeue(&[dead, missing, missing + 1]);
    assert!(!ok, "{out}{err}");
    // Only the unknown ids, not the dead one.
    assert_eq!(
        err.lines().next().unwrap_or_default(),
        format!(
            "error: no dead event has id {missing} or {}: nothing was requeued",
            missing + 1
        ),
        "{out}{err}"
    );
    assert_eq!(still_dead().await, 1, "nothing requeued: {out}{err}");

    let (ok, out, err) = requeue(&[dead]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("requeued: 1"), "{out}{err}");
    assert_eq!(still_dead().await, 0);
}

/// `posthog-track outbox status | head -1`: a reader that goes away before the command has
/// written everything. The command panicked (`println!` on the broken pipe), printing a panic
/// message and backtrace into the operator's terminal and exiting 101.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_goes_away_does_not_panic_the_command() {
    let (pool, url, _dir) = sqlite_file("ops-pipe").await;
    Tracker::builder().build().migrate(&pool).await.unwrap();
    for command in [
        vec!["outbox", "status"],
        vec!["outbox", "migrate"],
        vec!["outbox", "purge"],
        vec!["outbox", "requeue"],
        vec!["doctor"],
    ] {
        let mut child = std::process::Command::new(posthog_track_tests::posthog_track_binary())
            .args(&command)
            .args(["--database-url", url.as_str()])
            .env_remove("POSTHOG_API_KEY")
            .env_remove("POSTHOG_DISABLED")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // The reader is gone before the command, which connects to the database first,
        // writes its first line.
        drop(child.stdout.take());
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.contains("panicked"), "{command:?}: {stderr}");
        assert_ne!(output.status.code(), Some(101), "{command:?}: {stderr}");
    }
    pool.close().await;
}

/// `/healthz` while the outbox cannot be read (a migration's lock, `VACUUM FULL`, a database
/// that stopped answering): it waited for the database as long as the database made it, without
/// end for a lock, so a probe got no answer at all, never the documented 503 naming the
/// outbox (and a database gone away held it for the pool's 30 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_while_the_outbox_is_locked() {
    let Some(url) = database_url("POSTGRES_URL") else {
        return;
    };
    let pool = isolated_postgres(&url, "health_locked").await;
    let url = posthog_track_tests::with_search_path(&url, "pt_health_locked");
    let mock = MockPostHog::start().await;
    Tracker::builder().build().migrate(&pool).await.unwrap();
    let log = StderrLog::new("health-locked.log");
    let relay = relay_command(&url, &mock, "posthog_track=warn")
        .args(["--metrics-addr", "127.0.0.1:0", "--shutdown-timeout", "1"])
        .stderr(log.file())
        .spawn()
        .unwrap();
    let mut relay = KillOnDrop(relay);
    let said = log
        .wait_for("serving /metrics and /healthz on ", Duration::from_secs(30))
        .await;
    let address = said
        .lines()
        .find_map(|line| line.strip_prefix("serving /metrics and /healthz on "))
        .unwrap_or_else(|| panic!("no address announced:\n{said}"))
        .trim()
        .to_owned();
    let mut locker = pool.acquire().await.unwrap();
    for statement in [
        "BEGIN",
        "LOCK TABLE posthog_outbox IN ACCESS EXCLUSIVE MODE",
    ] {
        sqlx::query(statement).execute(&mut *locker).await.unwrap();
    }
    let answer = reqwest::Client::new()
        .get(format!("{address}/healthz"))
        .timeout(Duration::from_secs(30))
        .send()
        .await;
    sqlx::query("ROLLBACK").execute(&mut *locker).await.unwrap();
    let answer = answer.unwrap_or_else(|error| panic!("/healthz did not answer: {error}"));
    let status = answer.status().as_u16();
    let health = answer.text().await.unwrap();
    assert_eq!(status, 503, "{health}");
    assert!(health.contains("the outbox cannot be read"), "{health}");
    let _ = relay.0.kill();
    let _ = relay.0.wait();
}
