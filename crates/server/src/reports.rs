//! Report routes. CSV and Excel stream to the client: a blocking task writes into a
//! bounded channel of chunks that the response body drains, so memory stays flat
//! whatever the number of rows, and a client that goes away stops the export.

use crate::auth::{check_org, Auth, Need};
use crate::error::{err, ApiError, ApiResult};
use crate::limits::ReportSlots;
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
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use utoipa::IntoParams;

const CHUNK: usize = 64 * 1024;
/// Chunks written ahead of what the client has taken.
const CHUNKS_AHEAD: usize = 8;

/// The body of an export: the chunks its report thread writes, then either the end or,
/// when the thread failed, an error that aborts the body (so a client never mistakes a
/// cut export for a whole one).
struct ChunkStream {
    chunks: tokio::sync::mpsc::Receiver<Bytes>,
    failure: Arc<Mutex<Option<String>>>,
}

impl futures_core::Stream for ChunkStream {
    type Item = Result<Bytes, std::io::Error>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.chunks.poll_recv(cx) {
            Poll::Ready(Some(chunk)) => Poll::Ready(Some(Ok(chunk))),
            Poll::Ready(None) => {
                let failure = self.failure.lock().unwrap_or_else(|p| p.into_inner()).take();
                Poll::Ready(failure.map(|m| Err(std::io::Error::other(m))))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A `Write` that hands 64 KiB chunks to the response body. A chunk the client has not
/// made room for within `send_timeout` fails the write, which stops the export's reader.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<Bytes>,
    buf: Vec<u8>,
    runtime: tokio::runtime::Handle,
    send_timeout: Duration,
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
        // A report thread is not a runtime thread: it may wait on the runtime's timer.
        let (tx, send_timeout) = (&self.tx, self.send_timeout);
        match self.runtime.block_on(async move { tokio::time::timeout(send_timeout, tx.send(chunk)).await }) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(std::io::Error::other("the client went away")),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the client read nothing for {} s", self.send_timeout.as_secs()),
            )),
        }
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
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
    #[param(minimum = 1, maximum = 1000)]
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
    usage_response(&app, &p.key_id, org, q).await
}

/// The usage report for a caller already allowed to read `org`: a JSON page, or a CSV
/// or Excel file streamed. The API and the admin pages' export links both answer here.
/// Exports count against `key_id`'s export slots and the server's report budget.
pub(crate) async fn usage_response(app: &Arc<App>, key_id: &str, org: String, q: UsageQuery) -> ApiResult {
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
    let format = q.format.as_deref().unwrap_or("json");
    // Checks what can fail before the first byte is sent (the organization, the user).
    let check = {
        let (engine, org, user) = (engine.clone(), org.clone(), filter.user.clone());
        move || {
            engine.org_view(&org)?;
            if let Some(u) = user {
                engine.user(&org, &u)?;
            }
            Ok(())
        }
    };
    // The file is named by the period's first ten characters as given (a date, or an
    // instant's date part), counted in characters: the text is the caller's.
    let day = |t: &str| t.trim().chars().take(10).collect::<String>();
    let name = format!("pstn-usage-{}-{}", day(&q.from), day(&q.to));
    match format {
        "json" => {
            let limit = q.limit.unwrap_or(crate::routes::DEFAULT_PAGE);
            let permit = app.reports.acquire(None)?;
            let page = ReportSlots::run(permit, move || {
                check()?;
                engine.usage_page(&org, &filter, q.cursor.as_deref(), limit)
            })
            .await?;
            Ok(Json(page).into_response())
        }
        "csv" => Ok(file_response(
            streamed(app, key_id, check, move |w| engine.write_usage_csv(&org, &filter, w).map(drop)).await?,
            "text/csv; charset=utf-8",
            &format!("{name}.csv"),
        )),
        "xlsx" => Ok(file_response(
            streamed(app, key_id, check, move |w| {
                // A workbook is a zip with a central directory at its end: written to a
                // temporary file, then copied to the body.
                let io = |e: std::io::Error| commcredits_core::Error::new(ErrorCode::Internal, e.to_string());
                let dir = tempfile::tempdir().map_err(io)?;
                let path = dir.path().join("report.xlsx");
                engine.write_usage_xlsx(&org, &filter, &path)?;
                std::io::copy(&mut std::fs::File::open(&path).map_err(io)?, w).map_err(io).map(drop)
            })
            .await?,
            "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
            &format!("{name}.xlsx"),
        )),
        "zip" => {
            let id = commcredits_engine::usage::new_export_id();
            let filename = format!("Calls.Export.{id}.zip");
            let body = streamed(app, key_id, check, move |w| {
                engine.write_usage_zip(&org, &filter, &id, Timestamp::now(), w).map(drop)
            })
            .await?;
            Ok(file_response(body, "application/zip", &filename))
        }
        other => Err(ApiError(commcredits_core::Error::new(
            ErrorCode::InvalidInput,
            format!("format must be json, csv, xlsx or zip, not '{other}'"),
        ))),
    }
}

/// A response body written by `write` on a report thread (never tokio's blocking pool,
/// which authentication and call control need), sent in chunks as it is written
/// (memory stays flat). The export holds one of `key_id`'s export slots and one of
/// the server's report slots until its thread ends: when the body is written, when
/// the client goes away, or when the client reads nothing for the send timeout.
/// `check` runs first, on the same thread, so what can fail is answered as a problem
/// before the status is sent; an error later aborts the body.
async fn streamed(
    app: &Arc<App>,
    key_id: &str,
    check: impl FnOnce() -> commcredits_core::Result<()> + Send + 'static,
    write: impl FnOnce(&mut dyn std::io::Write) -> commcredits_core::Result<()> + Send + 'static,
) -> ApiResult<Body> {
    let permit = app.reports.acquire(Some(key_id))?;
    let (tx, chunks) = tokio::sync::mpsc::channel(CHUNKS_AHEAD);
    let (ready_tx, ready) = tokio::sync::oneshot::channel();
    let failure = Arc::new(Mutex::new(None));
    let (runtime, send_timeout, failed) = (tokio::runtime::Handle::current(), app.limits.send_timeout, failure.clone());
    ReportSlots::spawn(permit, move || {
        if let Err(e) = check() {
            let _ = ready_tx.send(Err(e));
            return;
        }
        let _ = ready_tx.send(Ok(()));
        // Failed until it succeeds: if `write` panics, the body still ends as cut off.
        let set = |m: Option<String>| *failed.lock().unwrap_or_else(|p| p.into_inner()) = m;
        set(Some("the export stopped".into()));
        let mut w = ChannelWriter { tx, buf: Vec::with_capacity(CHUNK), runtime, send_timeout };
        let result = write(&mut w).and_then(|_| {
            std::io::Write::flush(&mut w).map_err(|e| commcredits_core::Error::new(ErrorCode::Internal, e.to_string()))
        });
        match result {
            Ok(()) => set(None),
            Err(e) => {
                tracing::info!("an export stopped: {}", e.message);
                set(Some(e.message));
            }
        }
        // The body ends (or aborts, after the failure above) once the sender is gone.
        drop(w);
    })?;
    ready.await.map_err(|_| err(ErrorCode::Internal, "the export thread stopped before starting"))??;
    Ok(Body::from_stream(ChunkStream { chunks, failure }))
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
#[into_params(parameter_in = Query)]
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
    let permit = app.reports.acquire(None)?;
    let v = ReportSlots::run(permit, move || f(&engine, &org, from, to)).await?;
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
    let permit = app.reports.acquire(None)?;
    let r = ReportSlots::run(permit, move || engine.recommend(&org, Timestamp::now())).await?;
    Ok(Json(r).into_response())
}
