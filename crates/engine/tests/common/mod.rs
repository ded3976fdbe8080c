//! Shared set-up for engine scenarios: a fresh store per test and a small organization.
#![allow(dead_code)]

pub mod model;

use commcredits_core::Timestamp;
use commcredits_engine::calls::AuthorizeRequest;
use commcredits_engine::payments::CardInput;
use commcredits_engine::views::{AuthorizeView, EndView, UpdateView};
use commcredits_engine::{Command, Engine, Outcome};
use std::sync::Arc;

pub fn t(s: &str) -> Timestamp {
    s.parse().unwrap()
}

pub fn engine() -> Engine {
    let store = commcredits_store::sqlite::SqliteStore::open("sqlite::memory:").unwrap();
    Engine::new(Arc::new(store)).unwrap()
}

pub fn created(o: Outcome) -> String {
    match o {
        Outcome::Created { id } => id,
        other => panic!("expected Created, got {other:?}"),
    }
}

pub struct Org {
    pub id: String,
    pub ada: String, // US, phone_system + calling_plan_domestic + communications_credits
    pub bob: String, // GB, phone_system + communications_credits (no plan)
    pub cy: String,  // US, phone_system + calling_plan_domestic only (no credits)
    pub card: String,
}

pub fn one(e: &Engine, now: Timestamp, c: Command) -> Outcome {
    e.apply_one(now, c).unwrap_or_else(|err| panic!("{err}"))
}

pub fn setup(e: &Engine, now: Timestamp) -> Org {
    let id = created(one(
        e,
        now,
        Command::CreateOrg {
            name: "Contoso".into(),
            currency: "USD".into(),
            country: "US".into(),
            emails: vec!["billing@contoso.com".into()],
        },
    ));
    let user = |upn: &str, loc: &str| {
        created(one(
            e,
            now,
            Command::CreateUser {
                org: id.clone(),
                upn: upn.into(),
                display_name: upn.into(),
                usage_location: loc.into(),
                phone_number: None,
            },
        ))
    };
    let ada = user("ada@contoso.com", "US");
    let bob = user("bob@contoso.com", "GB");
    let cy = user("cy@contoso.com", "US");
    for (sku, q) in
        [("phone_system", 10), ("calling_plan_domestic", 5), ("communications_credits", 5), ("audio_conferencing", 5)]
    {
        one(e, now, Command::AddSubscription { org: id.clone(), sku: sku.into(), quantity: q });
    }
    one(
        e,
        now,
        Command::AssignLicense {
            org: id.clone(),
            sku: "phone_system".into(),
            users: vec![ada.clone(), bob.clone(), cy.clone()],
        },
    );
    one(
        e,
        now,
        Command::AssignLicense {
            org: id.clone(),
            sku: "calling_plan_domestic".into(),
            users: vec![ada.clone(), cy.clone()],
        },
    );
    one(
        e,
        now,
        Command::AssignLicense {
            org: id.clone(),
            sku: "communications_credits".into(),
            users: vec![ada.clone(), bob.clone()],
        },
    );
    let token = e
        .gateway()
        .tokenize_card(
            &CardInput { number: "4242424242424242".into(), exp_month: 12, exp_year: 2030, holder: "Contoso".into() },
            now,
        )
        .unwrap();
    let card = created(one(e, now, Command::AddCard { org: id.clone(), token, holder: None }));
    Org { id, ada, bob, cy, card }
}

pub fn auth(
    e: &Engine,
    now: Timestamp,
    org: &str,
    call_id: &str,
    kind: &str,
    user: Option<&str>,
    from: &str,
    to: &str,
    secs: Option<u32>,
) -> AuthorizeView {
    match one(
        e,
        now,
        Command::Authorize(AuthorizeRequest {
            org: org.into(),
            call_id: call_id.into(),
            call_type: kind.into(),
            user: user.map(str::to_string),
            from: from.into(),
            to: to.into(),
            requested_seconds: secs,
        }),
    ) {
        Outcome::Authorized(v) => v,
        o => panic!("{o:?}"),
    }
}

pub fn end(e: &Engine, now: Timestamp, org: &str, call_id: &str, secs: u32) -> EndView {
    match one(e, now, Command::End { org: org.into(), call_id: call_id.into(), duration_seconds: secs }) {
        Outcome::Ended(v) => v,
        o => panic!("{o:?}"),
    }
}

pub fn update(e: &Engine, now: Timestamp, org: &str, call_id: &str, used: u32, more: u32) -> UpdateView {
    match one(
        e,
        now,
        Command::Update { org: org.into(), call_id: call_id.into(), used_seconds: used, requested_seconds: more },
    ) {
        Outcome::Updated(v) => v,
        o => panic!("{o:?}"),
    }
}

pub fn check(e: &Engine, org: &str) {
    e.check_books(org).unwrap_or_else(|err| panic!("{err}"));
}
