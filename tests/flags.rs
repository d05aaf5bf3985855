//! Local flag evaluation against PostHog's cross-SDK consistency vectors (posthog-python's
//! `TestConsistency`): 1,000 distinct ids for a 45 % rollout and 1,000 for a 55 % multivariate
//! flag with variants 50/20/20/5/5 must get exactly the values every PostHog SDK gives them.

use std::collections::HashMap;

use posthog_track::flags::{FlagError, FlagValue, LocalEvaluator, Properties};
use serde_json::{Value, json};

fn vectors(file: &str) -> Value {
    let path = format!("{}/data/{file}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn expected(value: &Value) -> FlagValue {
    match value {
        Value::Bool(enabled) => FlagValue::Enabled(*enabled),
        Value::String(variant) => FlagValue::Variant(variant.clone()),
        other => panic!("unexpected vector value {other}"),
    }
}

/// Evaluates `flag` for `distinct_id_0` .. `distinct_id_999` and compares with the vectors.
fn assert_matches_vectors(flag: Value, vectors_file: &str) {
    let key = flag["key"].as_str().unwrap().to_owned();
    let evaluator = LocalEvaluator::from_json(&json!({ "flags": [flag] }).to_string()).unwrap();
    let results = vectors(vectors_file)["results"].as_array().unwrap().clone();
    assert_eq!(results.len(), 1000);
    let mismatches: Vec<usize> = (0..1000)
        .filter(|&i| {
            evaluator
                .evaluate(&key, &format!("distinct_id_{i}"))
                .unwrap()
                != expected(&results[i])
        })
        .collect();
    assert!(
        mismatches.is_empty(),
        "ids that differ from PostHog: {mismatches:?}"
    );
}

#[test]
fn simple_flag_matches_all_1000_vectors() {
    assert_matches_vectors(
        json!({"id": 1, "key": "simple-flag", "active": true,
            "filters": {"groups": [{"properties": [], "rollout_percentage": 45}]}}),
        "consistency_simple_flag.json",
    );
}

#[test]
fn multivariate_flag_matches_all_1000_vectors() {
    assert_matches_vectors(
        json!({"id": 1, "key": "multivariate-flag", "active": true, "filters": {
            "groups": [{"properties": [], "rollout_percentage": 55}],
            "multivariate": {"variants": [
                {"key": "first-variant", "name": "First Variant", "rollout_percentage": 50},
                {"key": "second-variant", "name": "Second Variant", "rollout_percentage": 20},
                {"key": "third-variant", "name": "Third Variant", "rollout_percentage": 20},
                {"key": "fourth-variant", "name": "Fourth Variant", "rollout_percentage": 5},
                {"key": "fifth-variant", "name": "Fifth Variant", "rollout_percentage": 5}
            ]}
        }}),
        "consistency_multivariate_flag.json",
    );
}

fn person(properties: Value) -> Properties {
    properties.as_object().unwrap().clone()
}

/// `flag` for `distinct_id`, a person with `properties` in no group; it must evaluate.
fn evaluate_for_person(
    evaluator: &LocalEvaluator,
    flag: &str,
    distinct_id: &str,
    properties: Value,
) -> FlagValue {
    evaluator
        .evaluate_with(
            flag,
            distinct_id,
            &person(properties),
            &HashMap::new(),
            &HashMap::new(),
        )
        .unwrap()
}

#[test]
fn conditions_in_order_overrides_early_exit_payloads_and_groups() {
    let evaluator = LocalEvaluator::from_json(
        &json!({
            "group_type_mapping": {"0": "company"},
            "flags": [
                {"key": "beta", "active": true, "filters": {
                    "groups": [
                        {"properties": [{"key": "email", "operator": "icontains", "value": "@posthog.com", "type": "person"}],
                         "rollout_percentage": 100, "variant": "test"},
                        {"properties": [], "rollout_percentage": 0}
                    ],
                    "multivariate": {"variants": [{"key": "control", "rollout_percentage": 50}, {"key": "test", "rollout_percentage": 50}]},
                    "payloads": {"test": "{\"color\": \"blue\"}"}
                }},
                {"key": "gated", "active": true, "filters": {
                    "early_exit": true,
                    "groups": [
                        {"properties": [{"key": "plan", "value": "pro", "type": "person"}], "rollout_percentage": 0},
                        {"properties": [], "rollout_percentage": 100}
                    ]
                }},
                {"key": "off", "active": false, "filters": {"groups": [{"rollout_percentage": 100}]}},
                {"key": "company-flag", "active": true, "filters": {
                    "aggregation_group_type_index": 0,
                    "groups": [{"properties": [{"key": "seats", "operator": "gte", "value": 10, "type": "group"}], "rollout_percentage": 100}]
                }},
                {"key": "cohort-flag", "active": true, "filters": {
                    "groups": [{"properties": [{"key": "id", "value": 42, "type": "cohort"}]}]
                }}
            ]
        })
        .to_string(),
    )
    .unwrap();
    let staff = json!({"email": "ada@PostHog.com"});
    let value = evaluate_for_person(&evaluator, "beta", "u1", staff);
    assert_eq!(
        value,
        FlagValue::Variant("test".into()),
        "the condition's variant override wins"
    );
    assert_eq!(
        evaluator.payload("beta", &value),
        Some(json!({"color": "blue"}))
    );
    let outsider = json!({"email": "bob@example.com"});
    assert_eq!(
        evaluate_for_person(&evaluator, "beta", "u2", outsider),
        FlagValue::Enabled(false)
    );
    assert!(
        matches!(
            evaluator.evaluate("beta", "u3"),
            Err(FlagError::Inconclusive { .. })
        ),
        "email unknown"
    );

    // early_exit: matched properties but out of rollout ends evaluation, even though the next
    // condition would match everyone.
    let pro = json!({"plan": "pro"});
    assert_eq!(
        evaluate_for_person(&evaluator, "gated", "u1", pro),
        FlagValue::Enabled(false)
    );
    let free = json!({"plan": "free"});
    assert_eq!(
        evaluate_for_person(&evaluator, "gated", "u1", free),
        FlagValue::Enabled(true)
    );

    assert_eq!(
        evaluator.evaluate("off", "u1").unwrap(),
        FlagValue::Enabled(false)
    );
    assert!(
        matches!(
            evaluator.evaluate("Off", "u1"),
            Err(FlagError::UnknownFlag(_))
        ),
        "keys are case-sensitive"
    );

    let groups = HashMap::from([("company".to_owned(), "acme".to_owned())]);
    let big = HashMap::from([("company".to_owned(), person(json!({"seats": 12})))]);
    let small = HashMap::from([("company".to_owned(), person(json!({"seats": 3})))]);
    let company_flag = |group_properties| {
        evaluator
            .evaluate_with(
                "company-flag",
                "u1",
                &Properties::new(),
                &groups,
                group_properties,
            )
            .unwrap()
    };
    assert_eq!(company_flag(&big), FlagValue::Enabled(true));
    assert_eq!(company_flag(&small), FlagValue::Enabled(false));
    assert_eq!(
        evaluator.evaluate("company-flag", "u1").unwrap(),
        FlagValue::Enabled(false),
        "no group: off"
    );

    assert!(
        matches!(
            evaluator.evaluate("cohort-flag", "u1"),
            Err(FlagError::Inconclusive { .. })
        ),
        "cohorts need the server"
    );
}

mod client {
    use std::time::Duration;

    use posthog_track::Tracker;
    use posthog_track::flags::{FlagValue, FlagsRequest, FlagsSnapshot, LocalEvaluator};
    use posthog_track::testing::MockPostHog;
    use posthog_track_tests::{events_named, tracker_for};
    use serde_json::json;

    /// Flag `key` for `distinct_id`, read through `tracker`; it must not fail.
    async fn flag(tracker: &Tracker, key: &str, distinct_id: &str) -> Option<FlagValue> {
        tracker.get_feature_flag(key, distinct_id).await.unwrap()
    }

    /// Every flag evaluated for `request` through `tracker`; it must not fail.
    async fn evaluated(tracker: &Tracker, request: FlagsRequest) -> FlagsSnapshot {
        tracker.evaluate_flags(request).await.unwrap()
    }

    /// Every flag evaluated through `tracker` for `u1`, a person on `plan`.
    async fn evaluated_on_plan(tracker: &Tracker, plan: &str) -> FlagsSnapshot {
        evaluated(
            tracker,
            FlagsRequest::new("u1").person_property("plan", plan),
        )
        .await
    }

    /// A tracker builder aimed at `mock` with `local_definitions()`.
    fn with_local_definitions(mock: &MockPostHog) -> posthog_track::TrackerBuilder {
        tracker_for(mock).flag_definitions(local_definitions())
    }

    /// `definitions()`, ready to evaluate locally.
    fn local_definitions() -> LocalEvaluator {
        LocalEvaluator::from_json(&definitions().to_string()).unwrap()
    }

    fn definitions() -> serde_json::Value {
        json!({"flags": [
            {"key": "rollout", "active": true, "filters": {"groups": [{"properties": [], "rollout_percentage": 100}]}},
            {"key": "by-plan", "active": true, "filters": {"groups": [
                {"properties": [{"key": "plan", "value": "pro", "type": "person"}], "rollout_percentage": 100}]}}
        ]})
    }

    #[tokio::test]
    async fn local_first_with_remote_fallback_and_one_exposure_per_value() {
        let mock = MockPostHog::start().await;
        mock.set_flag_definitions(definitions());
        mock.set_remote_flags(
            json!({"flags": {"by-plan": {"key": "by-plan", "enabled": true, "variant": null}}}),
        );
        let tracker = tracker_for(&mock)
            .personal_api_key("phx_personal_key_123")
            .build();
        tracker.load_flag_definitions().await.unwrap();

        // Decided locally: no /flags request.
        for _ in 0..3 {
            let value = flag(&tracker, "rollout", "u1").await;
            assert_eq!(value, Some(FlagValue::Enabled(true)));
        }
        assert!(
            mock.flags_requests().is_empty(),
            "local definitions decided"
        );
        // `plan` unknown locally: PostHog decides.
        let value = flag(&tracker, "by-plan", "u1").await;
        assert_eq!(value, Some(FlagValue::Enabled(true)));
        assert_eq!(
            mock.flags_requests().len(),
            1,
            "inconclusive locally, so asked PostHog"
        );
        assert_eq!(
            mock.flags_requests()[0]["flag_keys_to_evaluate"],
            json!(["by-plan"])
        );
        // Supplying the property lets local evaluation decide.
        let request = FlagsRequest::new("u2").person_property("plan", "pro");
        assert_eq!(
            tracker.get_feature_flag("by-plan", request).await.unwrap(),
            Some(FlagValue::Enabled(true))
        );
        assert_eq!(mock.flags_requests().len(), 1);

        tracker.flush().await.unwrap();
        let exposures = events_named(&mock, "$feature_flag_called");
        assert_eq!(
            exposures.len(),
            3,
            "u1/rollout once, u1/by-plan, u2/by-plan"
        );
        let first = &exposures[0];
        assert_eq!(first.properties["$feature_flag"], "rollout");
        assert_eq!(first.properties["$feature_flag_response"], true);
        assert_eq!(first.properties["$feature/rollout"], true);
        assert_eq!(first.properties["locally_evaluated"], true);
        assert_eq!(exposures[1].properties["locally_evaluated"], false);
    }

    /// PostHog's server SDKs tag an exposure decided by PostHog with what went wrong in the
    /// answer (`$feature_flag_error`: `errors_while_computing_flags`, `quota_limited`,
    /// `flag_missing`, comma-joined) and with the answer's `requestId`, and send the exposure
    /// of a flag PostHog returned no value for, with a null response. Without them, a user
    /// counted as "off" because PostHog failed to compute the flag looked like one PostHog put
    /// in the control group, and a misspelt key left no trace at all.
    #[tokio::test]
    async fn exposures_say_what_went_wrong_in_posthogs_answer() {
        let mock = MockPostHog::start().await;
        let tracker = tracker_for(&mock).build();

        // A clean answer: no error, the request id carried.
        mock.set_remote_flags(json!({
            "flags": {"beta": {"key": "beta", "enabled": true}},
            "errorsWhileComputingFlags": false,
            "requestId": "req-1",
        }));
        assert_eq!(
            flag(&tracker, "beta", "u1").await,
            Some(FlagValue::Enabled(true))
        );
        // Errors while computing: the flag read as off, and said so.
        mock.set_remote_flags(json!({
            "flags": {"beta": {"key": "beta", "enabled": false}},
            "errorsWhileComputingFlags": true,
            "requestId": "req-2",
        }));
        let snapshot = evaluated(&tracker, FlagsRequest::new("u2").only(["beta"])).await;
        assert!(snapshot.errors_while_computing());
        assert_eq!(snapshot.request_id(), Some("req-2"));
        assert_eq!(
            flag(&tracker, "beta", "u2").await,
            Some(FlagValue::Enabled(false))
        );
        // A key PostHog does not know, from a quota-limited project that also had errors.
        mock.set_remote_flags(json!({
            "flags": {},
            "errorsWhileComputingFlags": true,
            "quotaLimited": ["feature_flags"],
        }));
        assert_eq!(flag(&tracker, "bta", "u3").await, None);
        assert_eq!(flag(&tracker, "bta", "u3").await, None);

        tracker.flush().await.unwrap();
        let exposures = events_named(&mock, "$feature_flag_called");
        let of = |distinct_id: &str| {
            let found: Vec<_> = exposures
                .iter()
                .filter(|event| event.distinct_id == distinct_id)
                .collect();
            assert_eq!(
                found.len(),
                1,
                "one exposure for {distinct_id}: {exposures:?}"
            );
            found[0].properties.clone()
        };
        let clean = of("u1");
        assert_eq!(clean["$feature_flag_request_id"], "req-1");
        assert!(clean.get("$feature_flag_error").is_none(), "{clean}");
        let failed = of("u2");
        assert_eq!(failed["$feature_flag_response"], false);
        assert_eq!(
            failed["$feature_flag_error"],
            "errors_while_computing_flags"
        );
        assert_eq!(failed["$feature_flag_request_id"], "req-2");
        let missing = of("u3");
        assert_eq!(missing["$feature_flag"], "bta");
        assert_eq!(missing["$feature_flag_response"], json!(null));
        assert_eq!(missing["$feature/bta"], json!(null));
        assert_eq!(
            missing["$feature_flag_error"],
            "errors_while_computing_flags,quota_limited,flag_missing"
        );
        assert!(
            missing.get("$feature_flag_request_id").is_none(),
            "{missing}"
        );
    }

    #[tokio::test]
    async fn the_poller_uses_etags_backs_off_and_clears_on_402() {
        let mock = MockPostHog::start().await;
        mock.set_flag_definitions(definitions());
        let tracker = tracker_for(&mock)
            .personal_api_key("phx_personal_key_123")
            .build();
        tracker.load_flag_definitions().await.unwrap();
        tracker.load_flag_definitions().await.unwrap();
        let polls = mock.flag_definitions_requests();
        assert_eq!(polls[0], (200, None));
        assert_eq!(polls[1].0, 304, "unchanged definitions are not sent again");
        assert!(polls[1].1.is_some(), "the poll sent If-None-Match");

        mock.set_flag_definitions_status(Some(401));
        tracker.load_flag_definitions().await.unwrap();
        assert!(
            tracker.flag_definitions().is_some(),
            "a refusal keeps the definitions in force"
        );
        mock.set_flag_definitions_status(Some(402));
        tracker.load_flag_definitions().await.unwrap();
        assert!(
            tracker.flag_definitions().is_none(),
            "over quota: flags are cleared"
        );

        mock.set_flag_definitions_status(None);
        tracker
            .start_flag_poller(Duration::from_millis(20))
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while tracker.flag_definitions().is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "the poller reloaded the definitions"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tracker.shutdown(Duration::from_secs(1)).await.unwrap();
    }

    #[tokio::test]
    async fn local_only_never_asks_posthog() {
        let mock = MockPostHog::start().await;
        let tracker = with_local_definitions(&mock)
            .local_evaluation_only(true)
            .build();
        assert_eq!(flag(&tracker, "by-plan", "u1").await, None);
        assert_eq!(flag(&tracker, "missing", "u1").await, None);
        assert!(mock.flags_requests().is_empty());
    }

    #[tokio::test]
    async fn snapshots_are_local_when_definitions_decide_and_remote_otherwise() {
        let mock = MockPostHog::start().await;
        mock.set_remote_flags(json!({"flags": {
            "rollout": {"key": "rollout", "enabled": true},
            "by-plan": {"key": "by-plan", "enabled": false}
        }, "quotaLimited": []}));
        let tracker = with_local_definitions(&mock).build();

        let local = evaluated_on_plan(&tracker, "pro").await;
        assert!(local.is_enabled("rollout") && local.is_enabled("by-plan"));
        assert!(
            mock.flags_requests().is_empty(),
            "every flag decided locally"
        );

        let remote = tracker.evaluate_flags("u1").await.unwrap();
        assert!(remote.is_enabled("rollout") && !remote.is_enabled("by-plan"));
        assert_eq!(
            mock.flags_requests().len(),
            1,
            "`plan` unknown locally: PostHog decides"
        );

        let rollout = tracker.get_feature_flag("rollout", "u1").await.unwrap();
        assert_eq!(
            rollout.as_ref().and_then(FlagValue::variant),
            None,
            "a boolean flag has no variant"
        );
        assert!(tracker.is_feature_enabled("rollout", "u1").await.unwrap());
        assert!(
            !tracker
                .is_feature_enabled("no-such-flag", String::from("u1"))
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn one_undecidable_flag_does_not_empty_the_snapshot() {
        // Local only: the decided flag is there, the undecidable one is reported as such.
        let mock = MockPostHog::start().await;
        let evaluator = local_definitions();
        let tracker = tracker_for(&mock)
            .flag_definitions(evaluator.clone())
            .local_evaluation_only(true)
            .build();
        let snapshot = evaluated(&tracker, FlagsRequest::new("u1")).await;
        assert!(
            snapshot.is_enabled("rollout"),
            "decided locally: {snapshot:?}"
        );
        assert_eq!(snapshot.value("by-plan"), None);
        let undecided: Vec<_> = snapshot.undecided().collect();
        assert_eq!(undecided.len(), 1);
        assert_eq!(undecided[0].0, "by-plan");
        assert!(
            undecided[0].1.contains("plan"),
            "the reason: {}",
            undecided[0].1
        );
        assert!(mock.flags_requests().is_empty());

        // Remote allowed: PostHog is asked for the undecidable flag only.
        mock.set_remote_flags(json!({"flags": {
            "by-plan": {"key": "by-plan", "enabled": true}
        }}));
        let tracker = tracker_for(&mock).flag_definitions(evaluator).build();
        let snapshot = evaluated(&tracker, FlagsRequest::new("u1")).await;
        assert!(snapshot.is_enabled("rollout") && snapshot.is_enabled("by-plan"));
        let requests = mock.flags_requests();
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0]["flag_keys_to_evaluate"], json!(["by-plan"]));
        assert_eq!(snapshot.undecided().count(), 0);
    }

    /// A missing key is named for what it is; a transport failure keeps reqwest's error as
    /// the source.
    #[tokio::test]
    async fn errors_say_what_happened_and_keep_their_cause() {
        use posthog_track::{Error, Tracker};
        let no_key = Tracker::builder().build();
        let error = no_key.evaluate_flags("u1").await.unwrap_err();
        assert!(
            matches!(
                error,
                Error::MissingKey {
                    key: "POSTHOG_API_KEY",
                    ..
                }
            ),
            "{error:?}"
        );
        let error = no_key.load_flag_definitions().await.unwrap_err();
        assert!(matches!(error, Error::MissingKey { .. }), "{error:?}");
        let no_personal_key = Tracker::builder().api_key("phc_test").build();
        let error = no_personal_key.load_flag_definitions().await.unwrap_err();
        assert!(
            matches!(
                error,
                Error::MissingKey {
                    key: "POSTHOG_PERSONAL_API_KEY",
                    ..
                }
            ),
            "{error:?}"
        );
        let disabled = Tracker::builder()
            .api_key("phc_test")
            .disabled(true)
            .build();
        let error = disabled.evaluate_flags("u1").await.unwrap_err();
        assert!(matches!(error, Error::Disabled { .. }), "{error:?}");

        // Nothing listens on this port.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        let unreachable = Tracker::builder()
            .api_key("phc_test")
            .host(format!("http://{address}"))
            .unwrap()
            .build();
        let error = unreachable.evaluate_flags("u1").await.unwrap_err();
        assert!(matches!(error, Error::Flags { .. }), "{error:?}");
        let source = std::error::Error::source(&error).expect("the transport error is kept");
        assert!(source.is::<reqwest::Error>(), "{source:?}");
    }

    /// A proxy's basic-auth password in POSTHOG_HOST is a secret: a failed /flags request must
    /// not show it in the error's Display chain or Debug.
    #[tokio::test]
    async fn remote_flags_error_hides_host_credentials() {
        use posthog_track::Tracker;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        let tracker = Tracker::builder()
            .api_key("phc_test")
            .host(format!("http://proxyuser:hunter2pw@{address}"))
            .unwrap()
            .build();
        let error = tracker.evaluate_flags("u1").await.unwrap_err();
        let mut shown = format!("{error} / {error:?}");
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            shown.push_str(&format!(" / {cause}"));
            source = cause.source();
        }
        assert!(!shown.contains("hunter2pw"), "{shown}");
    }

    /// An error answer is read up to a bound, never whole: a body that never ends still gives
    /// an error that shows how it began.
    #[tokio::test]
    async fn error_bodies_are_read_bounded() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut request = [0u8; 4096];
                    let _ = socket.read(&mut request).await;
                    let head = "HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n";
                    if socket.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    let chunk = format!(
                        "{:x}\r\n{}\r\n",
                        8192,
                        "overloaded ".repeat(8192 / 11 + 1)[..8192].to_owned()
                    );
                    // Endless: only a bounded reader gets to the end of this answer.
                    while socket.write_all(chunk.as_bytes()).await.is_ok() {}
                });
            }
        });
        let tracker = posthog_track::Tracker::builder()
            .api_key("phc_test")
            .host(format!("http://{address}"))
            .unwrap()
            .build();
        let error = tracker
            .evaluate_flags(FlagsRequest::new("u1"))
            .await
            .unwrap_err();
        let text = error.to_string();
        assert!(text.contains("500"), "{text}");
        assert!(text.contains("overloaded"), "the body's beginning: {text}");
        assert!(text.len() < 2_000, "{} bytes", text.len());
    }

    /// A 200 answer is read up to a bound too: a host that sends flag definitions (or a
    /// `/flags` answer) without end gets an error naming the bound, not a process that reads
    /// until it runs out of memory.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn endless_answers_are_cut_at_their_bound() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut request = [0u8; 8192];
                    let _ = socket.read(&mut request).await;
                    let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                                transfer-encoding: chunked\r\n\r\n";
                    let opening = format!("{:x}\r\n{{\"flags\": [\r\n", 11);
                    if socket.write_all(head.as_bytes()).await.is_err()
                        || socket.write_all(opening.as_bytes()).await.is_err()
                    {
                        return;
                    }
                    let chunk = format!("{:x}\r\n{}\r\n", 65_536, " ".repeat(65_536));
                    while socket.write_all(chunk.as_bytes()).await.is_ok() {}
                });
            }
        });
        let tracker = posthog_track::Tracker::builder()
            .api_key("phc_test")
            .host(format!("http://{address}"))
            .unwrap()
            .personal_api_key("phx_personal_key_123")
            .build();
        // Bounded by the test too: an unbounded read would never end.
        const LIMIT: Duration = Duration::from_secs(60);
        let definitions = tokio::time::timeout(LIMIT, tracker.load_flag_definitions())
            .await
            .expect("reading the definitions ended")
            .unwrap_err()
            .to_string();
        assert!(definitions.contains("larger than"), "{definitions}");
        let remote = tokio::time::timeout(LIMIT, tracker.evaluate_flags(FlagsRequest::new("u1")))
            .await
            .expect("reading the /flags answer ended")
            .unwrap_err()
            .to_string();
        assert!(remote.contains("larger than"), "{remote}");
    }

    /// PostHog's `/flags` answer is an object holding `flags` (v2) or `featureFlags` (v1),
    /// empty when no flag applies. Anything else (a string, an array, an object without
    /// either) is not an answer to the question: an error that shows, bounded and without the
    /// project key, what came back, never an empty snapshot that reads as "every flag off".
    #[tokio::test]
    async fn an_answer_that_is_not_flags_is_an_error() {
        use posthog_track::Error;
        let mock = MockPostHog::start().await;
        let tracker = tracker_for(&mock).build();
        let key = mock.api_key().to_owned();
        let long = "x".repeat(5_000);
        for (answer, shows) in [
            (json!("garbage"), "garbage"),
            (json!(["a", "b"]), "[\"a\""),
            (json!({"detail": "not here"}), "not here"),
            (json!({"flags": "on"}), "\"on\""),
            (json!({"flags": null, "token": key}), "flags"),
            (json!(long), "xxx"),
        ] {
            mock.set_remote_flags(answer.clone());
            let error = tracker.evaluate_flags("u1").await.unwrap_err();
            assert!(matches!(error, Error::Flags { .. }), "{answer}: {error:?}");
            let text = error.to_string();
            assert!(text.contains(shows), "{answer}: {text}");
            assert!(!text.contains(&key), "the key is not shown: {text}");
            assert!(text.len() < 1_000, "bounded: {} bytes", text.len());
        }
        for empty in [
            json!({"flags": {}}),
            json!({"flags": {}, "quotaLimited": ["feature_flags"]}),
            json!({"featureFlags": {}}),
        ] {
            mock.set_remote_flags(empty.clone());
            let snapshot = tracker.evaluate_flags("u1").await;
            assert!(snapshot.is_ok(), "{empty} is an answer: {snapshot:?}");
        }
    }

    /// `set_outage` answers every request the mock serves, the flag endpoints too: a test can
    /// see how its code copes when PostHog cannot decide a flag.
    #[tokio::test]
    async fn an_outage_covers_the_flag_endpoints() {
        use posthog_track::Error;
        use posthog_track::testing::Reply;
        let mock = MockPostHog::start().await;
        mock.set_flag_definitions(definitions());
        mock.set_remote_flags(json!({"flags": {"rollout": {"key": "rollout", "enabled": true}}}));
        let tracker = tracker_for(&mock)
            .personal_api_key("phx_personal_key_123")
            .build();

        mock.set_outage(Some(Reply::Status(503)));
        let error = tracker.evaluate_flags("u1").await.unwrap_err();
        assert!(matches!(error, Error::Flags { .. }), "{error:?}");
        assert!(error.to_string().contains("503"), "{error}");
        let error = tracker.load_flag_definitions().await.unwrap_err();
        assert!(matches!(error, Error::Flags { .. }), "{error:?}");
        assert!(tracker.flag_definitions().is_none());
        assert_eq!(mock.flags_requests().len(), 1, "recorded as received");
        assert_eq!(mock.flag_definitions_requests(), [(503, None)]);

        mock.set_outage(None);
        let snapshot = tracker.evaluate_flags("u1").await.unwrap();
        assert!(snapshot.is_enabled("rollout"), "{snapshot:?}");
        tracker.load_flag_definitions().await.unwrap();
        assert!(tracker.flag_definitions().is_some());
    }

    /// The README's start-up for local evaluation: the definitions loaded once before serving,
    /// then polled. Without the load, `start_flag_poller` returns before its first fetch, and
    /// the first evaluations went to PostHog (`/flags`): against a mock given only definitions,
    /// no flags at all, and an event without its `$feature/...`. Every call of
    /// `start_flag_poller` in the section handles its `Result`.
    #[tokio::test]
    async fn the_readme_loads_definitions_before_the_first_evaluation() {
        let readme = include_str!("../README.md");
        let start = readme.find("\n## Feature flags\n").expect("the section");
        let section = &readme[start..];
        let section = &section[..section.find("\n### Flag-routed schemas").unwrap()];
        let startup = "tracker.load_flag_definitions().await?;\n\
                       tracker.start_flag_poller(Duration::from_secs(30))?;\n";
        assert!(section.contains(startup), "the start-up is shown");
        for (at, _) in section.match_indices("start_flag_poller(") {
            let call = &section[at..];
            let mut depth = 0;
            let end = call
                .char_indices()
                .find_map(|(i, c)| {
                    depth += i32::from(c == '(') - i32::from(c == ')');
                    (c == ')' && depth == 0).then_some(i)
                })
                .unwrap();
            assert!(
                call[end + 1..].starts_with('?'),
                "a Result left unused: {}",
                &call[..=end]
            );
        }

        let mock = MockPostHog::start().await;
        mock.set_flag_definitions(definitions());
        let tracker = tracker_for(&mock)
            .personal_api_key(mock.personal_api_key())
            .build();
        async fn start_up(tracker: &Tracker) -> posthog_track::Result<()> {
            tracker.load_flag_definitions().await?;
            tracker.start_flag_poller(Duration::from_secs(30))?;
            Ok(())
        }
        start_up(&tracker).await.unwrap();
        let flags = evaluated(&tracker, FlagsRequest::new("u1").only(["rollout"])).await;
        assert!(flags.is_enabled("rollout"), "{flags:?}");
        assert!(mock.flags_requests().is_empty(), "decided locally");
        tracker
            .capture(
                posthog_track::Event::new("served")
                    .distinct_id("u1")
                    .flags(&flags),
            )
            .await
            .unwrap();
        tracker.flush().await.unwrap();
        let served = events_named(&mock, "served");
        assert_eq!(served[0].properties["$feature/rollout"], true);
        tracker.shutdown(Duration::from_secs(1)).await.unwrap();
    }

    #[tokio::test]
    async fn events_carry_the_flags_they_were_given() {
        let mock = MockPostHog::start().await;
        let tracker = with_local_definitions(&mock).build();
        let flags = evaluated_on_plan(&tracker, "free").await;

        tracker
            .capture(
                posthog_track::Event::new("viewed")
                    .distinct_id("u1")
                    .flags(&flags),
            )
            .await
            .unwrap();
        tracker.flush().await.unwrap();
        let viewed = mock
            .events()
            .into_iter()
            .find(|e| e.event == "viewed")
            .unwrap();
        assert_eq!(viewed.properties["$feature/rollout"], true);
        assert_eq!(viewed.properties["$feature/by-plan"], false);

        let pool = sqlx::SqlitePool::connect("sqlite::memory:").await.unwrap();
        tracker.migrate(&pool).await.unwrap();
        let mut tx = tracker.begin(&pool).await.unwrap();
        tx.set_distinct_id("u1");
        tx.attach_flags(&flags);
        tx.attach_flags(&flags); // attaching again replaces, never duplicates
        tx.capture(posthog_track::Event::new("saved")).unwrap();
        let raw = tx.staged()[0].payload.clone();
        assert_eq!(raw.matches("$feature/rollout").count(), 1, "{raw}");
        tx.commit().await.unwrap();
        let saved = &tracker.outbox(&pool).events().await.unwrap()[0];
        assert_eq!(saved.property("$feature/rollout"), Some(&json!(true)));
        assert_eq!(
            saved
                .payload
                .to_string()
                .matches("$feature/rollout")
                .count(),
            1
        );
    }
}

#[test]
fn cohorts_and_flag_dependencies() {
    let evaluator = LocalEvaluator::from_json(
        &json!({
            "cohorts": {
                "7": {"type": "OR", "values": [
                    {"type": "AND", "values": [
                        {"key": "plan", "value": "pro", "type": "person"},
                        {"key": "country", "value": "FR", "type": "person", "negation": true}
                    ]},
                    {"type": "AND", "values": [{"key": "email", "operator": "icontains", "value": "@posthog.com", "type": "person"}]}
                ]}
            },
            "flags": [
                {"key": "in-cohort", "active": true, "filters": {"groups": [
                    {"properties": [{"key": "id", "value": 7, "type": "cohort"}], "rollout_percentage": 100}]}},
                {"key": "not-in-cohort", "active": true, "filters": {"groups": [
                    {"properties": [{"key": "id", "value": 7, "type": "cohort", "operator": "not_in"}], "rollout_percentage": 100}]}},
                {"key": "base", "active": true, "filters": {
                    "groups": [{"properties": [{"key": "plan", "value": "pro", "type": "person"}], "rollout_percentage": 100}],
                    "multivariate": {"variants": [{"key": "only", "rollout_percentage": 100}]}}},
                {"key": "needs-base-on", "active": true, "filters": {"groups": [{"properties": [
                    {"key": "base", "operator": "flag_evaluates_to", "value": true, "type": "flag", "dependency_chain": ["base"]}
                ], "rollout_percentage": 100}]}},
                {"key": "needs-base-variant", "active": true, "filters": {"groups": [{"properties": [
                    {"key": "base", "operator": "flag_evaluates_to", "value": "only", "type": "flag", "dependency_chain": ["base"]}
                ], "rollout_percentage": 100}]}},
                {"key": "needs-base-off", "active": true, "filters": {"groups": [{"properties": [
                    {"key": "base", "operator": "flag_evaluates_to", "value": false, "type": "flag", "dependency_chain": ["base"]}
                ], "rollout_percentage": 100}]}},
                {"key": "circular", "active": true, "filters": {"groups": [{"properties": [
                    {"key": "circular", "operator": "flag_evaluates_to", "value": true, "type": "flag", "dependency_chain": []}
                ]}]}},
                {"key": "missing-dependency", "active": true, "filters": {"groups": [{"properties": [
                    {"key": "ghost", "operator": "flag_evaluates_to", "value": true, "type": "flag", "dependency_chain": ["ghost"]}
                ]}]}}
            ]
        })
        .to_string(),
    )
    .unwrap();
    let (none, no_props) = (HashMap::new(), HashMap::new());
    let eval = |flag: &str, properties: Value| {
        evaluator.evaluate_with(flag, "u1", &person(properties), &none, &no_props)
    };

    // (pro AND NOT FR) OR staff
    for (flag, plan, country, email, enabled) in [
        ("in-cohort", "pro", "DE", Some("a@b.c"), true),
        ("in-cohort", "pro", "FR", Some("a@b.c"), false),
        ("in-cohort", "free", "FR", Some("a@posthog.com"), true),
        ("not-in-cohort", "free", "FR", Some("a@b.c"), true),
        // The first branch matched: the missing email does not matter.
        ("in-cohort", "pro", "DE", None, true),
    ] {
        let mut properties = json!({"plan": plan, "country": country});
        if let Some(email) = email {
            properties["email"] = json!(email);
        }
        assert_eq!(
            eval(flag, properties.clone()).unwrap(),
            FlagValue::Enabled(enabled),
            "{flag} for {properties}"
        );
    }
    assert!(matches!(
        eval("in-cohort", json!({"plan": "free", "country": "DE"})),
        Err(FlagError::Inconclusive { .. })
    ));

    let pro = json!({"plan": "pro"});
    let free = json!({"plan": "free"});
    for (flag, properties, enabled) in [
        // Any variant counts as on.
        ("needs-base-on", &pro, true),
        ("needs-base-variant", &pro, true),
        ("needs-base-off", &pro, false),
        ("needs-base-off", &free, true),
        ("needs-base-on", &free, false),
    ] {
        assert_eq!(
            eval(flag, properties.clone()).unwrap(),
            FlagValue::Enabled(enabled),
            "{flag} for {properties}"
        );
    }
    assert!(matches!(
        eval("circular", json!({})),
        Err(FlagError::Inconclusive { .. })
    ));
    assert!(matches!(
        eval("missing-dependency", json!({})),
        Err(FlagError::Inconclusive { .. })
    ));
}

/// Cohorts that reference each other, flag dependencies in a cycle and chains deeper than any
/// real project make the flag inconclusive: never a stack overflow.
#[test]
fn cycles_and_deep_chains_are_inconclusive() {
    let mut cohorts = serde_json::Map::new();
    // 1 -> 2 -> 1
    cohorts.insert(
        "1".into(),
        json!({"type": "AND", "values": [{"key": "id", "value": 2, "type": "cohort"}]}),
    );
    cohorts.insert(
        "2".into(),
        json!({"type": "OR", "values": [{"key": "id", "value": "1", "type": "cohort"}]}),
    );
    // 100 -> 101 -> ... -> 20100, no cycle, far deeper than the stack allows.
    for id in 100..20_100 {
        cohorts.insert(
            id.to_string(),
            json!({"type": "AND", "values": [{"key": "id", "value": id + 1, "type": "cohort"}]}),
        );
    }
    // 300 -> 301 (twice) -> 302 (twice) -> ... -> 330: each cohort is matched once per
    // evaluation, not 2^30 times.
    for id in 300..330 {
        let next = json!({"key": "id", "value": id + 1, "type": "cohort"});
        cohorts.insert(
            id.to_string(),
            json!({"type": "AND", "values": [next, next]}),
        );
    }
    cohorts.insert(
        "330".into(),
        json!({"type": "AND", "values": [{"key": "plan", "value": "pro", "type": "person"}]}),
    );
    let mut flags = vec![
        json!({"key": "wide-cohort", "active": true, "filters": {"groups": [
            {"properties": [{"key": "id", "value": 300, "type": "cohort"}], "rollout_percentage": 100}]}}),
        json!({"key": "cyclic-cohort", "active": true, "filters": {"groups": [
            {"properties": [{"key": "id", "value": 1, "type": "cohort"}], "rollout_percentage": 100}]}}),
        json!({"key": "deep-cohort", "active": true, "filters": {"groups": [
            {"properties": [{"key": "id", "value": 100, "type": "cohort"}], "rollout_percentage": 100}]}}),
        // a -> b -> a, with chains that do not say so.
        json!({"key": "a", "active": true, "filters": {"groups": [{"properties": [
            {"key": "b", "operator": "flag_evaluates_to", "value": true, "type": "flag", "dependency_chain": ["b"]}
        ], "rollout_percentage": 100}]}}),
        json!({"key": "b", "active": true, "filters": {"groups": [{"properties": [
            {"key": "a", "operator": "flag_evaluates_to", "value": true, "type": "flag", "dependency_chain": ["a"]}
        ], "rollout_percentage": 100}]}}),
    ];
    // d0 -> d1 -> ... -> d20000
    for n in 0..20_000 {
        let next = format!("d{}", n + 1);
        flags.push(json!({"key": format!("d{n}"), "active": true, "filters": {"groups": [{"properties": [
            {"key": next, "operator": "flag_evaluates_to", "value": true, "type": "flag", "dependency_chain": [next]}
        ], "rollout_percentage": 100}]}}));
    }
    flags.push(json!({"key": "d20000", "active": true, "filters": {"groups": [{"rollout_percentage": 100}]}}));
    let evaluator =
        LocalEvaluator::from_json(&json!({"cohorts": cohorts, "flags": flags}).to_string())
            .unwrap();
    for flag in ["cyclic-cohort", "deep-cohort", "a", "b", "d0"] {
        assert!(
            matches!(
                evaluator.evaluate(flag, "u1"),
                Err(FlagError::Inconclusive { .. })
            ),
            "{flag}"
        );
    }
    // Wide but finite: decided, in linear time.
    assert_eq!(
        evaluate_for_person(&evaluator, "wide-cohort", "u1", json!({"plan": "pro"})),
        FlagValue::Enabled(true)
    );
    // A short chain still evaluates.
    assert_eq!(
        evaluator.evaluate("d19990", "u1").unwrap(),
        FlagValue::Enabled(true)
    );
}

/// Property-based: random definitions (every operator, odd dates, semver past `u64::MAX`,
/// arbitrary regexes, nested and mutually referring cohorts, dependency chains with cycles) and
/// random properties never panic, and evaluation is deterministic.
mod properties {
    use std::collections::HashMap;

    use posthog_track::flags::{LocalEvaluator, Properties};
    use proptest::prelude::*;
    use serde_json::{Value, json};

    const OPERATORS: &[&str] = &[
        "exact",
        "is_not",
        "is_set",
        "is_not_set",
        "icontains",
        "not_icontains",
        "starts_with",
        "not_starts_with",
        "ends_with",
        "not_ends_with",
        "regex",
        "not_regex",
        "gt",
        "gte",
        "lt",
        "lte",
        "is_date_before",
        "is_date_after",
        "semver_eq",
        "semver_neq",
        "semver_gt",
        "semver_gte",
        "semver_lt",
        "semver_lte",
        "semver_tilde",
        "semver_caret",
        "semver_wildcard",
        "in",
        "not_in",
        "flag_evaluates_to",
        "no_such_operator",
    ];
    const FLAGS: u8 = 6;
    const COHORTS: u8 = 6;

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "-?[0-9]{0,6}[hdwmyé€😀x]?",
            "[vV]?[0-9]{1,22}(\\.[0-9*]{0,22}){0,3}(-[a-z]{1,4})?(\\+[0-9]{1,3})?",
            "[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\\.[0-9]{1,9})?)?)?(Z| UTC|[+-][0-9]{2}:[0-9]{2}|é)?",
            // Regexes, look-around and backreferences included (`(?=`, `(?<!`, `\1`).
            "[(\\[\\]{}.*+?|^$a-z0-9\\\\=!<]{0,16}",
            Just(u64::MAX.to_string()),
            Just(format!("0.{}.*", u64::MAX)),
            Just(format!("0.0.{}", u64::MAX)),
        ]
    }

    fn scalar() -> impl Strategy<Value = Value> {
        prop_oneof![
            3 => text().prop_map(Value::from),
            1 => any::<i64>().prop_map(Value::from),
            1 => any::<u64>().prop_map(Value::from),
            1 => any::<f64>().prop_map(|number| json!(number)),
            1 => any::<bool>().prop_map(Value::from),
            1 => Just(Value::Null),
        ]
    }

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            4 => scalar(),
            1 => prop::collection::vec(scalar(), 0..4).prop_map(Value::from),
        ]
    }

    fn filter() -> impl Strategy<Value = Value> {
        (
            0..3u8,
            prop::sample::select(OPERATORS),
            value(),
            0..FLAGS.max(COHORTS),
            any::<bool>(),
            prop::option::of(prop::collection::vec(0..FLAGS, 0..4)),
        )
            .prop_map(|(kind, operator, value, target, negation, chain)| match kind {
                0 => json!({"key": format!("p{}", target % 3), "operator": operator,
                    "value": value, "type": "person", "negation": negation}),
                1 => json!({"key": "id", "value": target % COHORTS, "type": "cohort",
                    "operator": if negation { "not_in" } else { "in" }}),
                _ => json!({"key": format!("f{}", target % FLAGS), "operator": "flag_evaluates_to",
                    "value": value, "type": "flag",
                    "dependency_chain": chain.map(|chain| chain.iter().map(|n| format!("f{n}")).collect::<Vec<_>>())}),
            })
    }

    fn cohort() -> impl Strategy<Value = Value> {
        filter().prop_recursive(4, 24, 4, |inner| {
            (any::<bool>(), prop::collection::vec(inner, 0..4)).prop_map(
                |(and, values)| json!({"type": if and { "AND" } else { "OR" }, "values": values}),
            )
        })
    }

    fn flag() -> impl Strategy<Value = Value> {
        // A condition may name its own aggregation (mixed targeting): a group type index,
        // known (0) or not (1), or null for the person.
        let condition = (
            prop::collection::vec(filter(), 0..3),
            prop::option::of(-10.0..110.0f64),
            prop::option::of("[a-c]"),
            prop::option::of(prop::option::of(0..2i64)),
        )
            .prop_map(|(properties, rollout, variant, aggregation)| {
                let mut condition = json!({"properties": properties,
                    "rollout_percentage": rollout, "variant": variant});
                if let Some(aggregation) = aggregation {
                    condition["aggregation_group_type_index"] = json!(aggregation);
                }
                condition
            });
        (
            (
                any::<bool>(),
                prop::bool::weighted(0.2),
                prop::option::of(0..2i64),
            ),
            prop::collection::vec(condition, 0..3),
            any::<bool>(),
            prop::option::of(prop::collection::vec(("[a-c]", -10.0..70.0f64), 0..4)),
        )
            .prop_map(
                |((active, by_device, aggregation), groups, early_exit, variants)| {
                    let variants =
                        variants.map(|variants| {
                            variants
                        .into_iter()
                        .map(|(key, rollout)| json!({"key": key, "rollout_percentage": rollout}))
                        .collect::<Vec<_>>()
                        });
                    json!({"active": active, "filters": {"groups": groups, "early_exit": early_exit,
                    "aggregation_group_type_index": aggregation,
                    "bucketing_identifier": if by_device { "device_id" } else { "distinct_id" },
                    "multivariate": variants.map(|variants| json!({"variants": variants}))}})
                },
            )
    }

    fn definitions() -> impl Strategy<Value = Value> {
        (
            prop::collection::vec(flag(), FLAGS as usize),
            prop::collection::vec(cohort(), COHORTS as usize),
        )
            .prop_map(|(flags, cohorts)| {
                let flags: Vec<Value> = flags
                    .into_iter()
                    .enumerate()
                    .map(|(n, mut flag)| {
                        flag["key"] = json!(format!("f{n}"));
                        flag
                    })
                    .collect();
                let cohorts: serde_json::Map<String, Value> = cohorts
                    .into_iter()
                    .enumerate()
                    .map(|(n, cohort)| (n.to_string(), cohort))
                    .collect();
                json!({"flags": flags, "cohorts": cohorts,
                    "group_type_mapping": {"0": "company"}})
            })
    }

    fn properties() -> impl Strategy<Value = Properties> {
        prop::collection::btree_map(0..3u8, value(), 0..3).prop_map(|map| {
            map.into_iter()
                .map(|(key, value)| (format!("p{key}"), value))
                .collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn evaluation_never_panics_and_is_deterministic(
            definitions in definitions(),
            properties in properties(),
            distinct_id in any::<String>(),
            company in prop::option::of((any::<String>(), prop::option::of(properties()))),
        ) {
            let evaluator = LocalEvaluator::from_json(&definitions.to_string()).unwrap();
            let (mut groups, mut group_properties) = (HashMap::new(), HashMap::new());
            if let Some((key, properties)) = company {
                groups.insert("company".to_owned(), key);
                if let Some(properties) = properties {
                    group_properties.insert("company".to_owned(), properties);
                }
            }
            for n in 0..FLAGS {
                let key = format!("f{n}");
                let first = evaluator
                    .evaluate_with(&key, &distinct_id, &properties, &groups, &group_properties)
                    .map_err(|error| error.to_string());
                let second = evaluator
                    .evaluate_with(&key, &distinct_id, &properties, &groups, &group_properties)
                    .map_err(|error| error.to_string());
                prop_assert_eq!(first, second);
            }
        }

        #[test]
        fn any_text_as_definitions_never_panics(text in any::<String>()) {
            let _ = LocalEvaluator::from_json(&text);
        }
    }
}

/// The definitions sample of the README's feature flags section.
#[test]
fn the_readme_definitions_sample_evaluates() {
    let definitions_json = r#"{"flags": [
  {"key": "new-editor", "active": true, "filters": {"groups": [
    {"properties": [{"key": "plan", "value": ["pro", "team"], "type": "person"}],
     "rollout_percentage": 50}]}},
  {"key": "checkout-experiment", "active": true, "filters": {
    "groups": [{"properties": [], "rollout_percentage": 100}],
    "multivariate": {"variants": [{"key": "control", "rollout_percentage": 50},
                                  {"key": "test", "rollout_percentage": 50}]}}}
]}"#;
    let readme = include_str!("../README.md");
    assert!(
        readme.contains(definitions_json),
        "README and test share the sample"
    );
    let evaluator = LocalEvaluator::from_json(definitions_json).unwrap();
    let value = evaluator.evaluate("checkout-experiment", "user-1").unwrap();
    assert!(matches!(value.variant(), Some("control" | "test")));
    let value = evaluate_for_person(&evaluator, "new-editor", "user-1", json!({"plan": "pro"}));
    assert!(matches!(value, FlagValue::Enabled(_)));
}

// Flag definitions are fetched with `Authorization: Bearer <personal key>`; a proxy's
// credentials in POSTHOG_HOST would go out as a second Authorization header. The load refuses
// and says why, without the credentials, and sends nothing.
#[tokio::test]
async fn definitions_refuse_a_host_with_credentials() {
    let mock = posthog_track::testing::MockPostHog::start().await;
    let host = posthog_track_tests::with_credentials(&mock.url());
    let tracker = posthog_track::Tracker::builder()
        .api_key(mock.api_key())
        .host(host)
        .unwrap()
        .personal_api_key(mock.personal_api_key())
        .build();
    let loaded = tracker.load_flag_definitions().await;
    let shown = format!("{loaded:?}");
    assert!(loaded.is_err() && shown.contains("credentials"), "{shown}");
    assert!(!shown.contains("hunter2pw"), "{shown}");
    assert!(mock.flag_definitions_requests().is_empty());
}
