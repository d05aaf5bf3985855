//! Local flag evaluation: posthog-track's `LocalEvaluator` side by side with posthog-rs's
//! evaluator (`match_feature_flag`) on the same definitions, in one run; and the full client
//! paths (evaluate, then the exposure event through each SDK's dedup), both SDKs loading the
//! definitions from a local `MockPostHog`.
//!
//! ```text
//! cargo bench -p posthog-track-tests --bench flags
//! ```
//!
//! Each figure is the median over 15 rounds of the mean time per evaluation in a round of
//! 100,000 evaluations cycling through 1,000 distinct ids; the two evaluators alternate rounds.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use posthog_track::flags::{FlagsRequest, LocalEvaluator, Properties};
use posthog_track::testing::MockPostHog;
use serde_json::{Value, json};

const ROUNDS: usize = 15;
const PER_ROUND: usize = 100_000;

fn rollout_flag() -> Value {
    json!({"id": 1, "key": "simple-flag", "active": true,
        "filters": {"groups": [{"properties": [], "rollout_percentage": 45}]}})
}

fn multivariate_flag() -> Value {
    json!({"id": 2, "key": "multivariate-flag", "active": true, "filters": {
        "groups": [{"properties": [
            {"key": "email", "operator": "icontains", "value": "@example.com", "type": "person"},
            {"key": "plan", "operator": "exact", "value": ["pro", "team"], "type": "person"}
        ], "rollout_percentage": 55}],
        "multivariate": {"variants": [
            {"key": "first-variant", "rollout_percentage": 50},
            {"key": "second-variant", "rollout_percentage": 20},
            {"key": "third-variant", "rollout_percentage": 20},
            {"key": "fourth-variant", "rollout_percentage": 5},
            {"key": "fifth-variant", "rollout_percentage": 5}
        ]}
    }})
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn round(mut evaluate: impl FnMut(&str)) -> f64 {
    let ids: Vec<String> = (0..1000).map(|i| format!("distinct_id_{i}")).collect();
    let start = Instant::now();
    for i in 0..PER_ROUND {
        evaluate(&ids[i % ids.len()]);
    }
    start.elapsed().as_nanos() as f64 / PER_ROUND as f64
}

fn compare(name: &str, flag: Value, person: Value) {
    let key = flag["key"].as_str().unwrap().to_owned();
    let ours = LocalEvaluator::from_json(&json!({"flags": [flag.clone()]}).to_string()).unwrap();
    let theirs: posthog_rs::FeatureFlag = serde_json::from_value(flag).unwrap();
    let our_properties: Properties = person.as_object().unwrap().clone();
    let their_properties: HashMap<String, Value> = our_properties.clone().into_iter().collect();
    let (groups, group_properties, no_groups, mapping) = (
        HashMap::new(),
        HashMap::new(),
        HashMap::new(),
        HashMap::new(),
    );

    // Both must agree before their speed means anything.
    for i in 0..1000 {
        let id = format!("distinct_id_{i}");
        let a = ours
            .evaluate_with(&key, &id, &our_properties, &groups, &group_properties)
            .unwrap();
        let b = posthog_rs::match_feature_flag(
            &theirs,
            &id,
            &their_properties,
            &no_groups,
            &HashMap::new(),
            &mapping,
        )
        .unwrap();
        let b = match b {
            posthog_rs::FlagValue::Boolean(enabled) => enabled.to_string(),
            posthog_rs::FlagValue::String(variant) => variant,
        };
        assert_eq!(a.to_string(), b, "the evaluators disagree on {id}");
    }

    let (mut ours_ns, mut theirs_ns) = (Vec::new(), Vec::new());
    for r in 0..ROUNDS {
        let run_ours = || {
            round(|id| {
                black_box(
                    ours.evaluate_with(&key, id, &our_properties, &groups, &group_properties)
                        .unwrap(),
                );
            })
        };
        let run_theirs = || {
            round(|id| {
                black_box(
                    posthog_rs::match_feature_flag(
                        &theirs,
                        id,
                        &their_properties,
                        &no_groups,
                        &HashMap::new(),
                        &mapping,
                    )
                    .unwrap(),
                );
            })
        };
        if r % 2 == 0 {
            ours_ns.push(run_ours());
            theirs_ns.push(run_theirs());
        } else {
            theirs_ns.push(run_theirs());
            ours_ns.push(run_ours());
        }
    }
    let (ours, theirs) = (median(ours_ns), median(theirs_ns));
    println!(
        "{name:<52} posthog-track {ours:>7.1} ns   posthog-rs 0.30 {theirs:>7.1} ns   ratio {:.2}x",
        theirs / ours
    );
}

#[tokio::main]
async fn main() {
    println!(
        "local flag evaluation, ns per evaluation (median of {ROUNDS} rounds of {PER_ROUND})\n"
    );
    compare("45 % rollout flag", rollout_flag(), json!({}));
    compare(
        "multivariate flag with two property conditions",
        multivariate_flag(),
        json!({"email": "ada@example.com", "plan": "pro"}),
    );

    // The client path: local evaluation plus the $feature_flag_called exposure, both clients
    // loading the same definitions from a local PostHog. After the first round every exposure
    // is a repeat (1,000 users, one flag), which both SDKs deduplicate.
    let mock = MockPostHog::start().await;
    mock.set_flag_definitions(json!({"flags": [rollout_flag()]}));
    let tracker = posthog_track::Tracker::builder()
        .api_key(mock.api_key())
        .personal_api_key("phx_bench_personal_key")
        .host(mock.url())
        .unwrap()
        .queue_capacity(100_000)
        .build();
    tracker.load_flag_definitions().await.unwrap();
    let mut options = posthog_rs::ClientOptionsBuilder::default();
    options
        .api_key(mock.api_key().to_owned())
        .host(mock.url())
        .secret_key("phx_bench_personal_key")
        .enable_local_evaluation(true);
    let client = posthog_rs::client(options.build().unwrap()).await;
    let local_only = posthog_rs::EvaluateFlagsOptions {
        only_evaluate_locally: true,
        flag_keys: Some(vec!["simple-flag".to_owned()]),
        ..Default::default()
    };
    let started = Instant::now();
    while client
        .evaluate_flags("distinct_id_1", local_only.clone())
        .await
        .ok()
        .and_then(|flags| flags.get_flag("simple-flag"))
        .is_none()
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "posthog-rs never loaded the definitions"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ids: Vec<String> = (0..1000).map(|i| format!("distinct_id_{i}")).collect();
    let calls = PER_ROUND / 10;
    let (mut ours_ns, mut theirs_ns) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let start = Instant::now();
        for i in 0..calls {
            let request = FlagsRequest::new(ids[i % ids.len()].as_str());
            black_box(
                tracker
                    .get_feature_flag("simple-flag", request)
                    .await
                    .unwrap(),
            );
        }
        ours_ns.push(start.elapsed().as_nanos() as f64 / calls as f64);
        let start = Instant::now();
        for i in 0..calls {
            let flags = client
                .evaluate_flags(ids[i % ids.len()].as_str(), local_only.clone())
                .await
                .unwrap();
            black_box(flags.get_flag("simple-flag"));
        }
        theirs_ns.push(start.elapsed().as_nanos() as f64 / calls as f64);
    }
    let (ours, theirs) = (median(ours_ns), median(theirs_ns));
    println!(
        "{:<52} posthog-track {ours:>7.1} ns   posthog-rs 0.30 {theirs:>7.1} ns   ratio {:.2}x",
        "client path (evaluate + exposure), 45 % flag",
        theirs / ours
    );
    client.shutdown().await;
    let _ = tracker.shutdown(Duration::ZERO).await;
}
