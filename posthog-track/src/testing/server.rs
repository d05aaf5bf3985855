//! The mock's wiring: the listener, and the routing of each request to its endpoint.

use std::sync::{Arc, Mutex};

use hyper::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Notify;

use super::state::{Dropped, HttpResponse, MockPostHog, Shared, respond};
use super::{app_api, capture, flags};

const DEFAULT_API_KEY: &str = "phc_mock_project_key";

impl MockPostHog {
    /// Starts a mock that accepts the key `phc_mock_project_key`.
    pub async fn start() -> MockPostHog {
        Self::start_with_api_key(DEFAULT_API_KEY).await
    }

    /// Starts a mock that accepts `api_key`.
    ///
    /// # Panics
    ///
    /// When no port on 127.0.0.1 can be bound (a broken test machine).
    pub async fn start_with_api_key(api_key: &str) -> MockPostHog {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0 for MockPostHog");
        let address = listener.local_addr().expect("local address of MockPostHog");
        let shared = Arc::new(Shared {
            api_key: api_key.to_owned(),
            state: Mutex::default(),
            arrived: Notify::new(),
        });
        let server_shared = shared.clone();
        let server = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let shared = server_shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| handle(shared.clone(), request));
                    // A dropped connection ends here with an error; that is the point of it.
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        MockPostHog {
            address,
            shared,
            server,
        }
    }

    /// `http://127.0.0.1:PORT`, to use as the PostHog host.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// The project key the mock accepts.
    pub fn api_key(&self) -> &str {
        &self.shared.api_key
    }
}

/// Routes a request to its endpoint.
async fn handle(shared: Arc<Shared>, request: Request<Incoming>) -> Result<HttpResponse, Dropped> {
    let path = request.uri().path();
    if path.starts_with("/api/projects/") {
        return app_api::serve(&shared, request).await;
    }
    match path {
        "/flags/definitions" | "/flags/definitions/" => flags::definitions(&shared, request).await,
        "/flags/" | "/flags" => flags::remote(&shared, request).await,
        "/batch/"
        | "/batch"
        | "/capture/"
        | "/capture"
        | "/e/"
        | "/i/v0/e/"
        | "/i/v1/analytics/events"
        | "/i/v1/analytics/events/" => capture::request(&shared, request).await,
        _ => Ok(respond(
            404,
            json!({"type": "not_found", "detail": "unknown endpoint"}),
            None,
        )),
    }
}
