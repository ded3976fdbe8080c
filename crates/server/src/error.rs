//! Errors as RFC 9457 `application/problem+json`, with the stable codes of
//! `commcredits_core::error`; and the body extractor that turns every malformed
//! request into such a problem, never a 5xx.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use commcredits_core::{Error, ErrorCode};
use serde::de::DeserializeOwned;

/// An error answered as problem+json.
#[derive(Debug)]
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

pub type ApiResult<T = Response> = Result<T, ApiError>;

pub fn json_response(status: u16, body: serde_json::Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = (status, body.to_string()).into_response();
    let ct = if status.is_client_error() || status.is_server_error() {
        "application/problem+json"
    } else {
        "application/json"
    };
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    r
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if matches!(self.0.code, ErrorCode::Internal | ErrorCode::StoreError) {
            // Internal details are logged, never sent.
            tracing::error!(code = %self.0.code, "{}", self.0.message);
            let e = Error::new(self.0.code, "internal error; the request was not applied or its outcome is unknown");
            return json_response(e.code.http_status(), commcredits_engine::views::problem(&e));
        }
        let mut r = json_response(self.0.code.http_status(), commcredits_engine::views::problem(&self.0));
        if matches!(self.0.code, ErrorCode::RateLimited | ErrorCode::Overloaded) {
            // A refusal for load says when to come back.
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(crate::limits::RETRY_AFTER_SECONDS));
        }
        r
    }
}

pub fn err(code: ErrorCode, message: impl Into<String>) -> ApiError {
    ApiError(Error::new(code, message))
}

/// The raw request body, with size and read errors as problems.
pub struct Body(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Bytes::from_request(req, state).await {
            Ok(b) => Ok(Body(b)),
            Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(err(ErrorCode::PayloadTooLarge, "the request body is larger than this route accepts"))
            }
            Err(r) => Err(err(ErrorCode::InvalidInput, format!("cannot read the request body: {}", r.body_text()))),
        }
    }
}

/// Parses a JSON body: unknown fields, wrong types and missing fields are 4xx problems.
pub fn parse<T: DeserializeOwned>(body: &Bytes) -> ApiResult<T> {
    if body.is_empty() {
        return Err(err(ErrorCode::InvalidJson, "the request needs a JSON body"));
    }
    serde_json::from_slice(body).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Syntax | Category::Eof | Category::Io => {
                err(ErrorCode::InvalidJson, format!("malformed JSON: {e}"))
            }
            Category::Data => err(ErrorCode::InvalidInput, format!("invalid request: {e}")),
        }
    })
}
