//! End-to-end tests of the `commcredits` binary: a whole organization's life and the
//! bad-input cases, each on its own SQLite file, through `--json` output and exit codes.
//! The hidden `--now` flag sets the clock, so every test is deterministic.

use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_commcredits");
/// The default clock of every command.
const T0: &str = "2026-11-02T09:00:00Z";
const ADA_NUM: &str = "+14155550100";
const BOB_NUM: &str = "+442079460000";
const UK_MOBILE: &str = "+447400123456";
const US_NUM: &str = "+14155550100";
const DE_NUM: &str = "+4930123456";
const TOLL_FREE: &str = "+18002660100";
const CARD_OK: &str = "4242424242424242";
const CARD_DECLINED: &str = "4000000000000002";
const CARD_EXPIRED_AT_CHARGE: &str = "4000000000000069";
const CARD_MC: &str = "5555555555554444";

/// One database in its own temporary directory.
struct Db {
    dir: tempfile::TempDir,
    url: String,
}

impl Db {
    fn new() -> Db {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        Db { dir, url }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn file_str(&self, name: &str) -> String {
        self.file(name).display().to_string()
    }

    /// Runs the binary at `now`, with or without `--json`.
    fn raw_at(&self, now: &str, json: bool, args: &[&str]) -> Output {
        let mut c = Command::new(BIN);
        c.arg("--db").arg(&self.url).arg("--now").arg(now);
        if json {
            c.arg("--json");
        }
        c.args(args).env_remove("COMMCREDITS_DB").env_remove("COMMCREDITS_NOW").env_remove("COMMCREDITS_SMTP_URL");
        c.output().expect("run commcredits")
    }

    /// Exit status and the one JSON document printed on stdout.
    fn run_at(&self, now: &str, args: &[&str]) -> (i32, Value) {
        let o = self.raw_at(now, true, args);
        let stdout = String::from_utf8_lossy(&o.stdout);
        let v: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!(
                "`{}` did not print one JSON document ({e}); status {:?}\nstdout:\n{stdout}\nstderr:\n{}",
                args.join(" "),
                o.status.code(),
                String::from_utf8_lossy(&o.stderr)
            )
        });
        (o.status.code().unwrap_or(-1), v)
    }

    fn run(&self, args: &[&str]) -> (i32, Value) {
        self.run_at(T0, args)
    }

    fn ok_at(&self, now: &str, args: &[&str]) -> Value {
        let (code, v) = self.run_at(now, args);
        assert_eq!(code, 0, "`{}` failed: {v}", args.join(" "));
        v
    }

    fn ok(&self, args: &[&str]) -> Value {
        self.ok_at(T0, args)
    }

    /// Runs a command that must fail with exit status 1; returns its error code.
    fn fail_at(&self, now: &str, args: &[&str]) -> String {
        let (code, v) = self.run_at(now, args);
        assert_eq!(code, 1, "`{}` should fail with status 1: {v}", args.join(" "));
        let msg = v["message"].as_str().unwrap_or("");
        assert!(!msg.is_empty(), "error without a message: {v}");
        v["code"].as_str().unwrap_or_else(|| panic!("error without a code: {v}")).to_string()
    }

    fn fail(&self, args: &[&str]) -> String {
        self.fail_at(T0, args)
    }

    fn credits(&self, org: &str) -> Value {
        self.ok(&["credits", "show", "--org", org])
    }

    fn orders(&self, org: &str) -> Vec<Value> {
        arr(&self.ok(&["orders", "--org", org]))
    }

    fn notice_kinds(&self, org: &str) -> Vec<String> {
        arr(&self.ok(&["notifications", "--org", org])).iter().map(|n| s(n, "kind")).collect()
    }

    /// Every ledger entry, following the cursor.
    fn ledger(&self, org: &str) -> Vec<Value> {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut args = vec!["ledger", "--org", org, "--limit", "1000"];
            if let Some(a) = &after {
                args.push("--after");
                args.push(a);
            }
            let page = self.ok(&args);
            all.extend(arr(&page["entries"]));
            match page["next_cursor"].as_str() {
                Some(c) => after = Some(c.to_string()),
                None => return all,
            }
        }
    }

    /// `credits check` succeeds and its figures satisfy the accounting identity.
    fn check(&self, org: &str) -> Value {
        let b = self.ok(&["credits", "check", "--org", org]);
        let (p, a, bal, c, e) =
            (i(&b, "purchases"), i(&b, "adjustments"), i(&b, "balance"), i(&b, "charges"), i(&b, "expired"));
        assert_eq!(p + a, bal + c + e, "accounting identity: {b}");
        assert_eq!(bal, i(&b, "reserved") + i(&b, "available"), "{b}");
        assert!(i(&b, "available") >= 0, "{b}");
        let cr = self.credits(org);
        assert_eq!(i(&cr, "balance"), bal, "{cr} vs {b}");
        b
    }

    #[allow(clippy::too_many_arguments)]
    fn authorize_at(
        &self,
        now: &str,
        org: &str,
        call_id: &str,
        kind: &str,
        user: Option<&str>,
        from: &str,
        to: &str,
        seconds: Option<u32>,
    ) -> Value {
        let secs = seconds.map(|s| s.to_string());
        let mut args =
            vec!["call", "authorize", "--org", org, "--call-id", call_id, "--type", kind, "--from", from, "--to", to];
        if let Some(u) = user {
            args.extend(["--user", u]);
        }
        if let Some(s) = &secs {
            args.extend(["--seconds", s.as_str()]);
        }
        self.ok_at(now, &args)
    }

    /// An outbound call at T0.
    fn out_call(&self, org: &str, id: &str, user: &str, from: &str, to: &str, secs: u32) -> Value {
        self.authorize_at(T0, org, id, "outbound", Some(user), from, to, Some(secs))
    }

    fn end_at(&self, now: &str, org: &str, call_id: &str, duration: u32) -> Value {
        self.ok_at(now, &["call", "end", "--org", org, "--call-id", call_id, "--duration", &duration.to_string()])
    }

    fn end(&self, org: &str, call_id: &str, duration: u32) -> Value {
        self.end_at(T0, org, call_id, duration)
    }
}

fn s(v: &Value, k: &str) -> String {
    v[k].as_str().unwrap_or_else(|| panic!("no string '{k}' in {v}")).to_string()
}

fn i(v: &Value, k: &str) -> i64 {
    v[k].as_i64().unwrap_or_else(|| panic!("no integer '{k}' in {v}"))
}

fn arr(v: &Value) -> Vec<Value> {
    v.as_array().unwrap_or_else(|| panic!("not an array: {v}")).clone()
}

/// The created resource: an object (or, in older builds, a one-element array).
fn first(v: &Value) -> Value {
    match v.as_array() {
        Some(a) => {
            assert_eq!(a.len(), 1, "{v}");
            a[0].clone()
        }
        None => v.clone(),
    }
}

fn count(items: &[String], what: &str) -> usize {
    items.iter().filter(|k| *k == what).count()
}

/// The organization of most tests: Ada (US, phone system, domestic plan, credits),
/// Bob (GB, phone system, credits, no plan) and a Visa test card.
struct Org {
    id: String,
    ada: String,
    bob: String,
    card: String,
}

fn setup(db: &Db) -> Org {
    let org = db.ok(&[
        "org",
        "create",
        "--name",
        "Contoso",
        "--currency",
        "USD",
        "--country",
        "US",
        "--email",
        "billing@contoso.com",
    ]);
    let id = s(&org, "id");
    // No numbers of their own here: parsing a number costs a debug build a third of a
    // second; the numbers are given as --from on each call instead.
    let user = |upn: &str, name: &str, loc: &str| {
        s(&db.ok(&["user", "create", "--org", &id, "--upn", upn, "--name", name, "--location", loc]), "id")
    };
    let ada = user("ada@contoso.com", "Ada", "US");
    let bob = user("bob@contoso.com", "Bob", "GB");
    for (sku, q) in [("phone_system", "10"), ("calling_plan_domestic", "5"), ("communications_credits", "5")] {
        db.ok(&["subscription", "add", "--org", &id, "--sku", sku, "--quantity", q]);
    }
    for (sku, users) in [
        ("phone_system", vec![ada.as_str(), bob.as_str()]),
        ("calling_plan_domestic", vec![ada.as_str()]),
        ("communications_credits", vec![ada.as_str(), bob.as_str()]),
    ] {
        let mut args = vec!["license", "assign", "--org", &id, "--sku", sku];
        for u in users {
            args.extend(["--user", u]);
        }
        db.ok(&args);
    }
    let card = add_card(db, &id, CARD_OK, "12/2030");
    Org { id, ada, bob, card }
}

fn add_card(db: &Db, org: &str, number: &str, exp: &str) -> String {
    let v = db.ok(&["payment-method", "add", "--org", org, "--card", number, "--exp", exp, "--holder", "Contoso Ltd"]);
    s(&first(&v), "id")
}

fn add_funds(db: &Db, org: &str, amount: &str, pm: &str) -> Value {
    db.ok(&["funds", "add", "--org", org, "--amount", amount, "--payment-method", pm])
}

fn licensed(db: &Db, org: &str, sku: &str) -> usize {
    arr(&db.ok(&["user", "list", "--org", org])).iter().filter(|u| arr(&u["licenses"]).iter().any(|l| l == sku)).count()
}

// ---------------------------------------------------------------------------
// 1. Organizations, users, subscriptions and licenses
// ---------------------------------------------------------------------------

#[test]
fn organization_users_and_licenses() {
    let db = Db::new();
    let org = db.ok(&[
        "org",
        "create",
        "--name",
        "Contoso",
        "--currency",
        "USD",
        "--country",
        "US",
        "--email",
        "billing@contoso.com",
        "--email",
        "it@contoso.com",
    ]);
    let id = s(&org, "id");
    assert_eq!(s(&org, "name"), "Contoso");
    assert_eq!(s(&org, "currency"), "USD");
    assert_eq!(s(&org, "country"), "US");
    assert_eq!(org["notification_emails"], serde_json::json!(["billing@contoso.com", "it@contoso.com"]));
    assert_eq!(db.ok(&["org", "show", "--org", &id])["id"], org["id"]);

    // Bad organizations.
    let bad_org = |cur: &str, country: &str, email: &str| {
        db.fail(&["org", "create", "--name", "X", "--currency", cur, "--country", country, "--email", email])
    };
    assert_eq!(bad_org("USD", "ZZ", "a@b.com"), "invalid_country");
    assert_eq!(bad_org("XYZ", "US", "a@b.com"), "invalid_currency");
    assert_eq!(bad_org("USD", "US", "not-an-email"), "invalid_email");
    assert_eq!(db.fail(&["org", "show", "--org", "nope"]), "unknown_org");
    assert_eq!(arr(&db.ok(&["org", "list"])).len(), 1);

    // Users in the US and in GB.
    let create = |upn: &str, loc: &str, num: Option<&str>| {
        let mut args = vec!["user", "create", "--org", &id, "--upn", upn, "--name", upn, "--location", loc];
        if let Some(n) = num {
            args.extend(["--number", n]);
        }
        db.run(&args)
    };
    let (code, ada) = create("ada@contoso.com", "US", Some(ADA_NUM));
    assert_eq!(code, 0, "{ada}");
    assert_eq!(s(&ada, "upn"), "ada@contoso.com");
    assert_eq!(s(&ada, "usage_location"), "US");
    assert_eq!(s(&ada, "phone_number"), ADA_NUM);
    assert_eq!(arr(&ada["licenses"]).len(), 0);
    let (code, bob) = create("bob@contoso.com", "GB", Some(BOB_NUM));
    assert_eq!(code, 0, "{bob}");
    assert_eq!(s(&bob, "usage_location"), "GB");
    let (code, cy) = create("cy@contoso.com", "US", None);
    assert_eq!(code, 0, "{cy}");
    assert!(cy["phone_number"].is_null());
    let (code, dee) = create("dee@contoso.com", "DE", Some(DE_NUM));
    assert_eq!(code, 0, "{dee}");
    let (ada, bob, cy, dee) = (s(&ada, "id"), s(&bob, "id"), s(&cy, "id"), s(&dee, "id"));

    // Bad users.
    let code_of = |r: (i32, Value)| {
        assert_eq!(r.0, 1, "{}", r.1);
        s(&r.1, "code")
    };
    assert_eq!(code_of(create("ADA@contoso.com", "US", None)), "duplicate_upn");
    assert_eq!(code_of(create("eve@contoso.com", "ZZ", None)), "invalid_country");
    for bad in ["12345", "+1415555010", "+1abc5550100", "+"] {
        assert_eq!(code_of(create("eve@contoso.com", "US", Some(bad))), "invalid_phone_number", "{bad}");
    }
    assert_eq!(
        db.fail(&["user", "create", "--org", "nope", "--upn", "x@contoso.com", "--name", "x", "--location", "US"]),
        "unknown_org"
    );
    assert_eq!(arr(&db.ok(&["user", "list", "--org", &id])).len(), 4);

    // Subscriptions.
    let subs = db.ok(&["subscription", "add", "--org", &id, "--sku", "phone_system", "--quantity", "3"]);
    let ps = arr(&subs).into_iter().find(|x| x["sku"] == "phone_system").unwrap();
    assert_eq!((i(&ps, "quantity"), i(&ps, "available")), (3, 3));
    for (sku, q) in [("communications_credits", "2"), ("calling_plan_domestic", "2")] {
        db.ok(&["subscription", "add", "--org", &id, "--sku", sku, "--quantity", q]);
    }
    assert_eq!(db.fail(&["subscription", "add", "--org", &id, "--sku", "nope", "--quantity", "1"]), "unknown_sku");

    // Bulk assignment: users by id and by UPN.
    let assigned = db.ok(&[
        "license",
        "assign",
        "--org",
        &id,
        "--sku",
        "phone_system",
        "--user",
        &ada,
        "--user",
        "bob@contoso.com",
        "--user",
        &cy,
    ]);
    assert_eq!(arr(&assigned).len(), 3);
    for u in arr(&assigned) {
        assert!(arr(&u["licenses"]).iter().any(|l| l == "phone_system"), "{u}");
    }
    // No seat left for Dee: all or nothing.
    assert_eq!(db.fail(&["license", "assign", "--org", &id, "--sku", "phone_system", "--user", &dee]), "no_free_seat");
    // Three users for two credits seats: nothing is assigned.
    assert_eq!(
        db.fail(&[
            "license",
            "assign",
            "--org",
            &id,
            "--sku",
            "communications_credits",
            "--user",
            &ada,
            "--user",
            &bob,
            "--user",
            &cy,
        ]),
        "no_free_seat"
    );
    assert_eq!(licensed(&db, &id, "communications_credits"), 0);
    let subs = arr(&db.ok(&["subscription", "list", "--org", &id]));
    let cc = subs.iter().find(|x| x["sku"] == "communications_credits").unwrap();
    assert_eq!((i(cc, "assigned"), i(cc, "available")), (0, 2), "{cc}");
    // An unknown user among known ones: nothing is assigned either.
    assert_eq!(
        db.fail(&[
            "license",
            "assign",
            "--org",
            &id,
            "--sku",
            "communications_credits",
            "--user",
            &ada,
            "--user",
            "nobody@contoso.com",
        ]),
        "unknown_user"
    );
    assert_eq!(licensed(&db, &id, "communications_credits"), 0);
    assert_eq!(db.fail(&["license", "assign", "--org", &id, "--sku", "nope", "--user", &ada]), "unknown_sku");
    // Exactly the free seats: fine.
    db.ok(&["license", "assign", "--org", &id, "--sku", "communications_credits", "--user", &ada, "--user", &bob]);
    assert_eq!(licensed(&db, &id, "communications_credits"), 2);

    // A calling plan needs phone_system.
    assert_eq!(
        db.fail(&["license", "assign", "--org", &id, "--sku", "calling_plan_domestic", "--user", &dee]),
        "license_requires_phone_system"
    );
    assert_eq!(licensed(&db, &id, "calling_plan_domestic"), 0);
    db.ok(&["license", "assign", "--org", &id, "--sku", "calling_plan_domestic", "--user", &ada]);
    let pools = arr(&db.ok(&["pools", "--org", &id]));
    let us = pools
        .iter()
        .find(|p| p["country"] == "US" && p["kind"] == "domestic")
        .unwrap_or_else(|| panic!("no US domestic pool: {pools:?}"));
    assert_eq!(i(us, "size"), 3000, "{us}");

    // Removing a license frees its seat.
    db.ok(&["license", "remove", "--org", &id, "--sku", "phone_system", "--user", &cy]);
    db.ok(&["license", "assign", "--org", &id, "--sku", "phone_system", "--user", &dee]);
    assert_eq!(licensed(&db, &id, "phone_system"), 3);

    // Numbers.
    let n = db.ok(&["number", "add", "--org", &id, "--number", TOLL_FREE, "--kind", "toll_free"]);
    assert_eq!(s(&first(&n), "kind"), "toll_free");
    assert_eq!(
        db.fail(&["number", "add", "--org", &id, "--number", TOLL_FREE, "--kind", "toll_free"]),
        "duplicate_number"
    );
    assert_eq!(
        db.fail(&["number", "add", "--org", &id, "--number", "+1800", "--kind", "toll_free"]),
        "invalid_phone_number"
    );
    db.check(&id);
}

// ---------------------------------------------------------------------------
// 2. Payment methods and purchases
// ---------------------------------------------------------------------------

#[test]
fn card_number_is_never_printed_nor_stored() {
    let db = Db::new();
    let o = setup(&db);
    let mut printed = String::new();
    for (number, last4, brand) in
        [(CARD_OK, "4242", "visa"), (CARD_DECLINED, "0002", "visa"), (CARD_MC, "4444", "mastercard")]
    {
        for json in [true, false] {
            let out = db.raw_at(
                T0,
                json,
                &[
                    "payment-method",
                    "add",
                    "--org",
                    &o.id,
                    "--card",
                    number,
                    "--exp",
                    "12/2030",
                    "--holder",
                    "Ada Lovelace",
                ],
            );
            assert!(out.status.success(), "{out:?}");
            let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
            assert!(!text.contains(number), "full card number printed: {text}");
            assert!(text.contains(last4), "{text}");
            if json {
                let v: Value = serde_json::from_slice(&out.stdout).unwrap();
                let pm = &first(&v);
                assert_eq!(s(pm, "type"), "card");
                assert_eq!(s(&pm["card"], "last4"), last4);
                assert_eq!(s(&pm["card"], "brand"), brand);
                assert_eq!((i(&pm["card"], "exp_month"), i(&pm["card"], "exp_year")), (12, 2030));
                assert!(pm["card"].get("number").is_none(), "{pm}");
            }
            printed += &text;
        }
    }
    let ea = db.ok(&["payment-method", "add", "--org", &o.id, "--ea", "EA-1234"]);
    assert_eq!(s(&first(&ea), "type"), "enterprise_agreement");
    assert_eq!(s(&first(&ea), "agreement_number"), "EA-1234");
    add_funds(&db, &o.id, "50", &o.card);
    for args in [
        vec!["payment-method", "list", "--org", &o.id],
        vec!["orders", "--org", &o.id],
        vec!["ledger", "--org", &o.id],
        vec!["credits", "show", "--org", &o.id],
    ] {
        for json in [true, false] {
            let out = db.raw_at(T0, json, &args);
            assert!(out.status.success());
            printed += &String::from_utf8_lossy(&out.stdout);
        }
    }
    for number in [CARD_OK, CARD_DECLINED, CARD_MC] {
        assert!(!printed.contains(number), "{number} printed");
    }
    assert_eq!(arr(&db.ok(&["payment-method", "list", "--org", &o.id])).len(), 1 + 6 + 1);
    // Neither the database nor its WAL holds a full number.
    let mut files = 0;
    for entry in std::fs::read_dir(db.dir.path()).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        files += 1;
        for number in [CARD_OK, CARD_DECLINED, CARD_MC] {
            assert!(
                !bytes.windows(number.len()).any(|w| w == number.as_bytes()),
                "{number} stored in {}",
                path.display()
            );
        }
    }
    assert!(files >= 1);
    db.check(&o.id);
}

#[test]
fn bad_cards_are_refused_when_saved() {
    let db = Db::new();
    let o = setup(&db);
    let add =
        |number: &str, exp: &str| db.fail(&["payment-method", "add", "--org", &o.id, "--card", number, "--exp", exp]);
    assert_eq!(add("4242424242424241", "12/2030"), "invalid_card");
    assert_eq!(add(CARD_OK, "13/2030"), "invalid_card");
    assert_eq!(add(CARD_OK, "12-2030"), "invalid_card");
    assert_eq!(add(CARD_OK, "01/2020"), "expired_card");
    assert_eq!(arr(&db.ok(&["payment-method", "list", "--org", &o.id])).len(), 1);
}

#[test]
fn purchases_validate_amounts_and_record_failed_orders() {
    let db = Db::new();
    let o = setup(&db);
    let buy = |amount: &str, pm: &str| {
        db.fail(&["funds", "add", "--org", &o.id, &format!("--amount={amount}"), "--payment-method", pm])
    };
    assert_eq!(buy("49.99", &o.card), "below_minimum_purchase");
    assert_eq!(buy("10", &o.card), "below_minimum_purchase");
    for bad in ["0", "0.00", "-5", "-50.00", "abc", "1e99", "NaN", "", "50.001", "1,000"] {
        assert_eq!(buy(bad, &o.card), "invalid_amount", "amount '{bad}'");
    }
    for huge in ["99999999999999999999", "9223372036854775807"] {
        assert_eq!(buy(huge, &o.card), "amount_overflow", "amount '{huge}'");
    }
    assert_eq!(buy("50", "nope"), "unknown_payment_method");
    assert_eq!(db.orders(&o.id).len(), 0, "invalid requests place no order");
    assert_eq!(i(&db.credits(&o.id), "balance"), 0);

    // A declined card: a failed order with its reason, no money.
    let declined = add_card(&db, &o.id, CARD_DECLINED, "01/2030");
    assert_eq!(buy("50", &declined), "payment_declined");
    let orders = db.orders(&o.id);
    assert_eq!(orders.len(), 1, "{orders:?}");
    assert_eq!(s(&orders[0], "status"), "failed");
    assert_eq!(s(&orders[0], "kind"), "purchase");
    assert_eq!(s(&orders[0], "failure_reason"), "payment_declined");
    assert_eq!(i(&orders[0], "amount"), 5000);
    assert!(orders[0]["lot_id"].is_null());
    // The gateway's "expired at charge time" test card.
    let expiring = add_card(&db, &o.id, CARD_EXPIRED_AT_CHARGE, "01/2030");
    assert_eq!(buy("60", &expiring), "expired_card");
    let orders = db.orders(&o.id);
    assert_eq!(orders.len(), 2);
    assert!(orders.iter().any(|x| x["failure_reason"] == "expired_card" && x["status"] == "failed"));
    let c = db.credits(&o.id);
    assert_eq!((i(&c, "balance"), arr(&c["lots"]).len()), (0, 0));
    assert_eq!(db.ledger(&o.id).len(), 0);

    // A card purchase and an EA purchase with a PO number.
    let ok = add_funds(&db, &o.id, "50.00", &o.card);
    assert_eq!(s(&ok, "status"), "succeeded");
    assert_eq!(s(&ok, "kind"), "purchase");
    assert_eq!((i(&ok, "amount"), s(&ok, "currency")), (5000, "USD".into()));
    assert!(ok["failure_reason"].is_null());
    let ea = s(&first(&db.ok(&["payment-method", "add", "--org", &o.id, "--ea", "EA-1234"])), "id");
    let po = db.ok(&["funds", "add", "--org", &o.id, "--amount", "500", "--payment-method", &ea, "--po", "PO-77"]);
    assert_eq!(s(&po, "status"), "succeeded");
    assert_eq!(s(&po, "po_number"), "PO-77");
    assert_eq!(s(&po, "payment_method_id"), ea);
    let orders = db.orders(&o.id);
    assert_eq!(orders.len(), 4);
    assert!(orders.iter().any(|x| x["po_number"] == "PO-77" && x["status"] == "succeeded"));
    let c = db.credits(&o.id);
    assert_eq!(i(&c, "balance"), 55000);
    assert_eq!(i(&c, "available"), 55000);
    assert_eq!(arr(&c["lots"]).len(), 2);
    let ledger = db.ledger(&o.id);
    assert_eq!(ledger.len(), 2);
    assert!(ledger.iter().all(|e| e["kind"] == "purchase"));
    let b = db.check(&o.id);
    assert_eq!(i(&b, "purchases"), 55000);
}

// ---------------------------------------------------------------------------
// 3. Auto-recharge
// ---------------------------------------------------------------------------

#[test]
fn auto_recharge_once_per_crossing_then_expired_card_fails() {
    let db = Db::new();
    let o = setup(&db);
    add_funds(&db, &o.id, "50", &o.card);
    let set = |amount: &str, threshold: &str, pm: &str| {
        db.run(&[
            "auto-recharge",
            "set",
            "--org",
            &o.id,
            "--enabled",
            "true",
            "--amount",
            amount,
            "--threshold",
            threshold,
            "--payment-method",
            pm,
        ])
    };
    let (code, v) = set("10", "45", &o.card);
    assert_eq!((code, s(&v, "code")), (1, "below_minimum_purchase".into()));
    let (code, v) = set("50", "45", "nope");
    assert_eq!((code, s(&v, "code")), (1, "unknown_payment_method".into()));
    let (code, c) = set("50", "45", &o.card);
    assert_eq!(code, 0, "{c}");
    let ar = &c["auto_recharge"];
    assert_eq!(ar["enabled"], true);
    assert_eq!((i(ar, "amount"), i(ar, "threshold")), (5000, 4500));
    assert_eq!(s(ar, "payment_method_id"), o.card);

    // Three one-hour calls to a UK mobile at 0.09/min (5.40 each): the first crosses 45.00.
    for n in 0..3 {
        let id = format!("c{n}");
        let a = db.out_call(&o.id, &id, &o.bob, BOB_NUM, UK_MOBILE, 3600);
        assert_eq!(s(&a, "decision"), "allow", "{a}");
        let e = db.end(&o.id, &id, 3600);
        assert_eq!(i(&e, "charge"), 540, "{e}");
    }
    let orders = db.orders(&o.id);
    let recharges: Vec<&Value> = orders.iter().filter(|x| x["kind"] == "auto_recharge").collect();
    assert_eq!(recharges.len(), 1, "{orders:?}");
    assert_eq!(s(recharges[0], "status"), "succeeded");
    assert_eq!(i(recharges[0], "amount"), 5000);
    let kinds = db.notice_kinds(&o.id);
    assert_eq!(count(&kinds, "recharge_succeeded"), 1, "{kinds:?}");
    let c = db.credits(&o.id);
    assert_eq!(i(&c, "balance"), 10000 - 3 * 540);
    db.check(&o.id);

    // A Mastercard valid when saved (expires 11/2026) but expired when the recharge runs.
    let short = add_card(&db, &o.id, CARD_MC, "11/2026");
    let avail = i(&db.credits(&o.id), "available");
    let threshold = format!("{}.{:02}", avail / 100, avail % 100);
    let (code, v) = set("50", &threshold, &short);
    assert_eq!(code, 0, "{v}");
    let later = "2026-12-05T10:00:00Z";
    let a = db.authorize_at(later, &o.id, "late", "outbound", Some(&o.bob), BOB_NUM, US_NUM, Some(60));
    assert_eq!(s(&a, "decision"), "allow", "{a}");
    db.end_at(later, &o.id, "late", 60);
    let orders = db.orders(&o.id);
    let failed: Vec<&Value> = orders.iter().filter(|x| x["status"] == "failed").collect();
    assert_eq!(failed.len(), 1, "{orders:?}");
    assert_eq!(s(failed[0], "kind"), "auto_recharge");
    assert_eq!(s(failed[0], "failure_reason"), "expired_card");
    let notices = arr(&db.ok(&["notifications", "--org", &o.id]));
    let f: Vec<&Value> = notices.iter().filter(|n| n["kind"] == "recharge_failed").collect();
    assert_eq!(f.len(), 1, "{notices:?}");
    assert!(s(f[0], "body").contains("expired"), "{}", f[0]);
    assert_eq!(count(&db.notice_kinds(&o.id), "recharge_succeeded"), 1);
    // No money arrived from the failed order.
    assert_eq!(i(&db.credits(&o.id), "balance"), 10000 - 3 * 540 - 1);
    db.check(&o.id);
}

#[test]
fn concurrent_calls_never_overspend_and_recharge_once() {
    let db = Db::new();
    let o = setup(&db);
    add_funds(&db, &o.id, "50", &o.card);
    db.ok(&[
        "auto-recharge",
        "set",
        "--org",
        &o.id,
        "--enabled",
        "true",
        "--amount",
        "50",
        "--threshold",
        "45",
        "--payment-method",
        &o.card,
    ]);
    // Four processes at once, each a one-hour call at 5.40: one crossing of 45.00.
    std::thread::scope(|sc| {
        for n in 0..4 {
            let (db, o) = (&db, &o);
            sc.spawn(move || {
                let id = format!("p{n}");
                let a = db.out_call(&o.id, &id, &o.bob, BOB_NUM, UK_MOBILE, 3600);
                assert_eq!(s(&a, "decision"), "allow", "{a}");
                db.end(&o.id, &id, 3600);
            });
        }
    });
    let recharges = db.orders(&o.id).into_iter().filter(|x| x["kind"] == "auto_recharge").count();
    assert_eq!(recharges, 1);
    assert_eq!(i(&db.credits(&o.id), "balance"), 10000 - 4 * 540);
    db.check(&o.id);

    // Eight processes racing for 78.40 with auto-recharge off: never below zero.
    db.ok(&["auto-recharge", "set", "--org", &o.id, "--enabled", "false"]);
    let answers: Vec<Value> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..8)
            .map(|n| {
                let (db, o) = (&db, &o);
                sc.spawn(move || db.out_call(&o.id, &format!("q{n}"), &o.bob, BOB_NUM, UK_MOBILE, 3 * 3600))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let allowed: Vec<&Value> = answers.iter().filter(|a| a["decision"] == "allow").collect();
    let reserved: i64 = allowed.iter().map(|a| i(a, "reserved_amount")).sum();
    // Four full three-hour grants (16.20 each) and one partial grant fit in 78.40.
    assert!(allowed.len() >= 5 && allowed.len() < 8, "{answers:?}");
    let c = db.credits(&o.id);
    assert_eq!(i(&c, "reserved"), reserved);
    assert!(reserved <= 7840, "{reserved}");
    assert!(i(&c, "available") >= 0, "{c}");
    db.check(&o.id);
}

// ---------------------------------------------------------------------------
// 4. rate changes nothing
// ---------------------------------------------------------------------------

#[test]
fn rate_quotes_without_changing_anything() {
    let db = Db::new();
    let o = setup(&db);
    // Without funds: a denial is quoted, but neither recorded nor notified.
    let q = db.ok(&["rate", "--org", &o.id, "--user", &o.bob, "--from", BOB_NUM, "--to", US_NUM]);
    assert_eq!(s(&q, "decision"), "deny");
    assert_eq!(s(&q, "reason"), "insufficient_funds");
    assert_eq!(arr(&db.ok(&["blocked", "--org", &o.id])).len(), 0);
    assert_eq!(db.notice_kinds(&o.id).len(), 0);

    add_funds(&db, &o.id, "50", &o.card);
    let before = (db.credits(&o.id), db.ok(&["pools", "--org", &o.id]), db.ledger(&o.id), db.notice_kinds(&o.id));
    let q = db.ok(&["rate", "--org", &o.id, "--user", "bob@contoso.com", "--from", BOB_NUM, "--to", US_NUM]);
    assert_eq!(s(&q, "decision"), "allow", "{q}");
    assert_eq!(s(&q, "funding"), "credits");
    assert_eq!(s(&q, "rate_per_minute"), "0.0100");
    assert_eq!(s(&q, "currency"), "USD");
    assert_eq!(i(&q, "connection_fee"), 0);
    assert_eq!(i(&q, "increment_seconds"), 6);
    assert_eq!(i(&q, "granted_seconds"), 300);
    let q = db.ok(&["rate", "--org", &o.id, "--user", &o.bob, "--from", BOB_NUM, "--to", UK_MOBILE]);
    assert_eq!(s(&q, "rate_per_minute"), "0.0900");
    let q = db.ok(&["rate", "--org", &o.id, "--user", &o.ada, "--from", ADA_NUM, "--to", "+12125550199"]);
    assert_eq!(s(&q, "funding"), "plan", "{q}");
    let q = db.ok(&["rate", "--org", &o.id, "--type", "toll_free_inbound", "--from", BOB_NUM, "--to", TOLL_FREE]);
    assert_eq!(s(&q, "decision"), "deny", "not the org's number yet: {q}");
    assert_eq!(s(&q, "reason"), "unknown_number");
    assert_eq!(
        db.fail(&["rate", "--org", &o.id, "--user", &o.bob, "--from", BOB_NUM, "--to", "12345"]),
        "invalid_phone_number"
    );
    // Without --from, the user's own number is the caller; Bob has none, and his usage
    // location prices the call all the same.
    let q = db.ok(&["rate", "--org", &o.id, "--user", &o.bob, "--to", US_NUM]);
    assert_eq!((s(&q, "decision"), s(&q, "rate_per_minute")), ("allow".into(), "0.0100".into()), "{q}");
    // A toll-free call is priced by its caller: it needs --from.
    assert_eq!(db.fail(&["rate", "--org", &o.id, "--type", "toll_free_inbound", "--to", TOLL_FREE]), "invalid_input");
    let after = (db.credits(&o.id), db.ok(&["pools", "--org", &o.id]), db.ledger(&o.id), db.notice_kinds(&o.id));
    assert_eq!(before, after);
    assert_eq!(arr(&db.ok(&["blocked", "--org", &o.id])).len(), 0);
    // A quote does not take the call id "quote".
    let a = db.out_call(&o.id, "quote", &o.bob, BOB_NUM, US_NUM, 60);
    assert_eq!(s(&a, "decision"), "allow");
    db.end(&o.id, "quote", 60);
    db.check(&o.id);
}

/// SPEC §3: `rate --org --user --to`, `--from` optional: a user without a number of
/// their own is priced by their usage location, and the quote is the one with a caller
/// number given.
#[test]
fn rate_prices_a_user_without_a_number_of_their_own() {
    let db = Db::new();
    let o = setup(&db);
    add_funds(&db, &o.id, "50", &o.card);
    for to in [US_NUM, UK_MOBILE] {
        let without = db.ok(&["rate", "--org", &o.id, "--user", &o.bob, "--to", to]);
        let with = db.ok(&["rate", "--org", &o.id, "--user", &o.bob, "--from", BOB_NUM, "--to", to]);
        assert_eq!(s(&without, "decision"), "allow", "{without}");
        for field in ["funding", "rate_per_minute", "currency", "connection_fee", "granted_seconds"] {
            assert_eq!(without[field], with[field], "{field}: {without} vs {with}");
        }
    }
    // A real call still names its caller.
    assert_eq!(
        db.fail(&[
            "call",
            "authorize",
            "--org",
            &o.id,
            "--call-id",
            "c1",
            "--type",
            "outbound",
            "--user",
            &o.bob,
            "--from",
            "",
            "--to",
            US_NUM
        ]),
        "invalid_phone_number"
    );
}

// ---------------------------------------------------------------------------
// 5. Real-time calls
// ---------------------------------------------------------------------------

#[test]
fn call_authorize_update_end() {
    let db = Db::new();
    let o = setup(&db);
    add_funds(&db, &o.id, "50", &o.card);
    // Bob (GB, no plan) calls the US on credits: 0.01/min, 6 s increments.
    let a = db.authorize_at(T0, &o.id, "c1", "outbound", Some("bob@contoso.com"), BOB_NUM, US_NUM, None);
    assert_eq!(s(&a, "decision"), "allow");
    assert_eq!(s(&a, "funding"), "credits");
    assert_eq!(i(&a, "granted_seconds"), 300, "default request is 300 s");
    assert_eq!(s(&a, "rate_per_minute"), "0.0100");
    assert_eq!(s(&a, "call_id"), "c1");
    let reserved = i(&a, "reserved_amount");
    assert!(reserved > 0);
    let c = db.credits(&o.id);
    assert_eq!((i(&c, "reserved"), i(&c, "available")), (reserved, 5000 - reserved));
    db.check(&o.id);

    let u = db.ok(&["call", "update", "--org", &o.id, "--call-id", "c1", "--used", "200", "--seconds", "300"]);
    assert_eq!(i(&u, "granted_seconds"), 300, "{u}");
    assert_eq!(i(&u, "used_seconds"), 200);
    assert_eq!(i(&u, "total_granted_seconds"), 500);
    assert!(u.get("reason").is_none() || u["reason"].is_null());

    // 250 s -> 252 billable s -> 4.2 cents -> 4 cents.
    let e = db.end(&o.id, "c1", 250);
    assert_eq!(i(&e, "charge"), 4, "{e}");
    assert_eq!(s(&e, "funding"), "credits");
    assert_eq!(i(&e, "duration_seconds"), 250);
    assert_eq!(i(&e, "overrun_seconds"), 0);
    let c = db.credits(&o.id);
    assert_eq!((i(&c, "balance"), i(&c, "reserved"), i(&c, "available")), (4996, 0, 4996));
    let ledger = db.ledger(&o.id);
    let charge = ledger
        .iter()
        .find(|x| x["kind"] == "charge" && x["call_id"] == "c1")
        .unwrap_or_else(|| panic!("no charge for c1: {ledger:?}"));
    assert_eq!(i(charge, "amount"), -4);

    // A repeated end answers the first result and changes nothing.
    let again = db.end(&o.id, "c1", 999);
    assert_eq!(again, e);
    assert_eq!(db.credits(&o.id), c);
    assert_eq!(db.ledger(&o.id), ledger);

    // Unknown and duplicate call ids.
    assert_eq!(db.fail(&["call", "end", "--org", &o.id, "--call-id", "nope", "--duration", "10"]), "unknown_call");
    assert_eq!(db.fail(&["call", "update", "--org", &o.id, "--call-id", "nope", "--used", "10"]), "unknown_call");
    let dup = [
        "call",
        "authorize",
        "--org",
        &o.id,
        "--call-id",
        "c1",
        "--type",
        "outbound",
        "--user",
        &o.bob,
        "--from",
        BOB_NUM,
        "--to",
        US_NUM,
    ];
    assert_eq!(db.fail(&dup), "duplicate_call_id");

    // Bad requests are errors with codes, not denials.
    let bad = |call_id: &str, kind: &str, to: &str, secs: &str| {
        db.fail(&[
            "call",
            "authorize",
            "--org",
            &o.id,
            "--call-id",
            call_id,
            "--type",
            kind,
            "--user",
            &o.bob,
            "--from",
            BOB_NUM,
            "--to",
            to,
            "--seconds",
            secs,
        ])
    };
    assert_eq!(bad("b1", "outbound", "12345", "60"), "invalid_phone_number");
    assert_eq!(bad("b2", "weird", US_NUM, "60"), "invalid_input");
    assert_eq!(bad("b3", "outbound", US_NUM, "86401"), "invalid_input");
    assert_eq!(bad("", "outbound", US_NUM, "60"), "invalid_input");
    // An unknown user is a denial with a reason.
    let d = db.authorize_at(T0, &o.id, "d1", "outbound", Some("nobody@contoso.com"), BOB_NUM, US_NUM, None);
    assert_eq!((s(&d, "decision"), s(&d, "reason")), ("deny".into(), "unknown_user".into()));
    assert_eq!(i(&d, "granted_seconds"), 0);

    // `end` settles at most what was granted.
    let a = db.out_call(&o.id, "c2", &o.bob, BOB_NUM, UK_MOBILE, 60);
    assert_eq!(i(&a, "granted_seconds"), 60);
    let e = db.end(&o.id, "c2", 100);
    assert_eq!(i(&e, "charge"), 9, "60 s at 0.09/min: {e}");
    assert_eq!(i(&e, "overrun_seconds"), 40);
    assert_eq!(i(&db.credits(&o.id), "balance"), 4996 - 9);

    // Ada's US call is paid from her plan's pool, in whole minutes.
    let a = db.out_call(&o.id, "p1", &o.ada, ADA_NUM, "+12125550199", 600);
    assert_eq!(s(&a, "funding"), "plan", "{a}");
    let e = db.end(&o.id, "p1", 61);
    assert_eq!((i(&e, "plan_minutes"), i(&e, "charge")), (2, 0), "{e}");
    let pools = arr(&db.ok(&["pools", "--org", &o.id]));
    let us = pools.iter().find(|p| p["country"] == "US" && p["kind"] == "domestic").unwrap();
    assert_eq!((i(us, "used"), i(us, "reserved")), (2, 0), "{us}");
    assert_eq!(i(&db.credits(&o.id), "balance"), 4996 - 9);
    db.check(&o.id);
}

#[test]
fn calls_run_out_of_money_and_admins_are_told() {
    let db = Db::new();
    let o = setup(&db);
    add_funds(&db, &o.id, "50", &o.card);
    let a = db.out_call(&o.id, "big", &o.bob, BOB_NUM, UK_MOBILE, 86400);
    assert_eq!(s(&a, "decision"), "allow");
    let granted = i(&a, "granted_seconds");
    assert!(granted < 86400 && granted > 33000, "{a}");
    assert!(i(&a, "reserved_amount") <= 5000);
    let u = db.ok(&["call", "update", "--org", &o.id, "--call-id", "big", "--used", "30000", "--seconds", "3600"]);
    assert_eq!(i(&u, "granted_seconds"), 0, "{u}");
    assert_eq!(s(&u, "reason"), "insufficient_funds");
    let e = db.end(&o.id, "big", 40000);
    assert_eq!(i(&e, "charged_seconds"), granted);
    assert_eq!(i(&e, "overrun_seconds"), 40000 - granted);
    assert!(i(&e, "charge") <= 5000);
    let c = db.credits(&o.id);
    assert!(i(&c, "balance") >= 0 && i(&c, "available") >= 0, "{c}");
    let d = db.out_call(&o.id, "next", &o.bob, BOB_NUM, UK_MOBILE, 60);
    assert_eq!(s(&d, "reason"), "insufficient_funds", "{d}");
    let d = db.out_call(&o.id, "next2", &o.bob, BOB_NUM, UK_MOBILE, 60);
    assert_eq!(s(&d, "decision"), "deny");
    assert_eq!(count(&db.notice_kinds(&o.id), "balance_exhausted"), 1);
    let blocked = arr(&db.ok(&["blocked", "--org", &o.id]));
    assert_eq!(blocked.len(), 2, "{blocked:?}");
    assert!(blocked.iter().all(|b| b["reason"] == "insufficient_funds"));
    db.check(&o.id);
}

#[test]
fn emergency_calls_are_allowed_and_free() {
    let db = Db::new();
    let o = setup(&db);
    // No funds at all, and Bob may not even dial out.
    db.ok(&["user", "set", "--org", &o.id, "--user", &o.bob, "--dial-out", "disabled"]);
    for (id, user, from, to) in
        [("e1", &o.ada, ADA_NUM, "911"), ("e2", &o.ada, ADA_NUM, "112"), ("e3", &o.bob, BOB_NUM, "999")]
    {
        let a = db.out_call(&o.id, id, user, from, to, 300);
        assert_eq!(s(&a, "decision"), "allow", "{to}: {a}");
        assert_eq!(s(&a, "funding"), "emergency");
        let e = db.end(&o.id, id, 600);
        assert_eq!(i(&e, "charge"), 0, "{e}");
    }
    let c = db.credits(&o.id);
    assert_eq!((i(&c, "balance"), i(&c, "reserved")), (0, 0));
    assert_eq!(db.ledger(&o.id).len(), 0);
    db.check(&o.id);
}

#[test]
fn toll_free_inbound_is_paid_from_credits() {
    let db = Db::new();
    let o = setup(&db);
    add_funds(&db, &o.id, "50", &o.card);
    db.ok(&["number", "add", "--org", &o.id, "--number", TOLL_FREE, "--kind", "toll_free"]);
    let numbers = arr(&db.ok(&["number", "list", "--org", &o.id]));
    assert!(numbers.iter().any(|n| n["number"] == TOLL_FREE && n["kind"] == "toll_free"));
    // A caller from the UK: 0.044/min, 60 s increments; no user involved.
    let a = db.authorize_at(T0, &o.id, "tf1", "toll_free_inbound", None, BOB_NUM, TOLL_FREE, None);
    assert_eq!(s(&a, "decision"), "allow", "{a}");
    assert_eq!(s(&a, "funding"), "credits");
    assert_eq!(s(&a, "rate_per_minute"), "0.0440");
    let e = db.end(&o.id, "tf1", 120);
    assert_eq!(i(&e, "charge"), 9, "2 min x 0.044 = 0.088: {e}");
    assert_eq!(i(&db.credits(&o.id), "balance"), 4991);
    let ledger = db.ledger(&o.id);
    assert!(ledger.iter().any(|x| x["kind"] == "charge" && x["call_id"] == "tf1" && x["amount"] == -9));
    // A number the organization does not own.
    let d = db.authorize_at(T0, &o.id, "tf2", "toll_free_inbound", None, BOB_NUM, "+18002660199", None);
    assert_eq!(s(&d, "reason"), "unknown_number", "{d}");
    db.check(&o.id);
}

#[test]
fn dial_out_policy_and_spend_limit() {
    let db = Db::new();
    let o = setup(&db);
    add_funds(&db, &o.id, "50", &o.card);
    let u = db.ok(&["user", "set", "--org", &o.id, "--user", &o.bob, "--dial-out", "domestic"]);
    assert_eq!(s(&u, "dial_out_policy"), "domestic");
    assert_eq!(db.fail(&["user", "set", "--org", &o.id, "--user", &o.bob, "--dial-out", "sometimes"]), "invalid_input");
    let d = db.out_call(&o.id, "abroad", &o.bob, BOB_NUM, US_NUM, 60);
    assert_eq!((s(&d, "decision"), s(&d, "reason")), ("deny".into(), "destination_not_allowed".into()));
    let a = db.out_call(&o.id, "home", &o.bob, BOB_NUM, UK_MOBILE, 60);
    assert_eq!(s(&a, "decision"), "allow", "{a}");
    db.end(&o.id, "home", 60);
    db.ok(&["user", "set", "--org", &o.id, "--user", &o.bob, "--dial-out", "disabled"]);
    let d = db.out_call(&o.id, "off", &o.bob, BOB_NUM, UK_MOBILE, 60);
    assert_eq!(s(&d, "reason"), "dial_out_disabled", "{d}");
    db.ok(&["user", "set", "--org", &o.id, "--user", &o.bob, "--dial-out", "international"]);

    // Spend limit: 0.10 a month; Bob has spent 0.09 already.
    let u = db.ok(&["user", "set", "--org", &o.id, "--user", &o.bob, "--spend-limit", "0.10"]);
    assert_eq!(i(&u, "spend_limit"), 10);
    assert_eq!(db.fail(&["user", "set", "--org", &o.id, "--user", &o.bob, "--spend-limit=-1"]), "invalid_amount");
    let mut spent = 9;
    let a = db.out_call(&o.id, "s1", &o.bob, BOB_NUM, UK_MOBILE, 600);
    if a["decision"] == "allow" {
        let g = i(&a, "granted_seconds") as u32;
        assert!(g < 600, "the grant must stay within the limit: {a}");
        spent += i(&db.end(&o.id, "s1", g), "charge");
    }
    assert!(spent <= 10, "spent {spent} over a limit of 10");
    let d = db.out_call(&o.id, "s2", &o.bob, BOB_NUM, UK_MOBILE, 600);
    assert_eq!((s(&d, "decision"), s(&d, "reason")), ("deny".into(), "spend_limit_reached".into()));
    // Ada has no limit.
    let a = db.out_call(&o.id, "s3", &o.ada, ADA_NUM, UK_MOBILE, 600);
    assert_eq!(s(&a, "decision"), "allow");
    db.end(&o.id, "s3", 60);
    // Lifting the limit lets Bob call again.
    db.ok(&["user", "set", "--org", &o.id, "--user", &o.bob, "--spend-limit", "none"]);
    let a = db.out_call(&o.id, "s4", &o.bob, BOB_NUM, UK_MOBILE, 60);
    assert_eq!(s(&a, "decision"), "allow");
    db.end(&o.id, "s4", 60);
    let reasons: Vec<String> = arr(&db.ok(&["blocked", "--org", &o.id])).iter().map(|b| s(b, "reason")).collect();
    for r in ["destination_not_allowed", "dial_out_disabled", "spend_limit_reached"] {
        assert!(reasons.contains(&r.to_string()), "{reasons:?}");
    }
    db.check(&o.id);
}

#[test]
fn organizations_do_not_see_each_other() {
    let db = Db::new();
    let a = setup(&db);
    let b = db.ok(&["org", "create", "--name", "Fabrikam", "--currency", "GBP", "--country", "GB"]);
    let b = s(&b, "id");
    add_funds(&db, &a.id, "50", &a.card);
    // Org B cannot use org A's user, payment method or call.
    let d = db.out_call(&b, "x1", &a.bob, BOB_NUM, US_NUM, 60);
    assert_eq!(s(&d, "reason"), "unknown_user", "{d}");
    assert_eq!(
        db.fail(&["funds", "add", "--org", &b, "--amount", "50", "--payment-method", &a.card]),
        "unknown_payment_method"
    );
    db.out_call(&a.id, "shared", &a.bob, BOB_NUM, US_NUM, 60);
    assert_eq!(db.fail(&["call", "end", "--org", &b, "--call-id", "shared", "--duration", "5"]), "unknown_call");
    db.end(&a.id, "shared", 5);
    let cb = db.credits(&b);
    assert_eq!(s(&cb, "currency"), "GBP");
    assert_eq!((i(&cb, "balance"), arr(&cb["lots"]).len()), (0, 0));
    assert_eq!(db.ledger(&b).len(), 0);
    db.check(&a.id);
    db.check(&b);
}

// ---------------------------------------------------------------------------
// 6. Reservation timeout
// ---------------------------------------------------------------------------

#[test]
fn reservation_times_out_and_is_settled_by_jobs() {
    let db = Db::new();
    let o = setup(&db);
    add_funds(&db, &o.id, "50", &o.card);
    let t = "2026-11-02T10:00:00Z";
    // A call never heard of again after its 60 s grant.
    let a = db.authorize_at(t, &o.id, "t1", "outbound", Some(&o.bob), BOB_NUM, US_NUM, Some(60));
    assert_eq!(i(&a, "granted_seconds"), 60);
    assert!(i(&a, "reserved_amount") > 0);
    // A call that reports 40 s used at T+50 and asks for 60 s more, then goes silent.
    let a2 = db.authorize_at(t, &o.id, "t2", "outbound", Some(&o.bob), BOB_NUM, UK_MOBILE, Some(60));
    assert_eq!(i(&a2, "granted_seconds"), 60);
    let u = db.ok_at(
        "2026-11-02T10:00:50Z",
        &["call", "update", "--org", &o.id, "--call-id", "t2", "--used", "40", "--seconds", "60"],
    );
    assert_eq!(i(&u, "granted_seconds"), 60, "{u}");
    let jobs = |now: &str| db.ok_at(now, &["jobs", "run"]);
    // t1's validity: 60 s granted + 30 s grace.
    let r = jobs("2026-11-02T10:01:29Z");
    assert_eq!(i(&r, "reservations_expired"), 0, "{r}");
    let r = jobs("2026-11-02T10:01:31Z");
    assert_eq!(i(&r, "reservations_expired"), 1, "{r}");
    let c = db.credits(&o.id);
    assert!(i(&c, "reserved") > 0, "t2 is still running: {c}");
    // The CDR of t1 exists: `end` answers its settled result (nothing used) and changes nothing.
    let e1 = db.end_at("2026-11-02T10:02:00Z", &o.id, "t1", 55);
    assert_eq!((i(&e1, "duration_seconds"), i(&e1, "charge")), (0, 0), "{e1}");
    assert_eq!(i(&db.credits(&o.id), "balance"), 5000);
    assert_eq!(
        db.fail(&[
            "call",
            "authorize",
            "--org",
            &o.id,
            "--call-id",
            "t1",
            "--type",
            "outbound",
            "--user",
            &o.bob,
            "--from",
            BOB_NUM,
            "--to",
            US_NUM,
        ]),
        "duplicate_call_id"
    );
    // t2's validity: the update at T+50 + 60 s granted + 30 s grace.
    let r = jobs("2026-11-02T10:02:19Z");
    assert_eq!(i(&r, "reservations_expired"), 0, "{r}");
    let r = jobs("2026-11-02T10:02:21Z");
    assert_eq!(i(&r, "reservations_expired"), 1, "{r}");
    let c = db.credits(&o.id);
    assert_eq!(i(&c, "reserved"), 0, "{c}");
    // Settled for the usage last reported: 40 s at 0.09/min = 6 cents.
    assert_eq!(i(&c, "balance"), 5000 - 6);
    let ledger = db.ledger(&o.id);
    let charge = ledger
        .iter()
        .find(|x| x["kind"] == "charge" && x["call_id"] == "t2")
        .unwrap_or_else(|| panic!("no charge for t2: {ledger:?}"));
    assert_eq!(i(charge, "amount"), -6);
    let e2 = db.end_at("2026-11-02T10:05:00Z", &o.id, "t2", 100);
    assert_eq!((i(&e2, "duration_seconds"), i(&e2, "charge")), (40, 6), "{e2}");
    assert_eq!(i(&db.credits(&o.id), "balance"), 5000 - 6);
    assert_eq!(db.ledger(&o.id), ledger);
    assert_eq!(i(&jobs("2026-11-02T10:10:00Z"), "reservations_expired"), 0);
    db.check(&o.id);
}

// ---------------------------------------------------------------------------
// 7. Lots and expiry
// ---------------------------------------------------------------------------

#[test]
fn lots_expire_after_twelve_calendar_months() {
    let db = Db::new();
    let o = setup(&db);
    let at = |amount: &str, when: &str| {
        db.ok(&["funds", "add", "--org", &o.id, "--amount", amount, "--payment-method", &o.card, "--at", when])
    };
    // 13 months before T0: expired on arrival and written off.
    let old = at("60", "2025-10-02T09:00:00Z");
    assert_eq!(s(&old, "status"), "succeeded");
    let old_lot = s(&old, "lot_id");
    let leap = at("61", "2024-02-29T10:00:00Z");
    let jan = at("70", "2026-01-31T10:00:00Z");
    let now_lot = s(&add_funds(&db, &o.id, "80", &o.card), "lot_id");
    let c = db.credits(&o.id);
    let lot =
        |id: &str| arr(&c["lots"]).into_iter().find(|l| l["id"] == id).unwrap_or_else(|| panic!("no lot {id}: {c}"));
    let l = lot(&old_lot);
    assert_eq!(l["expired"], true, "{l}");
    assert_eq!(s(&l, "expires_at"), "2026-10-02T09:00:00Z");
    assert_eq!(i(&l, "remaining"), 0);
    let l = lot(&s(&leap, "lot_id"));
    assert_eq!(s(&l, "purchased_at"), "2024-02-29T10:00:00Z");
    assert_eq!(s(&l, "expires_at"), "2025-02-28T10:00:00Z");
    assert_eq!(l["expired"], true);
    let l = lot(&s(&jan, "lot_id"));
    assert_eq!(s(&l, "expires_at"), "2027-01-31T10:00:00Z");
    assert_eq!(l["expired"], false);
    assert_eq!(i(&l, "remaining"), 7000);
    assert_eq!(s(&lot(&now_lot), "expires_at"), "2027-11-02T09:00:00Z");
    assert_eq!(i(&c, "balance"), 7000 + 8000);
    let ledger = db.ledger(&o.id);
    let expiry = ledger
        .iter()
        .find(|x| x["kind"] == "expiry" && x["lot_id"] == old_lot.as_str())
        .unwrap_or_else(|| panic!("no expiry entry: {ledger:?}"));
    assert_eq!(i(expiry, "amount"), -6000);
    assert_eq!(ledger.iter().filter(|x| x["kind"] == "expiry").count(), 2, "{ledger:?}");
    // A purchase in the future or at no time at all.
    assert_eq!(
        db.fail(&[
            "funds",
            "add",
            "--org",
            &o.id,
            "--amount",
            "50",
            "--payment-method",
            &o.card,
            "--at",
            "2027-01-01T00:00:00Z",
        ]),
        "invalid_time"
    );
    assert_eq!(
        db.fail(&["funds", "add", "--org", &o.id, "--amount", "50", "--payment-method", &o.card, "--at", "yesterday",]),
        "invalid_time"
    );

    // A charge consumes the lot that expires first (Jan 31).
    db.out_call(&o.id, "c1", &o.bob, BOB_NUM, UK_MOBILE, 60);
    db.end(&o.id, "c1", 60);
    let c = db.credits(&o.id);
    let jan_lot = arr(&c["lots"]).into_iter().find(|l| l["id"] == jan["lot_id"]).unwrap();
    assert_eq!(i(&jan_lot, "remaining"), 7000 - 9, "{c}");
    db.check(&o.id);

    // 30 days before expiry: a funds_expiring notice, once.
    let r = db.ok_at("2027-01-05T00:00:00Z", &["jobs", "run"]);
    assert_eq!(i(&r, "expiring_notices"), 1, "{r}");
    let r = db.ok_at("2027-01-06T00:00:00Z", &["jobs", "run"]);
    assert_eq!(i(&r, "expiring_notices"), 0, "{r}");
    assert_eq!(count(&db.notice_kinds(&o.id), "funds_expiring"), 1);
    // At expiry, what remains is written off.
    let r = db.ok_at("2027-01-31T09:59:59Z", &["jobs", "run"]);
    assert_eq!(i(&r, "lots_expired"), 0, "{r}");
    let r = db.ok_at("2027-01-31T10:00:00Z", &["jobs", "run"]);
    assert_eq!(i(&r, "lots_expired"), 1, "{r}");
    let c = db.credits(&o.id);
    assert_eq!(i(&c, "balance"), 8000, "{c}");
    let b = db.check(&o.id);
    assert_eq!(i(&b, "purchases"), 6000 + 6100 + 7000 + 8000);
    assert_eq!(i(&b, "expired"), 6000 + 6100 + 7000 - 9);
    assert_eq!(i(&b, "charges"), 9);
}

#[test]
fn usage_report_to_csv_excel_and_the_zip_bundle() {
    let db = Db::new();
    let o = setup(&db);
    add_funds(&db, &o.id, "50", &o.card);
    let csv = format!(
        "call_id,type,user,from,to,start_time,duration_seconds\n\
         u1,outbound,bob@contoso.com,{BOB_NUM},{UK_MOBILE},2026-11-01T10:00:00Z,120\n\
         u2,outbound,bob@contoso.com,{BOB_NUM},{US_NUM},2026-11-01T12:00:00Z,60\n"
    );
    let file = db.file_str("cdrs.csv");
    std::fs::write(&file, csv).unwrap();
    assert_eq!(i(&db.ok(&["cdr", "import", "--org", &o.id, &file]), "charged"), 2);
    let period = ["--from", "2026-11-01T00:00:00Z", "--to", "2026-12-01T00:00:00Z"];
    let export = |format: &str| {
        let path = db.file_str(&format!("usage.{format}"));
        let mut args = vec!["report", "usage", "--org", &o.id, "--format", format, "--output", &path];
        args.extend(period);
        let r = db.ok(&args);
        assert_eq!((i(&r, "rows"), s(&r, "format")), (2, format.to_string()), "{r}");
        std::fs::read(&path).unwrap()
    };
    let csv = String::from_utf8(export("csv")).unwrap();
    assert!(csv.starts_with("UsageId,Call ID,Conference ID,User Location,AAD ObjectId,UPN"), "{csv}");
    assert_eq!(csv.lines().count(), 3);
    assert!(export("xlsx").starts_with(b"PK"));
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(export("zip"))).unwrap();
    let names: Vec<String> = zip.file_names().map(|n| n.unwrap().to_string()).collect();
    assert!(names[0].starts_with("Calls.Export.") && names[0].ends_with(".csv") && names[1] == "parameters.json");
    let mut inner = String::new();
    std::io::Read::read_to_string(&mut zip.by_name(&names[0]).unwrap(), &mut inner).unwrap();
    assert_eq!(inner, csv);
    let bad = db.fail(&[
        "report",
        "usage",
        "--org",
        &o.id,
        "--format",
        "pdf",
        "--output",
        &db.file_str("x"),
        period[0],
        period[1],
        period[2],
        period[3],
    ]);
    assert_eq!(bad, "invalid_input");
}

/// `report usage --from 2026-10-01 --to 2026-11-01` is October: a date is the start of
/// its day in UTC, in every report verb.
#[test]
fn report_periods_take_calendar_dates() {
    let db = Db::new();
    let o = setup(&db);
    add_funds(&db, &o.id, "50", &o.card);
    let csv = format!(
        "call_id,type,user,from,to,start_time,duration_seconds\n\
         oct,outbound,bob@contoso.com,{BOB_NUM},{US_NUM},2026-10-31T23:59:00Z,60\n\
         nov,outbound,bob@contoso.com,{BOB_NUM},{US_NUM},2026-11-01T00:00:00Z,60\n"
    );
    let file = db.file_str("cdrs.csv");
    std::fs::write(&file, csv).unwrap();
    assert_eq!(i(&db.ok(&["cdr", "import", "--org", &o.id, &file]), "charged"), 2);
    let path = db.file_str("october.csv");
    let args = ["report", "usage", "--org", &o.id, "--from", "2026-10-01", "--to", "2026-11-01", "--output", &path];
    assert_eq!(i(&db.ok(&args), "rows"), 1);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.lines().nth(1).unwrap().contains(",oct,"), "{text}");
    let by_instants =
        db.ok(&["report", "summary", "--org", &o.id, "--from", "2026-11-01T00:00:00Z", "--to", "2026-12-01T00:00:00Z"]);
    let by_dates = db.ok(&["report", "summary", "--org", &o.id, "--from", "2026-11-01", "--to", "2026-12-01"]);
    assert_eq!(by_dates, by_instants);
    assert_eq!(
        db.fail(&["report", "usage", "--org", &o.id, "--from", "2026-10-32", "--to", "2026-11-01", "--output", &path]),
        "invalid_time"
    );
}

/// Every rejected row goes to the --rejects file (as it comes); the answer lists the
/// first ones and counts them all; the file's cells are safe for spreadsheets.
#[test]
fn cdr_import_rejects_file_holds_every_reject_and_the_answer_the_first() {
    let db = Db::new();
    let o = setup(&db);
    let mut csv = String::from("call_id,type,user,from,to,start_time,duration_seconds\n");
    for n in 0..1_500 {
        csv.push_str(&format!("=cmd{n},outbound,bob@contoso.com,{BOB_NUM},{US_NUM},2026-11-01T10:00:00Z,abc\n"));
    }
    let file = db.file_str("cdrs.csv");
    std::fs::write(&file, csv).unwrap();
    let rejects = db.file_str("rejects.csv");
    let (code, v) = db.run(&["cdr", "import", "--org", &o.id, &file, "--rejects", &rejects]);
    assert_eq!(code, 1, "nothing could be charged: {v}");
    assert_eq!(s(&v, "code"), "invalid_cdr");
    assert_eq!(arr(&v["rejected"]).len(), 1_000);
    assert_eq!(i(&v, "rejected_total"), 1_500);
    assert_eq!(v["rejected_by_code"]["invalid_cdr"], 1_500);
    let text = std::fs::read_to_string(&rejects).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1 + 1_500);
    assert!(lines[1].starts_with("2,'=cmd0,invalid_cdr,"), "{}", lines[1]);
    assert!(lines[1_500].starts_with("1501,'=cmd1499,"), "{}", lines[1_500]);
}

// ---------------------------------------------------------------------------
// 8. CDR import
// ---------------------------------------------------------------------------

#[test]
fn cdr_import_charges_good_rows_once() {
    let db = Db::new();
    let o = setup(&db);
    add_funds(&db, &o.id, "50", &o.card);
    db.ok(&["number", "add", "--org", &o.id, "--number", TOLL_FREE, "--kind", "toll_free"]);
    let csv = format!(
        "call_id,type,user,from,to,start_time,duration_seconds\n\
         r1,outbound,bob@contoso.com,{BOB_NUM},{UK_MOBILE},2026-11-01T10:00:00Z,120\n\
         r2,outbound,bob@contoso.com,{BOB_NUM},12345,2026-11-01T10:05:00Z,60\n\
         r3,outbound,bob@contoso.com,{BOB_NUM},{UK_MOBILE},yesterday,60\n\
         r4,outbound,bob@contoso.com,{BOB_NUM}\n\
         r5,outbound,nobody@contoso.com,{BOB_NUM},{UK_MOBILE},2026-11-01T10:10:00Z,60\n\
         r1,outbound,bob@contoso.com,{BOB_NUM},{UK_MOBILE},2026-11-01T10:00:00Z,120\n\
         tf1,toll_free_inbound,,{BOB_NUM},{TOLL_FREE},2026-11-01T11:00:00Z,300\n\
         r6,outbound,{bob},{BOB_NUM},{US_NUM},2026-11-01T12:00:00Z,60\n\
         r7,outbound,bob@contoso.com,{BOB_NUM},{UK_MOBILE},2026-11-03T10:00:00Z,60\n\
         r8,outbound,bob@contoso.com,{BOB_NUM},{UK_MOBILE},2026-11-01T10:00:00Z,abc\n",
        bob = o.bob
    );
    let file = db.file_str("cdrs.csv");
    std::fs::write(&file, csv).unwrap();
    let rejects = db.file_str("rejects.csv");
    let r = db.ok(&["cdr", "import", "--org", &o.id, &file, "--rejects", &rejects]);
    // r1 120 s UK mobile 0.18 + tf1 5 min x 0.044 = 0.22 + r6 1 min x 0.01 = 0.01.
    assert_eq!(i(&r, "rows"), 10, "{r}");
    assert_eq!(i(&r, "charged"), 3, "{r}");
    assert_eq!(i(&r, "duplicates"), 1, "{r}");
    assert_eq!(i(&r, "charge"), 18 + 22 + 1, "{r}");
    let rejected: Vec<(i64, String, String)> =
        arr(&r["rejected"]).iter().map(|p| (i(p, "line"), s(p, "call_id"), s(p, "code"))).collect();
    let expected: Vec<(i64, String, String)> = [
        (3, "r2", "invalid_phone_number"),
        (4, "r3", "invalid_time"),
        (5, "r4", "invalid_cdr"),
        (6, "r5", "call_denied"),
        (10, "r7", "invalid_time"),
        (11, "r8", "invalid_cdr"),
    ]
    .iter()
    .map(|(l, c, k)| (*l, c.to_string(), k.to_string()))
    .collect();
    assert_eq!(rejected, expected);
    let text = std::fs::read_to_string(&rejects).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "line,call_id,code,message");
    assert_eq!(lines.len(), 1 + expected.len(), "{text}");
    for ((line, id, code), row) in expected.iter().zip(&lines[1..]) {
        assert!(row.starts_with(&format!("{line},{id},{code},")), "{row} vs {line},{id},{code}");
    }
    let balance = 5000 - 41;
    assert_eq!(i(&db.credits(&o.id), "balance"), balance);
    let ledger = db.ledger(&o.id);
    for id in ["r1", "tf1", "r6"] {
        assert_eq!(
            ledger.iter().filter(|x| x["kind"] == "charge" && x["call_id"] == id).count(),
            1,
            "{id}: {ledger:?}"
        );
    }
    db.check(&o.id);

    // The same file again: nothing more is charged.
    let r = db.ok(&["cdr", "import", "--org", &o.id, &file]);
    assert_eq!(i(&r, "charged"), 0, "{r}");
    assert_eq!(i(&r, "charge"), 0, "{r}");
    assert_eq!(i(&r, "duplicates"), 4, "{r}");
    assert_eq!(arr(&r["rejected"]).len(), expected.len());
    assert_eq!(i(&db.credits(&o.id), "balance"), balance);
    assert_eq!(db.ledger(&o.id), ledger);
    // A real-time call id already used is a duplicate too.
    db.out_call(&o.id, "live", &o.bob, BOB_NUM, US_NUM, 60);
    db.end(&o.id, "live", 60);
    let live = db.file_str("live.csv");
    std::fs::write(
        &live,
        format!(
            "call_id,type,user,from,to,start_time,duration_seconds\n\
             live,outbound,bob@contoso.com,{BOB_NUM},{US_NUM},2026-11-01T10:00:00Z,600\n"
        ),
    )
    .unwrap();
    let r = db.ok(&["cdr", "import", "--org", &o.id, &live]);
    assert_eq!((i(&r, "charged"), i(&r, "duplicates")), (0, 1), "{r}");

    // A wrong header is refused as a whole.
    let bad = db.file_str("bad.csv");
    std::fs::write(&bad, "id,kind\nr9,outbound\n").unwrap();
    assert_eq!(db.fail(&["cdr", "import", "--org", &o.id, &bad]), "invalid_cdr");
    let missing = db.file_str("missing.csv");
    assert_eq!(db.fail(&["cdr", "import", "--org", &o.id, &missing]), "invalid_input");
    db.check(&o.id);
}

#[test]
fn cdr_import_of_only_bad_rows_prints_one_json_document() {
    let db = Db::new();
    let o = setup(&db);
    add_funds(&db, &o.id, "50", &o.card);
    let file = db.file_str("allbad.csv");
    std::fs::write(
        &file,
        format!(
            "call_id,type,user,from,to,start_time,duration_seconds\n\
             z1,outbound,bob@contoso.com,{BOB_NUM},12345,2026-11-01T10:05:00Z,60\n"
        ),
    )
    .unwrap();
    // `run` panics unless stdout is exactly one JSON document.
    let (code, v) = db.run(&["cdr", "import", "--org", &o.id, &file]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(s(&v, "code"), "invalid_cdr");
    assert_eq!(i(&db.credits(&o.id), "balance"), 5000);
}

// ---------------------------------------------------------------------------
// 9. Rate decks
// ---------------------------------------------------------------------------

#[test]
fn rates_import_replaces_the_deck_and_rejects_malformed_decks() {
    let db = Db::new();
    let o = setup(&db);
    add_funds(&db, &o.id, "50", &o.card);
    let quote = |to: &str| db.ok(&["rate", "--org", &o.id, "--user", &o.bob, "--from", BOB_NUM, "--to", to]);
    assert_eq!(s(&quote(US_NUM), "rate_per_minute"), "0.0100");
    let deck = db.file_str("deck.csv");
    std::fs::write(
        &deck,
        "prefix,name,connection_fee,rate_per_minute,increment_seconds,premium\n\
         1,NANP custom,0.05,0.2000,60,no\n\
         44,UK custom,0.00,0.3000,30,no\n",
    )
    .unwrap();
    let r = db.ok(&["rates", "import", &deck, "--kind", "outbound", "--currency", "USD"]);
    assert_eq!(i(&r, "entries"), 2, "{r}");
    let q = quote(US_NUM);
    assert_eq!(s(&q, "rate_per_minute"), "0.2000", "{q}");
    assert_eq!(i(&q, "connection_fee"), 5);
    assert_eq!(i(&q, "increment_seconds"), 60);
    assert_eq!(s(&quote(UK_MOBILE), "rate_per_minute"), "0.3000");
    // Germany is not in the new deck.
    assert_eq!(s(&quote(DE_NUM), "decision"), "deny");
    // 90 s -> 2 minutes x 0.20 + 0.05 = 0.45.
    db.out_call(&o.id, "c1", &o.bob, BOB_NUM, US_NUM, 300);
    assert_eq!(i(&db.end(&o.id, "c1", 90), "charge"), 45);

    let bad_decks = [
        "prefix,name,connection_fee,rate_per_minute,increment_seconds,premium\n\
         1,NANP,0.05,abc,60,no\n",
        "prefix,name,connection_fee,rate_per_minute,increment_seconds,premium\n\
         1,NANP,0.05,-0.10,60,no\n",
        "prefix,name,connection_fee,rate_per_minute,increment_seconds,premium\n",
        "hello\n",
        "prefix,name,connection_fee,rate_per_minute,increment_seconds,premium\n\
         1,NANP,0.05\n",
    ];
    for (n, text) in bad_decks.iter().enumerate() {
        let path = db.file_str(&format!("bad{n}.csv"));
        std::fs::write(&path, text).unwrap();
        assert_eq!(db.fail(&["rates", "import", &path, "--currency", "USD"]), "invalid_rate_deck", "{text}");
    }
    assert_eq!(db.fail(&["rates", "import", &deck, "--currency", "XXX"]), "invalid_currency");
    assert_eq!(db.fail(&["rates", "import", &deck, "--currency", "USD", "--kind", "nope"]), "invalid_input");
    // The imported deck stays in force.
    let q = quote(US_NUM);
    assert_eq!(s(&q, "rate_per_minute"), "0.2000", "{q}");
    assert_eq!(i(&q, "connection_fee"), 5);
    db.check(&o.id);
}

// ---------------------------------------------------------------------------
// 10. Ledger pagination
// ---------------------------------------------------------------------------

#[test]
fn ledger_pages_follow_the_cursor() {
    let db = Db::new();
    let o = setup(&db);
    for _ in 0..3 {
        add_funds(&db, &o.id, "50", &o.card);
    }
    for n in 0..4 {
        let id = format!("c{n}");
        db.out_call(&o.id, &id, &o.bob, BOB_NUM, UK_MOBILE, 60);
        db.end(&o.id, &id, 60);
    }
    let all = db.ok(&["ledger", "--org", &o.id]);
    assert!(all["next_cursor"].is_null(), "{all}");
    let all = arr(&all["entries"]);
    assert_eq!(all.len(), 7);
    let seqs: Vec<i64> = all.iter().map(|e| i(e, "seq")).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let mut balance = 0;
    for e in &all {
        balance += i(e, "amount");
        assert_eq!(i(e, "balance_after"), balance, "{e}");
        assert_eq!(s(e, "currency"), "USD");
    }
    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut args = vec!["ledger", "--org", &o.id, "--limit", "2"];
        if let Some(a) = &after {
            args.extend(["--after", a.as_str()]);
        }
        let page = db.ok(&args);
        let entries = arr(&page["entries"]);
        assert!(entries.len() <= 2);
        pages += 1;
        paged.extend(entries);
        match page["next_cursor"].as_str() {
            Some(c) => after = Some(c.to_string()),
            None => break,
        }
        assert!(pages < 10, "the cursor does not advance");
    }
    assert_eq!(pages, 4);
    assert_eq!(paged, all);
    assert_eq!(db.fail(&["ledger", "--org", &o.id, "--after", "garbage"]), "invalid_input");
    assert_eq!(db.fail(&["ledger", "--org", &o.id, "--limit", "0"]), "invalid_input");
    db.check(&o.id);
}

// ---------------------------------------------------------------------------
// 12. Demo, text output and exit codes
// ---------------------------------------------------------------------------

/// `demo` on a fresh database, with the clock at `now`: a month of traffic that shows
/// a failed recharge on an expired card and the balance running out.
fn demo_at(now: &str) {
    let db = Db::new();
    let r = db.ok_at(now, &["demo"]);
    assert!(i(&r, "calls") > 1000, "calls: {}", r["calls"]);
    let orders = arr(&r["orders"]);
    assert!(orders.iter().any(|o| o["status"] == "failed" && o["failure_reason"] == "expired_card"), "{orders:?}");
    let kinds = &r["notices_by_kind"];
    for k in ["recharge_failed", "recharge_succeeded", "balance_exhausted"] {
        assert!(kinds[k].as_i64().unwrap_or(0) >= 1, "{k} missing from {kinds} (denials: {})", r["denials_by_reason"]);
    }
    let org = s(&r, "org_id");
    assert_eq!(db.orders(&org).len(), orders.len());
    db.check(&org);
}

#[test]
fn demo_runs_a_month_of_traffic() {
    demo_at("2026-11-28T09:00:00Z");
}

#[test]
fn demo_shows_balance_exhausted_whatever_the_month() {
    demo_at(T0);
}

#[test]
fn text_output_and_exit_codes() {
    let db = Db::new();
    let o = setup(&db);
    let out = db.raw_at(T0, false, &["funds", "add", "--org", &o.id, "--amount", "50", "--payment-method", &o.card]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("50.00 USD"), "{text}");
    let out = db.raw_at(T0, false, &["credits", "show", "--org", &o.id]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("balance") && text.contains("50.00 USD"), "{text}");
    // Errors: the code on stderr, status 1, nothing on stdout.
    let out = db.raw_at(T0, false, &["funds", "add", "--org", &o.id, "--amount", "5", "--payment-method", &o.card]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("below_minimum_purchase"));
    // A command-line mistake is status 2.
    let out = db.raw_at(T0, true, &["funds", "add", "--org", &o.id]);
    assert_eq!(out.status.code(), Some(2));
    // A bad --now is an invalid_time error.
    let (code, v) = db.run_at("tomorrow", &["credits", "show", "--org", &o.id]);
    assert_eq!((code, s(&v, "code")), (1, "invalid_time".into()));
    db.check(&o.id);
}

#[test]
fn a_reader_that_stops_early_is_not_a_crash() {
    // `commcredits demo | head -1`: the pipe closes before the output is written.
    let db = Db::new();
    let mut c = Command::new(BIN);
    c.arg("--db").arg(&db.url).arg("demo").env_remove("COMMCREDITS_DB").env_remove("COMMCREDITS_NOW");
    let mut child = c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("run commcredits");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait for commcredits");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}
