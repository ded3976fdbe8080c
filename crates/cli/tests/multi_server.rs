//! Three `commcredits serve` processes on one PostgreSQL database, concurrent call
//! traffic for one organization through all three, then one server killed with
//! SIGKILL mid-load: no overspend, one recharge per threshold crossing, nothing
//! acknowledged lost, the killed server's open reservations expire and settle, and
//! the survivors keep serving.
//!
//! Needs PostgreSQL: `DATABASE_URL` (default postgres://postgres@127.0.0.1:5432/test);
//! the test makes its own database and fails, never skips, when it cannot.

mod common;

use commcredits_engine::Engine;
use common::{base_url, cli, post, start_server, Server};
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[test]
fn three_servers_share_one_database_and_survive_a_kill() {
    let database = commcredits_store::postgres::test_database(&base_url())
        .unwrap_or_else(|e| panic!("PostgreSQL is needed (set DATABASE_URL, default {}): {e}", base_url()));
    let db = database.url().to_string();
    // One organization, one caller with credits, an EA for recharges.
    let org = cli(&db, &["org", "create", "--name", "Multi", "--currency", "USD", "--country", "GB"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    for sku in ["phone_system", "communications_credits"] {
        cli(&db, &["subscription", "add", "--org", &org, "--sku", sku, "--quantity", "1"]);
    }
    cli(&db, &["user", "create", "--org", &org, "--upn", "bob@multi.example", "--name", "Bob", "--location", "GB"]);
    cli(
        &db,
        &[
            "license",
            "set",
            "--org",
            &org,
            "--user",
            "bob@multi.example",
            "--sku",
            "phone_system",
            "--sku",
            "communications_credits",
        ],
    );
    let pm = cli(&db, &["payment-method", "add", "--org", &org, "--ea", "EA-1"])["id"].as_str().unwrap().to_string();
    // 100.00 of funds, 50.00 recharges below 90.00: two-minute calls at 0.09/min (0.18
    // each) cross the threshold several times during the run.
    cli(&db, &["funds", "add", "--org", &org, "--amount", "100", "--payment-method", &pm]);
    cli(
        &db,
        &[
            "auto-recharge",
            "set",
            "--org",
            &org,
            "--enabled",
            "true",
            "--amount",
            "50",
            "--threshold",
            "90",
            "--payment-method",
            &pm,
        ],
    );
    let key = cli(&db, &["keys", "create", "--role", "call_control"])["secret"].as_str().unwrap().to_string();

    let mut servers: Vec<Server> = (0..3).map(|_| start_server(&db)).collect();
    let addrs: Vec<String> = servers.iter().map(|s| s.addr.clone()).collect();
    let authorize = |call_id: &str, seconds: u32| {
        json!({"org_id": org, "call_id": call_id, "type": "outbound", "user_id": "bob@multi.example",
               "from": "+442079460000", "to": "+447400123456", "requested_seconds": seconds})
    };

    // Calls left open on the server that will be killed.
    let mut orphans = Vec::new();
    for i in 0..10 {
        let id = format!("orphan-{i}");
        let (status, v) = post(&addrs[2], "/v1/calls/authorize", &key, &authorize(&id, 5)).unwrap();
        assert_eq!((status, v["decision"].as_str()), (200, Some("allow")), "{v}");
        orphans.push(id);
    }

    // Traffic through all three servers from 12 threads.
    let killed = Arc::new(AtomicBool::new(false));
    let after_kill = Arc::new(AtomicUsize::new(0));
    let acknowledged: Arc<Mutex<Vec<(String, i64)>>> = Arc::default();
    let threads: Vec<_> = (0..12)
        .map(|t| {
            let (addrs, key, org, killed, after_kill, acknowledged) =
                (addrs.clone(), key.clone(), org.clone(), killed.clone(), after_kill.clone(), acknowledged.clone());
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(120);
                for i in 0..40 {
                    if Instant::now() > deadline {
                        break;
                    }
                    let id = format!("t{t}-{i}");
                    let body = json!({"org_id": org, "call_id": id, "type": "outbound", "user_id": "bob@multi.example",
                                      "from": "+442079460000", "to": "+447400123456", "requested_seconds": 120});
                    // Server 3 may be gone: fall over to the next one, as a call control would.
                    let was_killed = killed.load(Ordering::SeqCst);
                    let mut answer = None;
                    for k in 0..3 {
                        let addr = &addrs[(t + i + k) % 3];
                        if let Ok((200, v)) = post(addr, "/v1/calls/authorize", &key, &body) {
                            answer = Some((addr.clone(), v));
                            break;
                        }
                    }
                    let Some((_, v)) = answer else { continue };
                    if v["decision"] != "allow" {
                        continue;
                    }
                    let end = json!({"org_id": org, "duration_seconds": 120});
                    for k in 0..3 {
                        let addr = &addrs[(t + i + k + 1) % 3];
                        if let Ok((200, e)) = post(addr, &format!("/v1/calls/{id}/end"), &key, &end) {
                            acknowledged.lock().unwrap().push((id.clone(), e["charge"].as_i64().unwrap()));
                            if was_killed {
                                after_kill.fetch_add(1, Ordering::SeqCst);
                            }
                            break;
                        }
                    }
                }
            })
        })
        .collect();
    // Kill server 3 mid-load.
    let start = Instant::now();
    while acknowledged.lock().unwrap().len() < 150 && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(20));
    }
    servers[2].child.kill().unwrap();
    servers[2].child.wait().unwrap();
    killed.store(true, Ordering::SeqCst);
    for th in threads {
        th.join().unwrap();
    }
    assert!(after_kill.load(Ordering::SeqCst) > 0, "the survivors must keep serving");

    // The orphans' reservations expire (5 s + 2 s grace) and the survivors settle them.
    let engine = Engine::open(&db).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let c = engine.credits(&org).unwrap();
        assert!(c.available >= 0);
        if c.reserved == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "open reservations were never settled: {c:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
    let books = engine.check_books(&org).unwrap_or_else(|e| panic!("{e}"));
    assert!(books.available >= 0);

    // Nothing acknowledged is lost: every answered end has its CDR with that charge.
    let cdrs =
        engine.cdrs(&org, "2000-01-01T00:00:00Z".parse().unwrap(), "2100-01-01T00:00:00Z".parse().unwrap()).unwrap();
    let by_id: std::collections::HashMap<&str, i64> =
        cdrs.iter().map(|c| (c.call_id.as_str(), c.charge_minor)).collect();
    let acknowledged = acknowledged.lock().unwrap();
    assert!(acknowledged.len() >= 150);
    for (id, charge) in acknowledged.iter() {
        assert_eq!(by_id.get(id.as_str()), Some(charge), "acknowledged call {id} lost or changed");
    }
    for id in &orphans {
        assert!(by_id.contains_key(id.as_str()), "orphan {id} was not settled");
    }
    assert_eq!(cdrs.iter().map(|c| c.charge_minor).sum::<i64>(), books.charges);

    // One recharge per crossing: no order is placed while the previous one is pending.
    let mut recharges: Vec<_> =
        engine.orders(&org).unwrap().into_iter().filter(|o| o.kind == "auto_recharge").collect();
    recharges.sort_by(|a, b| a.created_at.cmp(&b.created_at));
    assert!(recharges.len() >= 2, "the traffic crosses the threshold more than once: {recharges:?}");
    for w in recharges.windows(2) {
        let done = w[0].completed_at.clone().expect("completed");
        assert!(w[1].created_at >= done, "two recharges for one crossing: {w:?}");
    }
    assert!(recharges.iter().all(|o| o.status == "succeeded"));
    eprintln!(
        "{} calls acknowledged ({} after the kill), {} orphans settled, {} recharges, charges {}, balance {}",
        acknowledged.len(),
        after_kill.load(Ordering::SeqCst),
        orphans.len(),
        recharges.len(),
        books.charges,
        books.balance
    );
    for mut s in servers.into_iter().take(2) {
        let _ = s.child.kill();
        let _ = s.child.wait();
    }
}
