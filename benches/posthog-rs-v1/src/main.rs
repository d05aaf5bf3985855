//! One burst of small events through posthog-rs 0.30 with `capture-v1`, for
//! `benches/delivery.rs`: `posthog-rs-v1-bench <sink url> <gzip|zstd> <events>` prints
//! `<events> <wall ms> <cpu ms>` (CPU: this process's user + system time).

use std::time::Instant;

// Shared with the benchmarks; this crate is a workspace of its own, so by path.
#[path = "../../proc_stat.rs"]
mod proc_stat;

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
    let (started, cpu) = (Instant::now(), proc_stat::cpu_time("self"));
    for n in 0..events {
        let mut event =
            posthog_rs::Event::new("bench_event".to_owned(), format!("user-{}", n % 1000));
        let _ = event.insert_prop("n", n);
        client.capture(event);
    }
    client.flush().await;
    let (wall, cpu) = (started.elapsed(), proc_stat::cpu_time("self") - cpu);
    println!("{events} {} {}", wall.as_millis(), cpu.as_millis());
    client.shutdown().await;
}
