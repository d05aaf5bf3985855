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

impl User {
    /// The row both write benchmarks insert, with the id the benchmark tells rows apart by.
    pub fn sample(id: String, n: u64) -> User {
        User {
            id,
            email: format!("user{n}@example.com"),
            plan: "free".to_owned(),
            seats: 3,
            password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"
                .to_owned(),
            created_at: DateTime::<Utc>::UNIX_EPOCH,
        }
    }
}

/// A port free on 127.0.0.1 a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// This benchmark's own executable again as its sink server (`--sink <port>`): the sink's
/// work then never shares a runtime with what is measured.
pub fn spawn_sink(port: u16) -> std::process::Child {
    std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--sink", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// POSTs to `url` (a sink's control endpoint) and returns the answer's body.
pub async fn post(http: &reqwest::Client, url: String) -> String {
    http.post(url).send().await.unwrap().text().await.unwrap()
}
