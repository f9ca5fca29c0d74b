//! `Idempotency-Key` on the creating POSTs (the routes marked `idempotent` in the route table).
//!
//! [`layer`] runs inside the auth middleware, so the principal (and its workspace) is known. A
//! request with the header claims the key in the store with the SHA-256 of its method, path and
//! query, and body; exactly one of many concurrent identical requests wins the claim and runs the
//! handler; its response (status, content type, location, body) is stored and replayed to the
//! others with `Idempotent-Replayed: true`. A 5xx is not stored: the claim is released so a retry
//! runs again. The same key with another request is 422; while the first is still running, 409.

use crate::auth::Principal;
use crate::error::ApiError;
use crate::{AppState, BODY_LIMIT, audit};
use axum::body::{Body, to_bytes};
use axum::extract::FromRequestParts;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use paddock_store::{IdempotencyClaim, IdempotentResponse};
use paddock_types::time::now_ms;
use sha2::{Digest, Sha256};

pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
/// Longest accepted key.
pub const MAX_KEY: usize = 255;

fn invalid_key() -> ApiError {
    ApiError::bad_request(
        "invalid_header",
        format!("Idempotency-Key must be 1 to {MAX_KEY} printable ASCII characters"),
    )
}

fn parse_key(value: &HeaderValue) -> Result<String, ApiError> {
    let bytes = value.as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_KEY || !bytes.iter().all(|b| (0x20..=0x7e).contains(b))
    {
        return Err(invalid_key());
    }
    Ok(String::from_utf8_lossy(bytes).into_owned())
}

fn request_hash(method: &str, path_and_query: &str, body: &[u8]) -> String {
    let mut h = Sha256::new();
    // Length-prefixed, so no two different requests share an encoding.
    for part in [method.as_bytes(), path_and_query.as_bytes(), body] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
}

pub(crate) async fn layer(State(st): State<AppState>, req: Request, next: Next) -> Response {
    match run(&st, req, next).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn run(st: &AppState, req: Request, next: Next) -> Result<Response, ApiError> {
    let Some(value) = req.headers().get(IDEMPOTENCY_KEY) else {
        return Ok(next.run(req).await);
    };
    let key = parse_key(value)?;
    let (mut parts, body) = req.into_parts();
    let scope = Principal::from_request_parts(&mut parts, &()).await?.scope;
    // Keys are the workspace's, but each end-user acting through a key has its own: one
    // end-user's retry must never be answered with another's response.
    let key = match &scope.end_user {
        Some(eu) => format!("{eu}/{key}"),
        None => key,
    };
    let bytes = to_bytes(body, BODY_LIMIT).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request body is larger than the {BODY_LIMIT} byte limit"),
        )
    })?;
    let target = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned());
    let hash = request_hash(parts.method.as_str(), &target, &bytes);
    let store = st.engine.store();
    match store
        .claim_idempotency(&scope, &key, &hash, now_ms())
        .await?
    {
        IdempotencyClaim::New => {}
        IdempotencyClaim::Done(stored) => return Ok(replay(stored)),
        IdempotencyClaim::InFlight => {
            let mut r = ApiError::new(
                StatusCode::CONFLICT,
                "idempotency_key_in_flight",
                "a request with this Idempotency-Key is still being processed; retry shortly",
            )
            .into_response();
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return Ok(r);
        }
        IdempotencyClaim::Mismatch => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_mismatch",
                "this Idempotency-Key was used for a different request (method, path or body)",
            ));
        }
    }
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    if response.status().is_server_error() {
        if let Err(e) = store.release_idempotency(&scope, &key, &hash).await {
            tracing::warn!(error = %e, "cannot release an idempotency claim");
        }
        return Ok(response);
    }
    if response.extensions().get::<ShownOnce>().is_some() {
        // The answer holds a secret shown once (a new key): it is not kept in the database.
        // A retry learns the request succeeded, not the secret.
        let stored = IdempotentResponse {
            status: StatusCode::CONFLICT.as_u16(),
            content_type: Some("application/problem+json".to_owned()),
            location: None,
            body: serde_json::to_vec(&ApiError::new(
                StatusCode::CONFLICT,
                "idempotency_key_used",
                "a request with this Idempotency-Key already succeeded; its answer held a secret that is shown only once and was not kept",
            ).problem())
            .unwrap_or_default(),
        };
        if let Err(e) = store
            .complete_idempotency(&scope, &key, &hash, stored)
            .await
        {
            tracing::error!(error = %e, "cannot store an idempotent response");
        }
        return Ok(response);
    }
    let (parts, body) = response.into_parts();
    let body = match to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read a response to store for idempotency");
            if let Err(e) = store.release_idempotency(&scope, &key, &hash).await {
                tracing::warn!(error = %e, "cannot release an idempotency claim");
            }
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the response could not be read",
            ));
        }
    };
    let text = |name: header::HeaderName| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let stored = IdempotentResponse {
        status: parts.status.as_u16(),
        content_type: text(header::CONTENT_TYPE),
        location: text(header::LOCATION),
        body: body.to_vec(),
    };
    // The action happened: a failure to remember it must not turn it into an error.
    if let Err(e) = store
        .complete_idempotency(&scope, &key, &hash, stored)
        .await
    {
        tracing::error!(error = %e, "cannot store an idempotent response");
    }
    Ok(Response::from_parts(parts, Body::from(body)))
}

/// Marks a response that carries a secret shown only once: [`layer`] does not store it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ShownOnce;

fn replay(stored: IdempotentResponse) -> Response {
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    let mut r = (status, stored.body).into_response();
    let h = r.headers_mut();
    h.remove(header::CONTENT_TYPE);
    for (name, value) in [
        (header::CONTENT_TYPE, stored.content_type),
        (header::LOCATION, stored.location),
    ] {
        if let Some(v) = value.and_then(|v| HeaderValue::from_str(&v).ok()) {
            h.insert(name, v);
        }
    }
    h.insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    r.extensions_mut().insert(audit::AuditNote {
        resource: None,
        detail: Some(serde_json::json!({ "idempotent_replay": true })),
    });
    r
}
