//! Delivery throughput, CPU and memory: posthog-track's outbox relay and in-memory `capture`
//! side by side with posthog-rs, in one run, against the same local sink.
//!
//! ```text
//! cargo bench -p posthog-track-benches --bench delivery
//! DELIVERY_BENCH_EVENTS=2000 DELIVERY_BENCH_BACKLOG=5000 cargo bench -p posthog-track-benches --bench delivery   # a quick check
//! ```
//!
//! The sink is this binary started again as a child process (`--sink`), so that its CPU is
//! not counted against the clients: it decodes (gzip, deflate, br, zstd), parses each v0
//! `/batch/` or v1 `/i/v1/analytics/events` request, counts events, and answers v1 with a
//! `results` map of `ok` per event. CPU is the client process's user + system time from
//! /proc/self/stat; memory is its peak RSS.
//!
//! Capture v1 is measured beside v0, and beside posthog-rs 0.30 with its `capture-v1` feature.
//! That feature replaces posthog-rs's v0 pipeline at compile time, so it cannot share a build
//! with the v0 posthog-rs measured here (Cargo unifies features): it lives in its own crate,
//! `benches/posthog-rs-v1` (outside the workspace), built by this benchmark on first use and
//! run as a child process against the same sink, measuring its own CPU the same way.

use std::io::Read as _;
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use posthog_track::{CaptureMode, Compression, Event, Tracker};
use posthog_track_benches::proc_stat::cpu_time;
use posthog_track_benches::{free_port, post, spawn_sink};

/// Events per burst: `DELIVERY_BENCH_EVENTS` (default 100,000).
fn burst() -> u64 {
    size_knob("DELIVERY_BENCH_EVENTS", 100_000)
}

/// Events waiting out the outage: `DELIVERY_BENCH_BACKLOG` (default 1,000,000).
fn outage_backlog() -> u64 {
    size_knob("DELIVERY_BENCH_BACKLOG", 1_000_000)
}

fn size_knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--sink") => sink(args[2].parse().expect("sink port")),
        Some("--outage-memory") => outage_memory(args[2].parse().expect("sink port")),
        _ => orchestrate(),
    }
}

// ---------------------------------------------------------------------------------------------
// The sink

#[tokio::main]
async fn sink(port: u16) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let received = Arc::new(AtomicU64::new(0));
    let outage = Arc::new(AtomicBool::new(false));
    loop {
        let (stream, _) = listener.accept().await.unwrap();
        let (received, outage) = (received.clone(), outage.clone());
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let (received, outage) = (received.clone(), outage.clone());
                async move {
                    let path = request.uri().path().to_owned();
                    let encoding = request
                        .headers()
                        .get("content-encoding")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    let body = request.into_body().collect().await?.to_bytes();
                    let reply = match path.as_str() {
                        "/count" => received.load(Ordering::SeqCst).to_string(),
                        "/reset" => {
                            received.store(0, Ordering::SeqCst);
                            String::new()
                        }
                        "/outage/on" => {
                            outage.store(true, Ordering::SeqCst);
                            String::new()
                        }
                        "/outage/off" => {
                            outage.store(false, Ordering::SeqCst);
                            String::new()
                        }
                        _ if outage.load(Ordering::SeqCst) => {
                            let mut response = Response::new(Full::new(Bytes::new()));
                            *response.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
                            return Ok::<_, hyper::Error>(response);
                        }
                        _ => {
                            let decoded = decode(encoding.as_deref(), &body);
                            let json: serde_json::Value =
                                serde_json::from_slice(&decoded).unwrap_or_default();
                            let batch = json["batch"].as_array().cloned().unwrap_or_default();
                            received.fetch_add(batch.len().max(1) as u64, Ordering::SeqCst);
                            if path.starts_with("/i/v1/") {
                                let results: serde_json::Map<String, serde_json::Value> = batch
                                    .iter()
                                    .filter_map(|event| event["uuid"].as_str())
                                    .map(|uuid| {
                                        (uuid.to_owned(), serde_json::json!({"result": "ok"}))
                                    })
                                    .collect();
                                serde_json::json!({ "results": results }).to_string()
                            } else {
                                r#"{"status":"Ok"}"#.to_owned()
                            }
                        }
                    };
                    Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from(reply))))
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// A request body decoded as its `Content-Encoding` says (empty when it is not valid).
fn decode(encoding: Option<&str>, body: &[u8]) -> Vec<u8> {
    let mut decoded = Vec::new();
    let _ = match encoding {
        Some("gzip") => flate2::read::GzDecoder::new(body).read_to_end(&mut decoded),
        Some("deflate") => flate2::read::ZlibDecoder::new(body).read_to_end(&mut decoded),
        Some("br") => brotli::Decompressor::new(body, 4096).read_to_end(&mut decoded),
        Some("zstd") => zstd::stream::read::Decoder::new(body)
            .and_then(|mut decoder| decoder.read_to_end(&mut decoded)),
        _ => return body.to_vec(),
    };
    decoded
}

struct Sink {
    child: Child,
    url: String,
    http: reqwest::Client,
}

impl Sink {
    fn start() -> Sink {
        let port = free_port();
        let child = spawn_sink(port);
        std::thread::sleep(Duration::from_millis(300));
        Sink {
            child,
            url: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
        }
    }

    async fn call(&self, path: &str) -> String {
        post(&self.http, format!("{}{path}", self.url)).await
    }

    async fn count(&self) -> u64 {
        self.call("/count").await.parse().unwrap_or(0)
    }

    /// Waits until `expected` events arrived or the count stops growing for a second.
    async fn settle(&self, expected: u64) -> u64 {
        let (mut last, mut still) = (0, Instant::now());
        loop {
            let count = self.count().await;
            if count >= expected {
                return count;
            }
            if count != last {
                (last, still) = (count, Instant::now());
            } else if still.elapsed() > Duration::from_secs(1) {
                return count;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

// ---------------------------------------------------------------------------------------------
// Measurement

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

struct Run {
    name: String,
    delivered: u64,
    wall: Duration,
    cpu: Duration,
}

impl Run {
    fn print(&self) {
        let per_second = self.delivered as f64 / self.wall.as_secs_f64();
        let cpu_us = self.cpu.as_secs_f64() * 1e6 / self.delivered.max(1) as f64;
        println!(
            "  {:<64} delivered {:>7} of {}  {:>9.0} events/s  {:>6.2} us CPU/event",
            self.name,
            self.delivered,
            burst(),
            per_second,
            cpu_us
        );
    }
}

async fn measure<F: std::future::Future<Output = ()>>(
    sink: &Sink,
    name: &str,
    expected: u64,
    burst: F,
) -> Run {
    sink.call("/reset").await;
    let (started, cpu) = (Instant::now(), cpu_time("self"));
    burst.await;
    let delivered = sink.settle(expected).await;
    // `settle` may have waited a second for a count that stopped short: do not bill it.
    let wall = if delivered >= expected {
        started.elapsed()
    } else {
        started.elapsed() - Duration::from_secs(1)
    };
    Run {
        name: name.to_owned(),
        delivered,
        wall,
        cpu: cpu_time("self") - cpu,
    }
}

fn event(n: u64) -> Event {
    Event::new("bench_event")
        .distinct_id(format!("user-{}", n % 1000))
        .property("n", n)
}

fn posthog_rs_event(n: u64) -> posthog_rs::Event {
    let mut event = posthog_rs::Event::new("bench_event".to_owned(), format!("user-{}", n % 1000));
    let _ = event.insert_prop("n", n);
    event
}

// ---------------------------------------------------------------------------------------------
// Scenarios

#[tokio::main]
async fn orchestrate() {
    let burst = burst();
    println!("delivery benchmark: bursts of {burst} small events into one local sink\n");
    let sink = Sink::start();
    let mut runs = Vec::new();

    // (b) in-memory capture, v0 and v1
    for (name, batch, mode, compression) in [
        (
            "posthog-track capture, gzip, batch 1000",
            1000,
            CaptureMode::V0,
            Compression::Gzip,
        ),
        (
            "posthog-track capture, no gzip, batch 1000",
            1000,
            CaptureMode::V0,
            Compression::None,
        ),
        (
            "posthog-track capture, defaults (gzip, batch 500)",
            500,
            CaptureMode::V0,
            Compression::Gzip,
        ),
        (
            "posthog-track capture v1, gzip, batch 1000",
            1000,
            CaptureMode::V1,
            Compression::Gzip,
        ),
        (
            "posthog-track capture v1, zstd, batch 1000",
            1000,
            CaptureMode::V1,
            Compression::Zstd,
        ),
    ] {
        let tracker = Tracker::builder()
            .api_key("phc_bench")
            .host(&sink.url)
            .unwrap()
            .batch_size(batch)
            .capture_mode(mode)
            .compression(compression)
            .build();
        runs.push(
            measure(&sink, name, burst, async {
                for n in 0..burst {
                    tracker.capture(event(n)).await.unwrap();
                }
                tracker.flush().await.unwrap();
            })
            .await,
        );
        tracker.shutdown(Duration::from_secs(5)).await.unwrap();
    }

    for (name, queue, batch, gzip) in [
        (
            "posthog-rs 0.30 defaults (queue 10k, batch 100, no gzip)",
            None,
            None,
            false,
        ),
        (
            "posthog-rs 0.30 queue 200k, batch 1000, no gzip",
            Some(200_000usize),
            Some(1000usize),
            false,
        ),
        (
            "posthog-rs 0.30 queue 200k, batch 1000, gzip",
            Some(200_000),
            Some(1000),
            true,
        ),
    ] {
        let mut options = posthog_rs::ClientOptionsBuilder::default();
        options
            .api_key("phc_bench".to_owned())
            .host(sink.url.clone());
        if let (Some(queue), Some(batch)) = (queue, batch) {
            options
                .max_queue_size(queue)
                .flush_at(batch)
                .max_batch_size(batch);
        }
        if gzip {
            options.capture_compression(posthog_rs::CaptureCompression::Gzip);
        }
        let client = posthog_rs::client(options.build().unwrap()).await;
        runs.push(
            measure(&sink, name, burst, async {
                for n in 0..burst {
                    client.capture(posthog_rs_event(n));
                }
                client.flush().await;
            })
            .await,
        );
        client.shutdown().await;
    }

    // posthog-rs 0.30 with `capture-v1`, in its own process (see the module docs).
    for compression in ["gzip", "zstd"] {
        let name = format!("posthog-rs 0.30 capture-v1, {compression}, queue 200k, batch 1000");
        match posthog_rs_v1(&sink, compression, burst).await {
            Ok(run) => runs.push(Run { name, ..run }),
            Err(why) => println!("  {name}: not measured: {why}"),
        }
    }

    // (a) end to end from the outbox: the burst is committed first, then one relay drains it.
    let dir = std::env::temp_dir().join(format!(
        "posthog-track-delivery-bench-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    for (file, name, mode, compression) in [
        (
            "v0-gzip",
            "posthog-track outbox relay (SQLite), gzip, batch 1000",
            CaptureMode::V0,
            Compression::Gzip,
        ),
        (
            "v0-plain",
            "posthog-track outbox relay (SQLite), no gzip, batch 1000",
            CaptureMode::V0,
            Compression::None,
        ),
        (
            "v1-gzip",
            "posthog-track outbox relay v1 (SQLite), gzip, batch 1000",
            CaptureMode::V1,
            Compression::Gzip,
        ),
        (
            "v1-zstd",
            "posthog-track outbox relay v1 (SQLite), zstd, batch 1000",
            CaptureMode::V1,
            Compression::Zstd,
        ),
    ] {
        let pool = sqlite_pool(&dir.join(format!("outbox-{file}.db"))).await;
        let tracker = Tracker::builder()
            .api_key("phc_bench")
            .host(&sink.url)
            .unwrap()
            .batch_size(1000)
            .capture_mode(mode)
            .compression(compression)
            // Only the measured relay delivers: a background one would send part of the burst
            // before the measurement starts.
            .external_relay(true)
            .build();
        tracker.migrate(&pool).await.unwrap();
        fill_outbox(&tracker, &pool, burst).await;
        runs.push(
            measure(&sink, name, burst, async {
                tracker.relay(pool.clone()).drain().await.unwrap();
            })
            .await,
        );
        pool.close().await;
    }
    let _ = std::fs::remove_dir_all(&dir);

    for run in &runs {
        run.print();
    }

    // Memory while a large backlog waits out an outage, in a fresh process.
    println!();
    sink.call("/outage/on").await;
    let output = Command::new(std::env::current_exe().unwrap())
        .args(["--outage-memory", sink.url.rsplit(':').next().unwrap()])
        .output()
        .unwrap();
    print!("{}", String::from_utf8_lossy(&output.stdout));
    sink.call("/outage/off").await;
}

/// Builds (once) and runs `benches/posthog-rs-v1` against the sink: posthog-rs with
/// `capture-v1`, which prints `delivered-in-flush wall_ms cpu_ms` of its burst.
async fn posthog_rs_v1(sink: &Sink, compression: &str, burst: u64) -> Result<Run, String> {
    let manifest =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("posthog-rs-v1/Cargo.toml");
    let built = Command::new(env!("CARGO"))
        .args(["build", "--release", "--quiet", "--manifest-path"])
        .arg(&manifest)
        .status()
        .map_err(|e| format!("cargo: {e}"))?;
    if !built.success() {
        return Err(format!("building {} failed", manifest.display()));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| manifest.parent().unwrap().join("target"));
    let binary = target.join("release/posthog-rs-v1-bench");
    sink.call("/reset").await;
    let output = Command::new(&binary)
        .args([sink.url.as_str(), compression, &burst.to_string()])
        .output()
        .map_err(|e| format!("{}: {e}", binary.display()))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let fields: Vec<u64> = text
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    let [_, wall_ms, cpu_ms] = fields[..] else {
        return Err(format!("unexpected output: {text}"));
    };
    let delivered = sink.settle(burst).await;
    Ok(Run {
        name: String::new(),
        delivered,
        wall: Duration::from_millis(wall_ms.max(1)),
        cpu: Duration::from_millis(cpu_ms),
    })
}

async fn sqlite_pool(path: &std::path::Path) -> sqlx::SqlitePool {
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .synchronous(sqlx::sqlite::SqliteSynchronous::Normal);
    sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(2)
        .connect_with(options)
        .await
        .unwrap()
}

async fn fill_outbox(tracker: &Tracker, pool: &sqlx::SqlitePool, events: u64) {
    let mut n = 0;
    while n < events {
        let mut tx = tracker.begin(pool).await.unwrap();
        for _ in 0..1000.min(events - n) {
            tx.capture(event(n)).unwrap();
            n += 1;
        }
        tx.commit().await.unwrap();
    }
}

#[tokio::main]
async fn outage_memory(port: u16) {
    let dir =
        std::env::temp_dir().join(format!("posthog-track-outage-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pool = sqlite_pool(&dir.join("outbox.db")).await;
    let tracker = Tracker::builder()
        .api_key("phc_bench")
        .host(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .batch_size(1000)
        .build();
    tracker.migrate(&pool).await.unwrap();
    let started = Instant::now();
    tracker.start_relay(pool.clone()).unwrap();
    fill_outbox(&tracker, &pool, outage_backlog()).await;
    // Let the relay keep failing against the backlog for a while.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let waiting = tracker.outbox(&pool).status().await.unwrap().pending;
    println!(
        "outage: {waiting} events waiting in the SQLite outbox (committed in {:.1} s while the relay \
         retried against 503s); peak RSS of the process {:.1} MiB",
        started.elapsed().as_secs_f64(),
        peak_rss_mib()
    );
    let _ = tracker.shutdown(Duration::from_millis(100)).await;
    pool.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}
