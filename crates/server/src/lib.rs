//! The HTTP API of commcredits (SPEC §3): axum on the engine. Reads run on the
//! blocking pool against reader connections; call control goes through the
//! group-commit writer; everything else is applied one command at a time.

pub mod admin;
pub mod auth;
pub mod error;
pub mod limits;
pub mod openapi;
pub mod reports;
pub mod routes;
pub mod writer;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use commcredits_core::{ErrorCode, Timestamp};
use commcredits_engine::Engine;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Largest JSON request body.
pub const MAX_JSON_BODY: usize = 256 * 1024;
/// Largest CSV upload (CDRs, rate decks).
pub const MAX_CSV_BODY: usize = 64 * 1024 * 1024;

/// How `serve` runs: every setting of the server that is not the engine's.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Time between background job runs.
    pub jobs_every: Duration,
    /// Signs the admin pages' session cookies. Servers behind one address must share
    /// it; without one each process picks a random secret (its sessions end when it
    /// restarts).
    pub session_secret: Option<String>,

    // -- what keeps outside requests from stopping call control --
    /// Timeouts, the connection bound and the report budget.
    pub limits: limits::Limits,
    /// Proxies whose `X-Forwarded-For` names the client (the failed-authentication
    /// limiter's key); from any other peer the header is ignored.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// When set, `/metrics` answers only `Authorization: Bearer <token>`.
    pub metrics_token: Option<String>,
}

impl Default for ServerOptions {
    fn default() -> ServerOptions {
        ServerOptions {
            jobs_every: Duration::from_secs(15),
            session_secret: None,
            limits: limits::Limits::default(),
            trusted_proxies: Vec::new(),
            metrics_token: None,
        }
    }
}

pub struct App {
    pub engine: Arc<Engine>,
    /// Where notices go (the webhook sender also serves `webhooks/{id}/test`).
    pub delivery: commcredits_engine::delivery::Delivery,
    pub calls: writer::CallWriter,
    pub failures: auth::FailureLimiter,
    pub metrics: PrometheusHandle,
    /// Signs and checks the admin pages' session cookies.
    pub sessions: admin::session::Sessions,

    // -- what keeps outside requests from stopping call control --
    pub limits: limits::Limits,
    /// Where report work runs, and how much of it at once.
    pub reports: limits::ReportSlots,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// SHA-256 of the `/metrics` token, when one is required.
    pub metrics_token_sha256: Option<Vec<u8>>,
    /// The last counts behind the gauges, and when they were taken.
    gauges: std::sync::Mutex<Option<(Instant, Gauges)>>,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "commcredits", description = "Real-time prepaid charging of Communications Credits for business telephony."),
    modifiers(&Security)
)]
struct ApiDoc;

struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(c) = openapi.components.as_mut() {
            c.add_security_scheme(
                "api_key",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        }
    }
}

/// The process-wide Prometheus recorder (installed once; several apps in one test
/// process share it).
fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let buckets = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
                .and_then(|b| b.install_recorder())
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder().handle())
        })
        .clone()
}

/// The API routes with their OpenAPI document.
pub fn api() -> (Router<Arc<App>>, utoipa::openapi::OpenApi) {
    let csv_routes = OpenApiRouter::new()
        .routes(routes!(routes::import_cdrs))
        .routes(routes!(routes::import_rates))
        .layer(DefaultBodyLimit::max(MAX_CSV_BODY));
    let api = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(routes::create_org))
        .routes(routes!(routes::get_org))
        .routes(routes!(routes::create_user, routes::list_users))
        .routes(routes!(routes::get_user, routes::patch_user))
        .routes(routes!(routes::add_subscription, routes::list_subscriptions))
        .routes(routes!(routes::set_licenses))
        .routes(routes!(routes::assign_licenses))
        .routes(routes!(routes::add_number, routes::list_numbers))
        .routes(routes!(routes::list_pools))
        .routes(routes!(routes::add_payment_method, routes::list_payment_methods))
        .routes(routes!(routes::get_credits))
        .routes(routes!(routes::add_funds))
        .routes(routes!(routes::set_auto_recharge))
        .routes(routes!(routes::get_ledger))
        .routes(routes!(routes::list_orders))
        .routes(routes!(routes::list_notifications))
        .routes(routes!(routes::get_notification_settings, routes::put_notification_settings))
        .routes(routes!(routes::add_webhook, routes::list_webhooks))
        .routes(routes!(routes::delete_webhook))
        .routes(routes!(routes::test_webhook))
        .routes(routes!(routes::list_deliveries))
        .routes(routes!(reports::pstn_usage))
        .routes(routes!(reports::summary))
        .routes(routes!(reports::blocked_users))
        .routes(routes!(reports::dial_out))
        .routes(routes!(reports::recommendation))
        .routes(routes!(routes::authorize))
        .routes(routes!(routes::update))
        .routes(routes!(routes::end))
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY))
        .merge(csv_routes);
    let (router, mut doc) = api.split_for_parts();
    openapi::document_errors(&mut doc);
    (router, doc)
}

/// The whole application: API, OpenAPI document, admin pages, health, metrics.
pub fn router(app: Arc<App>) -> Router {
    let (api, doc) = api();
    let doc = Arc::new(doc);
    api.merge(admin::routes(app.clone()))
        .route(
            "/openapi.json",
            axum::routing::get(move || {
                let doc = doc.clone();
                async move { axum::Json(doc.as_ref().clone()) }
            }),
        )
        .route("/healthz", axum::routing::get(healthz))
        .route("/metrics", axum::routing::get(metrics_text))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(error::check_uri_text))
        .layer(middleware::from_fn(track))
        .with_state(app)
}

async fn not_found() -> Response {
    error::err(ErrorCode::NotFound, "no such route").into_response()
}

async fn method_not_allowed() -> Response {
    error::err(ErrorCode::MethodNotAllowed, "this route does not take that method").into_response()
}

async fn healthz(State(app): State<Arc<App>>) -> Response {
    let engine = app.engine.clone();
    match tokio::task::spawn_blocking(move || engine.read(|tx| tx.list_rate_decks().map(|_| ()))).await {
        Ok(Ok(())) => (StatusCode::OK, axum::Json(serde_json::json!({"status": "ok"}))).into_response(),
        _ => error::err(ErrorCode::StoreError, "the database does not answer").into_response(),
    }
}

/// Open reservations, pending notices, failed deliveries.
type Gauges = (i64, i64, i64);

/// How old the counts behind the gauges may be: scrapes more frequent than this, from
/// any number of scrapers, cost the database nothing.
pub const GAUGE_REFRESH: Duration = Duration::from_secs(1);

async fn metrics_text(State(app): State<Arc<App>>, headers: axum::http::HeaderMap) -> Response {
    if let Some(want) = &app.metrics_token_sha256 {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .unwrap_or("");
        // Digests are compared, so the comparison's time says nothing about the token.
        if <sha2::Sha256 as sha2::Digest>::digest(given.as_bytes()).as_slice() != want.as_slice() {
            return error::err(ErrorCode::Unauthorized, "/metrics needs `Authorization: Bearer <metrics token>`")
                .into_response();
        }
    }
    let cached = app
        .gauges
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .filter(|(at, _)| at.elapsed() < GAUGE_REFRESH)
        .map(|(_, counts)| counts);
    let gauges = match cached {
        Some(counts) => Ok(Ok(counts)),
        None => {
            let engine = app.engine.clone();
            let counts = tokio::task::spawn_blocking(move || {
                engine.read(|tx| {
                    Ok((
                        tx.count_open_reservations_all()?,
                        tx.count_pending_notices_all()?,
                        tx.count_failed_deliveries_all()?,
                    ))
                })
            })
            .await;
            if let Ok(Ok(c)) = &counts {
                *app.gauges.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), *c));
            }
            counts
        }
    };
    if let Ok(Ok((open, pending, failed))) = gauges {
        metrics::gauge!("commcredits_reservations_open").set(open as f64);
        metrics::gauge!("commcredits_notices_pending").set(pending as f64);
        metrics::gauge!("commcredits_deliveries_failed").set(failed as f64);
    }
    let mut r = app.metrics.render().into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
    r
}

/// Counts requests and their latency per route template.
async fn track(req: Request, next: Next) -> Response {
    let route =
        req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_string()).unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let start = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::counter!("commcredits_http_requests_total", "route" => route.clone(), "method" => method.clone(), "status" => status).increment(1);
    metrics::histogram!("commcredits_http_request_duration_seconds", "route" => route, "method" => method)
        .record(start.elapsed().as_secs_f64());
    resp
}

impl App {
    pub fn new(engine: Arc<Engine>) -> Arc<App> {
        App::with_delivery(engine, commcredits_engine::delivery::Delivery::new(None, "http://127.0.0.1:8080"))
    }

    pub fn with_delivery(engine: Arc<Engine>, delivery: commcredits_engine::delivery::Delivery) -> Arc<App> {
        App::with_options(engine, delivery, &ServerOptions::default())
    }

    pub fn with_options(
        engine: Arc<Engine>,
        delivery: commcredits_engine::delivery::Delivery,
        options: &ServerOptions,
    ) -> Arc<App> {
        // Automatic recharges placed by call control are charged on the order worker,
        // never on the call writer's thread.
        engine.start_order_worker();
        Arc::new(App {
            sessions: admin::session::Sessions::new(options.session_secret.as_deref()),
            delivery,
            calls: writer::CallWriter::start(engine.clone()),
            engine,
            failures: auth::FailureLimiter::default(),
            metrics: prometheus(),
            limits: options.limits.clone(),
            reports: limits::ReportSlots::new(&options.limits),
            trusted_proxies: options.trusted_proxies.clone(),
            metrics_token_sha256: options
                .metrics_token
                .as_deref()
                .map(|t| <sha2::Sha256 as sha2::Digest>::digest(t.as_bytes()).to_vec()),
            gauges: std::sync::Mutex::new(None),
        })
    }
}

/// Delivers due notices every `every` until the shutdown signal.
pub fn spawn_delivery(
    app: Arc<App>,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            let a = app.clone();
            match tokio::task::spawn_blocking(move || a.engine.deliver_due(Timestamp::now(), &a.delivery)).await {
                Ok(Ok(r)) => {
                    metrics::counter!("commcredits_deliveries_sent_total").increment(r.sent as u64);
                    metrics::counter!("commcredits_deliveries_retried_total").increment(r.retrying as u64);
                    metrics::counter!("commcredits_deliveries_failed_total").increment(r.failed as u64);
                }
                Ok(Err(e)) => tracing::error!("notice delivery failed: {e}"),
                Err(e) => tracing::error!("notice delivery panicked: {e}"),
            }
        }
    })
}

/// Runs the background jobs every `every` until the shutdown signal.
pub fn spawn_jobs(
    engine: Arc<Engine>,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            let e = engine.clone();
            match tokio::task::spawn_blocking(move || e.run_jobs(Timestamp::now())).await {
                Ok(Ok(r)) => {
                    metrics::counter!("commcredits_jobs_reservations_expired_total")
                        .increment(r.reservations_expired as u64);
                    metrics::counter!("commcredits_jobs_lots_expired_total").increment(r.lots_expired as u64);
                }
                Ok(Err(e)) => tracing::error!("background jobs failed: {e}"),
                Err(e) => tracing::error!("background jobs panicked: {e}"),
            }
        }
    })
}

/// Serves until SIGINT or SIGTERM, then stops accepting, finishes in-flight requests
/// and the queued call-control commands, and returns.
pub async fn serve(
    engine: Arc<Engine>,
    listener: tokio::net::TcpListener,
    delivery: commcredits_engine::delivery::Delivery,
    options: ServerOptions,
) -> std::io::Result<()> {
    let app = App::with_options(engine.clone(), delivery, &options);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let jobs = spawn_jobs(engine, options.jobs_every, stop_rx.clone());
    let sender = spawn_delivery(app.clone(), Duration::from_secs(5).min(options.jobs_every), stop_rx);
    let mut limits = options.limits.clone();
    // The trusted proxies carry every client: the per-address bound is not theirs.
    limits.unlimited.extend(options.trusted_proxies.iter().cloned());
    serve_connections(listener, router(app.clone()), &limits, shutdown_signal()).await?;
    let _ = stop_tx.send(true);
    let _ = jobs.await;
    let _ = sender.await;
    // Requests are finished; drain and stop the writer (commits what it holds).
    if let Ok(mut app) = Arc::try_unwrap(app) {
        app.calls.stop();
    }
    Ok(())
}

/// Serves HTTP/1.1 on `listener` until `shutdown` resolves, then lets the open
/// connections finish their requests and returns. Unlike `axum::serve`, every phase of
/// a connection has a limit (see [`limits::Limits`]): reading the header, each part of
/// the body, producing the answer, sending it; and at most `max_connections` are open
/// (one more is answered `503 overloaded` and closed).
pub async fn serve_connections(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: &limits::Limits,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    use tower::ServiceExt;
    let max = limits.max_connections.clamp(1, tokio::sync::Semaphore::MAX_PERMITS).min(u32::MAX as usize);
    let open = Arc::new(tokio::sync::Semaphore::new(max));
    let per_address = Arc::new(limits::PerAddress::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (mut stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors, or a connection reset before it was accepted:
                    // wait a little rather than spin, and go on.
                    tracing::warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let slots = open.clone().try_acquire_owned().ok().zip(per_address.take(
            peer.ip(),
            limits.max_connections_per_address.max(1),
            &limits.unlimited,
        ));
        let Some((permit, address_slot)) = slots else {
            metrics::counter!("commcredits_http_connections_refused_total").increment(1);
            tokio::spawn(async move {
                let answer = limits::overloaded_connection_answer();
                let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&answer)).await;
                let _ = stream.shutdown().await;
            });
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (router, limits, mut stop) = (router.clone(), limits.clone(), stop_rx.clone());
        tokio::spawn(async move {
            let _open = (permit, address_slot);
            let io = hyper_util::rt::TokioIo::new(limits::SendDeadline::new(stream, limits.send_timeout));
            let (body_timeout, request_timeout) = (limits.body_read_timeout, limits.request_timeout);
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let mut req =
                    req.map(|b| axum::body::Body::new(tower_http::timeout::TimeoutBody::new(body_timeout, b)));
                req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
                let router = router.clone();
                async move {
                    // Only the answer's head is waited for here: a streamed body is paced
                    // by the send timeout instead, however long it is.
                    Ok::<_, std::convert::Infallible>(
                        match tokio::time::timeout(request_timeout, router.oneshot(req)).await {
                            Ok(Ok(response)) => response,
                            Ok(Err(never)) => match never {},
                            Err(_) => limits::request_timed_out(request_timeout).into_response(),
                        },
                    )
                }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
            let conn = builder.serve_connection(io, service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = stop.changed() => {}
            }
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        });
    }
    let _ = stop_tx.send(true);
    drop(listener);
    // Every connection holds a permit until it ends.
    let _ = open.acquire_many(max as u32).await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
