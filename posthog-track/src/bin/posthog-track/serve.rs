//! `/metrics` (Prometheus) and `/healthz` of `posthog-track relay --metrics-addr`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use posthog_track::relay::RelayState;
use posthog_track::{Backend, Tracker, metrics};
use serde_json::json;
use sqlx::Pool;

use crate::CliError;

/// How often the relay samples the outbox gauges while metrics are served.
pub const OUTBOX_SAMPLE_INTERVAL: Duration = Duration::from_secs(15);

/// How long `/healthz` waits for the outbox's figures before it answers that they cannot be
/// read.
const HEALTH_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Histogram buckets, in seconds, for request latency to PostHog.
const REQUEST_BUCKETS: &[f64] = &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
/// Histogram buckets, in seconds, from commit to delivery.
const DELIVERY_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];
/// Histogram buckets for events per request.
const BATCH_BUCKETS: &[f64] = &[1.0, 5.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0];

/// What `/healthz` looks at: the relay's state and the outbox's lag.
pub struct Health<DB: Backend> {
    tracker: Tracker,
    pool: Pool<DB>,
    max_lag: Duration,
}

impl<DB: Backend> Health<DB> {
    pub fn new(tracker: Tracker, pool: Pool<DB>, max_lag: Duration) -> Self {
        Health {
            tracker,
            pool,
            max_lag,
        }
    }

    /// Whether the relay is healthy, and the figures that say so.
    async fn check(&self) -> (bool, serde_json::Value) {
        let mut problems = Vec::new();
        let relay = match self.tracker.relay_state() {
            Some(RelayState::Running) => "running",
            Some(RelayState::BackingOff) => "backing_off",
            Some(RelayState::Paused) => {
                problems.push(
                    "the relay is paused: PostHog refuses the set-up (key or host); see the log"
                        .to_owned(),
                );
                "paused"
            }
            Some(RelayState::Stopped) => {
                problems.push("the relay stopped by itself (it panicked); see the log".to_owned());
                "stopped"
            }
            Some(_) => "unknown",
            None => {
                problems.push("no relay runs".to_owned());
                "stopped"
            }
        };
        let mut body = json!({"relay": relay, "max_lag_seconds": self.max_lag.as_secs_f64()});
        // Bounded: a locked outbox (a migration, `VACUUM FULL`) held the answer without end,
        // and a database gone away for the pool's 30 s, so a probe got no answer at all.
        let status = match tokio::time::timeout(
            HEALTH_READ_TIMEOUT,
            self.tracker.outbox(&self.pool).status(),
        )
        .await
        {
            Ok(read) => read.map_err(|error| error.to_string()),
            Err(_) => Err(format!(
                "the database did not answer within {} s (a lock on the outbox, or the \
                 database unreachable)",
                HEALTH_READ_TIMEOUT.as_secs()
            )),
        };
        match status {
            Ok(status) => {
                status.record_metrics();
                let age = status.oldest_pending_age.unwrap_or_default();
                if age > self.max_lag {
                    problems.push(format!(
                        "the oldest pending event is {} s old, over --max-lag {} s",
                        age.as_secs(),
                        self.max_lag.as_secs()
                    ));
                }
                body["pending"] = status.pending.into();
                body["dead"] = status.dead.into();
                body["oldest_pending_age_seconds"] = age.as_secs_f64().into();
            }
            Err(error) => problems.push(format!("the outbox cannot be read: {error}")),
        }
        let healthy = problems.is_empty();
        body["status"] = if healthy { "ok" } else { "unhealthy" }.into();
        body["problems"] = problems.into();
        (healthy, body)
    }
}

/// Installs the Prometheus recorder and serves `/metrics` and `/healthz` on `addr`; returns
/// the address bound.
pub async fn start<DB: Backend>(
    addr: SocketAddr,
    health: Health<DB>,
) -> Result<SocketAddr, CliError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(metrics::REQUEST_DURATION.to_owned()),
            REQUEST_BUCKETS,
        )?
        .set_buckets_for_metric(
            Matcher::Full(metrics::COMMIT_TO_DELIVERY.to_owned()),
            DELIVERY_BUCKETS,
        )?
        .set_buckets_for_metric(Matcher::Full(metrics::BATCH_SIZE.to_owned()), BATCH_BUCKETS)?
        .install_recorder()?;
    metrics::describe();
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| CliError::Listen { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| CliError::Listen { addr, source })?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(Duration::from_secs(5));
        loop {
            ticks.tick().await;
            upkeep.run_upkeep();
        }
    });
    let shared = Arc::new((handle, health));
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "metrics endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let shared = shared.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let shared = shared.clone();
                    async move { Ok::<_, Infallible>(answer(&shared.0, &shared.1, &request).await) }
                });
                // A client that hangs up mid-request ends here; nothing to do about it.
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(bound)
}

async fn answer<DB: Backend, B>(
    prometheus: &PrometheusHandle,
    health: &Health<DB>,
    request: &Request<B>,
) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match request.uri().path() {
        "/metrics" => (
            StatusCode::OK,
            "text/plain; version=0.0.4",
            prometheus.render(),
        ),
        "/healthz" => {
            let (healthy, body) = health.check().await;
            let status = if healthy {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            (status, "application/json", body.to_string())
        }
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: /metrics or /healthz\n".to_owned(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}
