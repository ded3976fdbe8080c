//! The routes of SPEC §3, each documented for OpenAPI by its `#[utoipa::path]`: the
//! router is built from these annotations, so the document and the server cannot
//! disagree.

use crate::auth::{check_org, check_platform, Auth, Need};
use crate::error::{err, json_response, parse, ApiError, ApiResult, Body};
use crate::App;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use commcredits_core::catalog::DeckKind;
use commcredits_core::money::Currency;
use commcredits_core::{ErrorCode, Timestamp};
use commcredits_engine::admin::UserChanges;
use commcredits_engine::calls::AuthorizeRequest;
use commcredits_engine::cdr::ImportReport;
use commcredits_engine::keys::Role;
use commcredits_engine::payments::CardInput;
use commcredits_engine::views::*;
use commcredits_engine::{Command, Keep, Outcome};
use serde::{Deserialize, Deserializer, Serialize};
use std::sync::Arc;
use utoipa::{IntoParams, ToSchema};

type AppState = State<Arc<App>>;

/// A query string, with malformed or unknown parameters as 422 problems.
pub struct Query<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Query(v)),
            Err(e) => Err(err(ErrorCode::InvalidInput, format!("invalid query string: {}", e.body_text()))),
        }
    }
}

/// Largest page a list returns, and the default.
pub const MAX_PAGE: usize = 1_000;
pub const DEFAULT_PAGE: usize = 100;
/// Most users one bulk license assignment may name.
pub const MAX_BULK_USERS: usize = 1_000;

/// An RFC 9457 problem.
#[derive(Serialize, ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// The stable machine-readable code.
    pub code: String,
}

#[derive(Serialize, ToSchema)]
pub struct Created {
    pub id: String,
}

/// A page of a list; pass `next_cursor` as `cursor` for the next one.
#[derive(Serialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    /// At most 1000; default 100.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

fn paginate<T>(mut items: Vec<T>, key: impl Fn(&T) -> String, q: &PageQuery) -> ApiResult<Json<Page<T>>> {
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(err(ErrorCode::InvalidInput, format!("limit must be 1 to {MAX_PAGE}")));
    }
    items.sort_by_key(|a| key(a));
    if let Some(c) = &q.cursor {
        items.retain(|i| key(i).as_str() > c.as_str());
    }
    let more = items.len() > limit;
    items.truncate(limit);
    let next_cursor = if more { items.last().map(&key) } else { None };
    Ok(Json(Page { items, next_cursor }))
}

/// Runs blocking engine work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> commcredits_core::Result<T> + Send + 'static) -> ApiResult<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| err(ErrorCode::Internal, e.to_string()))?.map_err(ApiError)
}

fn idem_key(headers: &HeaderMap) -> ApiResult<Option<String>> {
    match headers.get("idempotency-key") {
        None => Ok(None),
        Some(v) => {
            let k =
                v.to_str().map_err(|_| err(ErrorCode::InvalidInput, "Idempotency-Key must be visible ASCII"))?.trim();
            if k.is_empty() || k.len() > 255 {
                return Err(err(ErrorCode::InvalidInput, "Idempotency-Key must be 1 to 255 characters"));
            }
            Ok(Some(k.to_string()))
        }
    }
}

/// A hash of the request an idempotency key was used with. A card number is
/// replaced by its last four digits first: the stored hash must not let anyone
/// recover the number by trying the few candidates its brand, last 4 and expiry leave.
pub fn fingerprint(method: &Method, uri: &Uri, body: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(method.as_str().as_bytes());
    h.update(b" ");
    h.update(uri.path().as_bytes());
    h.update(b"\n");
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(mut v) if v.pointer("/card/number").is_some() => {
            let digits: String =
                v["card"]["number"].as_str().unwrap_or("").chars().filter(char::is_ascii_digit).collect();
            v["card"]["number"] = serde_json::Value::String(digits[digits.len().saturating_sub(4)..].to_string());
            h.update(v.to_string().as_bytes());
        }
        _ => h.update(body),
    }
    hex::encode(h.finalize())
}

/// A mutating request: what idempotency keys and fingerprints are made of. Extracted
/// last (it takes the body); malformed bodies are 4xx problems.
pub struct Mutation {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: axum::body::Bytes,
}

impl<S: Send + Sync> axum::extract::FromRequest<S> for Mutation {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        let (method, uri, headers) = (req.method().clone(), req.uri().clone(), req.headers().clone());
        let Body(body) = Body::from_request(req, state).await?;
        Ok(Mutation { method, uri, headers, body })
    }
}

impl Mutation {
    fn req(&self) -> Req<'_> {
        Req { method: &self.method, uri: &self.uri, headers: &self.headers, body: &self.body }
    }
}

/// The request as the idempotency wrapper sees it.
pub(crate) struct Req<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
}

impl Req<'_> {
    /// Wraps `cmd` with the request's Idempotency-Key, when it has one.
    fn wrap(&self, scope: &str, cmd: Command) -> ApiResult<Command> {
        self.wrap_keeping(scope, Keep::Answer, cmd)
    }

    fn wrap_keeping(&self, scope: &str, keep: Keep, cmd: Command) -> ApiResult<Command> {
        Ok(match idem_key(self.headers)? {
            Some(key) => Command::Idempotent {
                org: scope.into(),
                key,
                fingerprint: fingerprint(self.method, self.uri, self.body),
                conflict: ErrorCode::IdempotencyKeyReused,
                keep,
                inner: Box::new(cmd),
            },
            None => cmd,
        })
    }
}

fn answer(result: &commcredits_core::Result<Outcome>) -> Response {
    if let Err(e) = result {
        if matches!(e.code, ErrorCode::Internal | ErrorCode::StoreError) {
            return ApiError(e.clone()).into_response();
        }
    }
    let (status, body) = respond(result);
    json_response(status, body)
}

/// Applies a command (with the request's Idempotency-Key) and answers.
async fn mutate(app: &Arc<App>, scope: &str, req: Req<'_>, cmd: Command) -> ApiResult<Response> {
    let cmd = req.wrap(scope, cmd)?;
    let engine = app.engine.clone();
    let result = tokio::task::spawn_blocking(move || engine.apply_one(Timestamp::now(), cmd))
        .await
        .map_err(|e| err(ErrorCode::Internal, e.to_string()))?;
    Ok(answer(&result))
}

fn major(currency: &str, minor: i64, what: &str) -> ApiResult<String> {
    if minor < 0 {
        return Err(err(ErrorCode::InvalidAmount, format!("{what} cannot be negative")));
    }
    Ok(Currency::parse(currency)?.format_minor(minor))
}

async fn org_currency(app: &Arc<App>, org: &str) -> ApiResult<String> {
    let engine = app.engine.clone();
    let org = org.to_string();
    Ok(blocking(move || engine.org_view(&org)).await?.currency)
}

fn double_option<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Ok(Some(Option::deserialize(d)?))
}

// ---------------------------------------------------------------- organizations

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrg {
    pub name: String,
    /// ISO 4217 billing currency.
    pub currency: String,
    /// ISO 3166 alpha-2 home country.
    pub country: String,
    #[serde(default)]
    pub notification_emails: Vec<String>,
}

#[utoipa::path(post, path = "/v1/orgs", tag = "organizations", request_body = CreateOrg,
    responses((status = 201, body = Created), (status = "4XX", body = Problem)), security(("api_key" = [])))]
pub async fn create_org(State(app): AppState, Auth(p): Auth, m: Mutation) -> ApiResult {
    check_platform(&p, Role::Operator)?;
    let r: CreateOrg = parse(&m.body)?;
    let cmd =
        Command::CreateOrg { name: r.name, currency: r.currency, country: r.country, emails: r.notification_emails };
    mutate(&app, "", m.req(), cmd).await
}

#[utoipa::path(get, path = "/v1/orgs/{org}", tag = "organizations", params(("org" = String, Path)),
    responses((status = 200, body = OrgView), (status = "4XX", body = Problem)), security(("api_key" = [])))]
pub async fn get_org(State(app): AppState, Auth(p): Auth, Path(org): Path<String>) -> ApiResult<Json<OrgView>> {
    check_org(&p, &org, Need::Read)?;
    let engine = app.engine.clone();
    Ok(Json(blocking(move || engine.org_view(&org)).await?))
}

// ---------------------------------------------------------------- users and licenses

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    pub upn: String,
    pub display_name: String,
    pub usage_location: String,
    pub phone_number: Option<String>,
}

#[utoipa::path(post, path = "/v1/orgs/{org}/users", tag = "users", params(("org" = String, Path)), request_body = CreateUser,
    responses((status = 201, body = Created), (status = "4XX", body = Problem)), security(("api_key" = [])))]
pub async fn create_user(State(app): AppState, Auth(p): Auth, Path(org): Path<String>, m: Mutation) -> ApiResult {
    check_org(&p, &org, Need::Licenses)?;
    let r: CreateUser = parse(&m.body)?;
    let cmd = Command::CreateUser {
        org: org.clone(),
        upn: r.upn,
        display_name: r.display_name,
        usage_location: r.usage_location,
        phone_number: r.phone_number,
    };
    mutate(&app, &org, m.req(), cmd).await
}

#[utoipa::path(get, path = "/v1/orgs/{org}/users", tag = "users", params(("org" = String, Path), PageQuery),
    responses((status = 200, body = Page<UserView>), (status = "4XX", body = Problem)), security(("api_key" = [])))]
pub async fn list_users(
    State(app): AppState,
    Auth(p): Auth,
    Path(org): Path<String>,
    Query(q): Query<PageQuery>,
) -> ApiResult<Json<Page<UserView>>> {
    check_org(&p, &org, Need::Read)?;
    let engine = app.engine.clone();
    paginate(blocking(move || engine.users(&org)).await?, |u| u.upn.clone(), &q)
}

#[utoipa::path(get, path = "/v1/orgs/{org}/users/{user}", tag = "users", params(("org" = String, Path), ("user" = String, Path, description = "id or UPN")),
    responses((status = 200, body = UserView), (status = "4XX", body = Problem)), security(("api_key" = [])))]
pub async fn get_user(
    State(app): AppState,
    Auth(p): Auth,
    Path((org, user)): Path<(String, String)>,
) -> ApiResult<Json<UserView>> {
    check_org(&p, &org, Need::Read)?;
    let engine = app.engine.clone();
    Ok(Json(blocking(move || engine.user(&org, &user)).await?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchUser {
    pub display_name: Option<String>,
    pub usage_location: Option<String>,
    /// international, domestic or disabled.
    pub dial_out_policy: Option<String>,
    pub conference_dial_out_policy: Option<String>,
    /// Monthly credits limit in minor units; null removes it.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<i64>)]
    pub spend_limit: Option<Option<i64>>,
}

#[utoipa::path(patch, path = "/v1/orgs/{org}/users/{user}", tag = "users", params(("org" = String, Path), ("user" = String, Path)), request_body = PatchUser,
    responses((status = 200, body = UserView), (status = "4XX", body = Problem)), security(("api_key" = [])))]
pub async fn patch_user(
    State(app): AppState,
    Auth(p): Auth,
    Path((org, user)): Path<(String, String)>,
    m: Mutation,
) -> ApiResult {
    check_org(&p, &org, Need::Licenses)?;
    let r: PatchUser = parse(&m.body)?;
    let spend_limit = match r.spend_limit {
        Some(Some(minor)) => Some(Some(major(&org_currency(&app, &org).await?, minor, "spend_limit")?)),
        Some(None) => Some(None),
        None => None,
    };
    let cmd = Command::UpdateUser(UserChanges {
        org: org.clone(),
        user: user.clone(),
        display_name: r.display_name,
        usage_location: r.usage_location,
        dial_out: r.dial_out_policy,
        conference_dial_out: r.conference_dial_out_policy,
        spend_limit,
    });
    mutate(&app, &org, m.req(), cmd).await
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddSubscription {
    pub sku: String,
    pub quantity: i64,
}

#[utoipa::path(post, path = "/v1/orgs/{org}/subscriptions", tag = "licenses", params(("org" = String, Path)), request_body = AddSubscription,
    responses((status = 200, description = "the new total", body = Object), (status = "4XX", body = Problem)), security(("api_key" = [])))]
pub async fn add_subscription(State(app): AppState, Auth(p): Auth, Path(org): Path<String>, m: Mutation) -> ApiResult {
    check_org(&p, &org, Need::Billing)?;
    let r: AddSubscription = parse(&m.body)?;
    mutate(&app, &org, m.req(), Command::AddSubscription { org: org.clone(), sku: r.sku, quantity: r.quantity }).await
}

#[utoipa::path(get, path = "/v1/orgs/{org}/subscriptions", tag = "licenses", params(("org" = String, Path)),
    responses((status = 200, body = Vec<SubscriptionView>), (status = "4XX", body = Problem)), security(("api_key" = [])))]
pub async fn list_subscriptions(
    State(app): AppState,
    Auth(p): Auth,
    Path(org): Path<String>,
) -> ApiResult<Json<Vec<SubscriptionView>>> {
    check_org(&p, &org, Need::Read)?;
    let engine = app.engine.clone();
    Ok(Json(blocking(move || engine.subscriptions(&org)).await?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetLicenses {
    /// The full set of SKUs the user holds afterwards.
    pub skus: Vec<String>,
}

#[utoipa::path(put, path = "/v1/orgs/{org}/users/{user}/licenses", tag = "licenses", params(("org" = String, Path), ("user" = String, Path)), request_body = SetLicenses,
    responses((status = 200, body = UserView), (status = "4XX", body = Problem)), security(("api_key" = [])))]
pub async fn set_licenses(
    State(app): AppState,
    Auth(p): Auth,
    Path((org, user)): Path<(String, String)>,
    m: Mutation,
) -> ApiResult {
    check_org(&p, &org, Need::Licenses)?;
    let r: SetLicenses = parse(&m.body)?;
    let cmd = Command::SetLicenses { org: org.clone(), user: user.clone(), skus: r.skus };
    mutate(&app, &org, m.req(), cmd).await
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AssignLicenses {
    pub sku: String,
    pub user_ids: Vec<String>,
}

#[utoipa::path(post, path = "/v1/orgs/{org}/licenses/assign", tag = "licenses", params(("org" = String, Path)), request_body = AssignLicenses,
    responses((status = 200, description = "users now holding the SKU", body = Object), (status = "4XX", body = Problem)), security(("api_key" = [])))]
pub async fn assign_licenses(State(app): AppState, Auth(p): Auth, Path(org): Path<String>, m: Mutation) -> ApiResult {
    check_org(&p, &org, Need::Licenses)?;
    let r: AssignLicenses = parse(&m.body)?;
    if r.user_ids.len() > MAX_BULK_USERS {
        return Err(err(ErrorCode::InvalidInput, format!("at most {MAX_BULK_USERS} users per assignment")));
    }
    mutate(&app, &org, m.req(), Command::AssignLicense { org: org.clone(), sku: r.sku, users: r.user_ids }).await
}

// ---------------------------------------------------------------- numbers and pools

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddNumber {
    pub number: String,
    /// user, service or toll_free.
    pub kind: String,
    pub user_id: Option<String>,
}

#[utoipa::path(post, path = "/v1/orgs/{org}/numbers", tag = "numbers", params(("org" = String, Path)), request_body = AddNumber,
    responses((status = 201, body = Created), (status = "4XX", body = Problem)), security(("api_key" = [])))]
pub async fn add_number(State(app): AppState, Auth(p): Auth, Path(org): Path<String>, m: Mutation) -> ApiResult {
    check_org(&p, &org, Need::Licenses)?;
    let r: AddNumber = parse(&m.body)?;
    mutate(
        &app,
        &org,
        m.req(),
        Command::AddNumber { org: org.clone(), number: r.number, kind: r.kind, user: r.user_id },
    )
    .await
}

#[utoipa::path(get, path = "/v1/orgs/{org}/numbers", tag = "numbers", params(("org" = String, Path), PageQuery),
    responses((status = 200, body = Object), (status = "4XX", body = Problem)), security(("api_key" = [])))]
pub async fn list_numbers(
    State(app): AppState,
    Auth(p): Auth,
    Path(org): Path<String>,
    Query(q): Query<PageQuery>,
) -> ApiResult<Json<Page<NumberView>>> {
    check_org(&p, &org, Need::Read)?;
    let engine = app.engine.clone();
    paginate(blocking(move || engine.numbers(&org)).await?, |n| n.number.clone(), &q)
}

#[utoipa::path(get, path = "/v1/orgs/{org}/pools", tag = "numbers", params(("org" = String, Path)),
    responses((status = 200, body = Vec<PoolView>), (status = "4XX", body = Problem)), security(("api_key" = [])))]
pub async fn list_pools(
    State(app): AppState,
    Auth(p): Auth,
    Path(org): Path<String>,
) -> ApiResult<Json<Vec<PoolView>>> {
    check_org(&p, &org, Need::Read)?;
    let engine = app.engine.clone();
    Ok(Json(blocking(move || engine.pools(&org, Timestamp::now())).await?))
}

// ---------------------------------------------------------------- payment methods and credits

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CardBody {
    pub number: String,
    pub exp_month: u32,
    pub exp_year: i32,
    pub holder: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddPaymentMethod {
    /// card or enterprise_agreement.
    #[serde(rename = "type")]
    pub kind: String,
    pub card: Option<CardBody>,
    pub agreement_number: Option<String>,
}

#[utoipa::path(post, path = "/v1/orgs/{org}/payment-methods", tag = "credits", params(("org" = String, Path)), request_body = AddPaymentMethod,
    responses((status = 201, body = Created), (status = "4XX", body = Problem)), security(("api_key" = [])))]
pub async fn add_payment_method(
    State(app): AppState,
    Auth(p): Auth,
    Path(org): Path<String>,
    m: Mutation,
) -> ApiResult {
    check_org(&p, &org, Need::Billing)?;
    let r: AddPaymentMethod = parse(&m.body)?;
    let cmd = match (r.kind.as_str(), r.card, r.agreement_number) {
        ("card", Some(c), None) => {
            let engine = app.engine.clone();
            let holder = c.holder.clone();
            let input = CardInput { number: c.number, exp_month: c.exp_month, exp_year: c.exp_year, holder: c.holder.unwrap_or_default() };
            let token = blocking(move || engine.gateway().tokenize_card(&input, Timestamp::now())).await?;
            Command::AddCard { org: org.clone(), token, holder }
        }
        ("enterprise_agreement", None, Some(a)) => Command::AddAgreement { org: org.clone(), agreement_number: a },
        _ => {
            return Err(err(
                ErrorCode::InvalidInput,
                "give {\"type\": \"card\", \"card\": {...}} or {\"type\": \"enterprise_agreement\", \"agreement_number\": ...}",
            ))
        }
    };
    // The fingerprint covers the body; the card number itself is never stored.
    mutate(&app, &org, m.req(), cmd).await
}

#[utoipa::path(get, path = "/v1/orgs/{org}/payment-methods", tag = "credits", params(("org" = String, Path), PageQuery),
    responses((status = 200, body = Object), (status = "4XX", body = Problem)), security(("api_key" = [])))]
pub async fn list_payment_methods(
    State(app): AppState,
    Auth(p): Auth,
    Path(org): Path<String>,
    Query(q): Query<PageQuery>,
) -> ApiResult<Json<Page<PaymentMethodView>>> {
    check_org(&p, &org, Need::Read)?;
    let engine = app.engine.clone();
    paginate(blocking(move || engine.payment_methods(&org)).await?, |m| m.id.clone(), &q)
}

#[utoipa::path(get, path = "/v1/orgs/{org}/credits", tag = "credits", params(("org" = String, Path)),
    responses((status = 200, body = CreditsView), (status = "4XX", body = Problem)), security(("api_key" = [])))]
pub async fn get_credits(State(app): AppState, Auth(p): Auth, Path(org): Path<String>) -> ApiResult<Json<CreditsView>> {
    check_org(&p, &org, Need::Read)?;
    let engine = app.engine.clone();
    Ok(Json(blocking(move || engine.credits(&org)).await?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddFunds {
    /// Minor units of the billing currency.
    pub amount: i64,
    pub payment_method_id: String,
    pub po_number: Option<String>,
}

#[utoipa::path(post, path = "/v1/orgs/{org}/credits/funds", tag = "credits", params(("org" = String, Path)), request_body = AddFunds,
    responses((status = 201, body = OrderView), (status = 402, description = "payment refused", body = Problem), (status = "4XX", body = Problem)), security(("api_key" = [])))]
pub async fn add_funds(State(app): AppState, Auth(p): Auth, Path(org): Path<String>, m: Mutation) -> ApiResult {
    check_org(&p, &org, Need::Billing)?;
    let r: AddFunds = parse(&m.body)?;
    if r.amount <= 0 {
        return Err(err(ErrorCode::InvalidAmount, "amount must be a positive number of minor units"));
    }
    let amount = major(&org_currency(&app, &org).await?, r.amount, "amount")?;
    let cmd = Command::PlaceOrder {
        org: org.clone(),
        amount,
        payment_method_id: r.payment_method_id,
        po_number: r.po_number,
        purchased_at: None,
    };
    let cmd = m.req().wrap(&org, cmd)?;
    let engine = app.engine.clone();
    blocking(move || {
        let now = Timestamp::now();
        // `apply` charges the order placed once it is committed.
        let result = engine.apply_one(now, cmd);
        let id = match &result {
            Ok(Outcome::Order(v)) => v.id.clone(),
            Ok(Outcome::Replayed { status, body }) if *status < 300 => {
                body["id"].as_str().unwrap_or_default().to_string()
            }
            _ => return Ok(answer(&result)),
        };
        // First answer or replay: the order as it stands now (a retry after a crash
        // between placing and charging sees the pending order charged by `jobs run`).
        let order = engine.read(|tx| tx.get_order(&org, &id))?;
        Ok(match order {
            Some(o) => match commcredits_engine::books::failed_order_error(&o) {
                Some(e) => json_response(e.code.http_status(), problem(&e)),
                None => json_response(201, serde_json::to_value(OrderView::from(&o)).unwrap_or_default()),
            },
            None => answer(&result),
        })
    })
    .await
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetAutoRecharge {
    pub enabled: bool,
    /// Minor units.
    pub amount: Option<i64>,
    /// Minor units.
    pub threshold: Option<i64>,
    pub payment_method_id: Option<String>,
}

#[utoipa::path(put, path = "/v1/orgs/{org}/credits/auto-recharge", tag = "credits", params(("org" = String, Path)), request_body = SetAutoRecharge,
    responses((status = 200, body = CreditsView), (status = "4XX", body = Problem)), security(("api_key" = [])))]
pub async fn set_auto_recharge(State(app): AppState, Auth(p): Auth, Path(org): Path<String>, m: Mutation) -> ApiResult {
    check_org(&p, &org, Need::Billing)?;
    let r: SetAutoRecharge = parse(&m.body)?;
    let cur = org_currency(&app, &org).await?;
    let amount = r.amount.map(|a| major(&cur, a, "amount")).transpose()?;
    let threshold = r.threshold.map(|t| major(&cur, t, "threshold")).transpose()?;
    let cmd = Command::SetAutoRecharge {
        org: org.clone(),
        enabled: r.enabled,
        amount,
        threshold,
        payment_method_id: r.payment_method_id,
    };
    // The answer, the credits as the change left them, is rendered in the transaction.
    mutate(&app, &org, m.req(), cmd).await
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LedgerQuery {
    /// At most 1000; default 100.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    pub cursor: Option<String>,
}

#[utoipa::path(get, path = "/v1/orgs/{org}/credits/ledger", tag = "credits", params(("org" = String, Path), LedgerQuery),
    responses((status = 200, body = LedgerPage), (status = "4XX", body = Problem)), security(("api_key" = [])))]
pub async fn get_ledger(
    State(app): AppState,
    Auth(p): Auth,
    Path(org): Path<String>,
    Query(q): Query<LedgerQuery>,
) -> ApiResult<Json<LedgerPage>> {
    check_org(&p, &org, Need::Read)?;
    let engine = app.engine.clone();
    Ok(Json(blocking(move || engine.ledger(&org, q.cursor.as_deref(), q.limit.unwrap_or(DEFAULT_PAGE))).await?))
}

#[utoipa::path(get, path = "/v1/orgs/{org}/orders", tag = "credits", params(("org" = String, Path), PageQuery),
    responses((status = 200, body = Object), (status = "4XX", body = Problem)), security(("api_key" = [])))]
pub async fn list_orders(
    State(app): AppState,
    Auth(p): Auth,
    Path(org): Path<String>,
    Query(q): Query<PageQuery>,
) -> ApiResult<Json<Page<OrderView>>> {
    check_org(&p, &org, Need::Read)?;
    let engine = app.engine.clone();
    paginate(blocking(move || engine.orders(&org)).await?, |o| o.id.clone(), &q)
}

#[utoipa::path(get, path = "/v1/orgs/{org}/notifications", tag = "credits", params(("org" = String, Path), PageQuery),
    responses((status = 200, body = Object), (status = "4XX", body = Problem)), security(("api_key" = [])))]
pub async fn list_notifications(
    State(app): AppState,
    Auth(p): Auth,
    Path(org): Path<String>,
    Query(q): Query<PageQuery>,
) -> ApiResult<Json<Page<NoticeView>>> {
    check_org(&p, &org, Need::Read)?;
    let engine = app.engine.clone();
    paginate(blocking(move || engine.notices(&org)).await?, |n| n.id.clone(), &q)
}

// ---------------------------------------------------------------- call control

#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthorizeBody {
    pub org_id: String,
    pub call_id: String,
    /// outbound, toll_free_inbound or conference_dial_out.
    #[serde(rename = "type")]
    pub call_type: String,
    /// The caller or meeting organizer (id or UPN); absent for toll-free.
    pub user_id: Option<String>,
    pub from: String,
    pub to: String,
    /// Default 300.
    pub requested_seconds: Option<u32>,
}

/// Queues a call-control command on the group-commit writer, with the request's
/// Idempotency-Key and a call-id key that makes retries answer the first decision.
/// Both keep only final decisions, until the call ends (`Keep::CallDecision`): a
/// refusal is decided again when asked again.
async fn call_command(
    app: &Arc<App>,
    org: &str,
    call_id: &str,
    call_key: Option<String>,
    req: Req<'_>,
    cmd: Command,
) -> ApiResult {
    let keep = Keep::CallDecision { call_id: call_id.into() };
    let cmd = match call_key {
        Some(key) => Command::Idempotent {
            org: org.into(),
            key,
            fingerprint: fingerprint(req.method, req.uri, req.body),
            conflict: ErrorCode::DuplicateCallId,
            keep: keep.clone(),
            inner: Box::new(cmd),
        },
        None => cmd,
    };
    let cmd = req.wrap_keeping(org, keep, cmd)?;
    let result = app.calls.submit(cmd).await;
    if let Ok(Outcome::Authorized(v)) = &result {
        metrics::counter!("commcredits_authorize_decisions_total", "decision" => v.decision.clone(), "reason" => v.reason.clone().unwrap_or_default()).increment(1);
    }
    Ok(answer(&result))
}

fn check_call_control(p: &commcredits_engine::keys::Principal) -> ApiResult<()> {
    check_platform(p, Role::CallControl)
}

#[utoipa::path(post, path = "/v1/calls/authorize", tag = "calls", request_body = AuthorizeBody,
    responses((status = 200, body = AuthorizeView), (status = "4XX", body = Problem)), security(("api_key" = [])))]
pub async fn authorize(State(app): AppState, Auth(p): Auth, m: Mutation) -> ApiResult {
    check_call_control(&p)?;
    let r: AuthorizeBody = parse(&m.body)?;
    let org = r.org_id.clone();
    let key = format!("authorize:{}", r.call_id);
    let call_id = r.call_id.clone();
    let cmd = Command::Authorize(AuthorizeRequest {
        org: r.org_id,
        call_id: r.call_id,
        call_type: r.call_type,
        user: r.user_id,
        from: r.from,
        to: r.to,
        requested_seconds: r.requested_seconds,
    });
    call_command(&app, &org, &call_id, Some(key), m.req(), cmd).await
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateBody {
    pub org_id: String,
    /// Seconds used since answer, cumulative.
    pub used_seconds: u32,
    /// Further seconds wanted.
    #[serde(default)]
    pub requested_seconds: u32,
}

#[utoipa::path(post, path = "/v1/calls/{call_id}/update", tag = "calls", params(("call_id" = String, Path)), request_body = UpdateBody,
    responses((status = 200, body = UpdateView), (status = "4XX", body = Problem)), security(("api_key" = [])))]
pub async fn update(State(app): AppState, Auth(p): Auth, Path(call_id): Path<String>, m: Mutation) -> ApiResult {
    check_call_control(&p)?;
    let r: UpdateBody = parse(&m.body)?;
    let org = r.org_id.clone();
    let key = format!("update:{call_id}:{}:{}", r.used_seconds, r.requested_seconds);
    let cmd = Command::Update {
        org: r.org_id,
        call_id: call_id.clone(),
        used_seconds: r.used_seconds,
        requested_seconds: r.requested_seconds,
    };
    call_command(&app, &org, &call_id, Some(key), m.req(), cmd).await
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndBody {
    pub org_id: String,
    pub duration_seconds: u32,
}

#[utoipa::path(post, path = "/v1/calls/{call_id}/end", tag = "calls", params(("call_id" = String, Path)), request_body = EndBody,
    responses((status = 200, body = EndView), (status = "4XX", body = Problem)), security(("api_key" = [])))]
pub async fn end(State(app): AppState, Auth(p): Auth, Path(call_id): Path<String>, m: Mutation) -> ApiResult {
    check_call_control(&p)?;
    let r: EndBody = parse(&m.body)?;
    let org = r.org_id.clone();
    // A repeated end answers the first result by itself.
    let cmd = Command::End { org: r.org_id, call_id: call_id.clone(), duration_seconds: r.duration_seconds };
    call_command(&app, &org, &call_id, None, m.req(), cmd).await
}

#[utoipa::path(post, path = "/v1/orgs/{org}/cdrs", tag = "calls", params(("org" = String, Path)),
    request_body(content = String, content_type = "text/csv", description = "call_id,type,user,from,to,start_time,duration_seconds"),
    responses((status = 200, body = ImportReport), (status = "4XX", body = Problem)), security(("api_key" = [])))]
pub async fn import_cdrs(State(app): AppState, Auth(p): Auth, Path(org): Path<String>, m: Mutation) -> ApiResult {
    check_org(&p, &org, Need::AdminOrCallControl)?;
    let key = idem_key(&m.headers)?;
    let fp = fingerprint(&m.method, &m.uri, &m.body);
    let engine = app.engine.clone();
    blocking(move || {
        // Platform keys name the organization in the path: check it exists.
        engine.org_view(&org)?;
        let now = Timestamp::now();
        // The key is claimed for the time of the upload, on a lease renewed as batches
        // are charged: after a crash the lease lapses and the same upload can be sent
        // again. Each row is charged at most once (by call id), so redoing is safe.
        let claim = match &key {
            Some(k) => match engine
                .apply_one(now, Command::ClaimAnswer { org: org.clone(), key: k.clone(), fingerprint: fp.clone() })
            {
                Ok(Outcome::Claimed { token }) => Some((k.clone(), token)),
                other => return Ok(answer(&other)),
            },
            None => None,
        };
        let lease = std::time::Duration::from_secs(engine.config.claim_lease_seconds.max(0).unsigned_abs());
        let mut renewed = std::time::Instant::now();
        let mut renew = |_rows: usize| {
            let Some((k, token)) = &claim else { return };
            // Renewed when a quarter of the lease has gone: a batch is far shorter.
            if renewed.elapsed() < lease / 4 {
                return;
            }
            renewed = std::time::Instant::now();
            let cmd = Command::RefreshClaim {
                org: org.clone(),
                key: k.clone(),
                fingerprint: fp.clone(),
                token: token.clone(),
            };
            if let Err(e) = engine.apply_one(Timestamp::now(), cmd) {
                tracing::warn!("could not renew the claim on an upload's idempotency key: {e}");
            }
        };
        let result = engine
            .import_cdrs(&org, &m.body[..], now, &mut renew)
            .map(|r| serde_json::to_value(&r).unwrap_or_default());
        let (status, json) = match &result {
            Ok(v) => (200, v.clone()),
            Err(e) => (e.code.http_status(), problem(e)),
        };
        if let Some((k, token)) = claim {
            // Count(0): the lease lapsed and another request took the key; its answer
            // is the one kept.
            engine.apply_one(
                Timestamp::now(),
                Command::RememberAnswer { org, key: k, fingerprint: fp, token, status, body: json.clone() },
            )?;
        }
        Ok(match result {
            Err(e) => ApiError(e).into_response(),
            Ok(_) => json_response(200, json),
        })
    })
    .await
}

#[utoipa::path(put, path = "/v1/rates/{kind}/{currency}", tag = "platform",
    params(("kind" = String, Path, description = "outbound, dial_out or toll_free"), ("currency" = String, Path)),
    request_body(content = String, content_type = "text/csv", description = "prefix,name,connection_fee,rate_per_minute,increment_seconds,premium"),
    responses((status = 200, body = Object), (status = "4XX", body = Problem)), security(("api_key" = [])))]
pub async fn import_rates(
    State(app): AppState,
    Auth(p): Auth,
    Path((kind, currency)): Path<(String, String)>,
    m: Mutation,
) -> ApiResult {
    check_platform(&p, Role::Operator)?;
    let kind = DeckKind::parse(&kind)?;
    let csv = String::from_utf8(m.body.to_vec())
        .map_err(|_| err(ErrorCode::InvalidRateDeck, "the deck must be UTF-8 text"))?;
    mutate(&app, "", m.req(), Command::ImportRates { kind, currency, csv }).await
}

// ---------------------------------------------------------------- notices: settings, webhooks, deliveries

#[utoipa::path(get, path = "/v1/orgs/{org}/notification-settings", tag = "notices", params(("org" = String, Path)),
    responses((status = 200, body = NotificationSettingsView), (status = "4XX", body = Problem)), security(("api_key" = [])))]
pub async fn get_notification_settings(
    State(app): AppState,
    Auth(p): Auth,
    Path(org): Path<String>,
) -> ApiResult<Json<NotificationSettingsView>> {
    check_org(&p, &org, Need::Read)?;
    let engine = app.engine.clone();
    Ok(Json(blocking(move || engine.notification_settings(&org)).await?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NotificationSettingsBody {
    pub notification_emails: Option<Vec<String>>,
    /// Minor units; null turns the low-balance warning off.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<i64>)]
    pub low_balance_level: Option<Option<i64>>,
    /// The kinds to send; the others are turned off.
    pub enabled_notices: Option<Vec<String>>,
}

#[utoipa::path(put, path = "/v1/orgs/{org}/notification-settings", tag = "notices", params(("org" = String, Path)), request_body = NotificationSettingsBody,
    responses((status = 200, body = NotificationSettingsView), (status = "4XX", body = Problem)), security(("api_key" = [])))]
pub async fn put_notification_settings(
    State(app): AppState,
    Auth(p): Auth,
    Path(org): Path<String>,
    m: Mutation,
) -> ApiResult {
    check_org(&p, &org, Need::Billing)?;
    let r: NotificationSettingsBody = parse(&m.body)?;
    let low_balance = match r.low_balance_level {
        Some(Some(minor)) => Some(Some(major(&org_currency(&app, &org).await?, minor, "low_balance_level")?)),
        Some(None) => Some(None),
        None => None,
    };
    let disabled_notices = match r.enabled_notices {
        Some(on) => {
            if let Some(bad) = on.iter().find(|k| !commcredits_engine::notices::KINDS.contains(&k.as_str())) {
                return Err(err(ErrorCode::InvalidInput, format!("unknown notice kind '{bad}'")));
            }
            Some(
                commcredits_engine::notices::KINDS
                    .iter()
                    .filter(|k| !on.iter().any(|o| o == *k))
                    .map(|k| k.to_string())
                    .collect(),
            )
        }
        None => None,
    };
    let cmd = Command::UpdateOrg {
        org: org.clone(),
        emails: r.notification_emails,
        low_balance,
        suspended: None,
        disabled_notices,
    };
    let cmd = m.req().wrap(&org, cmd)?;
    let engine = app.engine.clone();
    blocking(move || {
        let result = engine.apply_one(Timestamp::now(), cmd);
        if let Ok(Outcome::Replayed { status, body }) = &result {
            return Ok(json_response(*status, body.clone()));
        }
        if result.is_err() {
            return Ok(answer(&result));
        }
        Ok(Json(engine.notification_settings(&org)?).into_response())
    })
    .await
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddWebhook {
    pub url: String,
}

#[utoipa::path(post, path = "/v1/orgs/{org}/webhooks", tag = "notices", params(("org" = String, Path)), request_body = AddWebhook,
    description = "Adds a webhook endpoint. Its host must resolve to public internet addresses only (unless the server runs with --allow-private-webhooks); otherwise 422 invalid_input. The secret is in this answer only: a replay with the same Idempotency-Key answers `secret: null` and a `secret_note`.",
    responses((status = 201, body = NewWebhook), (status = "4XX", body = Problem)), security(("api_key" = [])))]
pub async fn add_webhook(State(app): AppState, Auth(p): Auth, Path(org): Path<String>, m: Mutation) -> ApiResult {
    check_org(&p, &org, Need::Admin)?;
    let r: AddWebhook = parse(&m.body)?;
    // Resolved and checked here, outside any transaction; checked again before every
    // delivery, against the addresses the connection then uses.
    let sender = app.delivery.webhooks.clone();
    let url = r.url.clone();
    blocking(move || sender.check(url.trim()).map_err(|m| commcredits_core::Error::new(ErrorCode::InvalidInput, m)))
        .await?;
    mutate(&app, &org, m.req(), Command::AddWebhook { org: org.clone(), url: r.url }).await
}

#[utoipa::path(get, path = "/v1/orgs/{org}/webhooks", tag = "notices", params(("org" = String, Path)),
    description = "Webhook endpoints. Keys with the reader role see each URL as scheme and host only.",
    responses((status = 200, body = Vec<WebhookView>), (status = "4XX", body = Problem)), security(("api_key" = [])))]
pub async fn list_webhooks(
    State(app): AppState,
    Auth(p): Auth,
    Path(org): Path<String>,
) -> ApiResult<Json<Vec<WebhookView>>> {
    check_org(&p, &org, Need::Read)?;
    let engine = app.engine.clone();
    let mut hooks = blocking(move || engine.webhooks(&org)).await?;
    // A webhook URL's path and query often hold a credential of the receiver: readers
    // see where notices go (scheme and host), not how to post there.
    if p.role == Role::Reader {
        for h in &mut hooks {
            h.url = commcredits_engine::delivery::url_origin(&h.url);
        }
    }
    Ok(Json(hooks))
}

#[utoipa::path(delete, path = "/v1/orgs/{org}/webhooks/{webhook}", tag = "notices", params(("org" = String, Path), ("webhook" = String, Path)),
    responses((status = 200, body = Object), (status = "4XX", body = Problem)), security(("api_key" = [])))]
pub async fn delete_webhook(
    State(app): AppState,
    Auth(p): Auth,
    Path((org, webhook)): Path<(String, String)>,
    m: Mutation,
) -> ApiResult {
    check_org(&p, &org, Need::Admin)?;
    mutate(&app, &org, m.req(), Command::DeleteWebhook { org: org.clone(), webhook_id: webhook }).await
}

#[utoipa::path(post, path = "/v1/orgs/{org}/webhooks/{webhook}/test", tag = "notices", params(("org" = String, Path), ("webhook" = String, Path)),
    responses((status = 200, body = Object), (status = 422, description = "the endpoint refused the event (webhook_failed)", body = Problem), (status = "4XX", body = Problem)),
    security(("api_key" = [])))]
pub async fn test_webhook(
    State(app): AppState,
    Auth(p): Auth,
    Path((org, webhook)): Path<(String, String)>,
) -> ApiResult<Json<serde_json::Value>> {
    check_org(&p, &org, Need::Admin)?;
    let engine = app.engine.clone();
    let sender = app.delivery.webhooks.clone();
    blocking(move || engine.test_webhook(&org, &webhook, &*sender, Timestamp::now())).await?;
    Ok(Json(serde_json::json!({"delivered": true})))
}

#[utoipa::path(get, path = "/v1/orgs/{org}/deliveries", tag = "notices", params(("org" = String, Path), PageQuery),
    responses((status = 200, body = Object), (status = "4XX", body = Problem)), security(("api_key" = [])))]
pub async fn list_deliveries(
    State(app): AppState,
    Auth(p): Auth,
    Path(org): Path<String>,
    Query(q): Query<PageQuery>,
) -> ApiResult<Json<Page<DeliveryView>>> {
    check_org(&p, &org, Need::Read)?;
    let engine = app.engine.clone();
    paginate(blocking(move || engine.deliveries(&org)).await?, |d| d.id.clone(), &q)
}
