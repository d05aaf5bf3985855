//! The examples' tracking plan is checked in (`tracking-plan.json`, with a Markdown rendering
//! in `tracking-plan.md`); changing an event or a property in a model fails this test with a
//! readable diff until the plan file is updated in the same change.

use posthog_track::plan::TrackingPlan;

// Link the models into this test binary so their plan entries are registered.
use posthog_track_examples as _;

#[test]
fn tracking_plan_matches_the_checked_in_file() {
    assert!(
        TrackingPlan::collect()
            .events
            .iter()
            .any(|event| event.event == "user_signed_up"),
        "the examples' models are registered"
    );
    posthog_track::plan::assert_snapshot("tracking-plan.json");
}

#[test]
fn the_markdown_rendering_is_current() {
    let markdown = TrackingPlan::collect().to_markdown();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tracking-plan.md");
    if std::env::var("POSTHOG_TRACK_UPDATE_PLAN").is_ok_and(|v| v == "1") {
        std::fs::write(path, &markdown).unwrap();
    }
    assert_eq!(
        std::fs::read_to_string(path).unwrap_or_default(),
        markdown,
        "run with POSTHOG_TRACK_UPDATE_PLAN=1"
    );
}
