//! The benchmarks of this package (see `BENCHMARKS.md`) and the model the write benchmarks share.

use chrono::{DateTime, Utc};
use posthog_track::TrackedModel;

pub mod proc_stat;

/// The row the write benchmarks insert (`writes`, `concurrency`): five columns and a generated
/// `created_at`, staging a 360-byte `user_signed_up` event.
#[derive(Debug, Clone, TrackedModel)]
#[tracked(table = "bench_users", distinct_id = id, insert_event = "user_signed_up")]
pub struct User {
    #[tracked(key, property = "user_id")]
    pub id: String,
    #[tracked(person)]
    pub email: String,
    #[tracked(property)]
    pub plan: String,
    #[tracked(property)]
    pub seats: i64,
    #[tracked(skip = "credential")]
    pub password_hash: String,
    #[tracked(generated, property)]
    pub created_at: DateTime<Utc>,
}
