//! The adapter that lets PostHog's SDK test harness (`PostHog/posthog-sdk-test-harness`) drive
//! posthog-track, following the protocol of the harness's ADAPTER_GUIDE.md:
//!
//! ```text
//! cargo run --release -p compliance-adapter -- --port 8080
//! posthog-test-harness run --adapter-url http://127.0.0.1:8080 --suite capture --sdk-type server
//! ```
//!
//! Each `/init` builds a fresh `Tracker` from the library's own configuration
//! (`Config::from_env`: `POSTHOG_CAPTURE_MODE`, `POSTHOG_COMPRESSION`) pointed at the harness's
//! mock PostHog; `/capture` goes through `Tracker::capture` (the in-memory queue), `/flush`
//! through `Tracker::flush`. `/health` advertises `capture_v1` and the encoding in force when
//! that configuration says v1, `capture_v0` and gzip otherwise:
//!
//! ```text
//! POSTHOG_CAPTURE_MODE=v1 POSTHOG_COMPRESSION=zstd cargo run --release -p compliance-adapter
//! posthog-test-harness run ... --suite capture_v1 --sdk-type server
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use posthog_track::flags::{FlagValue, FlagsRequest};
use posthog_track::{CaptureMode, Compression, Config, Event, EventOptions, Tracker};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

#[derive(Parser)]
#[command(about = "posthog-track adapter for PostHog's SDK test harness")]
struct Args {
    /// Port to listen on, on 127.0.0.1.
    #[arg(long, default_value_t = 8080)]
    port: u16,
}

#[derive(Default)]
struct Adapter {
    tracker: Option<Tracker>,
    captured: u64,
    last_error: Option<String>,
}

type Shared = Arc<Mutex<Adapter>>;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], args.port))).await?;
    eprintln!(
        "compliance adapter listening on http://127.0.0.1:{}",
        args.port
    );
    let adapter = Shared::default();
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(serve(stream, adapter.clone()));
    }
}

/// Answers the requests of one connection, until the harness closes it.
async fn serve(stream: TcpStream, adapter: Shared) {
    let service = service_fn(move |request| handle(adapter.clone(), request));
    let _ = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

async fn handle(
    adapter: Shared,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    let body = request.into_body().collect().await?.to_bytes();
    let params: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (status, reply) = match (method, path.as_str()) {
        (Method::GET, "/health") => (200, health()),
        (Method::POST, "/init") => init(&adapter, &params).await,
        (Method::POST, "/capture") => capture(&adapter, &params).await,
        (Method::POST, "/flush") => flush(&adapter).await,
        (Method::POST, "/get_feature_flag") => get_feature_flag(&adapter, &params).await,
        (Method::GET, "/state") => (200, state(&adapter).await),
        (Method::POST, "/reset") => reset(&adapter).await,
        _ => (
            404,
            json!({"success": false, "error": format!("no endpoint {path}")}),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(reply.to_string())));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// The library's configuration from the environment, as a tracker built by `/init` uses it.
fn configuration() -> Result<Config, posthog_track::Error> {
    Config::from_env()
}

/// What the configuration in force supports: v1 and its one encoding, or v0 and gzip.
fn capabilities(config: &Config) -> Vec<String> {
    match config.capture_mode() {
        CaptureMode::V1 => {
            let mut capabilities = vec!["capture_v1".to_owned()];
            if let Some(encoding) = config.compression().content_encoding() {
                capabilities.push(format!("encoding_{encoding}"));
            }
            capabilities
        }
        _ => vec!["capture_v0".to_owned(), "encoding_gzip".to_owned()],
    }
}

fn health() -> Value {
    let capabilities = match configuration() {
        Ok(config) => capabilities(&config),
        Err(error) => {
            eprintln!("compliance adapter: bad configuration: {error}");
            Vec::new()
        }
    };
    json!({
        "sdk_name": posthog_track::LIB_NAME,
        "sdk_version": posthog_track::LIB_VERSION,
        "adapter_version": "1.0.0",
        "capabilities": capabilities,
    })
}

fn failure(error: impl std::fmt::Display) -> (u16, Value) {
    (500, json!({"success": false, "error": error.to_string()}))
}

async fn init(adapter: &Shared, params: &Value) -> (u16, Value) {
    let (Some(api_key), Some(host)) = (params["api_key"].as_str(), params["host"].as_str()) else {
        return (
            400,
            json!({"success": false, "error": "`api_key` and `host` are required"}),
        );
    };
    let config = match configuration() {
        Ok(config) => config,
        Err(error) => return failure(error),
    };
    let v1 = config.capture_mode() == CaptureMode::V1;
    let configured = config.compression();
    let mut builder = match Tracker::builder()
        .config(config)
        .api_key(api_key)
        .host(host)
    {
        Ok(builder) => builder,
        Err(error) => return failure(error),
    };
    if let Some(flush_at) = params["flush_at"].as_u64() {
        builder = builder.batch_size(usize::try_from(flush_at).unwrap_or(usize::MAX));
    }
    if let Some(interval) = params["flush_interval_ms"].as_u64() {
        builder = builder.flush_interval(Duration::from_millis(interval));
    }
    if let Some(retries) = params["max_retries"].as_u64() {
        builder = builder.max_retries(u32::try_from(retries).unwrap_or(u32::MAX));
    }
    // v1: the configured encoding only when the test enables compression (the harness's mock
    // reads gzip alone); v0: gzip unless the test disables it.
    let compress = params["enable_compression"].as_bool();
    builder = match (v1, compress) {
        (true, Some(true)) => builder.compression(configured),
        (true, _) => builder.compression(Compression::None),
        (false, Some(gzip)) => builder.gzip(gzip),
        (false, None) => builder,
    };
    if let Some(disable) = params["disable_geoip"].as_bool() {
        builder = builder.disable_geoip(disable);
    }
    if let Some(historical) = params["historical_migration"].as_bool() {
        builder = builder.historical_migration(historical);
    }
    let mut adapter = adapter.lock().await;
    if let Some(old) = adapter.tracker.take() {
        let _ = old.shutdown(Duration::ZERO).await;
    }
    *adapter = Adapter {
        tracker: Some(builder.build()),
        ..Adapter::default()
    };
    (200, json!({"success": true}))
}

async fn capture(adapter: &Shared, params: &Value) -> (u16, Value) {
    let (Some(distinct_id), Some(name)) =
        (params["distinct_id"].as_str(), params["event"].as_str())
    else {
        return (
            400,
            json!({"success": false, "error": "`distinct_id` and `event` are required"}),
        );
    };
    let mut event = Event::new(name.to_owned()).distinct_id(distinct_id);
    if let Some(properties) = params["properties"].as_object() {
        for (key, value) in properties {
            event = event.property(key.clone(), value.clone());
        }
    }
    if let Some(options) = params["options"].as_object() {
        let mut chosen = EventOptions::new();
        if let Some(on) = options.get("cookieless_mode").and_then(Value::as_bool) {
            chosen = chosen.cookieless_mode(on);
        }
        if let Some(on) = options
            .get("disable_skew_correction")
            .and_then(Value::as_bool)
        {
            chosen = chosen.disable_skew_correction(on);
        }
        if let Some(on) = options
            .get("process_person_profile")
            .and_then(Value::as_bool)
        {
            chosen = chosen.process_person_profile(on);
        }
        if let Some(id) = options.get("product_tour_id").and_then(Value::as_str) {
            chosen = chosen.product_tour_id(id);
        }
        event = event.options(chosen);
    }
    if let Some(timestamp) = params["timestamp"].as_str() {
        match chrono::DateTime::parse_from_rfc3339(timestamp) {
            Ok(at) => event = event.timestamp(at),
            Err(error) => {
                return (
                    400,
                    json!({"success": false, "error": format!("timestamp: {error}")}),
                );
            }
        }
    }
    let tracker = {
        let mut adapter = adapter.lock().await;
        adapter.captured += 1;
        adapter.tracker.clone()
    };
    let Some(tracker) = tracker else {
        return (400, json!({"success": false, "error": "call /init first"}));
    };
    match tracker.capture(event).await {
        Ok(uuid) => (
            200,
            json!({"success": true, "uuid": uuid.map(|uuid| uuid.to_string())}),
        ),
        Err(error) => failure(error),
    }
}

async fn flush(adapter: &Shared) -> (u16, Value) {
    let Some(tracker) = adapter.lock().await.tracker.clone() else {
        return (200, json!({"success": true, "events_flushed": 0}));
    };
    let before = tracker.stats().delivered;
    let result = tracker.flush().await;
    let flushed = tracker.stats().delivered - before;
    match result {
        Ok(()) => (200, json!({"success": true, "events_flushed": flushed})),
        Err(error) => {
            adapter.lock().await.last_error = Some(error.to_string());
            (
                200,
                json!({"success": false, "events_flushed": flushed, "error": error.to_string()}),
            )
        }
    }
}

async fn state(adapter: &Shared) -> Value {
    let adapter = adapter.lock().await;
    let stats = adapter
        .tracker
        .as_ref()
        .map(Tracker::stats)
        .unwrap_or_default();
    json!({
        "pending_events": adapter.captured.saturating_sub(stats.delivered + stats.dropped_after_retries + stats.dead_lettered),
        "total_events_captured": adapter.captured,
        "total_events_sent": stats.delivered,
        "total_retries": stats.retried,
        "last_error": adapter.last_error,
        "requests_made": [],
    })
}

/// Throws the client away without delivering what it holds: the harness has already reset its
/// mock for the next test, which must not receive this one's events.
/// Throws the client away without delivering what it holds: the harness has already reset its
/// mock for the next test, which must not receive this one's events.
async fn reset(adapter: &Shared) -> (u16, Value) {
    let mut adapter = adapter.lock().await;
    if let Some(tracker) = adapter.tracker.take() {
        let _ = tracker.shutdown(Duration::ZERO).await;
    }
    *adapter = Adapter::default();
    (200, json!({"success": true}))
}

async fn get_feature_flag(adapter: &Shared, params: &Value) -> (u16, Value) {
    let (Some(key), Some(distinct_id)) = (params["key"].as_str(), params["distinct_id"].as_str())
    else {
        return (
            400,
            json!({"success": false, "error": "`key` and `distinct_id` are required"}),
        );
    };
    let Some(tracker) = adapter.lock().await.tracker.clone() else {
        return (400, json!({"success": false, "error": "call /init first"}));
    };
    let mut request = FlagsRequest::new(distinct_id);
    request.force_remote = params["force_remote"].as_bool().unwrap_or(false);
    if let Some(properties) = params["person_properties"].as_object() {
        request.person_properties = properties.clone();
    }
    if let Some(groups) = params["groups"].as_object() {
        for (group_type, group_key) in groups {
            let key = group_key
                .as_str()
                .map_or_else(|| group_key.to_string(), str::to_owned);
            request = request.group(group_type.clone(), key);
        }
    }
    if let Some(group_properties) = params["group_properties"].as_object() {
        for (group_type, properties) in group_properties {
            if let Some(properties) = properties.as_object() {
                request
                    .group_properties
                    .insert(group_type.clone(), properties.clone());
            }
        }
    }
    request.disable_geoip = params["disable_geoip"].as_bool().unwrap_or(false);
    match tracker.get_feature_flag(key, request).await {
        Ok(value) => {
            let value = match value {
                Some(FlagValue::Variant(variant)) => json!(variant),
                Some(FlagValue::Enabled(enabled)) => json!(enabled),
                None => Value::Null,
            };
            (200, json!({"success": true, "value": value}))
        }
        Err(error) => failure(error),
    }
}
