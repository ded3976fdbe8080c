//! The admin web pages (SPEC §3 "Admin web pages"): server-rendered HTML under
//! `/admin` for an organization's admins. Sign-in takes an organization API key, then
//! a signed session cookie (`session`). Every form carries the session's CSRF token;
//! every change is a `Command` applied through `Engine::apply`, under the role matrix
//! of the API (`auth::check_org`). Handlers are thin: `pages` builds what a template
//! shows, the templates (embedded with `include_str!`) render it with autoescaping.

pub mod pages;
pub mod session;

use crate::auth::{check_org, client_ip, Need};
use crate::App;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use commcredits_core::money::Currency;
use commcredits_core::{Error, ErrorCode, Result, Timestamp};
use commcredits_engine::admin::UserChanges;
use commcredits_engine::keys::{Principal, Role};
use commcredits_engine::payments::{parse_expiry, CardInput};
use commcredits_engine::usage::UsageFilter;
use commcredits_engine::views::OrgView;
use commcredits_engine::{Command, Engine};
use minijinja::value::Serde;
use minijinja::{context, Environment, Value};
use serde::{Deserialize, Serialize};
use session::{Claims, COOKIE, FLASH_COOKIE, LOGIN_COOKIE};
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

/// Largest form body the pages accept.
pub const MAX_FORM_BODY: usize = 64 * 1024;

// ---------------------------------------------------------------- templates and assets

const TEMPLATES: &[(&str, &str)] = &[
    ("macros.html", include_str!("templates/macros.html")),
    ("base.html", include_str!("templates/base.html")),
    ("login.html", include_str!("templates/login.html")),
    ("error.html", include_str!("templates/error.html")),
    ("overview.html", include_str!("templates/overview.html")),
    ("billing.html", include_str!("templates/billing.html")),
    ("users.html", include_str!("templates/users.html")),
    ("user.html", include_str!("templates/user.html")),
    ("numbers.html", include_str!("templates/numbers.html")),
    ("usage.html", include_str!("templates/usage.html")),
    ("pools.html", include_str!("templates/pools.html")),
    ("notifications.html", include_str!("templates/notifications.html")),
];

/// Vendored files, served from `/admin/static/` with a content hash in their URL, so
/// they can be cached for a year and still change with a new build.
const ASSETS: &[(&str, &str, &str)] = &[
    ("admin.css", "text/css; charset=utf-8", include_str!("../../assets/admin.css")),
    ("htmx.min.js", "text/javascript; charset=utf-8", include_str!("../../assets/htmx.min.js")),
];

fn templates() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        // Everything is escaped for HTML (said here rather than left to the default).
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::Html);
        // A fresh idempotency key for each form rendered (`macros.html`'s `once`).
        env.add_function("form_key", session::hex_token);
        for (name, text) in TEMPLATES {
            env.add_template(name, text).unwrap_or_else(|e| panic!("embedded template {name}: {e}"));
        }
        env
    })
}

fn asset_url(name: &str) -> String {
    static URLS: OnceLock<BTreeMap<&'static str, String>> = OnceLock::new();
    let urls = URLS.get_or_init(|| {
        use sha2::Digest;
        ASSETS
            .iter()
            .map(|(n, _, body)| {
                let h = hex::encode(sha2::Sha256::digest(body.as_bytes()));
                (*n, format!("/admin/static/{n}?v={}", &h[..12]))
            })
            .collect()
    });
    urls.get(name).cloned().unwrap_or_default()
}

fn render(name: &str, ctx: Value) -> Result<String> {
    templates()
        .get_template(name)
        .and_then(|t| t.render(ctx))
        .map_err(|e| Error::new(ErrorCode::Internal, format!("rendering {name}: {e:#}")))
}

fn html(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    r
}

/// A page's query string; one that does not parse (a parameter given twice, a value of
/// the wrong kind) is answered with the error page, `422 invalid_input`, like any other
/// bad input, never the router's bare text.
struct Query<T>(T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Query(v)),
            Err(e) => Err(error_page(
                &Error::new(ErrorCode::InvalidInput, format!("invalid query string: {}", e.body_text())),
                "/admin",
            )),
        }
    }
}

/// A page for an error, with its stable code (as the API would answer it).
fn error_page(e: &Error, back: &str) -> Response {
    let e = if matches!(e.code, ErrorCode::Internal | ErrorCode::StoreError) {
        tracing::error!(code = %e.code, "{}", e.message);
        Error::new(e.code, "internal error; the change was not applied or its outcome is unknown")
    } else {
        e.clone()
    };
    let status = StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let title = match e.code {
        ErrorCode::Forbidden => "Not allowed",
        ErrorCode::InvalidCsrfToken => "The form has expired",
        ErrorCode::NotFound | ErrorCode::UserNotFound => "Not found",
        _ => "Something went wrong",
    };
    let ctx =
        context! { title, code => e.code.as_str(), message => e.message.clone(), back, css => asset_url("admin.css") };
    match render("error.html", ctx) {
        Ok(body) => html(status, body),
        Err(_) => (status, format!("error[{}]: {}", e.code.as_str(), e.message)).into_response(),
    }
}

fn redirect(to: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

fn add_cookie(r: &mut Response, cookie: String) {
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Error::new(ErrorCode::Internal, e.to_string()))?
}

// ---------------------------------------------------------------- session plumbing

/// The signed-in admin of a request, placed in its extensions by `session_layer`.
#[derive(Clone)]
pub struct Admin {
    pub principal: Principal,
    pub org: String,
    pub claims: Claims,
    pub csrf: String,
    /// The browser reached us over https: cookies get `Secure`.
    pub secure: bool,
}

impl<S: Send + Sync> FromRequestParts<S> for Admin {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> std::result::Result<Self, Response> {
        parts.extensions.get::<Admin>().cloned().ok_or_else(|| redirect("/admin/login"))
    }
}

/// Set on a response that ended its session, so the layer does not refresh the cookie.
#[derive(Clone, Copy)]
struct SessionEnded;

/// The organization key a session belongs to, if it still exists unrevoked.
fn session_principal(engine: &Engine, c: &Claims) -> Result<Option<Principal>> {
    let keys = match engine.keys(Some(&c.org_id)) {
        Ok(k) => k,
        Err(e) if e.code == ErrorCode::OrgNotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(keys
        .into_iter()
        .find(|k| k.id == c.key_id && k.revoked_at.is_none())
        .and_then(|k| Role::parse(&k.role).ok())
        .filter(|r| !r.is_platform())
        .map(|role| Principal { key_id: c.key_id.clone(), role, org_id: Some(c.org_id.clone()) }))
}

/// Checks the session cookie of every signed-in page: its MAC and times, then the key
/// in the store (revocation ends sessions at once). Without one, to the sign-in page.
async fn session_layer(State(app): State<Arc<App>>, mut req: Request, next: Next) -> Response {
    let now = Timestamp::now().as_second();
    let secure = session::https(req.headers(), req.uri());
    let sent = session::cookie(req.headers(), COOKIE).map(str::to_string);
    let claims = sent.as_deref().and_then(|v| app.sessions.decode(v, now));
    let to_login = |stale: bool| {
        let mut r = redirect("/admin/login");
        if stale {
            add_cookie(&mut r, session::set_cookie(COOKIE, "", 0, secure));
        }
        r
    };
    let Some(claims) = claims else { return to_login(sent.is_some()) };
    let engine = app.engine.clone();
    let c = claims.clone();
    let principal = match blocking(move || session_principal(&engine, &c)).await {
        Ok(Some(p)) => p,
        Ok(None) => return to_login(true),
        Err(e) => return error_page(&e, "/admin"),
    };
    let csrf = app.sessions.csrf_token(&claims);
    req.extensions_mut().insert(Admin { principal, org: claims.org_id.clone(), claims: claims.clone(), csrf, secure });
    let mut resp = next.run(req).await;
    if resp.extensions().get::<SessionEnded>().is_none() {
        if let Some(r) = app.sessions.refreshed(&claims, now) {
            add_cookie(
                &mut resp,
                session::set_cookie(COOKIE, &app.sessions.encode(&r), session::MAX_AGE_SECONDS, secure),
            );
        }
    }
    resp
}

/// Headers of every admin response: no framing, no sniffing, scripts and styles from
/// this origin only, and pages never cached (they show balances).
async fn security_headers(req: Request, next: Next) -> Response {
    let is_static = req.uri().path().starts_with("/admin/static/");
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    if !is_static {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    r
}

/// A submitted form (`application/x-www-form-urlencoded`), keeping repeated fields,
/// with the address it was sent to (part of its idempotency fingerprint).
#[derive(Clone)]
pub struct Form {
    fields: Vec<(String, String)>,
    uri: Uri,
}

impl Form {
    pub fn get(&self, name: &str) -> &str {
        self.fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).unwrap_or("")
    }

    pub fn all(&self, name: &str) -> Vec<String> {
        self.fields.iter().filter(|(k, _)| k == name).map(|(_, v)| v.clone()).collect()
    }

    /// What the form asks for, as a hash: the API's request fingerprint
    /// (`routes::fingerprint`) over the path and the fields sorted by name (repeated
    /// fields keep their order), without the session-bound CSRF token and the key
    /// itself, so the same form sent again hashes the same. A card number is cut to
    /// its last four digits first, as the API does: the stored hash must not let
    /// anyone recover the number.
    fn fingerprint(&self) -> String {
        let card_form = self.uri.path().ends_with("/billing/cards");
        let mut fields: Vec<(&str, String)> = self
            .fields
            .iter()
            .filter(|(k, _)| k != "csrf" && k != IDEMPOTENCY_FIELD)
            .map(|(k, v)| {
                if card_form && k == "number" {
                    let digits: String = v.chars().filter(char::is_ascii_digit).collect();
                    (k.as_str(), digits[digits.len().saturating_sub(4)..].to_string())
                } else {
                    (k.as_str(), v.clone())
                }
            })
            .collect();
        fields.sort_by(|a, b| a.0.cmp(b.0));
        let body = form_urlencoded::Serializer::new(String::new()).extend_pairs(fields).finish();
        crate::routes::fingerprint(&axum::http::Method::POST, &self.uri, body.as_bytes())
    }

    fn opt(&self, name: &str) -> Option<String> {
        Some(self.get(name).trim().to_string()).filter(|v| !v.is_empty())
    }

    /// The named fields, to show the form again as it was sent.
    fn values(&self, names: &[&str]) -> BTreeMap<String, String> {
        names.iter().map(|n| (n.to_string(), self.get(n).to_string())).collect()
    }
}

impl<S: Send + Sync> FromRequest<S> for Form {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> std::result::Result<Self, Response> {
        let uri = req.uri().clone();
        let body = Bytes::from_request(req, state).await.map_err(|r| {
            let code = if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ErrorCode::PayloadTooLarge
            } else {
                ErrorCode::InvalidInput
            };
            error_page(&Error::new(code, "the form could not be read"), "/admin")
        })?;
        let fields: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
        // The API's text bounds hold for forms too: nothing over-long or with a control
        // character reaches the engine (nor PostgreSQL, which refuses a NUL).
        for (name, value) in &fields {
            crate::error::check_text(name, value).map_err(|e| error_page(&e.0, "/admin"))?;
        }
        Ok(Form { fields, uri })
    }
}

/// A submitted form shown again: its values and the errors by field (`_`: the form).
#[derive(Serialize, Default)]
pub struct FormState {
    pub name: String,
    pub values: BTreeMap<String, String>,
    pub errors: BTreeMap<String, FieldError>,
}

#[derive(Serialize)]
pub struct FieldError {
    pub code: &'static str,
    pub message: String,
}

impl FormState {
    fn new(name: &str, values: BTreeMap<String, String>) -> FormState {
        FormState { name: name.into(), values, errors: BTreeMap::new() }
    }

    fn with_error(mut self, field: &str, e: &Error) -> FormState {
        self.errors.insert(field.into(), FieldError { code: e.code.as_str(), message: e.message.clone() });
        self
    }
}

/// The checks of every POST: the session's CSRF token, the form of its idempotency
/// key (if any), then the API's role matrix.
/// Answers the refusal, if any.
fn refused(app: &App, admin: &Admin, form: &Form, need: Option<Need>) -> Option<Response> {
    if !app.sessions.csrf_ok(&admin.claims, form.get("csrf")) {
        return Some(error_page(
            &Error::new(
                ErrorCode::InvalidCsrfToken,
                "the form did not carry this session's anti-forgery token; reload the page and send it again",
            ),
            "/admin",
        ));
    }
    if !key_ok(form.get(IDEMPOTENCY_FIELD)) {
        return Some(error_page(
            &Error::new(
                ErrorCode::InvalidInput,
                "the form's idempotency key must be 1 to 128 letters, digits, '-' or '_'",
            ),
            "/admin",
        ));
    }
    let need = need?;
    check_org(&admin.principal, &admin.org, need).err().map(|e| error_page(&e.0, "/admin"))
}

/// POST-redirect-GET: the message is shown once on the page redirected to.
fn done(admin: &Admin, message: &str, to: &str) -> Response {
    let mut r = redirect(to);
    let value: String = form_urlencoded::byte_serialize(message.as_bytes()).collect();
    add_cookie(&mut r, session::set_cookie(FLASH_COOKIE, &value, 60, admin.secure));
    r
}

fn take_flash(headers: &HeaderMap) -> Option<String> {
    let v = session::cookie(headers, FLASH_COOKIE)?;
    let text = form_urlencoded::parse(format!("m={v}").as_bytes()).next().map(|(_, m)| m.into_owned())?;
    Some(text.chars().take(300).collect()).filter(|t: &String| !t.is_empty())
}

// ---------------------------------------------------------------- page frame

#[derive(Serialize)]
struct NavItem {
    href: &'static str,
    label: &'static str,
    active: bool,
}

/// What every page's frame shows: the organization, the role, the navigation and the
/// forms' CSRF token; `can_*` mirror the API's role matrix.
#[derive(Serialize)]
struct Chrome {
    org_name: String,
    currency: String,
    role: &'static str,
    role_label: String,
    csrf: String,
    can_billing: bool,
    can_licenses: bool,
    nav: Vec<NavItem>,
    flash: Option<String>,
    css: String,
    htmx: String,
}

const NAV: &[(&str, &str, &str)] = &[
    ("overview", "/admin", "Overview"),
    ("billing", "/admin/billing", "Billing"),
    ("users", "/admin/users", "Users"),
    ("numbers", "/admin/numbers", "Phone numbers"),
    ("usage", "/admin/usage", "Usage report"),
    ("pools", "/admin/pools", "Minute pools"),
    ("notifications", "/admin/notifications", "Notifications"),
];

fn chrome(admin: &Admin, org: &OrgView, active: &str, flash: Option<String>) -> Chrome {
    let role = admin.principal.role.as_str();
    Chrome {
        org_name: org.name.clone(),
        currency: org.currency.clone(),
        role,
        role_label: format!("Role: {}", role.replace('_', " ")),
        csrf: admin.csrf.clone(),
        can_billing: check_org(&admin.principal, &admin.org, Need::Billing).is_ok(),
        can_licenses: check_org(&admin.principal, &admin.org, Need::Licenses).is_ok(),
        nav: NAV.iter().map(|(id, href, label)| NavItem { href, label, active: *id == active }).collect(),
        flash,
        css: asset_url("admin.css"),
        htmx: asset_url("htmx.min.js"),
    }
}

/// Renders a page of the frame, clearing the flash message it showed.
fn page_response<T: Serialize>(
    admin: &Admin,
    org: &OrgView,
    headers: &HeaderMap,
    active: &str,
    template: &str,
    status: StatusCode,
    form: Option<&FormState>,
    page: &T,
) -> Response {
    let flash = take_flash(headers);
    let had_flash = flash.is_some();
    let ctx = context! {
        chrome => Serde(chrome(admin, org, active, flash)),
        page => Serde(page),
        form => Serde(form),
    };
    let mut r = match render(template, ctx) {
        Ok(body) => html(status, body),
        Err(e) => return error_page(&e, "/admin"),
    };
    if had_flash {
        add_cookie(&mut r, session::set_cookie(FLASH_COOKIE, "", 0, admin.secure));
    }
    r
}

/// Builds a page's view off the async threads and renders it.
async fn show<T: Serialize + Send + 'static>(
    app: &Arc<App>,
    admin: &Admin,
    headers: &HeaderMap,
    active: &'static str,
    template: &'static str,
    status: StatusCode,
    form: Option<FormState>,
    build: impl FnOnce(&Engine, &str) -> Result<T> + Send + 'static,
) -> Response {
    let engine = app.engine.clone();
    let org = admin.org.clone();
    match blocking(move || Ok((build(&engine, &org)?, engine.org_view(&org)?))).await {
        Ok((page, org_view)) => {
            page_response(admin, &org_view, headers, active, template, status, form.as_ref(), &page)
        }
        Err(e) => error_page(&e, "/admin"),
    }
}

fn status_of(e: &Error) -> StatusCode {
    StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::UNPROCESSABLE_ENTITY)
}

async fn apply(app: &Arc<App>, cmd: Command) -> Result<commcredits_engine::Outcome> {
    let engine = app.engine.clone();
    blocking(move || engine.apply_one(Timestamp::now(), cmd)).await
}

/// The hidden field of every form that changes money or creates something: a fresh
/// random key per rendered form (the templates' `form_key()`).
pub const IDEMPOTENCY_FIELD: &str = "idempotency_key";

/// Wraps a form's command as the API wraps a request that carries an
/// `Idempotency-Key` (`Command::Idempotent`, conflict `idempotency_key_reused`): the
/// first answer is stored with the effect, and the same form sent again (a double
/// click, a browser's resubmission) is answered from it and changes nothing. A form
/// without the field is applied as it is, like an API request without the header.
/// (`refused` has checked the key's form.)
fn once(admin: &Admin, form: &Form, cmd: Command) -> Command {
    let key = form.get(IDEMPOTENCY_FIELD).trim();
    if key.is_empty() {
        return cmd;
    }
    Command::Idempotent {
        org: admin.org.clone(),
        key: key.to_string(),
        fingerprint: form.fingerprint(),
        conflict: ErrorCode::IdempotencyKeyReused,
        keep: commcredits_engine::Keep::Answer,
        inner: Box::new(cmd),
    }
}

/// A form's idempotency key, when it has one, is what `form_key()` makes or close:
/// 1 to 128 letters, digits, '-' or '_'.
fn key_ok(key: &str) -> bool {
    let key = key.trim();
    key.len() <= 128 && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A stored first answer that was a refusal, as that refusal again (so the form is
/// shown with the same error); any other outcome as it is.
fn unreplayed(outcome: commcredits_engine::Outcome) -> Result<commcredits_engine::Outcome> {
    match outcome {
        commcredits_engine::Outcome::Replayed { status, body } if status >= 400 => {
            let code = body["code"]
                .as_str()
                .and_then(|c| ErrorCode::ALL.iter().copied().find(|k| k.as_str() == c))
                .unwrap_or(ErrorCode::InvalidInput);
            Err(Error::new(code, body["detail"].as_str().unwrap_or_default()))
        }
        other => Ok(other),
    }
}

/// Applies a form's command once per idempotency key (`once`).
async fn apply_once(app: &Arc<App>, admin: &Admin, form: &Form, cmd: Command) -> Result<commcredits_engine::Outcome> {
    apply(app, once(admin, form, cmd)).await.and_then(unreplayed)
}

async fn org_currency(app: &Arc<App>, org: &str) -> Result<Currency> {
    let engine = app.engine.clone();
    let org = org.to_string();
    Currency::parse(&blocking(move || engine.org_view(&org)).await?.currency)
}

// ---------------------------------------------------------------- routes

/// The admin pages' routes (merged into the server's router).
pub fn routes(app: Arc<App>) -> Router<Arc<App>> {
    let signed_in = Router::new()
        .route("/admin", get(overview))
        .route("/admin/", get(overview))
        .route("/admin/billing", get(billing))
        .route("/admin/billing/funds", post(add_funds))
        .route("/admin/billing/auto-recharge", post(auto_recharge))
        .route("/admin/billing/cards", post(add_card))
        .route("/admin/billing/agreements", post(add_agreement))
        .route("/admin/users", get(users))
        .route("/admin/users/assign", post(bulk_licenses))
        .route("/admin/users/{user}", get(user_page).post(update_user))
        .route("/admin/users/{user}/licenses", post(set_licenses))
        .route("/admin/numbers", get(numbers).post(add_number))
        .route("/admin/usage", get(usage))
        .route("/admin/usage/export", get(export))
        .route("/admin/pools", get(pools))
        .route("/admin/notifications", get(notifications))
        .route("/admin/logout", post(logout))
        .layer(middleware::from_fn_with_state(app, session_layer));
    Router::new()
        .route("/admin/login", get(login_page).post(login))
        .route("/admin/static/{file}", get(asset))
        .merge(signed_in)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_FORM_BODY))
        .layer(middleware::from_fn(security_headers))
}

async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(n, _, _)| *n == file) {
        Some((_, ctype, body)) => {
            let mut r = (StatusCode::OK, *body).into_response();
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=31536000, immutable"));
            r
        }
        None => error_page(&Error::new(ErrorCode::NotFound, format!("no static file '{file}'")), "/admin"),
    }
}

// ---------------------------------------------------------------- sign-in and sign-out

#[derive(Serialize)]
struct LoginError {
    code: &'static str,
    message: String,
}

/// The sign-in page, with a fresh anti-forgery pair: a nonce in a cookie and its MAC
/// in the form (a forged sign-in cannot know the nonce).
fn login_response(app: &App, headers: &HeaderMap, uri: &Uri, status: StatusCode, error: Option<&Error>) -> Response {
    let secure = session::https(headers, uri);
    let (nonce, token) = app.sessions.login_token();
    let flash = take_flash(headers);
    let error = error.map(|e| LoginError { code: e.code.as_str(), message: e.message.clone() });
    let ctx = context! { csrf => token, error => Serde(&error), flash => flash.clone(), css => asset_url("admin.css") };
    let mut r = match render("login.html", ctx) {
        Ok(body) => html(status, body),
        Err(e) => return error_page(&e, "/admin/login"),
    };
    add_cookie(&mut r, session::set_cookie(LOGIN_COOKIE, &nonce, 3600, secure));
    if flash.is_some() {
        add_cookie(&mut r, session::set_cookie(FLASH_COOKIE, "", 0, secure));
    }
    r
}

async fn login_page(State(app): State<Arc<App>>, headers: HeaderMap, uri: Uri) -> Response {
    let now = Timestamp::now().as_second();
    if session::cookie(&headers, COOKIE).and_then(|v| app.sessions.decode(v, now)).is_some() {
        return redirect("/admin");
    }
    login_response(&app, &headers, &uri, StatusCode::OK, None)
}

async fn login(State(app): State<Arc<App>>, req: Request) -> Response {
    let ip = client_ip(req.extensions(), req.headers(), &app.trusted_proxies);
    let (headers, uri) = (req.headers().clone(), req.uri().clone());
    let form = match Form::from_request(req, &()).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let secure = session::https(&headers, &uri);
    let nonce = session::cookie(&headers, LOGIN_COOKIE).unwrap_or("");
    if !app.sessions.login_ok(nonce, form.get("csrf")) {
        return error_page(
            &Error::new(
                ErrorCode::InvalidCsrfToken,
                "the sign-in form has expired or was not sent from this site; open it again",
            ),
            "/admin/login",
        );
    }
    let fail = |status: StatusCode, e: Error| login_response(&app, &headers, &uri, status, Some(&e));
    // The key is checked first: a valid key always signs in, and only failures are
    // counted and, past the allowance, refused (the API's rule).
    let key = form.get("key").trim().to_string();
    let principal = if key.is_empty() {
        None
    } else {
        let engine = app.engine.clone();
        match blocking(move || engine.authenticate(&key)).await {
            Ok(p) => p,
            Err(e) => return error_page(&e, "/admin/login"),
        }
    };
    let Some(p) = principal else {
        // An empty form guesses nothing: answered, never counted (the API's rule).
        if form.get("key").trim().is_empty() {
            return fail(StatusCode::UNAUTHORIZED, Error::new(ErrorCode::Unauthorized, "enter an API key"));
        }
        if app.failures.fail(ip) {
            return fail(StatusCode::TOO_MANY_REQUESTS, crate::auth::too_many_failures("sign-ins").0);
        }
        return fail(
            StatusCode::UNAUTHORIZED,
            Error::new(ErrorCode::Unauthorized, "the API key is not valid or was revoked"),
        );
    };
    let Some(org) = p.org_id.clone().filter(|_| !p.role.is_platform()) else {
        return fail(
            StatusCode::FORBIDDEN,
            Error::new(
                ErrorCode::Forbidden,
                format!(
                    "a {} key is a platform key and cannot sign in to an organization's admin center; sign in with a key of your organization (admin, billing_admin, license_admin or reader)",
                    p.role.as_str()
                ),
            ),
        );
    };
    let claims = app.sessions.start(&p.key_id, &org, Timestamp::now().as_second());
    let mut r = redirect("/admin");
    add_cookie(&mut r, session::set_cookie(COOKIE, &app.sessions.encode(&claims), session::MAX_AGE_SECONDS, secure));
    add_cookie(&mut r, session::set_cookie(LOGIN_COOKIE, "", 0, secure));
    r
}

async fn logout(State(app): State<Arc<App>>, admin: Admin, form: Form) -> Response {
    if let Some(r) = refused(&app, &admin, &form, None) {
        return r;
    }
    app.sessions.sign_out(&admin.claims, Timestamp::now().as_second());
    let mut r = done(&admin, "Signed out.", "/admin/login");
    add_cookie(&mut r, session::set_cookie(COOKIE, "", 0, admin.secure));
    r.extensions_mut().insert(SessionEnded);
    r
}

// ---------------------------------------------------------------- overview and billing

async fn overview(State(app): State<Arc<App>>, admin: Admin, headers: HeaderMap) -> Response {
    show(&app, &admin, &headers, "overview", "overview.html", StatusCode::OK, None, |e, org| {
        pages::overview(e, org, Timestamp::now())
    })
    .await
}

async fn billing_with(
    app: &Arc<App>,
    admin: &Admin,
    headers: &HeaderMap,
    form: Option<(FormState, &Error)>,
) -> Response {
    let (status, form) = match form {
        Some((f, e)) => (status_of(e), Some(f)),
        None => (StatusCode::OK, None),
    };
    show(app, admin, headers, "billing", "billing.html", status, form, |e, org| {
        pages::billing(e, org, Timestamp::now())
    })
    .await
}

async fn billing(State(app): State<Arc<App>>, admin: Admin, headers: HeaderMap) -> Response {
    billing_with(&app, &admin, &headers, None).await
}

async fn add_funds(State(app): State<Arc<App>>, admin: Admin, headers: HeaderMap, form: Form) -> Response {
    if let Some(r) = refused(&app, &admin, &form, Some(Need::Billing)) {
        return r;
    }
    let values = form.values(&["amount", "payment_method_id", "po_number"]);
    let (engine, org) = (app.engine.clone(), admin.org.clone());
    let cmd = Command::PlaceOrder {
        org: org.clone(),
        amount: form.get("amount").trim().to_string(),
        payment_method_id: form.get("payment_method_id").to_string(),
        po_number: form.opt("po_number"),
        purchased_at: None,
    };
    let cmd = once(&admin, &form, cmd);
    // The API's path: place the order (once per form), charge it after the commit,
    // answer the order's outcome.
    let result = blocking(move || {
        let outcome = engine.apply_one(Timestamp::now(), cmd).and_then(unreplayed)?;
        let (id, replayed) = match &outcome {
            commcredits_engine::Outcome::Order(v) => (v.id.clone(), false),
            commcredits_engine::Outcome::Replayed { body, .. } => {
                (body["id"].as_str().unwrap_or_default().to_string(), true)
            }
            _ => return Err(Error::new(ErrorCode::Internal, "placing an order answered no order")),
        };
        let order = settled_order(&engine, &org, &id, replayed)?;
        if let Some(e) = commcredits_engine::books::failed_order_error(&order) {
            return Err(e);
        }
        let credits = engine.credits(&org)?;
        Ok((order, credits))
    })
    .await;
    match result {
        Ok((order, credits)) => {
            let cur = Currency::parse(&order.currency).unwrap_or_else(|_| Currency::parse("USD").expect("USD"));
            let msg = if order.status == "pending" {
                format!(
                    "The order of {} of credits is placed; its payment is still being processed.",
                    pages::money(cur, order.amount_minor)
                )
            } else {
                format!(
                    "Bought {} of credits. The balance is now {}.",
                    pages::money(cur, order.amount_minor),
                    pages::money(cur, credits.balance)
                )
            };
            done(&admin, &msg, "/admin/billing")
        }
        Err(e) => {
            let field = match e.code {
                ErrorCode::InvalidAmount | ErrorCode::BelowMinimumPurchase | ErrorCode::AmountOverflow => "amount",
                ErrorCode::PaymentMethodNotFound
                | ErrorCode::PaymentDeclined
                | ErrorCode::ExpiredCard
                | ErrorCode::InvalidCard => "payment_method_id",
                ErrorCode::InvalidInput => "po_number",
                _ => "_",
            };
            billing_with(&app, &admin, &headers, Some((FormState::new("funds", values).with_error(field, &e), &e)))
                .await
        }
    }
}

/// An order as it stands. A replayed purchase may arrive while the first submission
/// is still charging it: wait a little for that outcome (the first answer's), then
/// answer what there is (an order left pending is charged by `jobs run`).
fn settled_order(engine: &Engine, org: &str, id: &str, replayed: bool) -> Result<commcredits_store::OrderRow> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let order = engine
            .read(|tx| tx.get_order(org, id))?
            .ok_or_else(|| Error::new(ErrorCode::Internal, format!("order {id} vanished")))?;
        if !replayed || order.status != "pending" || std::time::Instant::now() >= deadline {
            return Ok(order);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

async fn auto_recharge(State(app): State<Arc<App>>, admin: Admin, headers: HeaderMap, form: Form) -> Response {
    if let Some(r) = refused(&app, &admin, &form, Some(Need::Billing)) {
        return r;
    }
    let values = form.values(&["enabled", "amount", "threshold", "payment_method_id"]);
    let fail = |field: &str, e: Error| {
        let state = FormState::new("auto_recharge", values.clone()).with_error(field, &e);
        (state, e)
    };
    let cur = match org_currency(&app, &admin.org).await {
        Ok(c) => c,
        Err(e) => return error_page(&e, "/admin/billing"),
    };
    let enabled = form.get("enabled") == "on";
    // Parsed here with the money parser so an error lands on its own field; the engine
    // parses the canonical text again and applies its own rules (minimum, method).
    let parsed = (|| {
        let amount = match form.opt("amount") {
            Some(a) => Some(cur.parse_positive_major(&a).map_err(|e| fail("amount", e))?),
            None if enabled => {
                return Err(fail("amount", Error::new(ErrorCode::InvalidAmount, "enter the recharge amount")))
            }
            None => None,
        };
        let threshold = match form.opt("threshold") {
            Some(t) => {
                let v = cur.parse_major(&t).map_err(|e| fail("threshold", e))?;
                if v < 0 {
                    return Err(fail(
                        "threshold",
                        Error::new(ErrorCode::InvalidAmount, "the threshold cannot be negative"),
                    ));
                }
                Some(v)
            }
            None if enabled => {
                return Err(fail("threshold", Error::new(ErrorCode::InvalidAmount, "enter the threshold")))
            }
            None => None,
        };
        Ok((amount, threshold))
    })();
    let (amount, threshold) = match parsed {
        Ok(v) => v,
        Err((state, e)) => return billing_with(&app, &admin, &headers, Some((state, &e))).await,
    };
    let cmd = Command::SetAutoRecharge {
        org: admin.org.clone(),
        enabled,
        amount: amount.map(|a| pages::major(cur, a)),
        threshold: threshold.map(|t| pages::major(cur, t)),
        payment_method_id: form.opt("payment_method_id"),
    };
    match apply_once(&app, &admin, &form, cmd).await {
        Ok(_) => {
            let msg = match (enabled, amount, threshold) {
                (true, Some(a), Some(t)) => format!(
                    "Auto-recharge is on: {} when the available balance falls below {}.",
                    pages::money(cur, a),
                    pages::money(cur, t)
                ),
                _ => "Auto-recharge is off.".to_string(),
            };
            done(&admin, &msg, "/admin/billing")
        }
        Err(e) => {
            let field = match e.code {
                ErrorCode::BelowMinimumPurchase | ErrorCode::InvalidAmount | ErrorCode::AmountOverflow => "amount",
                ErrorCode::PaymentMethodNotFound => "payment_method_id",
                _ => "_",
            };
            let (state, e) = fail(field, e);
            billing_with(&app, &admin, &headers, Some((state, &e))).await
        }
    }
}

async fn add_card(State(app): State<Arc<App>>, admin: Admin, headers: HeaderMap, form: Form) -> Response {
    if let Some(r) = refused(&app, &admin, &form, Some(Need::Billing)) {
        return r;
    }
    // The card number is never sent back to the browser.
    let values = form.values(&["exp", "holder"]);
    let fail = |field: &str, e: &Error| FormState::new("card", values.clone()).with_error(field, e);
    let (exp_month, exp_year) = match parse_expiry(form.get("exp")) {
        Ok(v) => v,
        Err(e) => return billing_with(&app, &admin, &headers, Some((fail("exp", &e), &e))).await,
    };
    let holder = form.opt("holder");
    let input = CardInput {
        number: form.get("number").chars().filter(|c| !c.is_whitespace() && *c != '-').collect(),
        exp_month,
        exp_year,
        holder: holder.clone().unwrap_or_default(),
    };
    let (engine, org) = (app.engine.clone(), admin.org.clone());
    // Wrapped once tokenized, as the API does (its fingerprint holds the last 4 only).
    let (a, f) = (admin.clone(), form.clone());
    let result = blocking(move || {
        let now = Timestamp::now();
        let token = engine.gateway().tokenize_card(&input, now)?;
        let label = format!("{} ending {}", token.brand, token.last4);
        let cmd = once(&a, &f, Command::AddCard { org, token, holder });
        engine.apply_one(now, cmd).and_then(unreplayed)?;
        Ok(label)
    })
    .await;
    match result {
        Ok(label) => done(&admin, &format!("Card added: {label}."), "/admin/billing"),
        Err(e) => {
            let field = match e.code {
                ErrorCode::ExpiredCard => "exp",
                ErrorCode::IdempotencyKeyReused => "_",
                _ => "number",
            };
            billing_with(&app, &admin, &headers, Some((fail(field, &e), &e))).await
        }
    }
}

async fn add_agreement(State(app): State<Arc<App>>, admin: Admin, headers: HeaderMap, form: Form) -> Response {
    if let Some(r) = refused(&app, &admin, &form, Some(Need::Billing)) {
        return r;
    }
    let number = form.get("agreement_number").trim().to_string();
    let cmd = Command::AddAgreement { org: admin.org.clone(), agreement_number: number.clone() };
    match apply_once(&app, &admin, &form, cmd).await {
        Ok(_) => done(&admin, &format!("Enterprise Agreement {number} added."), "/admin/billing"),
        Err(e) => {
            let field = if e.code == ErrorCode::IdempotencyKeyReused { "_" } else { "agreement_number" };
            let state = FormState::new("agreement", form.values(&["agreement_number"])).with_error(field, &e);
            billing_with(&app, &admin, &headers, Some((state, &e))).await
        }
    }
}

// ---------------------------------------------------------------- users and licenses

#[derive(Deserialize, Default)]
struct UsersQuery {
    #[serde(default)]
    q: String,
}

async fn users_with(
    app: &Arc<App>,
    admin: &Admin,
    headers: &HeaderMap,
    q: String,
    form: Option<(FormState, &Error)>,
) -> Response {
    let (status, form) = match form {
        Some((f, e)) => (status_of(e), Some(f)),
        None => (StatusCode::OK, None),
    };
    show(app, admin, headers, "users", "users.html", status, form, move |e, org| pages::users(e, org, &q)).await
}

async fn users(State(app): State<Arc<App>>, admin: Admin, headers: HeaderMap, Query(q): Query<UsersQuery>) -> Response {
    let q = q.q;
    users_with(&app, &admin, &headers, q, None).await
}

async fn bulk_licenses(State(app): State<Arc<App>>, admin: Admin, headers: HeaderMap, form: Form) -> Response {
    if let Some(r) = refused(&app, &admin, &form, Some(Need::Licenses)) {
        return r;
    }
    let sku = form.get("sku").to_string();
    let users = form.all("user_ids");
    let values = form.values(&["sku"]);
    let refuse = |e: Error| {
        let (app, admin, headers) = (app.clone(), admin.clone(), headers.clone());
        async move {
            let field = if e.code == ErrorCode::IdempotencyKeyReused { "_" } else { "sku" };
            let state = FormState::new("bulk", values).with_error(field, &e);
            users_with(&app, &admin, &headers, String::new(), Some((state, &e))).await
        }
    };
    if users.is_empty() {
        return refuse(Error::new(ErrorCode::InvalidInput, "select at least one user")).await;
    }
    if users.len() > crate::routes::MAX_BULK_USERS {
        return refuse(Error::new(
            ErrorCode::InvalidInput,
            format!("at most {} users at once", crate::routes::MAX_BULK_USERS),
        ))
        .await;
    }
    let n = users.len();
    let assign = form.get("action") != "remove";
    let cmd = if assign {
        Command::AssignLicense { org: admin.org.clone(), sku: sku.clone(), users }
    } else {
        Command::RemoveLicense { org: admin.org.clone(), sku: sku.clone(), users }
    };
    match apply_once(&app, &admin, &form, cmd).await {
        Ok(_) => {
            let who = if n == 1 { "1 user".to_string() } else { format!("{n} users") };
            let msg = if assign {
                format!("{} assigned to {who}.", pages::sku_label(&sku))
            } else {
                format!("{} removed from {who}.", pages::sku_label(&sku))
            };
            done(&admin, &msg, "/admin/users")
        }
        Err(e) => refuse(e).await,
    }
}

async fn set_licenses(
    State(app): State<Arc<App>>,
    admin: Admin,
    headers: HeaderMap,
    Path(user): Path<String>,
    form: Form,
) -> Response {
    if let Some(r) = refused(&app, &admin, &form, Some(Need::Licenses)) {
        return r;
    }
    // Only the toggles the admin changed are applied, to the licenses the user holds
    // now: a license assigned or removed elsewhere since the page was shown stays so.
    // (A form without `held`, from an older page, sets the checked licenses as they are.)
    let (checked, held) = (form.all("skus"), form.all("held"));
    let skus = if form.get("held_shown") == "1" {
        let engine = app.engine.clone();
        let (org, id) = (admin.org.clone(), user.clone());
        match blocking(move || engine.user(&org, &id)).await {
            Ok(current) => changed_licenses(current.licenses, &held, &checked),
            Err(e) => return error_page(&e, "/admin/users"),
        }
    } else {
        checked
    };
    let cmd = Command::SetLicenses { org: admin.org.clone(), user: user.clone(), skus };
    match apply(&app, cmd).await {
        Ok(commcredits_engine::Outcome::User(u)) => {
            done(&admin, &format!("Licenses of {} saved.", u.display_name), "/admin/users")
        }
        Ok(_) => done(&admin, "Licenses saved.", "/admin/users"),
        Err(e) => {
            let values = BTreeMap::from([("user".to_string(), user)]);
            let state = FormState::new("licenses", values).with_error("skus", &e);
            users_with(&app, &admin, &headers, String::new(), Some((state, &e))).await
        }
    }
}

async fn user_page(
    State(app): State<Arc<App>>,
    admin: Admin,
    headers: HeaderMap,
    Path(user): Path<String>,
) -> Response {
    show(&app, &admin, &headers, "users", "user.html", StatusCode::OK, None, move |e, org| pages::user(e, org, &user))
        .await
}

async fn update_user(
    State(app): State<Arc<App>>,
    admin: Admin,
    headers: HeaderMap,
    Path(user): Path<String>,
    form: Form,
) -> Response {
    if let Some(r) = refused(&app, &admin, &form, Some(Need::Licenses)) {
        return r;
    }
    // Only the fields the admin changed from what the page showed are sent on, like a
    // PATCH: a change made elsewhere since the page was shown is not overwritten.
    let changed = |name: &str| {
        let was = format!("was_{name}");
        !form.fields.iter().any(|(k, _)| *k == was) || form.get(name).trim() != form.get(&was).trim()
    };
    let changes = UserChanges {
        org: admin.org.clone(),
        user: user.clone(),
        dial_out: form.opt("dial_out_policy").filter(|_| changed("dial_out_policy")),
        conference_dial_out: form.opt("conference_dial_out_policy").filter(|_| changed("conference_dial_out_policy")),
        // An empty field removes the limit.
        spend_limit: changed("spend_limit").then(|| form.opt("spend_limit")),
        ..UserChanges::default()
    };
    match apply(&app, Command::UpdateUser(changes)).await {
        Ok(commcredits_engine::Outcome::User(u)) => {
            done(&admin, &format!("Calling policy of {} saved.", u.display_name), &format!("/admin/users/{}", u.id))
        }
        Ok(_) => done(&admin, "Calling policy saved.", "/admin/users"),
        Err(e) => {
            let field = match e.code {
                ErrorCode::InvalidAmount | ErrorCode::AmountOverflow => "spend_limit",
                ErrorCode::InvalidInput => "dial_out_policy",
                _ => "_",
            };
            let state = FormState::new(
                "policy",
                form.values(&["dial_out_policy", "conference_dial_out_policy", "spend_limit"]),
            )
            .with_error(field, &e);
            let status = status_of(&e);
            show(&app, &admin, &headers, "users", "user.html", status, Some(state), move |e, org| {
                pages::user(e, org, &user)
            })
            .await
        }
    }
}

// ---------------------------------------------------------------- numbers, pools, notifications

async fn numbers(State(app): State<Arc<App>>, admin: Admin, headers: HeaderMap) -> Response {
    show(&app, &admin, &headers, "numbers", "numbers.html", StatusCode::OK, None, pages::numbers).await
}

async fn add_number(State(app): State<Arc<App>>, admin: Admin, headers: HeaderMap, form: Form) -> Response {
    if let Some(r) = refused(&app, &admin, &form, Some(Need::Licenses)) {
        return r;
    }
    let number = form.get("number").trim().to_string();
    let cmd = Command::AddNumber {
        org: admin.org.clone(),
        number: number.clone(),
        kind: form.get("kind").to_string(),
        user: form.opt("user"),
    };
    match apply_once(&app, &admin, &form, cmd).await {
        Ok(_) => done(&admin, &format!("Number {number} added."), "/admin/numbers"),
        Err(e) => {
            let field = match e.code {
                ErrorCode::InvalidPhoneNumber | ErrorCode::DuplicateNumber => "number",
                ErrorCode::UserNotFound => "user",
                ErrorCode::InvalidInput => "kind",
                _ => "_",
            };
            let state = FormState::new("number", form.values(&["number", "kind", "user"])).with_error(field, &e);
            show(&app, &admin, &headers, "numbers", "numbers.html", status_of(&e), Some(state), pages::numbers).await
        }
    }
}

async fn pools(State(app): State<Arc<App>>, admin: Admin, headers: HeaderMap) -> Response {
    show(&app, &admin, &headers, "pools", "pools.html", StatusCode::OK, None, |e, org| {
        pages::pools(e, org, Timestamp::now())
    })
    .await
}

async fn notifications(State(app): State<Arc<App>>, admin: Admin, headers: HeaderMap) -> Response {
    show(&app, &admin, &headers, "notifications", "notifications.html", StatusCode::OK, None, pages::notifications)
        .await
}

// ---------------------------------------------------------------- usage report

/// The usage page's query: dates and the filters of the API's pstn-usage.
#[derive(Deserialize, Default)]
struct UsageParams {
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
    #[serde(default)]
    user: String,
    #[serde(default, rename = "type")]
    call_type: String,
    #[serde(default)]
    funding: String,
    #[serde(default)]
    capability: String,
    #[serde(default)]
    country: String,
    #[serde(default)]
    cursor: String,
    #[serde(default)]
    format: String,
}

/// The filters as the form shows them (the month so far by default), the period as
/// instants, or the errors by field.
/// The longest period the usage page shows: its totals and chart scan the whole period
/// on every view, where an export streams it once.
const USAGE_PAGE_MAX_DAYS: i64 = 366;

/// The usage filters of a page or an export; `max_days` bounds the period (the page's).
fn usage_filters(
    p: &UsageParams,
    now: Timestamp,
    max_days: Option<i64>,
) -> (pages::UsageForm, std::result::Result<UsageFilter, FormState>) {
    let today = now.to_zoned_datetime(jiff::tz::TimeZone::UTC).date();
    let form = pages::UsageForm {
        from: if p.from.trim().is_empty() { today.first_of_month().to_string() } else { p.from.trim().into() },
        to: if p.to.trim().is_empty() { today.to_string() } else { p.to.trim().into() },
        user: p.user.trim().into(),
        call_type: p.call_type.trim().into(),
        funding: p.funding.trim().into(),
        capability: p.capability.trim().into(),
        country: p.country.trim().to_ascii_uppercase(),
    };
    let values = BTreeMap::from([
        ("from".to_string(), form.from.clone()),
        ("to".to_string(), form.to.clone()),
        ("user".to_string(), form.user.clone()),
        ("type".to_string(), form.call_type.clone()),
        ("funding".to_string(), form.funding.clone()),
        ("capability".to_string(), form.capability.clone()),
        ("country".to_string(), form.country.clone()),
    ]);
    let mut state = FormState::new("usage", values);
    // Dates (the start of their UTC day) or RFC 3339 instants, as in the API and CLI.
    let from = commcredits_core::period::parse_period_time("from", &form.from)
        .map_err(|e| state.errors.insert("from".into(), field_error(&e)));
    // The form's "to" date is inclusive: the period ends when the next day starts. An
    // instant is the end itself.
    let to_is_date = commcredits_core::period::is_date(&form.to);
    let to = commcredits_core::period::parse_period_time("to", &form.to)
        .and_then(|t| {
            if !to_is_date {
                return Ok(t);
            }
            t.checked_add(jiff::SignedDuration::from_hours(24))
                .map_err(|e| Error::new(ErrorCode::InvalidTime, e.to_string()))
        })
        .map_err(|e| state.errors.insert("to".into(), field_error(&e)));
    if let (Ok(f), Ok(t)) = (&from, &to) {
        if f >= t {
            let e = Error::new(ErrorCode::InvalidInput, "the period is empty: 'from' must not be after 'to'");
            state.errors.insert("to".into(), field_error(&e));
        } else if let Some(days) = max_days.filter(|d| t.duration_since(*f).as_secs() > d * 86_400) {
            let e = Error::new(
                ErrorCode::InvalidInput,
                format!("the page shows at most {days} days: choose a shorter period, or export this one"),
            );
            state.errors.insert("from".into(), field_error(&e));
        }
    }
    if !form.country.is_empty() {
        if let Err(e) = commcredits_core::phone::Country::parse(&form.country) {
            state.errors.insert("country".into(), field_error(&e));
        }
    }
    let filter = match (from, to) {
        (Ok(from), Ok(to)) if state.errors.is_empty() => Ok(UsageFilter {
            from: Some(from),
            to: Some(to),
            user: Some(form.user.clone()).filter(|u| !u.is_empty()),
            call_type: Some(form.call_type.clone()).filter(|u| !u.is_empty()),
            funding: Some(form.funding.clone()).filter(|u| !u.is_empty()),
            capability: Some(form.capability.clone()).filter(|u| !u.is_empty()),
            country: Some(form.country.clone()).filter(|u| !u.is_empty()),
        }),
        _ => Err(state),
    };
    (form, filter)
}

fn field_error(e: &Error) -> FieldError {
    FieldError { code: e.code.as_str(), message: e.message.clone() }
}

fn form_of(form: &pages::UsageForm) -> FormState {
    FormState::new(
        "usage",
        BTreeMap::from([
            ("from".to_string(), form.from.clone()),
            ("to".to_string(), form.to.clone()),
            ("user".to_string(), form.user.clone()),
            ("type".to_string(), form.call_type.clone()),
            ("funding".to_string(), form.funding.clone()),
            ("capability".to_string(), form.capability.clone()),
            ("country".to_string(), form.country.clone()),
        ]),
    )
}

async fn usage(
    State(app): State<Arc<App>>,
    admin: Admin,
    headers: HeaderMap,
    Query(p): Query<UsageParams>,
) -> Response {
    let (form, filter) = usage_filters(&p, Timestamp::now(), Some(USAGE_PAGE_MAX_DAYS));
    let filter = match filter {
        Ok(f) => f,
        Err(state) => {
            let e = Error::new(ErrorCode::InvalidInput, "check the filters");
            return show(&app, &admin, &headers, "usage", "usage.html", status_of(&e), Some(state), |_, _| {
                Ok(None::<pages::Usage>)
            })
            .await;
        }
    };
    let (engine, org) = (app.engine.clone(), admin.org.clone());
    let cursor = Some(p.cursor.trim().to_string()).filter(|c| !c.is_empty());
    let f = form.clone();
    // The page scans the period (totals, chart): report work, on a report thread.
    let built = match app.reports.acquire(None) {
        Ok(permit) => crate::limits::ReportSlots::run(permit, move || {
            let org_view = engine.org_view(&org)?;
            Ok((org_view, pages::usage(&engine, &org, &f, &filter, cursor.as_deref())))
        })
        .await
        .map_err(|e| e.0),
        Err(e) => Err(e.0),
    };
    match built {
        Ok((org_view, Ok(page))) => page_response(
            &admin,
            &org_view,
            &headers,
            "usage",
            "usage.html",
            StatusCode::OK,
            Some(&form_of(&form)),
            &Some(page),
        ),
        // A filter the engine refuses (an unknown user, a stale cursor): shown on the form.
        Ok((org_view, Err(e))) if !matches!(e.code, ErrorCode::Internal | ErrorCode::StoreError) => {
            let field = if e.code == ErrorCode::UserNotFound { "user" } else { "_" };
            let state = form_of(&form).with_error(field, &e);
            page_response(
                &admin,
                &org_view,
                &headers,
                "usage",
                "usage.html",
                status_of(&e),
                Some(&state),
                &None::<pages::Usage>,
            )
        }
        Ok((_, Err(e))) | Err(e) => error_page(&e, "/admin/usage"),
    }
}

/// The report as CSV, Excel or the zip bundle, streamed by the same code as the API's pstn-usage.
async fn export(State(app): State<Arc<App>>, admin: Admin, Query(p): Query<UsageParams>) -> Response {
    if let Err(e) = check_org(&admin.principal, &admin.org, Need::Read) {
        return error_page(&e.0, "/admin/usage");
    }
    let format = match p.format.as_str() {
        "csv" | "xlsx" | "zip" => p.format.clone(),
        other => {
            return error_page(
                &Error::new(ErrorCode::InvalidInput, format!("format must be csv, xlsx or zip, not '{other}'")),
                "/admin/usage",
            )
        }
    };
    let (_, filter) = usage_filters(&p, Timestamp::now(), None);
    let filter = match filter {
        Ok(f) => f,
        Err(state) => {
            let msg = state.errors.values().map(|e| e.message.clone()).collect::<Vec<_>>().join("; ");
            return error_page(&Error::new(ErrorCode::InvalidInput, msg), "/admin/usage");
        }
    };
    let iso = |t: Option<Timestamp>| t.map(commcredits_engine::views::iso).unwrap_or_default();
    let q = crate::reports::UsageQuery {
        from: iso(filter.from),
        to: iso(filter.to),
        format: Some(format),
        user: filter.user,
        call_type: filter.call_type,
        funding: filter.funding,
        capability: filter.capability,
        country: filter.country,
        cursor: None,
        limit: None,
    };
    match crate::reports::usage_response(&app, &admin.principal.key_id, admin.org.clone(), q).await {
        Ok(r) => r,
        Err(e) => error_page(&e.0, "/admin/usage"),
    }
}

/// The licenses a user ends up with: those held now, with the toggles the admin
/// changed on the page (`held` as shown, `checked` as sent) applied.
fn changed_licenses(now: Vec<String>, held: &[String], checked: &[String]) -> Vec<String> {
    let mut skus: Vec<String> = now.into_iter().filter(|s| !held.contains(s) || checked.contains(s)).collect();
    for s in checked {
        if !held.contains(s) && !skus.contains(s) {
            skus.push(s.clone());
        }
    }
    skus
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_parses() {
        for (name, _) in TEMPLATES {
            templates().get_template(name).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        }
    }

    #[test]
    fn usage_filters_default_to_the_month_and_refuse_bad_dates() {
        let now: Timestamp = "2026-11-17T10:00:00Z".parse().unwrap();
        let (form, filter) = usage_filters(&UsageParams::default(), now, Some(USAGE_PAGE_MAX_DAYS));
        assert_eq!((form.from.as_str(), form.to.as_str()), ("2026-11-01", "2026-11-17"));
        let f = filter.unwrap_or_else(|_| panic!("defaults are valid"));
        assert_eq!(f.from, Some("2026-11-01T00:00:00Z".parse().unwrap()));
        assert_eq!(f.to, Some("2026-11-18T00:00:00Z".parse().unwrap()));
        let bad = UsageParams { from: "2026-13-01".into(), country: "Germany".into(), ..UsageParams::default() };
        let Err(state) = usage_filters(&bad, now, None).1 else { panic!("a bad date is refused") };
        assert_eq!(state.errors["from"].code, "invalid_time");
        assert_eq!(state.errors["country"].code, "invalid_country");
        assert_eq!(state.values["from"], "2026-13-01");
        // The page shows at most a year and a day; an export takes any period.
        let long = UsageParams { from: "1970-01-01".into(), to: "2100-01-01".into(), ..UsageParams::default() };
        let Err(state) = usage_filters(&long, now, Some(USAGE_PAGE_MAX_DAYS)).1 else {
            panic!("too long for the page")
        };
        assert_eq!(state.errors["from"].code, "invalid_input");
        assert!(usage_filters(&long, now, None).1.is_ok());
        let year = UsageParams { from: "2025-11-17".into(), to: "2026-11-17".into(), ..UsageParams::default() };
        assert!(usage_filters(&year, now, Some(USAGE_PAGE_MAX_DAYS)).1.is_ok());
    }

    #[test]
    fn usage_filters_take_instants_as_well_as_dates() {
        let now: Timestamp = "2026-11-17T10:00:00Z".parse().unwrap();
        let p = UsageParams {
            from: "2026-11-02T09:00:00Z".into(),
            to: "2026-11-03T09:30:00+01:00".into(),
            ..UsageParams::default()
        };
        let f = usage_filters(&p, now, Some(USAGE_PAGE_MAX_DAYS)).1.unwrap_or_else(|_| panic!("instants are valid"));
        assert_eq!(f.from, Some("2026-11-02T09:00:00Z".parse().unwrap()));
        // An instant ends the period itself; only a date "to" takes in its whole day.
        assert_eq!(f.to, Some("2026-11-03T08:30:00Z".parse().unwrap()));
    }
}
