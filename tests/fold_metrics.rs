//! A folded insert (`model::fold`, PostgreSQL) renders its events twice, once to write them
//! with the row and once to check them; `posthog_track_events_staged_total` still counts each
//! event once, as many as `posthog_track_events_committed_total`. A test binary of its own,
//! because the metrics recorder is global and other tests would stage events meanwhile.

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use posthog_track::metrics::{EVENTS_COMMITTED, EVENTS_STAGED};
use posthog_track::{TrackedModel, Tracker};
use posthog_track_tests::{database_url, execute, isolated_postgres, tracker_for, unique};

#[derive(Debug, Clone, TrackedModel)]
#[tracked(table = "fold_metered", distinct_id = email, identify)]
struct Metered {
    #[tracked(key, generated, property)]
    id: i64,
    #[tracked(person)]
    email: String,
    #[tracked(property, generated)]
    created_at: chrono::DateTime<chrono::Utc>,
}

#[tokio::test]
async fn folded_inserts_count_each_event_once() {
    let Some(url) = database_url("POSTGRES_URL") else {
        return;
    };
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();
    let pool = isolated_postgres(&url, "fold_metrics").await;
    execute(
        &pool,
        "CREATE TABLE fold_metered (id BIGSERIAL PRIMARY KEY, email TEXT NOT NULL, \
         created_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    )
    .await;
    let mock = posthog_track::testing::MockPostHog::start().await;
    let tracker: Tracker = tracker_for(&mock).external_relay(true).build();
    tracker.migrate(&pool).await.unwrap();
    let mut staged = 0;
    for n in 0..4 {
        let mut tx = tracker.begin(&pool).await.unwrap();
        let row = Metered {
            id: 0,
            email: unique(&format!("metered{n}")),
            created_at: chrono::DateTime::UNIX_EPOCH,
        };
        row.insert(&mut tx).await.unwrap();
        staged += tx.staged().len() as u64;
        tx.commit().await.unwrap();
    }
    assert_eq!(
        posthog_track::__private::fold_counts_of::<Metered, sqlx::Postgres>(),
        (3, 0),
        "the first insert learns, the other three fold"
    );
    let counters: Vec<(String, u64)> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(key, _, _, value)| match value {
            DebugValue::Counter(count) => Some((key.key().name().to_owned(), count)),
            _ => None,
        })
        .collect();
    let counter = |name: &str| {
        counters
            .iter()
            .filter(|(counted, _)| counted == name)
            .map(|(_, count)| count)
            .sum::<u64>()
    };
    assert_eq!(staged, 8);
    assert_eq!(counter(EVENTS_STAGED), staged);
    assert_eq!(counter(EVENTS_COMMITTED), staged);
}
