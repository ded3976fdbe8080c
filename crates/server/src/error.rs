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

/// Parses a JSON body: unknown fields, wrong types and missing fields are 4xx problems,
/// and so is text no field may hold (see [`check_text`]), before any of it reaches the
/// engine or the database.
pub fn parse<T: DeserializeOwned>(body: &Bytes) -> ApiResult<T> {
    if body.is_empty() {
        return Err(err(ErrorCode::InvalidJson, "the request needs a JSON body"));
    }
    let classify = |e: serde_json::Error| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Syntax | Category::Eof | Category::Io => {
                err(ErrorCode::InvalidJson, format!("malformed JSON: {e}"))
            }
            Category::Data => err(ErrorCode::InvalidInput, format!("invalid request: {e}")),
        }
    };
    let value: serde_json::Value = serde_json::from_slice(body).map_err(classify)?;
    check_json_text("", &value)?;
    T::deserialize(value).map_err(classify)
}

/// Characters any one text field (of a JSON body, a query string or a path segment)
/// may hold, unless [`max_text_chars`] names a smaller bound for the field.
pub const MAX_TEXT_CHARS: usize = 1_024;

/// The bound of a field, by its name: ids, names, UPNs, e-mail addresses, URLs and PO
/// numbers have their own; any other text has [`MAX_TEXT_CHARS`].
pub fn max_text_chars(field: &str) -> usize {
    match field {
        "upn" => 256,
        "notification_emails" | "email" | "emails" => 254,
        "name" | "display_name" | "holder" => 200,
        "url" => 2_048,
        "path segment" => 256,
        "po_number" | "agreement_number" => 64,
        "sku" | "skus" | "user" | "user_ids" | "cursor" | "call_id" | "org" | "webhook" => 128,
        f if f.ends_with("_id") => 128,
        _ => MAX_TEXT_CHARS,
    }
}

/// Refuses text a field may not hold: longer than its bound, or with a control
/// character (U+0000 to U+001F, U+007F to U+009F). No field of the API has a use for
/// them, PostgreSQL cannot store a NUL, and they garble logs and exports.
pub fn check_text(field: &str, text: &str) -> ApiResult<()> {
    let max = max_text_chars(field);
    // Bytes bound characters from above: most text is checked without counting.
    if text.len() > max && text.chars().count() > max {
        return Err(err(ErrorCode::InvalidInput, format!("{field} is longer than {max} characters")));
    }
    if text.chars().any(char::is_control) {
        return Err(err(ErrorCode::InvalidInput, format!("{field} holds a control character")));
    }
    Ok(())
}

/// [`check_text`] on every string of a JSON value and every key of its objects; an
/// array's items are checked under the array's name.
fn check_json_text(field: &str, value: &serde_json::Value) -> ApiResult<()> {
    match value {
        serde_json::Value::String(s) => check_text(field, s),
        serde_json::Value::Array(items) => items.iter().try_for_each(|v| check_json_text(field, v)),
        serde_json::Value::Object(map) => map.iter().try_for_each(|(k, v)| {
            check_text("field name", k)?;
            check_json_text(k, v)
        }),
        _ => Ok(()),
    }
}

/// Refuses a request whose path segments or query parameters hold text no field may
/// hold (see [`check_text`]; a path segment is an id, bounded as one): before routing,
/// so no handler, extractor or query ever sees it.
pub async fn check_uri_text(req: Request, next: axum::middleware::Next) -> Response {
    match uri_text(req.uri()) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

fn uri_text(uri: &axum::http::Uri) -> ApiResult<()> {
    for segment in uri.path().split('/') {
        // The router's path extractor refuses an escape that is not UTF-8 with a bare
        // text answer: refuse it here, as a problem, like any other text no id holds.
        let decoded = percent_encoding::percent_decode_str(segment)
            .decode_utf8()
            .map_err(|_| err(ErrorCode::InvalidInput, "a path segment is not UTF-8 once unescaped"))?;
        check_text("path segment", &decoded)?;
    }
    if let Some(query) = uri.query() {
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            check_text("query parameter name", &key)?;
            check_text(&key, &value)?;
        }
    }
    Ok(())
}
