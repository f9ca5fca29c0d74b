//! Every error the API returns is RFC 9457 `application/problem+json` with a stable `code`.
//! Errors are mapped to a status in one place: [`ApiError::status`].

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use paddock_engine::EngineError;
use paddock_store::StoreError;
use paddock_types::api::Problem;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
        }
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::NotFound(what) => ApiError::not_found(what),
            EngineError::InvalidInput(_) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                e.to_string(),
            ),
            // The template is fine but this input cannot fill it: the caller's input is at fault.
            EngineError::Agent(paddock_harness::AgentError::Render(_)) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                e.to_string(),
            ),
            EngineError::Agent(_) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "agent_invalid",
                e.to_string(),
            ),
            EngineError::UnknownProvider { .. } => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "provider_not_configured",
                e.to_string(),
            ),
            EngineError::Conflict(_) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            EngineError::Store(e) => e.into(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => ApiError::not_found(what),
            StoreError::BadCursor => ApiError::bad_request(
                "invalid_cursor",
                "the cursor is not valid for this listing; start again without it",
            ),
            StoreError::AlreadyExists(_) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            StoreError::Conflict { .. }
            | StoreError::Terminal(_)
            | StoreError::AgentVersionExists { .. }
            | StoreError::AlreadyDecided => {
                ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            StoreError::Locked(_) | StoreError::Backend(_) => {
                tracing::error!(error = %e, "storage failure");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "storage_unavailable",
                    "storage is unavailable; retry later",
                )
            }
        }
    }
}

impl ApiError {
    /// The RFC 9457 body this error is answered with.
    pub fn problem(&self) -> Problem {
        Problem {
            type_uri: format!("https://paddock.dev/errors/{}", self.code),
            title: self.status.canonical_reason().unwrap_or("Error").to_owned(),
            status: self.status.as_u16(),
            code: self.code.to_owned(),
            detail: self.detail.clone(),
            instance: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = self.problem();
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut resp = (
            self.status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body,
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}
