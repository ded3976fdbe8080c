//! Idempotency that ends: call control replays final decisions only and forgets them
//! with the call; an upload's claim on its `Idempotency-Key` is a lease, so a crash
//! mid-upload does not make the key unusable; every record expires and `jobs run`
//! sweeps it. A real server on a loopback port, a fresh SQLite database per test.

use commcredits_core::{ErrorCode, Timestamp};
use commcredits_engine::calls::AuthorizeRequest;
use commcredits_engine::{Command, Engine, Keep, Outcome};
use commcredits_store::{IdempotencyRow, Tx};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;

const UK_LANDLINE: &str = "+442079460000";
const UK_MOBILE: &str = "+447400123456";
const CDR_HEADER: &str = "call_id,type,user,from,to,start_time,duration_seconds\n";

struct TestApp {
    base: String,
    engine: Arc<Engine>,
    client: reqwest::Client,
    call_control: String,
}

/// An organization with 100.00 of credits, a GB user `bob` who may spend them, and an
/// admin key.
struct Seed {
    org: String,
    bob: String,
    admin: String,
}

fn secret(o: Outcome) -> String {
    match o {
        Outcome::Key(k) => k.secret,
        other => panic!("expected a key, got {other:?}"),
    }
}

fn created(o: Outcome) -> String {
    match o {
        Outcome::Created { id } => id,
        other => panic!("expected Created, got {other:?}"),
    }
}

async fn spawn_app() -> TestApp {
    let store = commcredits_store::sqlite::SqliteStore::open("sqlite::memory:").expect("open the store");
    let engine = Arc::new(Engine::new(Arc::new(store)).expect("engine"));
    let call_control = secret(
        engine
            .apply_one(
                Timestamp::now(),
                Command::CreateKey { org: None, role: "call_control".into(), name: "switch".into() },
            )
            .unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().unwrap();
    let router = commcredits_server::router(commcredits_server::App::new(engine.clone()));
    tokio::spawn(async move {
        axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>()).await.expect("serve");
    });
    TestApp { base: format!("http://{addr}"), engine, client: reqwest::Client::new(), call_control }
}

fn seed(engine: &Engine) -> Seed {
    let now = Timestamp::now();
    let one = |c: Command| engine.apply_one(now, c).unwrap_or_else(|err| panic!("{err}"));
    let org = created(one(Command::CreateOrg {
        name: "Contoso".into(),
        currency: "USD".into(),
        country: "US".into(),
        emails: vec!["billing@example.com".into()],
    }));
    let bob = created(one(Command::CreateUser {
        org: org.clone(),
        upn: "bob@example.com".into(),
        display_name: "Bob".into(),
        usage_location: "GB".into(),
        phone_number: None,
    }));
    for sku in ["phone_system", "communications_credits"] {
        one(Command::AddSubscription { org: org.clone(), sku: sku.into(), quantity: 5 });
        one(Command::AssignLicense { org: org.clone(), sku: sku.into(), users: vec![bob.clone()] });
    }
    let ea = created(one(Command::AddAgreement { org: org.clone(), agreement_number: "EA-1".into() }));
    assert_eq!(engine.purchase(&org, "100.00", &ea, None, None, now).unwrap().status, "succeeded");
    let admin = secret(one(Command::CreateKey { org: Some(org.clone()), role: "admin".into(), name: "admin".into() }));
    Seed { org, bob, admin }
}

impl TestApp {
    async fn send(&self, method: &str, path: &str, key: &str, idem: Option<&str>, body: reqwest::Body) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut rb = self.client.request(m, format!("{}{path}", self.base)).bearer_auth(key).body(body);
        rb = rb.header("content-type", if path.ends_with("/cdrs") { "text/csv" } else { "application/json" });
        if let Some(k) = idem {
            rb = rb.header("Idempotency-Key", k);
        }
        let r = rb.send().await.expect("answered");
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        assert!(status < 500, "server error {status}: {text}");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, key: &str, idem: Option<&str>, body: Value) -> (u16, Value) {
        self.send("POST", path, key, idem, body.to_string().into()).await
    }

    async fn authorize(&self, s: &Seed, call_id: &str, idem: Option<&str>) -> (u16, Value) {
        let body = json!({"org_id": s.org, "call_id": call_id, "type": "outbound", "user_id": s.bob,
                          "from": UK_LANDLINE, "to": UK_MOBILE, "requested_seconds": 300});
        self.post("/v1/calls/authorize", &self.call_control, idem, body).await
    }

    async fn update(&self, s: &Seed, call_id: &str, used: u32, requested: u32, idem: Option<&str>) -> (u16, Value) {
        let body = json!({"org_id": s.org, "used_seconds": used, "requested_seconds": requested});
        self.post(&format!("/v1/calls/{call_id}/update"), &self.call_control, idem, body).await
    }

    async fn end(&self, s: &Seed, call_id: &str, secs: u32) -> (u16, Value) {
        let body = json!({"org_id": s.org, "duration_seconds": secs});
        self.post(&format!("/v1/calls/{call_id}/end"), &self.call_control, None, body).await
    }

    async fn spend_limit(&self, s: &Seed, minor: i64) {
        let body = json!({"spend_limit": minor}).to_string();
        let (status, v) =
            self.send("PATCH", &format!("/v1/orgs/{}/users/{}", s.org, s.bob), &s.admin, None, body.into()).await;
        assert_eq!(status, 200, "{v}");
    }

    fn record(&self, org: &str, key: &str) -> Option<IdempotencyRow> {
        self.engine.read(|tx| tx.get_idempotency(org, key)).unwrap()
    }
}

/// Every idempotency record the store holds: each has an expiry, so a sweep as of the
/// end of time reaches them all (it runs in a transaction that is rolled back).
fn records_left(engine: &Engine) -> usize {
    let mut n = 0;
    let end_of_time: Timestamp = "9999-01-01T00:00:00Z".parse().unwrap();
    let _ = engine.store().write(&mut |tx: &mut dyn Tx| {
        n = tx.delete_expired_idempotency(end_of_time, usize::MAX >> 1)?;
        Err(commcredits_core::Error::new(ErrorCode::InvalidInput, "count only: roll back"))
    });
    n
}

// ---------------------------------------------------------------- call control

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_update_is_decided_again_once_the_spend_limit_is_raised() {
    let app = spawn_app().await;
    let s = seed(&app.engine);
    // 20 cents a month: two minutes at 9 cents a minute.
    app.spend_limit(&s, 20).await;
    let (status, a) = app.authorize(&s, "c1", None).await;
    assert_eq!((status, a["decision"].as_str()), (200, Some("allow")), "{a}");
    let (status, refused) = app.update(&s, "c1", 110, 300, None).await;
    assert_eq!(status, 200, "{refused}");
    assert_eq!(
        (refused["granted_seconds"].as_u64(), refused["reason"].as_str()),
        (Some(0), Some("spend_limit_reached"))
    );
    // The same refusal with an Idempotency-Key of its own.
    let (_, keyed) = app.update(&s, "c1", 110, 300, Some("u-110")).await;
    assert_eq!(keyed["reason"], "spend_limit_reached", "{keyed}");

    // The admin raises the limit; the switch asks again with the same figures.
    app.spend_limit(&s, 10_000).await;
    let (status, again) = app.update(&s, "c1", 110, 300, None).await;
    assert_eq!(status, 200, "{again}");
    // Observed before: the first refusal, replayed from the call-id key.
    assert!(again["reason"].is_null(), "a refusal is decided again, not replayed: {again}");
    assert_eq!(again["granted_seconds"], 300, "{again}");
    let (_, keyed) = app.update(&s, "c1", 110, 300, Some("u-110")).await;
    assert!(keyed["reason"].is_null(), "nor replayed from the request's Idempotency-Key: {keyed}");
    assert_eq!(keyed["total_granted_seconds"], again["total_granted_seconds"], "{keyed}");
    // A granted update is final: its retry answers it as it was.
    assert_eq!(app.update(&s, "c1", 110, 300, None).await.1, again);
    let (_, ended) = app.end(&s, "c1", 200).await;
    assert_eq!(ended["charged_seconds"], 200, "{ended}");
    assert_eq!(app.engine.check_books(&s.org).unwrap().charges, ended["charge"].as_i64().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_denied_authorize_is_decided_again_once_the_user_may_call() {
    let app = spawn_app().await;
    let s = seed(&app.engine);
    app.spend_limit(&s, 0).await;
    let (_, denied) = app.authorize(&s, "c1", Some("a-1")).await;
    assert_eq!((denied["decision"].as_str(), denied["reason"].as_str()), (Some("deny"), Some("spend_limit_reached")));
    app.spend_limit(&s, 10_000).await;
    // The denial is kept for `denial_replay_ms` only (a retry of a lost answer): wait
    // until it has passed, then the call id is decided again, with and without the key.
    std::thread::sleep(std::time::Duration::from_millis(app.engine.config.denial_replay_ms as u64 + 50));
    let (status, allowed) = app.authorize(&s, "c1", Some("a-1")).await;
    assert_eq!((status, allowed["decision"].as_str()), (200, Some("allow")), "{allowed}");
    // Allowed is final: a retry, keyed or not, answers it.
    assert_eq!(app.authorize(&s, "c1", None).await.1, allowed);
    assert_eq!(app.authorize(&s, "c1", Some("a-1")).await.1, allowed);
    let c = app.engine.credits(&s.org).unwrap();
    assert_eq!(c.reserved, allowed["reserved_amount"].as_i64().unwrap(), "reserved once");
    assert_eq!(app.engine.denials(&s.org).unwrap().len(), 1, "one decision denied, one denial recorded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn call_control_leaves_no_idempotency_records_once_calls_end() {
    let app = spawn_app().await;
    let s = seed(&app.engine);
    const CALLS: usize = 6;
    for i in 0..CALLS {
        let id = format!("call-{i}");
        // Half the requests carry an Idempotency-Key of their own as well.
        let keyed = |what: &str| (i % 2 == 0).then(|| format!("{what}-{i}"));
        assert_eq!(app.authorize(&s, &id, keyed("a").as_deref()).await.1["decision"], "allow");
        // Retries, as a switch sends them.
        assert_eq!(app.authorize(&s, &id, keyed("a").as_deref()).await.1["decision"], "allow");
        assert_eq!(app.update(&s, &id, 240, 300, keyed("u").as_deref()).await.0, 200);
        assert_eq!(app.update(&s, &id, 240, 300, None).await.0, 200);
        assert_eq!(app.update(&s, &id, 480, 300, None).await.0, 200);
        assert!(app.record(&s.org, &format!("authorize:{id}")).is_some(), "kept while the call runs");
        assert_eq!(app.end(&s, &id, 500).await.0, 200);
        // Observed before: authorize:{id} and one update:{id}:{used}:{requested} per
        // update, kept forever.
        assert_eq!(app.record(&s.org, &format!("authorize:{id}")), None);
        assert_eq!(app.record(&s.org, &format!("update:{id}:240:300")), None);
        assert_eq!(app.record(&s.org, &format!("update:{id}:480:300")), None);
        for k in [keyed("a"), keyed("u")].into_iter().flatten() {
            assert_eq!(app.record(&s.org, &k), None);
        }
    }
    assert_eq!(records_left(&app.engine), 0);
    // A call that is never ended: its records go when its reservation expires.
    assert_eq!(app.authorize(&s, "lost", None).await.1["decision"], "allow");
    assert_eq!(app.update(&s, "lost", 60, 300, None).await.0, 200);
    assert_eq!(records_left(&app.engine), 2);
    let report = app.engine.run_jobs(Timestamp::now() + jiff::SignedDuration::from_hours(1)).unwrap();
    assert_eq!(report.reservations_expired, 1);
    assert_eq!(records_left(&app.engine), 0);
    // A denied call leaves its denial for a moment only; the sweep takes it.
    app.spend_limit(&s, 0).await;
    assert_eq!(app.authorize(&s, "denied", None).await.1["decision"], "deny");
    assert_eq!(records_left(&app.engine), 1);
    let report = app.engine.run_jobs(Timestamp::now() + jiff::SignedDuration::from_secs(5)).unwrap();
    assert_eq!(report.idempotency_expired, 1);
    assert_eq!(records_left(&app.engine), 0);
}

/// The same decisions on the engine, at chosen instants: the denial window and the
/// denial records, the time to live of request keys and the bounded sweep.
#[test]
fn denials_are_replayed_for_a_moment_and_recorded_once_per_decision() {
    let engine =
        Engine::new(Arc::new(commcredits_store::sqlite::SqliteStore::open("sqlite::memory:").unwrap())).unwrap();
    let s = seed(&engine);
    let t0 = Timestamp::now();
    let at = |ms: i64| t0 + jiff::SignedDuration::from_millis(ms);
    let limit = |minor: &str| {
        Command::UpdateUser(commcredits_engine::admin::UserChanges {
            org: s.org.clone(),
            user: s.bob.clone(),
            display_name: None,
            usage_location: None,
            dial_out: None,
            conference_dial_out: None,
            spend_limit: Some(Some(minor.into())),
        })
    };
    engine.apply_one(t0, limit("0.00")).unwrap();
    let authorize = || Command::Idempotent {
        org: s.org.clone(),
        key: "authorize:c1".into(),
        fingerprint: "fp".into(),
        conflict: ErrorCode::DuplicateCallId,
        keep: Keep::CallDecision { call_id: "c1".into() },
        inner: Box::new(Command::Authorize(AuthorizeRequest {
            org: s.org.clone(),
            call_id: "c1".into(),
            call_type: "outbound".into(),
            user: Some(s.bob.clone()),
            from: UK_LANDLINE.into(),
            to: UK_MOBILE.into(),
            requested_seconds: Some(300),
        })),
    };
    let decision = |o: Outcome| match o {
        Outcome::Authorized(v) => v.decision,
        Outcome::Replayed { body, .. } => body["decision"].as_str().unwrap().to_string(),
        other => panic!("{other:?}"),
    };
    assert_eq!(decision(engine.apply_one(at(0), authorize()).unwrap()), "deny");
    // A retry of the lost answer within the window: the same denial, no second record.
    assert!(matches!(engine.apply_one(at(400), authorize()).unwrap(), Outcome::Replayed { .. }));
    assert_eq!(engine.denials(&s.org).unwrap().len(), 1);
    // Later, still refused: a new decision, recorded.
    assert_eq!(decision(engine.apply_one(at(1_000), authorize()).unwrap()), "deny");
    assert_eq!(engine.denials(&s.org).unwrap().len(), 2);
    // Within that decision's window the limit is raised: still the denial (the stated
    // trade-off), then allowed once the window has passed.
    engine.apply_one(at(1_200), limit("50.00")).unwrap();
    assert!(matches!(engine.apply_one(at(1_500), authorize()).unwrap(), Outcome::Replayed { .. }));
    assert_eq!(decision(engine.apply_one(at(2_000), authorize()).unwrap()), "allow");
    assert_eq!(decision(engine.apply_one(at(3_000), authorize()).unwrap()), "allow");
    assert_eq!(engine.denials(&s.org).unwrap().len(), 2);

    // A request's Idempotency-Key is answered from its record for 24 hours; then the
    // key is free and the sweep deletes the record.
    let ttl_ms = engine.config.idempotency_ttl_seconds * 1000;
    let create = |upn: &str| Command::Idempotent {
        org: s.org.clone(),
        key: "user-1".into(),
        fingerprint: format!("fp-{upn}"),
        conflict: ErrorCode::IdempotencyKeyReused,
        keep: Keep::Answer,
        inner: Box::new(Command::CreateUser {
            org: s.org.clone(),
            upn: upn.into(),
            display_name: upn.into(),
            usage_location: "US".into(),
            phone_number: None,
        }),
    };
    let first = created(engine.apply_one(at(0), create("eve@example.com")).unwrap());
    match engine.apply_one(at(ttl_ms - 1), create("eve@example.com")).unwrap() {
        Outcome::Replayed { body, .. } => assert_eq!(body["id"], first.as_str()),
        other => panic!("{other:?}"),
    }
    let e = engine.apply_one(at(ttl_ms - 1), create("ray@example.com")).unwrap_err();
    assert_eq!(e.code, ErrorCode::IdempotencyKeyReused);
    created(engine.apply_one(at(ttl_ms), create("ray@example.com")).unwrap());
    // The call's record goes with its reservation; the key's record (taken again at
    // the TTL) is swept.
    let report = engine.run_jobs(at(2 * ttl_ms + 1)).unwrap();
    assert_eq!((report.reservations_expired, report.idempotency_expired), (1, 1), "{report:?}");
    assert_eq!(records_left(&engine), 0);
}

// ---------------------------------------------------------------- uploads

#[test]
fn an_upload_claim_is_a_lease_renewed_by_its_holder() {
    let engine =
        Engine::new(Arc::new(commcredits_store::sqlite::SqliteStore::open("sqlite::memory:").unwrap())).unwrap();
    let s = seed(&engine);
    let t0 = Timestamp::now();
    let at = |secs: i64| t0 + jiff::SignedDuration::from_secs(secs);
    let lease = engine.config.claim_lease_seconds;
    let claim = || Command::ClaimAnswer { org: s.org.clone(), key: "up-1".into(), fingerprint: "fp".into() };
    let token = |o: Outcome| match o {
        Outcome::Claimed { token } => token,
        other => panic!("expected a claim, got {other:?}"),
    };
    let first = token(engine.apply_one(at(0), claim()).unwrap());
    assert_eq!(engine.apply_one(at(1), claim()).unwrap_err().code, ErrorCode::IdempotencyKeyInUse);
    let refresh = |tok: &str, when: i64| match engine
        .apply_one(
            at(when),
            Command::RefreshClaim {
                org: s.org.clone(),
                key: "up-1".into(),
                fingerprint: "fp".into(),
                token: tok.into(),
            },
        )
        .unwrap()
    {
        Outcome::Count(n) => n,
        other => panic!("{other:?}"),
    };
    // Renewed while it works, the claim outlives its first lease.
    assert_eq!(refresh(&first, lease - 10), 1);
    assert_eq!(engine.apply_one(at(lease + 5), claim()).unwrap_err().code, ErrorCode::IdempotencyKeyInUse);
    // Its holder stops (dies): the renewed lease lapses and another request takes the key.
    let second = token(engine.apply_one(at(2 * lease - 10), claim()).unwrap());
    assert_eq!(refresh(&first, 2 * lease - 5), 0, "the first holder lost its claim");
    let remember = |tok: &str, status: u16, when: i64| match engine
        .apply_one(
            at(when),
            Command::RememberAnswer {
                org: s.org.clone(),
                key: "up-1".into(),
                fingerprint: "fp".into(),
                token: tok.into(),
                status,
                body: json!({"rows": when}),
            },
        )
        .unwrap()
    {
        Outcome::Count(n) => n,
        other => panic!("{other:?}"),
    };
    assert_eq!(remember(&first, 200, 2 * lease), 0, "nor can it answer");
    // A failure on our side is not kept: the key may be used again at once.
    assert_eq!(remember(&second, 500, 2 * lease), 1);
    let third = token(engine.apply_one(at(2 * lease + 1), claim()).unwrap());
    assert_eq!(remember(&third, 200, 2 * lease + 2), 1);
    match engine.apply_one(at(2 * lease + 3), claim()).unwrap() {
        Outcome::Replayed { status, body } => assert_eq!((status, body), (200, json!({"rows": 2 * lease + 2}))),
        other => panic!("{other:?}"),
    }
    let other = Command::ClaimAnswer { org: s.org.clone(), key: "up-1".into(), fingerprint: "another".into() };
    assert_eq!(engine.apply_one(at(2 * lease + 3), other).unwrap_err().code, ErrorCode::IdempotencyKeyReused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upload_whose_server_died_is_done_once_when_sent_again_after_the_lease() {
    let app = spawn_app().await;
    let s = seed(&app.engine);
    let start = Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let rows: Vec<String> =
        (0..4).map(|i| format!("cdr-{i},outbound,{},{UK_LANDLINE},{UK_MOBILE},{start},60\n", s.bob)).collect();
    let csv = format!("{CDR_HEADER}{}", rows.concat());
    let path = format!("/v1/orgs/{}/cdrs", s.org);
    let fp = commcredits_server::routes::fingerprint(
        &axum::http::Method::POST,
        &path.parse::<axum::http::Uri>().unwrap(),
        csv.as_bytes(),
    );
    // The crash: a server took the key, charged the first two rows, and died, leaving
    // its claim (status 0) behind.
    let half = format!("{CDR_HEADER}{}", rows[..2].concat());
    let now = Timestamp::now();
    let done = app.engine.import_cdrs(&s.org, half.as_bytes(), now, &mut |_| {}).unwrap();
    assert_eq!(done.charged, 2);
    let lease = jiff::SignedDuration::from_secs(app.engine.config.claim_lease_seconds);
    let stale = |key: &str, claimed_at: Timestamp| IdempotencyRow {
        org_id: s.org.clone(),
        key: key.into(),
        fingerprint: fp.clone(),
        status: 0,
        body: "token-of-the-dead-server".into(),
        created_at: claimed_at,
        expires_at: claimed_at + lease,
        call_id: None,
    };
    let lapsed = stale("crashed", now - lease - jiff::SignedDuration::from_secs(60));
    let live = stale("running", now);
    app.engine
        .store()
        .write(&mut |tx: &mut dyn Tx| {
            tx.put_idempotency(&lapsed)?;
            tx.put_idempotency(&live)
        })
        .unwrap();

    // Within its lease a claim still holds the key.
    let (status, v) = app.send("POST", &path, &s.admin, Some("running"), csv.clone().into()).await;
    assert_eq!((status, v["code"].as_str()), (409, Some("idempotency_key_in_use")), "{v}");
    // After it, the same upload with the same key is done, once.
    // Observed before: 409 idempotency_key_in_use, for ever.
    let (status, report) = app.send("POST", &path, &s.admin, Some("crashed"), csv.clone().into()).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!((report["charged"].as_u64(), report["duplicates"].as_u64()), (Some(2), Some(2)), "{report}");
    let (status, again) = app.send("POST", &path, &s.admin, Some("crashed"), csv.clone().into()).await;
    assert_eq!((status, &again), (200, &report), "a retry answers the first report");
    let from = now - jiff::SignedDuration::from_hours(1);
    assert_eq!(app.engine.cdrs(&s.org, from, now + jiff::SignedDuration::from_hours(1)).unwrap().len(), 4);
    assert_eq!(app.engine.check_books(&s.org).unwrap().charges, 4 * 9, "every call charged once");
    let kept = app.record(&s.org, "crashed").unwrap();
    assert_eq!(kept.status, 200);
    assert!(kept.expires_at > now + jiff::SignedDuration::from_hours(23), "{kept:?}");
}
