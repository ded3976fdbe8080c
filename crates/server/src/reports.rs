//! Report routes. CSV and Excel stream to the client: a blocking task writes into a
//! bounded channel of chunks that the response body drains, so memory stays flat
//! whatever the number of rows, and a client that goes away stops the export.

use crate::auth::{check_org, Auth, Need};
use crate::error::{err, ApiError, ApiResult};
use crate::routes::{Problem, Query};
use crate::App;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use commcredits_core::{ErrorCode, Timestamp};
use commcredits_engine::usage::{UsageFilter, UsagePage};
use serde::Deserialize;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use utoipa::IntoParams;

const CHUNK: usize = 64 * 1024;

struct ChunkStream(tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>);

impl futures_core::Stream for ChunkStream {
    type Item = Result<Bytes, std::io::Error>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

/// A `Write` that hands 64 KiB chunks to the response body.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    buf: Vec<u8>,
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx.blocking_send(Ok(chunk)).map_err(|_| std::io::Error::other("the client went away"))
    }
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    /// Start of the period, inclusive: RFC 3339, or a date such as 2026-11-01 (its start in UTC).
    pub from: String,
    /// End of the period, exclusive: RFC 3339, or a date such as 2026-12-01 (its start in UTC).
    pub to: String,
    /// json (default), csv, xlsx, or zip (`Calls.Export.<id>.zip`: the CSV and parameters.json).
    pub format: Option<String>,
    /// A user id or UPN.
    pub user: Option<String>,
    /// outbound, toll_free_inbound, conference_dial_out (or user_out, conf_out, ucap_in).
    #[serde(rename = "type")]
    pub call_type: Option<String>,
    pub funding: Option<String>,
    pub capability: Option<String>,
    /// Destination country, ISO 3166 alpha-2.
    pub country: Option<String>,
    /// JSON pages: the `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// JSON pages: at most 1000, default 100.
    pub limit: Option<usize>,
}

/// A period bound: an RFC 3339 instant, or a date (the start of that day in UTC).
fn time(what: &str, text: &str) -> ApiResult<Timestamp> {
    Ok(commcredits_core::period::parse_period_time(what, text)?)
}

#[utoipa::path(get, path = "/v1/orgs/{org}/reports/pstn-usage", tag = "reports", params(("org" = String, Path), UsageQuery),
    responses(
        (status = 200, description = "A JSON page (format=json), or the whole period as a CSV file (format=csv), an Excel workbook (format=xlsx) or the original product's zip bundle (format=zip)",
            content((UsagePage = "application/json"), (String = "text/csv"),
                (Vec<u8> = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"), (Vec<u8> = "application/zip"))),
        (status = "4XX", body = Problem)),
    security(("api_key" = [])))]
pub async fn pstn_usage(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    Path(org): Path<String>,
    Query(q): Query<UsageQuery>,
) -> ApiResult {
    check_org(&p, &org, Need::Read)?;
    usage_response(&app, org, q).await
}

/// The usage report for a caller already allowed to read `org`: a JSON page, or a CSV
/// or Excel file streamed. The API and the admin pages' export links both answer here.
pub(crate) async fn usage_response(app: &Arc<App>, org: String, q: UsageQuery) -> ApiResult {
    let filter = UsageFilter {
        from: Some(time("from", &q.from)?),
        to: Some(time("to", &q.to)?),
        user: q.user,
        call_type: q.call_type,
        funding: q.funding,
        capability: q.capability,
        country: q.country,
    };
    if filter.from >= filter.to {
        return Err(err(ErrorCode::InvalidInput, "the period is empty: 'from' must be before 'to'"));
    }
    let engine = app.engine.clone();
    // Check what can fail before the first byte is sent (the organization, the user).
    {
        let (engine, org, user) = (engine.clone(), org.clone(), filter.user.clone());
        tokio::task::spawn_blocking(move || {
            engine.org_view(&org)?;
            if let Some(u) = user {
                engine.user(&org, &u)?;
            }
            Ok::<_, commcredits_core::Error>(())
        })
        .await
        .map_err(|e| err(ErrorCode::Internal, e.to_string()))??;
    }
    let format = q.format.as_deref().unwrap_or("json");
    let name = format!("pstn-usage-{}-{}", &q.from[..10.min(q.from.len())], &q.to[..10.min(q.to.len())]);
    match format {
        "json" => {
            let limit = q.limit.unwrap_or(crate::routes::DEFAULT_PAGE);
            let page =
                tokio::task::spawn_blocking(move || engine.usage_page(&org, &filter, q.cursor.as_deref(), limit))
                    .await
                    .map_err(|e| err(ErrorCode::Internal, e.to_string()))??;
            Ok(Json(page).into_response())
        }
        "csv" => Ok(file_response(
            streamed(move |w| engine.write_usage_csv(&org, &filter, w).map(drop)),
            "text/csv; charset=utf-8",
            &format!("{name}.csv"),
        )),
        "xlsx" => Ok(file_response(
            streamed(move |w| {
                // A workbook is a zip with a central directory at its end: written to a
                // temporary file, then copied to the body.
                let io = |e: std::io::Error| commcredits_core::Error::new(ErrorCode::Internal, e.to_string());
                let dir = tempfile::tempdir().map_err(io)?;
                let path = dir.path().join("report.xlsx");
                engine.write_usage_xlsx(&org, &filter, &path)?;
                std::io::copy(&mut std::fs::File::open(&path).map_err(io)?, w).map_err(io).map(drop)
            }),
            "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
            &format!("{name}.xlsx"),
        )),
        "zip" => {
            let id = commcredits_engine::usage::new_export_id();
            let filename = format!("Calls.Export.{id}.zip");
            let body = streamed(move |w| engine.write_usage_zip(&org, &filter, &id, Timestamp::now(), w).map(drop));
            Ok(file_response(body, "application/zip", &filename))
        }
        other => Err(ApiError(commcredits_core::Error::new(
            ErrorCode::InvalidInput,
            format!("format must be json, csv, xlsx or zip, not '{other}'"),
        ))),
    }
}

/// A response body written by `write` on the blocking pool, sent in chunks as it is
/// written (memory stays flat). An error mid-stream aborts the body: the status is
/// already sent.
fn streamed(write: impl FnOnce(&mut dyn std::io::Write) -> commcredits_core::Result<()> + Send + 'static) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tokio::task::spawn_blocking(move || {
        let mut w = ChannelWriter { tx: tx.clone(), buf: Vec::with_capacity(CHUNK) };
        let result = write(&mut w).and_then(|_| {
            std::io::Write::flush(&mut w).map_err(|e| commcredits_core::Error::new(ErrorCode::Internal, e.to_string()))
        });
        if let Err(e) = result {
            let _ = tx.blocking_send(Err(std::io::Error::other(e.message)));
        }
    });
    Body::from_stream(ChunkStream(rx))
}

fn file_response(body: Body, content_type: &'static str, filename: &str) -> Response {
    let mut r = Response::new(body);
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{filename}\"")) {
        r.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    r
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PeriodQuery {
    /// Start of the period, inclusive: RFC 3339, or a date such as 2026-11-01 (its start in UTC).
    pub from: String,
    /// End of the period, exclusive: RFC 3339, or a date such as 2026-12-01 (its start in UTC).
    pub to: String,
}

async fn period_report<T: serde::Serialize + Send + 'static>(
    app: Arc<App>,
    org: String,
    q: PeriodQuery,
    f: impl FnOnce(&commcredits_engine::Engine, &str, Timestamp, Timestamp) -> commcredits_core::Result<T> + Send + 'static,
) -> ApiResult {
    let (from, to) = (time("from", &q.from)?, time("to", &q.to)?);
    let engine = app.engine.clone();
    let v = tokio::task::spawn_blocking(move || f(&engine, &org, from, to))
        .await
        .map_err(|e| err(ErrorCode::Internal, e.to_string()))??;
    Ok(Json(v).into_response())
}

#[utoipa::path(get, path = "/v1/orgs/{org}/reports/summary", tag = "reports", params(("org" = String, Path), PeriodQuery),
    responses((status = 200, body = commcredits_engine::summary::SummaryView), (status = "4XX", body = Problem)), security(("api_key" = [])))]
pub async fn summary(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    Path(org): Path<String>,
    Query(q): Query<PeriodQuery>,
) -> ApiResult {
    check_org(&p, &org, Need::Read)?;
    period_report(app, org, q, |e, o, f, t| e.summary(o, f, t)).await
}

#[utoipa::path(get, path = "/v1/orgs/{org}/reports/blocked-users", tag = "reports", params(("org" = String, Path), PeriodQuery),
    responses((status = 200, body = Vec<commcredits_engine::summary::BlockedUserView>), (status = "4XX", body = Problem)), security(("api_key" = [])))]
pub async fn blocked_users(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    Path(org): Path<String>,
    Query(q): Query<PeriodQuery>,
) -> ApiResult {
    check_org(&p, &org, Need::Read)?;
    period_report(app, org, q, |e, o, f, t| e.blocked_users(o, f, t)).await
}

#[utoipa::path(get, path = "/v1/orgs/{org}/reports/dial-out", tag = "reports", params(("org" = String, Path), PeriodQuery),
    responses((status = 200, body = Vec<commcredits_engine::summary::OrganizerDialOutView>), (status = "4XX", body = Problem)), security(("api_key" = [])))]
pub async fn dial_out(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    Path(org): Path<String>,
    Query(q): Query<PeriodQuery>,
) -> ApiResult {
    check_org(&p, &org, Need::Read)?;
    period_report(app, org, q, |e, o, f, t| e.dial_out_by_organizer(o, f, t)).await
}

#[utoipa::path(get, path = "/v1/orgs/{org}/credits/recommendation", tag = "reports", params(("org" = String, Path)),
    responses((status = 200, body = commcredits_engine::summary::Recommendation), (status = "4XX", body = Problem)), security(("api_key" = [])))]
pub async fn recommendation(State(app): State<Arc<App>>, Auth(p): Auth, Path(org): Path<String>) -> ApiResult {
    check_org(&p, &org, Need::Read)?;
    let engine = app.engine.clone();
    let r = tokio::task::spawn_blocking(move || engine.recommend(&org, Timestamp::now()))
        .await
        .map_err(|e| err(ErrorCode::Internal, e.to_string()))??;
    Ok(Json(r).into_response())
}
