//! The app API's definitions endpoints (`/api/projects/{id}/event_definitions/` and
//! `.../property_definitions/`), which `plan push` reads and patches.

use http_body_util::BodyExt as _;
use hyper::Request;
use hyper::body::Incoming;
use serde_json::{Value, json};
use uuid::Uuid;

use super::state::{
    ApiRequest, AppApiState, Dropped, HttpResponse, MockDefinition, MockPostHog, Outage, Shared,
    invalid, outage, respond,
};

const PERSONAL_API_KEY: &str = "phx_mock_personal_key";
const PROPERTY_TYPES: [&str; 5] = ["DateTime", "String", "Numeric", "Boolean", "Duration"];

impl MockPostHog {
    /// The personal API key the mock's app API accepts (`Authorization: Bearer ...`).
    pub fn personal_api_key(&self) -> &'static str {
        PERSONAL_API_KEY
    }

    /// Stores `definition` in the list `list` picks; returns its id.
    fn add_definition(
        &self,
        definition: MockDefinition,
        list: impl FnOnce(&mut AppApiState) -> &mut Vec<MockDefinition>,
    ) -> Uuid {
        let id = definition.id;
        list(&mut self.shared.state().app_api).push(definition);
        id
    }

    /// Adds an event definition, as PostHog creates on an event's first ingestion.
    pub fn add_event_definition(&self, name: &str, description: Option<&str>) -> Uuid {
        self.add_definition(definition(name, description, None), |api| {
            &mut api.event_definitions
        })
    }

    /// Adds an event property definition.
    pub fn add_property_definition(
        &self,
        name: &str,
        property_type: Option<&str>,
        description: Option<&str>,
    ) -> Uuid {
        self.add_definition(definition(name, description, property_type), |api| {
            &mut api.property_definitions
        })
    }

    /// The event definitions, sorted by name, as patched so far.
    pub fn event_definitions(&self) -> Vec<MockDefinition> {
        sorted(&self.shared.state().app_api.event_definitions)
    }

    /// The event property definitions, sorted by name, as patched so far.
    pub fn property_definitions(&self) -> Vec<MockDefinition> {
        sorted(&self.shared.state().app_api.property_definitions)
    }

    /// Every request to the app API (`/api/projects/...`).
    pub fn api_requests(&self) -> Vec<ApiRequest> {
        self.shared.state().app_api.requests.clone()
    }
}

fn definition(
    name: &str,
    description: Option<&str>,
    property_type: Option<&str>,
) -> MockDefinition {
    MockDefinition {
        id: Uuid::new_v4(),
        name: name.to_owned(),
        description: description.map(str::to_owned),
        property_type: property_type.map(str::to_owned),
    }
}

fn sorted(definitions: &[MockDefinition]) -> Vec<MockDefinition> {
    let mut definitions = definitions.to_vec();
    definitions.sort_by(|a, b| a.name.cmp(&b.name));
    definitions
}

fn definition_json(definition: &MockDefinition, property: bool) -> Value {
    let mut value = json!({
        "id": definition.id.to_string(),
        "name": definition.name,
        "description": definition.description,
        "tags": [],
    });
    if property {
        value["property_type"] = json!(definition.property_type);
    }
    value
}

/// The app API's definitions endpoints: paged lists (limit/offset, `next` as an absolute URL)
/// and `PATCH` of one definition, behind `Authorization: Bearer <personal key>`.
pub(super) async fn serve(
    shared: &Shared,
    request: Request<Incoming>,
) -> Result<HttpResponse, Dropped> {
    let method = request.method().as_str().to_owned();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or_default().to_owned();
    let host = request
        .headers()
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let authorized = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        == Some(format!("Bearer {PERSONAL_API_KEY}").as_str());
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => return Err(Dropped),
    };
    let outage = outage(shared, &body).await;
    let unanswered = matches!(outage, Outage::HandleUnanswered);
    let response = match outage {
        Outage::Answer(answer) => answer,
        Outage::Drop => {
            record(shared, method, path, &query, 0);
            return Err(Dropped);
        }
        Outage::Handle | Outage::HandleUnanswered if authorized => {
            definitions_endpoint(shared, &method, &path, &query, &host, &body)
        }
        Outage::Handle | Outage::HandleUnanswered => respond(
            401,
            json!({"type": "authentication_error", "code": "authentication_failed", "detail": "Personal API key found in request Authorization header is invalid."}),
            None,
        ),
    };
    record(shared, method, path, &query, response.status().as_u16());
    if unanswered {
        std::future::pending::<()>().await;
    }
    Ok(response)
}

/// Records an app API request and the status answered (0 for a dropped connection).
fn record(shared: &Shared, method: String, path: String, query: &str, status: u16) {
    shared.state().app_api.requests.push(ApiRequest {
        method,
        path: if query.is_empty() {
            path
        } else {
            format!("{path}?{query}")
        },
        status,
    });
}

fn definitions_endpoint(
    shared: &Shared,
    method: &str,
    path: &str,
    query: &str,
    host: &str,
    body: &[u8],
) -> HttpResponse {
    let not_found = || {
        respond(
            404,
            json!({"type": "invalid_request", "code": "not_found", "detail": "Not found."}),
            None,
        )
    };
    // /api/projects/{project}/{collection}/[{id}/]
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (collection, id) = match segments.as_slice() {
        ["api", "projects", project, collection] if project.parse::<u64>().is_ok() => {
            (*collection, None)
        }
        ["api", "projects", project, collection, id] if project.parse::<u64>().is_ok() => {
            (*collection, Some(*id))
        }
        _ => return not_found(),
    };
    let property = match collection {
        "event_definitions" => false,
        "property_definitions" => true,
        _ => return not_found(),
    };
    let mut state = shared.state();
    let definitions = if property {
        &mut state.app_api.property_definitions
    } else {
        &mut state.app_api.event_definitions
    };
    match (method, id) {
        ("GET", None) => {
            let param = |name: &str| {
                query
                    .split('&')
                    .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
                    .and_then(|v| v.parse::<usize>().ok())
            };
            let limit = param("limit").unwrap_or(100).max(1);
            let offset = param("offset").unwrap_or(0);
            let all = sorted(definitions);
            let results: Vec<Value> = all
                .iter()
                .skip(offset)
                .take(limit)
                .map(|d| definition_json(d, property))
                .collect();
            let next = (offset + limit < all.len()).then(|| {
                let kept: Vec<&str> = query
                    .split('&')
                    .filter(|p| {
                        !p.is_empty() && !p.starts_with("offset=") && !p.starts_with("limit=")
                    })
                    .collect();
                let mut next_query = kept.join("&");
                if !next_query.is_empty() {
                    next_query.push('&');
                }
                format!(
                    "http://{host}{path}?{next_query}limit={limit}&offset={}",
                    offset + limit
                )
            });
            respond(
                200,
                json!({"count": all.len(), "next": next, "previous": null, "results": results}),
                None,
            )
        }
        ("PATCH", Some(id)) => {
            let Some(definition) = definitions.iter_mut().find(|d| d.id.to_string() == id) else {
                return not_found();
            };
            let Ok(Value::Object(patch)) = serde_json::from_slice::<Value>(body) else {
                return invalid("body is not a JSON object");
            };
            let mut updated = definition.clone();
            if let Some(description) = patch.get("description") {
                updated.description = description.as_str().map(str::to_owned);
            }
            if let Some(property_type) = patch.get("property_type") {
                if !property {
                    return invalid("event definitions have no property_type");
                }
                match property_type.as_str() {
                    Some(ty) if PROPERTY_TYPES.contains(&ty) => {
                        updated.property_type = Some(ty.to_owned());
                    }
                    None if property_type.is_null() => updated.property_type = None,
                    _ => return invalid(format!("{property_type} is not a valid choice")),
                }
            }
            *definition = updated.clone();
            respond(200, definition_json(&updated, property), None)
        }
        _ => respond(
            405,
            json!({"type": "invalid_request", "code": "method_not_allowed", "detail": "Method not allowed."}),
            None,
        ),
    }
}
