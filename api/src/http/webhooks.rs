//! Inbound channels: the WhatsApp Business Cloud API webhook, and the
//! lead (web form, Botmaker, Facebook) and IVR call events that start
//! procedures.
//!
//! WhatsApp calls without a bearer token, so its requests are trusted only
//! when `X-Hub-Signature-256` is the HMAC-SHA256 of the exact body under the
//! app secret; anything else is refused (401) and logged. Each message from
//! a client becomes one engine message (name and country code configured),
//! correlated by the sender's national number and deduplicated by its
//! WhatsApp id (`wamid…`), so WhatsApp's own redeliveries change nothing.
//! A message no instance waits for is kept and listed for operators at
//! `GET /api/v1/messages?status=pending`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::{Json, extract::rejection::JsonRejection};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sha2::Sha256;
use tramite_engine::runtime::{PublishMessage, StartInstance};

use super::{AppState, Error};

/// How inbound channels are set up.
#[derive(Debug, Clone, Default)]
pub struct Webhooks {
    /// The WhatsApp webhook; its endpoints answer 404 when absent.
    pub whatsapp: Option<WhatsApp>,
}

/// The WhatsApp Business Cloud API webhook.
#[derive(Clone)]
pub struct WhatsApp {
    /// The Meta app's secret, which signs every POST.
    pub app_secret: String,
    /// The token Meta sends back in the GET verification handshake.
    pub verify_token: String,
    /// The engine message each client message becomes (`requisitos_whatsapp`).
    pub message: String,
    /// The country prefix removed from the sender's number to get the
    /// correlation key (`591`: `59172345678` → `72345678`).
    pub country_code: String,
    /// How long a message no instance waits for yet is kept, ms.
    pub ttl_ms: i64,
}

impl std::fmt::Debug for WhatsApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhatsApp")
            .field("message", &self.message)
            .field("country_code", &self.country_code)
            .finish_non_exhaustive()
    }
}

type Shared = State<Arc<AppState>>;

fn whatsapp(s: &AppState) -> Result<&WhatsApp, Error> {
    s.webhooks.whatsapp.as_ref().ok_or(Error::NotConfigured {
        what: "the WhatsApp webhook",
    })
}

/// Meta's verification handshake query.
#[derive(Debug, Deserialize)]
pub(super) struct Handshake {
    #[serde(rename = "hub.mode")]
    mode: Option<String>,
    #[serde(rename = "hub.verify_token")]
    verify_token: Option<String>,
    #[serde(rename = "hub.challenge")]
    challenge: Option<String>,
}

/// `GET /webhooks/whatsapp`: echoes the challenge when the token matches.
#[utoipa::path(get, path = "/webhooks/whatsapp", tag = "webhooks", params(("hub.mode" = String, Query), ("hub.verify_token" = String, Query), ("hub.challenge" = String, Query)), responses((status = 200, description = "The challenge, as text/plain", content_type = "text/plain", body = String), (status = 403, description = "Wrong mode or token (problem+json)"), (status = 404, description = "WhatsApp is not configured on this server (problem+json)")))]
pub(super) async fn whatsapp_verify(
    State(s): Shared,
    query: Result<Query<Handshake>, QueryRejection>,
) -> Result<String, Error> {
    let w = whatsapp(&s)?;
    let Query(q) = query?;
    let token_ok = q
        .verify_token
        .as_deref()
        .is_some_and(|t| constant_time_eq(t.as_bytes(), w.verify_token.as_bytes()));
    match (q.mode.as_deref(), token_ok, q.challenge) {
        (Some("subscribe"), true, Some(challenge)) => Ok(challenge),
        _ => {
            tracing::warn!("WhatsApp verification refused: wrong mode or token");
            Err(Error::Forbidden {
                reason: "the verification token does not match".to_owned(),
            })
        }
    }
}

/// `POST /webhooks/whatsapp`: message events, signed by Meta.
#[utoipa::path(post, path = "/webhooks/whatsapp", tag = "webhooks", request_body(content = Object, description = "A WhatsApp Business Cloud API event; `X-Hub-Signature-256` must sign the exact body"), params(("X-Hub-Signature-256" = String, Header)), responses((status = 200, description = "`{messages: [{id, key, delivery} or {id, key, refused}]}`"), (status = 401, description = "Bad or missing signature (problem+json)"), (status = 404, description = "WhatsApp is not configured on this server (problem+json)"), (status = 422, description = "Signed, but not JSON (problem+json)")))]
pub(super) async fn whatsapp_event(
    State(s): Shared,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, Error> {
    let w = whatsapp(&s)?;
    let signature = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("sha256="))
        .and_then(super::auth::unhex);
    let valid = signature.is_some_and(|sig| {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(w.app_secret.as_bytes()).expect("HMAC takes any key");
        mac.update(&body);
        mac.verify_slice(&sig).is_ok()
    });
    if !valid {
        tracing::warn!(
            bytes = body.len(),
            signed = headers.contains_key("x-hub-signature-256"),
            "WhatsApp event refused: bad or missing X-Hub-Signature-256"
        );
        return Err(Error::BadSignature);
    }
    let mut event: Value =
        serde_json::from_slice(&body).map_err(|_| Error::field("body", "not JSON"))?;
    // Meta sends again whatever is not answered 200, for days: a NUL in one
    // message's text must not hold back the event's others, so it is made
    // U+FFFD here (the database cannot store it) instead of refused.
    without_nul(&mut event);
    let mut results = Vec::new();
    for message in messages(&event) {
        let (Some(id), Some(from)) = (message["id"].as_str(), message["from"].as_str()) else {
            tracing::warn!("WhatsApp message without id or sender: ignored");
            continue;
        };
        let key = from
            .strip_prefix(&w.country_code)
            .unwrap_or(from)
            .to_owned();
        let published = s
            .engine
            .publish(PublishMessage {
                name: w.message.clone(),
                key: key.clone(),
                payload: payload(message),
                id: id.to_owned(),
                ttl_ms: w.ttl_ms,
            })
            .await;
        match published {
            Ok(delivery) => {
                // The key is the client's phone number: not in the logs,
                // which outlive the retention that deletes it from the
                // database (the message's id and its delivery tell the rest).
                tracing::info!(wamid = id, ?delivery, "WhatsApp message");
                results.push(json!({"id": id, "key": key, "delivery": delivery}));
            }
            // Meta would send the same message again and again: say so in
            // the log, answer for it, and go on with the event's others.
            Err(
                e @ (tramite_engine::Error::MessageIdTaken { .. }
                | tramite_engine::Error::EmptyId { .. }
                | tramite_engine::Error::TooLong { .. }
                | tramite_engine::Error::TooDeep { .. }),
            ) => {
                tracing::warn!(wamid = id, error = %e, "WhatsApp message refused");
                results.push(json!({"id": id, "key": key, "refused": e.to_string()}));
            }
            // Worth another try (the database, a restart): Meta redelivers
            // the whole event, and the messages already kept are duplicates.
            Err(e) => return Err(e.into()),
        }
    }
    // WhatsApp redelivers anything not answered 200; statuses (sent, read)
    // and other events are acknowledged and ignored.
    Ok(Json(json!({"messages": results})))
}

/// `value` with every NUL in its strings and keys made U+FFFD.
fn without_nul(value: &mut Value) {
    match value {
        Value::String(text) if text.contains('\0') => *text = text.replace('\0', "\u{fffd}"),
        Value::Array(items) => items.iter_mut().for_each(without_nul),
        Value::Object(map) => {
            if map.keys().any(|k| k.contains('\0')) {
                *map = std::mem::take(map)
                    .into_iter()
                    .map(|(k, v)| (k.replace('\0', "\u{fffd}"), v))
                    .collect();
            }
            map.values_mut().for_each(without_nul);
        }
        _ => {}
    }
}

/// Every client message of an event (`entry[].changes[].value.messages[]`).
fn messages(event: &Value) -> Vec<&Value> {
    let list = |v: &Value, k: &str| v[k].as_array().cloned().unwrap_or_default();
    let mut out = Vec::new();
    for entry in event["entry"].as_array().into_iter().flatten() {
        for change in entry["changes"].as_array().into_iter().flatten() {
            if list(&change["value"], "messages").is_empty() {
                continue;
            }
            out.extend(change["value"]["messages"].as_array().into_iter().flatten());
        }
    }
    out
}

/// The engine message's payload: the text, and the media references
/// (WhatsApp media ids, to be fetched from the Graph API) with their details.
fn payload(message: &Value) -> Value {
    let kind = message["type"].as_str().unwrap_or_default();
    let mut attachments = Vec::new();
    if let Some(media) = message.get(kind).filter(|m| m.get("id").is_some()) {
        attachments.push(json!({
            "id": media["id"],
            "type": kind,
            "mime_type": media["mime_type"],
            "sha256": media["sha256"],
            "caption": media["caption"],
            "filename": media["filename"],
        }));
    }
    let media: Vec<Value> = attachments.iter().map(|a| a["id"].clone()).collect();
    json!({
        "from": message["from"],
        "type": kind,
        "text": message["text"]["body"],
        "timestamp": message["timestamp"],
        "media": media,
        "attachments": attachments,
    })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A channel event that starts a procedure: a lead or an IVR call.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ChannelEvent {
    /// The channel's own id of the event (lead id, call id); the same id
    /// twice starts one instance.
    id: String,
    /// Procedure to start (`OPE-SUM-VEN-P06`).
    process: String,
    /// Leads: where it came from (`web`, `botmaker`, `facebook`, …).
    source: Option<String>,
    /// The start's data, named as the procedure's start fields.
    #[serde(default)]
    #[schema(value_type = Object)]
    data: Map<String, Value>,
}

/// `POST /webhooks/leads`: a web form, Botmaker or Facebook lead.
#[utoipa::path(post, path = "/webhooks/leads", tag = "webhooks", request_body = ChannelEvent, responses((status = 201, description = "Started `{id, new: true}` (needs `channel`)"), (status = 200, description = "This lead started an instance before: `{id, new: false}`"), (status = "4XX", description = "Problem (application/problem+json)")), security(("bearer" = [])))]
pub(super) async fn lead(
    state: Shared,
    headers: HeaderMap,
    body: Result<Json<ChannelEvent>, JsonRejection>,
) -> Result<impl IntoResponse, Error> {
    channel_start(state, &headers, body, None).await
}

/// `POST /webhooks/ivr`: a call the IVR routed to sales.
#[utoipa::path(post, path = "/webhooks/ivr", tag = "webhooks", request_body = ChannelEvent, responses((status = 201, description = "Started `{id, new: true}` (needs `channel`)"), (status = 200, description = "This call started an instance before: `{id, new: false}`"), (status = "4XX", description = "Problem (application/problem+json)")), security(("bearer" = [])))]
pub(super) async fn ivr(
    state: Shared,
    headers: HeaderMap,
    body: Result<Json<ChannelEvent>, JsonRejection>,
) -> Result<impl IntoResponse, Error> {
    channel_start(state, &headers, body, Some("ivr")).await
}

async fn channel_start(
    State(s): Shared,
    headers: &HeaderMap,
    body: Result<Json<ChannelEvent>, JsonRejection>,
    channel: Option<&str>,
) -> Result<(StatusCode, Json<Value>), Error> {
    let user = s.users.authenticate(headers)?;
    user.require("channel")?;
    let Json(e) = body?;
    if e.id.trim().is_empty() {
        return Err(tramite_engine::Error::EmptyId { field: "id" }.into());
    }
    let channel = match (channel, &e.source) {
        (Some(c), _) => c.to_owned(),
        (None, Some(source)) => source.clone(),
        (None, None) => {
            return Err(Error::field(
                "source",
                "a lead says where it came from (web, botmaker, facebook, …)",
            ));
        }
    };
    user.may_start_by(&channel)?;
    // The caller's id is kept under its channel (`facebook:…`): its own
    // limit is what the channel leaves of the request id's.
    let room = tramite_engine::runtime::MAX_KEY_BYTES.saturating_sub(channel.len() + 1);
    if e.id.len() > room {
        return Err(tramite_engine::Error::TooLong {
            field: "id",
            limit: room,
        }
        .into());
    }
    let (id, new) = s
        .engine
        .start_once(StartInstance {
            code: e.process,
            business_key: String::new(),
            request_id: Some(format!("{channel}:{}", e.id)),
            channel,
            data: e.data,
            actor: user.name,
        })
        .await?;
    Ok(super::started(&id, new))
}

/// Kept (or delivered) inbound messages, for operators.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MessagesQuery {
    /// `pending` (kept, no instance waited yet, still takeable: the
    /// default), `expired` (kept past its time) or `delivered`.
    status: Option<String>,
    /// At most this many (≤ 500).
    limit: Option<i64>,
}

/// `GET /api/v1/messages`: what arrived, newest first.
#[utoipa::path(get, path = "/api/v1/messages", tag = "messages", params(("status" = Option<String>, Query, description = "`pending` (default), `expired` or `delivered`"), ("limit" = Option<i64>, Query)), responses((status = 200, description = "Messages, newest first (needs `operator`)"), (status = "4XX", description = "Problem (application/problem+json)")), security(("bearer" = [])))]
pub(super) async fn list_messages(
    State(s): Shared,
    headers: HeaderMap,
    query: Result<Query<MessagesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, Error> {
    let user = s.users.authenticate(&headers)?;
    user.require("operator")?;
    let Query(q) = query?;
    let status = q.status.unwrap_or_else(|| "pending".to_owned());
    super::one_of(
        "status",
        Some(&status),
        &["pending", "expired", "delivered"],
    )?;
    let rows = s
        .engine
        .messages(&status, q.limit.unwrap_or(50).clamp(1, 500))
        .await?;
    let items: Vec<Value> = rows
        .into_iter()
        .map(|m| {
            json!({
                "id": m.id, "name": m.message_name, "key": m.correlation_key,
                "payload": m.payload, "status": m.status, "instance_id": m.instance_id,
                "received_at": m.received_at, "expires_at": m.expires_at,
            })
        })
        .collect();
    Ok(Json(json!({"items": items})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_and_equality() {
        assert_eq!(crate::http::auth::unhex("00ff10"), Some(vec![0, 255, 16]));
        assert_eq!(crate::http::auth::unhex("0g"), None);
        assert_eq!(crate::http::auth::unhex("abc"), None);
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
