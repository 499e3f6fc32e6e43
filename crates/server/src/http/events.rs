//! `POST /api/v1/events`: publish one event or an all-or-nothing batch.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Value, json};

use sigmavault_proto::pattern::validate_type;
use sigmavault_proto::topic_info;

use super::AppState;
use super::error::ApiError;
use crate::hub::NewEvent;

/// Largest encoded `data` of one event, in bytes.
pub const MAX_EVENT_DATA: usize = 64 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventIn {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    data: Option<Value>,
}

fn validate(index: Option<usize>, raw: Value) -> Result<NewEvent, ApiError> {
    let at = |field: &str| match index {
        Some(i) => format!("events[{i}].{field}"),
        None => field.to_owned(),
    };
    if raw.get("data").is_some_and(Value::is_null) {
        return Err(ApiError::InvalidEvent(format!(
            "{}: must be a JSON object (omit it for {{}})",
            at("data")
        )));
    }
    let ev: EventIn = serde_json::from_value(raw).map_err(|e| {
        ApiError::InvalidEvent(format!(
            "{}: expected {{\"type\": string, \"data\": object}}: {e}",
            at("event")
        ))
    })?;
    validate_type(&ev.kind).map_err(|why| ApiError::InvalidEvent(format!("{}: {why}", at("type"))))?;
    if !topic_info(&ev.kind).publishable {
        return Err(ApiError::InvalidEvent(format!(
            "{}: {:?} is the server's own; only custom.* and notification may be published",
            at("type"),
            ev.kind
        )));
    }
    let data = ev.data.unwrap_or_else(|| json!({}));
    if !data.is_object() {
        return Err(ApiError::InvalidEvent(format!("{}: must be a JSON object", at("data"))));
    }
    let size = data.to_string().len();
    if size > MAX_EVENT_DATA {
        return Err(ApiError::InvalidEvent(format!(
            "{}: {size} bytes is larger than {MAX_EVENT_DATA}",
            at("data")
        )));
    }
    Ok(NewEvent { kind: ev.kind, data })
}

/// Publishes; answers 202 with the assigned seqs.
pub(crate) async fn publish(
    State(app): State<AppState>,
    super::guard::Acting(actor): super::guard::Acting,
    headers: HeaderMap,
    body: Body,
) -> Result<impl IntoResponse, ApiError> {
    let mut object = super::body::json_object(
        &headers,
        body,
        app.config.http_max_body,
        false,
        "an object: {\"type\",\"data\"} or {\"events\":[…]}",
    )
    .await?;
    let events = match object.remove("events") {
        Some(batch) => {
            if let Some(extra) = object.keys().next() {
                return Err(ApiError::InvalidEvent(format!(
                    "unexpected field {extra:?} next to \"events\"; a batch body is {{\"events\":[…]}}"
                )));
            }
            let Value::Array(events) = batch else {
                return Err(ApiError::InvalidEvent("events: must be an array of events".into()));
            };
            if events.is_empty() {
                return Err(ApiError::InvalidEvent("events: the batch is empty".into()));
            }
            if events.len() > app.config.max_batch {
                return Err(ApiError::TooManyEvents(app.config.max_batch));
            }
            events
                .into_iter()
                .enumerate()
                .map(|(i, raw)| validate(Some(i), raw))
                .collect::<Result<Vec<_>, _>>()?
        }
        None => vec![validate(None, Value::Object(object))?],
    };
    let seqs: Vec<u64> = app
        .hub
        .publish_audited(events, actor)
        .await?
        .into_iter()
        .flatten()
        .collect();
    let body = if let [seq] = seqs.as_slice() {
        json!({"seq": seq, "seqs": seqs, "epoch": app.hub.epoch()})
    } else {
        json!({"seqs": seqs, "epoch": app.hub.epoch()})
    };
    Ok((StatusCode::ACCEPTED, Json(body)))
}
