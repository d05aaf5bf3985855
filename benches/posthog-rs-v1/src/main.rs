//! One burst of small events through posthog-rs 0.30 with `capture-v1`, for
//! `benches/delivery.rs`: `posthog-rs-v1-bench <sink url> <gzip|zstd> <events>` prints
//! `<events> <wall ms> <cpu ms>` (CPU: this process's user + system time).

use std::time::{Duration, Instant};

fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    Duration::from_millis(ticks * 10) // USER_HZ is 100 on Linux
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(url), Some(compression), Some(events)) = (
        args.get(1),
        args.get(2),
        args.get(3).and_then(|n| n.parse::<u64>().ok()),
    ) else {
        eprintln!("usage: posthog-rs-v1-bench <sink url> <gzip|zstd> <events>");
        std::process::exit(2);
    };
    let mut options = posthog_rs::ClientOptionsBuilder::default();
    options
        .api_key("phc_bench".to_owned())
        .host(url.clone())
        .max_queue_size(200_000)
        .flush_at(1000)
        .max_batch_size(1000)
        .capture_compression(match compression.as_str() {
            "zstd" => posthog_rs::CaptureCompression::Zstd,
            _ => posthog_rs::CaptureCompression::Gzip,
        });
    let client = posthog_rs::client(options.build().expect("options")).await;
    let (started, cpu) = (Instant::now(), cpu_time());
    for n in 0..events {
        let mut event =
            posthog_rs::Event::new("bench_event".to_owned(), format!("user-{}", n % 1000));
        let _ = event.insert_prop("n", n);
        client.capture(event);
    }
    client.flush().await;
    let (wall, cpu) = (started.elapsed(), cpu_time() - cpu);
    println!("{events} {} {}", wall.as_millis(), cpu.as_millis());
    client.shutdown().await;
}
