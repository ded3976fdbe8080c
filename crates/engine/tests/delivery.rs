//! Notices reach people: every kind arrives once by e-mail (a real SMTP server,
//! Debian's python3-aiosmtpd) and by signed webhook; an SMTP outage loses nothing;
//! failures are retried with backoff and then marked failed.

mod common;
use commcredits_core::Timestamp;
use commcredits_engine::delivery::{self, Delivery, Email, Mailer, RetryPolicy, SmtpMailer, WebhookSender};
use commcredits_engine::payments::CardInput;
use commcredits_engine::{Command, Engine};
use common::*;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command as Process, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The engine of these tests: with a secret key (webhook secrets are sealed).
fn engine() -> Engine {
    let mut e = common::engine();
    e.config.secret_key = Some(test_key());
    e
}

fn test_key() -> delivery::SecretKey {
    delivery::SecretKey::parse(&"7c".repeat(32)).unwrap()
}

/// Real HTTP webhooks that may reach this machine (`--allow-private-webhooks`).
fn local_delivery() -> Delivery {
    Delivery { webhooks: Arc::new(delivery::HttpWebhooks::new(true)), ..Delivery::new(None, "x") }
}

#[derive(Default)]
struct FakeMail {
    sent: Mutex<Vec<Email>>,
    down: AtomicBool,
}

impl Mailer for FakeMail {
    fn send(&self, email: &Email) -> Result<(), String> {
        if self.down.load(Ordering::SeqCst) {
            return Err("connection refused".into());
        }
        self.sent.lock().unwrap().push(email.clone());
        Ok(())
    }
}

/// A POST as the fake sender saw it: URL, headers, body.
type Posted = (String, Vec<(String, String)>, String);

#[derive(Default)]
struct FakeHooks {
    posted: Mutex<Vec<Posted>>,
}

impl WebhookSender for FakeHooks {
    fn post(&self, url: &str, headers: &[(String, String)], body: &str) -> Result<(), String> {
        self.posted.lock().unwrap().push((url.into(), headers.to_vec(), body.into()));
        Ok(())
    }
}

fn quick_retry() -> RetryPolicy {
    RetryPolicy {
        first_delay: Duration::from_secs(10),
        max_delay: Duration::from_secs(60),
        max_attempts: 3,
        lease: Duration::from_secs(5),
    }
}

/// Drives an organization through one event of every notice kind; returns the time after.
fn every_notice(e: &Engine, o: &Org, start: Timestamp) -> Timestamp {
    let now = start;
    // balance_exhausted: a call refused for lack of funds.
    auth(e, now, &o.id, "broke", "outbound", Some(&o.bob), "+442079460000", "+14155550100", None);
    // low_balance: a warning level above what is left after the next calls.
    e.apply_one(
        now,
        Command::UpdateOrg {
            org: o.id.clone(),
            emails: None,
            low_balance: Some(Some("60".into())),
            suspended: None,
            disabled_notices: None,
        },
    )
    .unwrap();
    // A purchase made 11.5 months ago: funds_expiring when jobs run.
    e.purchase(&o.id, "50", &o.card, None, Some(t("2025-11-20T12:00:00Z")), now).unwrap();
    e.run_jobs(now).unwrap();
    // recharge_succeeded: auto-recharge below 45.00, crossed by a 10-minute UK mobile call.
    e.apply_one(
        now,
        Command::SetAutoRecharge {
            org: o.id.clone(),
            enabled: true,
            amount: Some("50".into()),
            threshold: Some("45".into()),
            payment_method_id: Some(o.card.clone()),
        },
    )
    .unwrap();
    auth(e, now, &o.id, "mob", "outbound", Some(&o.bob), "+442079460000", "+447400123456", Some(3600));
    end(e, now, &o.id, "mob", 3600);
    // recharge_failed: a card expired by the time of the next crossing.
    let token = e
        .gateway()
        .tokenize_card(
            &CardInput { number: "5555555555554444".into(), exp_month: 11, exp_year: 2026, holder: "x".into() },
            now,
        )
        .unwrap();
    let short = created(e.apply_one(now, Command::AddCard { org: o.id.clone(), token, holder: None }).unwrap());
    let later = t("2026-12-02T09:00:00Z");
    let bal = e.credits(&o.id).unwrap().available;
    e.apply_one(
        now,
        Command::SetAutoRecharge {
            org: o.id.clone(),
            enabled: true,
            amount: Some("50".into()),
            threshold: Some(format!("{}.{:02}", bal / 100, bal % 100)),
            payment_method_id: Some(short),
        },
    )
    .unwrap();
    auth(e, later, &o.id, "late", "outbound", Some(&o.bob), "+442079460000", "+447400123456", Some(60));
    end(e, later, &o.id, "late", 60);
    // pool_threshold: Ada and Cy's US domestic pool (6000 minutes) past 80%.
    for (i, m) in [1440u32, 1440, 1440, 600].into_iter().enumerate() {
        let id = format!("pool{i}");
        auth(e, later, &o.id, &id, "outbound", Some(&o.cy), "+14155550100", "+12125550199", Some(m * 60));
        end(e, later, &o.id, &id, m * 60);
    }
    e.run_jobs(later).unwrap();
    later
}

fn kinds(e: &Engine, org: &str) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for n in e.notices(org).unwrap() {
        *m.entry(n.kind).or_insert(0) += 1;
    }
    m
}

#[test]
fn every_notice_goes_out_once_by_email_and_signed_webhook() {
    let e = engine();
    let start = t("2026-11-02T09:00:00Z");
    let o = setup(&e, start);
    let hook = match e
        .apply_one(start, Command::AddWebhook { org: o.id.clone(), url: "https://hooks.example/cc".into() })
        .unwrap()
    {
        commcredits_engine::Outcome::Webhook(w) => w,
        other => panic!("{other:?}"),
    };
    let now = every_notice(&e, &o, start);
    let k = kinds(&e, &o.id);
    for kind in commcredits_engine::notices::KINDS {
        assert!(k.get(kind).copied().unwrap_or(0) >= 1, "no {kind} notice: {k:?}");
    }
    let mail = Arc::new(FakeMail::default());
    let hooks = Arc::new(FakeHooks::default());
    let d = Delivery {
        mailer: Some(mail.clone()),
        webhooks: hooks.clone(),
        public_url: "https://cc.example".into(),
        retry: quick_retry(),
        limits: Default::default(),
    };
    let r = e.deliver_due(now, &d).unwrap();
    let notices = e.notices(&o.id).unwrap();
    assert_eq!(r.sent, 2 * notices.len(), "{r:?}");
    // Nothing is sent twice.
    assert_eq!(e.deliver_due(now + jiff::SignedDuration::from_hours(2), &d).unwrap().sent, 0);
    let sent = mail.sent.lock().unwrap();
    assert_eq!(sent.len(), notices.len());
    for n in &notices {
        assert_eq!(n.status, "sent", "{n:?}");
        let m: Vec<_> = sent.iter().filter(|m| m.message_id == format!("<{}@commcredits>", n.id)).collect();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].to, vec!["billing@contoso.com".to_string()]);
        assert!(m[0].text.contains("https://cc.example/admin"), "{}", m[0].text);
        // HTML-escaped in the page (/ as &#x2f;): the host and the link text are there.
        assert!(m[0].html.contains("cc.example") && m[0].html.contains("Open the admin center"), "{}", m[0].html);
    }
    let failed = sent.iter().find(|m| m.subject.contains("recharge failed")).unwrap();
    assert!(failed.text.contains("expired_card") && failed.text.contains("50.00 USD"), "{}", failed.text);
    let pool = sent.iter().find(|m| m.subject.contains("minute pool")).unwrap();
    assert!(pool.text.contains("80%") && pool.text.contains("domestic"), "{}", pool.text);
    let expiring = sent.iter().find(|m| m.subject.contains("expire")).unwrap();
    assert!(expiring.text.contains("2026-11-20"), "{}", expiring.text);
    // Webhooks: one signed POST per notice, verifiable with the secret.
    let posted = hooks.posted.lock().unwrap();
    assert_eq!(posted.len(), notices.len());
    for (url, headers, body) in posted.iter() {
        assert_eq!(url, "https://hooks.example/cc");
        let sig = &headers.iter().find(|(k, _)| k == delivery::SIGNATURE_HEADER).unwrap().1;
        assert!(delivery::verify(&hook.secret, sig, body, now.as_second(), 300));
        assert!(!delivery::verify(&hook.secret, sig, &body.replacen("\"id\"", "\"Id\"", 1), now.as_second(), 300));
    }
    assert!(e.deliveries(&o.id).unwrap().iter().all(|d| d.status == "sent" && d.attempts == 1));
}

#[test]
fn outages_are_retried_with_backoff_then_marked_failed() {
    let e = engine();
    let now = t("2026-11-02T09:00:00Z");
    let o = setup(&e, now);
    auth(&e, now, &o.id, "broke", "outbound", Some(&o.bob), "+442079460000", "+14155550100", None);
    let mail = Arc::new(FakeMail::default());
    mail.down.store(true, Ordering::SeqCst);
    let d = Delivery {
        mailer: Some(mail.clone()),
        webhooks: Arc::new(FakeHooks::default()),
        public_url: "x".into(),
        retry: quick_retry(),
        limits: Default::default(),
    };
    let r = e.deliver_due(now, &d).unwrap();
    assert_eq!((r.sent, r.retrying), (0, 1));
    let first = e.deliveries(&o.id).unwrap().remove(0);
    assert_eq!((first.attempts, first.last_error.as_deref()), (1, Some("connection refused")));
    // Not before the backoff (10 s ± 20%).
    assert_eq!(e.deliver_due(now + jiff::SignedDuration::from_secs(7), &d).unwrap().retrying, 0);
    assert_eq!(e.deliver_due(now + jiff::SignedDuration::from_secs(13), &d).unwrap().retrying, 1);
    // The third attempt is the last: failed, and visible.
    let r = e.deliver_due(now + jiff::SignedDuration::from_secs(60), &d).unwrap();
    assert_eq!(r.failed, 1);
    let last = e.deliveries(&o.id).unwrap().remove(0);
    assert_eq!((last.status.as_str(), last.attempts), ("failed", 3));
    assert_eq!(e.notices(&o.id).unwrap()[0].status, "failed");
    mail.down.store(false, Ordering::SeqCst);
    assert_eq!(e.deliver_due(now + jiff::SignedDuration::from_hours(3), &d).unwrap().sent, 0);
    assert!(mail.sent.lock().unwrap().is_empty());
}

#[test]
fn settings_turn_kinds_off_and_without_a_mailer_notices_wait() {
    let e = engine();
    let now = t("2026-11-02T09:00:00Z");
    let o = setup(&e, now);
    e.apply_one(
        now,
        Command::UpdateOrg {
            org: o.id.clone(),
            emails: None,
            low_balance: None,
            suspended: None,
            disabled_notices: Some(vec!["balance_exhausted".into()]),
        },
    )
    .unwrap();
    let err = e
        .apply_one(
            now,
            Command::UpdateOrg {
                org: o.id.clone(),
                emails: None,
                low_balance: None,
                suspended: None,
                disabled_notices: Some(vec!["nope".into()]),
            },
        )
        .unwrap_err();
    assert_eq!(err.code, commcredits_core::ErrorCode::InvalidInput);
    auth(&e, now, &o.id, "broke", "outbound", Some(&o.bob), "+442079460000", "+14155550100", None);
    // The notice is kept (shown), but nothing is sent for a kind turned off.
    assert_eq!(e.notices(&o.id).unwrap().len(), 1);
    assert!(e.deliveries(&o.id).unwrap().is_empty());
    let s = e.notification_settings(&o.id).unwrap();
    assert!(!s.enabled_notices.contains(&"balance_exhausted".to_string()) && s.enabled_notices.len() == 5);
    // Without --smtp-url, e-mail deliveries wait rather than fail.
    e.apply_one(
        now,
        Command::UpdateOrg {
            org: o.id.clone(),
            emails: None,
            low_balance: Some(Some("100".into())),
            suspended: None,
            disabled_notices: Some(vec![]),
        },
    )
    .unwrap();
    e.purchase(&o.id, "50", &o.card, None, None, now).unwrap();
    let d = Delivery::new(None, "x");
    assert_eq!(e.deliver_due(now, &d).unwrap(), delivery::DeliveryReport::default());
    assert!(e.deliveries(&o.id).unwrap().iter().all(|d| d.status == "pending" && d.attempts == 0));
}

// ----------------------------------------------------------------- a real SMTP server

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Smtpd {
    child: Child,
    maildir: tempfile::TempDir,
}

impl Smtpd {
    fn start(port: u16) -> Smtpd {
        let maildir = tempfile::tempdir().unwrap();
        let child = Process::new("/usr/bin/python3")
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}"), "-c", "aiosmtpd.handlers.Mailbox"])
            .arg(maildir.path().join("mail"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3-aiosmtpd is needed (apt-get install python3-aiosmtpd; .ci/run installs it)");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "aiosmtpd did not start on port {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Smtpd { child, maildir }
    }

    /// The raw messages received so far.
    fn messages(&self) -> Vec<String> {
        let dir = self.maildir.path().join("mail").join("new");
        let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
        entries.map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap()).collect()
    }
}

impl Drop for Smtpd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn header<'a>(raw: &'a str, name: &str) -> Option<&'a str> {
    raw.lines().find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(": ")))
}

#[test]
fn a_real_smtp_server_receives_each_notice_once_even_after_an_outage() {
    let e = engine();
    let start = t("2026-11-02T09:00:00Z");
    let o = setup(&e, start);
    let now = every_notice(&e, &o, start);
    let port = free_port();
    let mailer =
        Arc::new(SmtpMailer::new(&format!("smtp://127.0.0.1:{port}"), "commcredits <noreply@cc.example>").unwrap());
    let d = Delivery {
        mailer: Some(mailer),
        webhooks: Arc::new(FakeHooks::default()),
        public_url: "https://cc.example".into(),
        retry: quick_retry(),
        limits: Default::default(),
    };
    // The SMTP server is down while the events happen and at the first attempt.
    let r = e.deliver_due(now, &d).unwrap();
    let n = e.notices(&o.id).unwrap().len();
    assert_eq!((r.sent, r.retrying), (0, n), "{r:?}");
    // It comes up; after the backoff everything queued arrives exactly once.
    let smtpd = Smtpd::start(port);
    let r = e.deliver_due(now + jiff::SignedDuration::from_secs(20), &d).unwrap();
    assert_eq!(r.sent, n, "{r:?}");
    assert_eq!(e.deliver_due(now + jiff::SignedDuration::from_hours(1), &d).unwrap().sent, 0);
    let got = smtpd.messages();
    assert_eq!(got.len(), n);
    let mut ids = std::collections::BTreeSet::new();
    for raw in &got {
        assert!(ids.insert(header(raw, "Message-ID").unwrap().to_string()), "duplicate message");
        assert_eq!(header(raw, "To"), Some("billing@contoso.com"));
        assert!(raw.contains("text/plain") && raw.contains("text/html"));
    }
    let subjects: Vec<&str> = got.iter().filter_map(|r| header(r, "Subject")).collect();
    for needle in ["recharged", "recharge failed", "exhausted", "minute pool", "low", "expire"] {
        assert!(subjects.iter().any(|s| s.contains(needle)), "no e-mail about '{needle}': {subjects:?}");
    }
    let failed = got.iter().find(|r| header(r, "Subject").is_some_and(|s| s.contains("recharge failed"))).unwrap();
    assert!(failed.contains("expired_card"), "{failed}");
}

// ----------------------------------------------------------------- a real webhook receiver

/// A receiver that verifies signatures: 204 when valid, 400 otherwise.
fn receiver(secret: Arc<Mutex<String>>, log: Arc<Mutex<Vec<(u16, String)>>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(50) {
            let Ok(mut s) = stream else { continue };
            let mut reader = BufReader::new(s.try_clone().unwrap());
            let mut len = 0usize;
            let mut sig = String::new();
            let mut line = String::new();
            loop {
                line.clear();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                if lower.starts_with(&delivery::SIGNATURE_HEADER.to_ascii_lowercase()) {
                    sig = line.split_once(':').unwrap().1.trim().to_string();
                }
            }
            let mut body = vec![0u8; len];
            reader.read_exact(&mut body).unwrap();
            let body = String::from_utf8(body).unwrap();
            let ok = delivery::verify(&secret.lock().unwrap(), &sig, &body, Timestamp::now().as_second(), 300);
            let status = if ok { 204 } else { 400 };
            log.lock().unwrap().push((status, body));
            let _ = write!(s, "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    addr
}

#[test]
fn webhooks_are_signed_and_a_tampered_body_is_rejected() {
    let e = engine();
    let now = Timestamp::now();
    let o = setup(&e, now);
    let secret = Arc::new(Mutex::new(String::new()));
    let log = Arc::new(Mutex::new(Vec::new()));
    let addr = receiver(secret.clone(), log.clone());
    let w = match e
        .apply_one(now, Command::AddWebhook { org: o.id.clone(), url: format!("http://{addr}/hook") })
        .unwrap()
    {
        commcredits_engine::Outcome::Webhook(w) => w,
        other => panic!("{other:?}"),
    };
    *secret.lock().unwrap() = w.secret.clone();
    // The receiver is on loopback: allowed by the option tests and closed networks use.
    let d = local_delivery();
    // The test event over real HTTP.
    e.test_webhook(&o.id, &w.webhook.id, &delivery::HttpWebhooks::new(true), now).unwrap();
    // A real notice.
    auth(&e, now, &o.id, "broke", "outbound", Some(&o.bob), "+442079460000", "+14155550100", None);
    assert_eq!(e.deliver_due(now, &d).unwrap().sent, 1);
    let entries = log.lock().unwrap().clone();
    assert_eq!(entries.len(), 2);
    assert!(entries.iter().all(|(status, _)| *status == 204), "{entries:?}");
    assert!(entries[1].1.contains("balance_exhausted"));
    // The receiver rejects a body changed after signing: replay the signed delivery
    // with one word changed, as a man in the middle would.
    let body = entries[1].1.clone();
    let sig = delivery::sign(&w.secret, Timestamp::now().as_second(), &body);
    let tampered = body.replace("balance_exhausted", "recharge_succeeded");
    let send = |b: &str| {
        let mut s = TcpStream::connect(&addr).unwrap();
        write!(
            s,
            "POST /hook HTTP/1.1\r\nHost: {addr}\r\n{}: {sig}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{b}",
            delivery::SIGNATURE_HEADER,
            b.len()
        )
        .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        answer.split_whitespace().nth(1).unwrap().to_string()
    };
    assert_eq!(send(&body), "204");
    assert_eq!(send(&tampered), "400");
    // A wrong secret or a receiver that refuses: the test send says so.
    *secret.lock().unwrap() = "whsec_other".into();
    let err = e.test_webhook(&o.id, &w.webhook.id, &delivery::HttpWebhooks::new(true), now).unwrap_err();
    assert_eq!(err.code, commcredits_core::ErrorCode::WebhookFailed);
    assert_eq!(log.lock().unwrap().last().unwrap().0, 400);
}

#[test]
fn a_worker_that_dies_mid_send_leaves_the_delivery_to_the_next_after_its_lease() {
    let e = engine();
    let now = t("2026-11-02T09:00:00Z");
    let o = setup(&e, now);
    auth(&e, now, &o.id, "broke", "outbound", Some(&o.bob), "+442079460000", "+14155550100", None);
    let pending = e.deliveries(&o.id).unwrap().remove(0);
    // A worker claims it and dies before recording anything.
    let claimed = e
        .apply_one(
            now,
            Command::ClaimDelivery {
                org: o.id.clone(),
                delivery_id: pending.id.clone(),
                lease: Duration::from_secs(5),
            },
        )
        .unwrap();
    assert!(matches!(claimed, commcredits_engine::Outcome::Delivery(_)));
    let mail = Arc::new(FakeMail::default());
    let d = Delivery {
        mailer: Some(mail.clone()),
        webhooks: Arc::new(FakeHooks::default()),
        public_url: "x".into(),
        retry: quick_retry(),
        limits: Default::default(),
    };
    // While the lease holds, nobody else sends it.
    assert_eq!(e.deliver_due(now + jiff::SignedDuration::from_secs(4), &d).unwrap().sent, 0);
    // After it, the next worker does, once.
    assert_eq!(e.deliver_due(now + jiff::SignedDuration::from_secs(6), &d).unwrap().sent, 1);
    assert_eq!(e.deliver_due(now + jiff::SignedDuration::from_secs(60), &d).unwrap().sent, 0);
    assert_eq!(mail.sent.lock().unwrap().len(), 1);
}

// ----------------------------------------------------------------- outbound addresses

/// A receiver that answers every request with `answer` and logs each request line.
fn answering(answer: String) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let log = Arc::new(Mutex::new(Vec::new()));
    let seen = log.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(20) {
            let Ok(mut s) = stream else { continue };
            let mut reader = BufReader::new(s.try_clone().unwrap());
            let mut first = String::new();
            let _ = reader.read_line(&mut first);
            let mut len = 0usize;
            let mut line = String::new();
            loop {
                line.clear();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0u8; len];
            let _ = reader.read_exact(&mut body);
            seen.lock().unwrap().push(first.trim().to_string());
            let _ = s.write_all(answer.as_bytes());
        }
    });
    (addr, log)
}

fn add_hook(e: &Engine, now: Timestamp, org: &str, url: &str) -> commcredits_engine::views::NewWebhook {
    match e.apply_one(now, Command::AddWebhook { org: org.into(), url: url.into() }).unwrap() {
        commcredits_engine::Outcome::Webhook(w) => w,
        other => panic!("{other:?}"),
    }
}

#[test]
fn loopback_webhooks_are_refused_at_add_and_send_time_without_the_option() {
    let e = engine();
    let now = Timestamp::now();
    let o = setup(&e, now);
    let (addr, log) = answering("HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into());
    let strict = delivery::HttpWebhooks::default();
    let url = format!("http://{addr}/hook");
    // Add time: the check the API and the CLI run before the command.
    assert_eq!(strict.check(&url), Err(delivery::ADDRESS_REFUSED.to_string()));
    for bad in [
        "http://localhost:9/x",
        "http://[::1]:9/x",
        "http://[::ffff:127.0.0.1]:9/x",
        "http://169.254.169.254/latest/meta-data",
        "http://10.0.0.7/x",
        "http://user:pw@192.168.1.1/x",
    ] {
        assert_eq!(strict.check(bad), Err(delivery::ADDRESS_REFUSED.to_string()), "{bad}");
    }
    // Metadata stays refused even with private addresses allowed.
    assert!(delivery::HttpWebhooks::new(true).check("http://169.254.169.254/").is_err());
    assert!(delivery::HttpWebhooks::new(true).check(&url).is_ok());
    // Send time: a webhook stored earlier (or whose name now resolves to loopback) is
    // not sent; the receiver sees nothing and the error says why, generically.
    let w = add_hook(&e, now, &o.id, &url);
    auth(&e, now, &o.id, "broke", "outbound", Some(&o.bob), "+442079460000", "+14155550100", None);
    let d = Delivery { webhooks: Arc::new(strict), ..Delivery::new(None, "x") };
    assert_eq!(e.deliver_due(now, &d).unwrap().retrying, 1);
    let err = e.test_webhook(&o.id, &w.webhook.id, &*d.webhooks, now).unwrap_err();
    assert_eq!(err.code, commcredits_core::ErrorCode::WebhookFailed);
    assert!(log.lock().unwrap().is_empty(), "{:?}", log.lock().unwrap());
    let hook = e.deliveries(&o.id).unwrap().into_iter().find(|d| d.channel == "webhook").unwrap();
    assert_eq!(hook.last_error.as_deref(), Some(delivery::ADDRESS_REFUSED));
}

#[test]
fn redirects_are_not_followed_and_transport_errors_are_generic() {
    let e = engine();
    let now = Timestamp::now();
    let o = setup(&e, now);
    let (inner, inner_log) = answering("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".into());
    let (outer, outer_log) = answering(format!(
        "HTTP/1.1 302 Found\r\nLocation: http://{inner}/healthz\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    ));
    let redirecting = add_hook(&e, now, &o.id, &format!("http://{outer}/hook"));
    let d = local_delivery();
    let err = e.test_webhook(&o.id, &redirecting.webhook.id, &*d.webhooks, now).unwrap_err();
    assert!(err.message.contains("answered 302"), "{}", err.message);
    assert_eq!(outer_log.lock().unwrap().len(), 1);
    assert!(inner_log.lock().unwrap().is_empty(), "the redirect was followed: {:?}", inner_log.lock().unwrap());
    // A closed port and a port that answers garbage read the same: no oracle for
    // which internal ports are open.
    let closed = add_hook(&e, now, &o.id, &format!("http://127.0.0.1:{}/x", free_port()));
    let (garbage, _) = answering("SSH-2.0-OpenSSH_9.6\r\n".into());
    let talking = add_hook(&e, now, &o.id, &format!("http://{garbage}/x"));
    for w in [&closed, &talking] {
        let err = e.test_webhook(&o.id, &w.webhook.id, &*d.webhooks, now).unwrap_err();
        assert_eq!(err.message, format!("the endpoint did not accept the test event: {}", delivery::UNREACHABLE));
    }
}

#[test]
fn webhook_secrets_are_sealed_at_rest_and_clear_ones_keep_working() {
    let e = engine();
    let now = Timestamp::now();
    let o = setup(&e, now);
    let secret = Arc::new(Mutex::new(String::new()));
    let log = Arc::new(Mutex::new(Vec::new()));
    let addr = receiver(secret.clone(), log.clone());
    let w = add_hook(&e, now, &o.id, &format!("http://{addr}/new"));
    let stored = e.read(|tx| tx.get_webhook(&o.id, &w.webhook.id)).unwrap().unwrap();
    assert!(delivery::is_sealed(&stored.secret), "{}", stored.secret);
    assert!(!stored.secret.contains(&w.secret[6..]));
    *secret.lock().unwrap() = w.secret.clone();
    let d = local_delivery();
    e.test_webhook(&o.id, &w.webhook.id, &*d.webhooks, now).unwrap();
    // A sealed secret copied onto another webhook does not open there.
    let mut moved = stored.clone();
    moved.webhook_id = "other".into();
    assert!(delivery::webhook_secret(Some(&test_key()), &moved).is_err());
    // A secret written in clear before keys existed still signs, and is sealed on start.
    let legacy = commcredits_store::WebhookRow {
        org_id: o.id.clone(),
        webhook_id: "legacy".into(),
        url: format!("http://{addr}/old"),
        secret: "whsec_legacy".into(),
        created_at: now,
    };
    e.store()
        .write(&mut |tx| {
            tx.delete_webhook(&o.id, &w.webhook.id)?;
            tx.insert_webhook(&legacy)
        })
        .unwrap();
    *secret.lock().unwrap() = "whsec_legacy".into();
    e.test_webhook(&o.id, "legacy", &*d.webhooks, now).unwrap();
    assert_eq!(e.seal_webhook_secrets().unwrap(), 1);
    assert_eq!(e.seal_webhook_secrets().unwrap(), 0);
    let resealed = e.read(|tx| tx.get_webhook(&o.id, "legacy")).unwrap().unwrap();
    assert!(delivery::is_sealed(&resealed.secret) && !resealed.secret.contains("legacy"));
    e.test_webhook(&o.id, "legacy", &*d.webhooks, now).unwrap();
    assert!(log.lock().unwrap().iter().all(|(status, _)| *status == 204));
    // Without a key no webhook can be added.
    let keyless = common::engine();
    let o2 = setup(&keyless, now);
    let err =
        keyless.apply_one(now, Command::AddWebhook { org: o2.id, url: "https://h.example/x".into() }).unwrap_err();
    assert!(err.message.contains("--secret-key"), "{}", err.message);
}

#[test]
fn a_replayed_answer_never_shows_a_secret_again() {
    let e = engine();
    let now = t("2026-11-02T09:00:00Z");
    let o = setup(&e, now);
    let idem = |key: &str, inner: Command| Command::Idempotent {
        org: o.id.clone(),
        key: key.into(),
        fingerprint: "f".into(),
        conflict: commcredits_core::ErrorCode::IdempotencyKeyReused,
        inner: Box::new(inner),
        keep: commcredits_engine::Keep::Answer,
    };
    let add = || Command::AddWebhook { org: o.id.clone(), url: "https://hooks.example/x".into() };
    let first = add_secret(e.apply_one(now, idem("k1", add())).unwrap());
    let id = e.webhooks(&o.id).unwrap()[0].id.clone();
    e.apply_one(now, Command::DeleteWebhook { org: o.id.clone(), webhook_id: id }).unwrap();
    let replay = e.apply_one(now, idem("k1", add())).unwrap();
    let commcredits_engine::Outcome::Replayed { status, body } = replay else { panic!("{replay:?}") };
    assert_eq!(status, 201);
    assert!(body["secret"].is_null() && body["secret_note"].as_str().unwrap().contains("not shown again"), "{body}");
    assert!(!body.to_string().contains(&first));
    // The same for an API key shown once.
    let key = e
        .apply_one(
            now,
            idem("k2", Command::CreateKey { org: Some(o.id.clone()), role: "admin".into(), name: "x".into() }),
        )
        .unwrap();
    let commcredits_engine::Outcome::Key(k) = key else { panic!("{key:?}") };
    let stored = e.read(|tx| tx.get_idempotency(&o.id, "k2")).unwrap().unwrap();
    assert!(!stored.body.contains(&k.secret), "{}", stored.body);
    let stored = e.read(|tx| tx.get_idempotency(&o.id, "k1")).unwrap().unwrap();
    assert!(!stored.body.contains(&first) && !stored.body.contains("whsec_"), "{}", stored.body);
}

fn add_secret(o: commcredits_engine::Outcome) -> String {
    match o {
        commcredits_engine::Outcome::Webhook(w) => w.secret,
        other => panic!("{other:?}"),
    }
}

// ----------------------------------------------------------------- fair, concurrent rounds

/// Records every POST; those to URLs containing "slow" wait until `open`.
#[derive(Default)]
struct GatedHooks {
    posted: Mutex<Vec<String>>,
    open: Mutex<bool>,
    opened: std::sync::Condvar,
}

impl WebhookSender for GatedHooks {
    fn post(&self, url: &str, _headers: &[(String, String)], _body: &str) -> Result<(), String> {
        if url.contains("slow") {
            let mut open = self.open.lock().unwrap();
            while !*open {
                open = self.opened.wait(open).unwrap();
            }
        }
        self.posted.lock().unwrap().push(url.into());
        Ok(())
    }
}

fn refused_call(e: &Engine, now: Timestamp, o: &Org) {
    auth(e, now, &o.id, "broke", "outbound", Some(&o.bob), "+442079460000", "+14155550100", None);
}

#[test]
fn one_organizations_backlog_does_not_fill_a_round() {
    let e = engine();
    let start = t("2026-11-02T09:00:00Z");
    let busy = setup(&e, start);
    for i in 0..3 {
        add_hook(&e, start, &busy.id, &format!("https://busy.example/{i}"));
    }
    refused_call(&e, start, &busy);
    let later = start + jiff::SignedDuration::from_secs(1);
    let quiet = setup(&e, later);
    add_hook(&e, later, &quiet.id, "https://quiet.example/");
    refused_call(&e, later, &quiet);
    let hooks = Arc::new(FakeHooks::default());
    let limits = delivery::DeliveryLimits { per_round: 3, per_org_per_round: 2, ..Default::default() };
    let d = Delivery { webhooks: hooks.clone(), limits, ..Delivery::new(None, "x") };
    // Three due for the busy organization (older) and one for the quiet one: the round
    // takes two of the busy ones and the quiet one.
    assert_eq!(e.deliver_due(later, &d).unwrap().sent, 3);
    let posted: Vec<String> = hooks.posted.lock().unwrap().iter().map(|(u, _, _)| u.clone()).collect();
    assert!(posted.contains(&"https://quiet.example/".to_string()), "{posted:?}");
    assert_eq!(posted.iter().filter(|u| u.contains("busy")).count(), 2);
    assert_eq!(e.deliver_due(later, &d).unwrap().sent, 1);
}

#[test]
fn a_slow_endpoint_delays_only_its_own_organization() {
    let e = Arc::new(engine());
    let start = t("2026-11-02T09:00:00Z");
    let slow = setup(&e, start);
    add_hook(&e, start, &slow.id, "https://slow.example/");
    refused_call(&e, start, &slow);
    let later = start + jiff::SignedDuration::from_secs(1);
    let fast = setup(&e, later);
    add_hook(&e, later, &fast.id, "https://fast.example/");
    refused_call(&e, later, &fast);
    let hooks = Arc::new(GatedHooks::default());
    let d = Delivery { webhooks: hooks.clone(), ..Delivery::new(None, "x") };
    let round = {
        let (e, d) = (e.clone(), d.clone());
        std::thread::spawn(move || e.deliver_due(later, &d).unwrap())
    };
    // The slow organization's delivery is the older one and hangs; the other one is
    // sent meanwhile. (The deadline only keeps a failing run from hanging.)
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !hooks.posted.lock().unwrap().iter().any(|u| u.contains("fast")) {
        assert!(std::time::Instant::now() < deadline, "the fast organization waited behind the slow one");
        std::thread::sleep(Duration::from_millis(20));
    }
    *hooks.open.lock().unwrap() = true;
    hooks.opened.notify_all();
    assert_eq!(round.join().unwrap().sent, 2);
}

// ----------------------------------------------------------------- recharges

#[test]
fn re_arming_with_a_declined_card_places_one_failed_order_per_window() {
    let e = engine();
    let now = t("2026-11-02T09:00:00Z");
    let o = setup(&e, now);
    let token = e
        .gateway()
        .tokenize_card(
            &CardInput {
                number: commcredits_engine::payments::CARD_DECLINED.into(),
                exp_month: 12,
                exp_year: 2030,
                holder: "x".into(),
            },
            now,
        )
        .unwrap();
    let declined = created(e.apply_one(now, Command::AddCard { org: o.id.clone(), token, holder: None }).unwrap());
    let arm = |at: Timestamp| {
        e.apply_one(
            at,
            Command::SetAutoRecharge {
                org: o.id.clone(),
                enabled: true,
                amount: Some("50".into()),
                threshold: Some("10".into()),
                payment_method_id: Some(declined.clone()),
            },
        )
        .unwrap();
    };
    let failed =
        || e.orders(&o.id).unwrap().iter().filter(|x| x.kind == "auto_recharge" && x.status == "failed").count();
    let notices = || e.notices(&o.id).unwrap().iter().filter(|n| n.kind == "recharge_failed").count();
    for minute in 0..10 {
        arm(now + jiff::SignedDuration::from_mins(minute));
    }
    assert_eq!((failed(), notices()), (1, 1));
    // The settings were stored all the same.
    assert!(e.credits(&o.id).unwrap().auto_recharge.enabled);
    // After the window the latch, still armed, places the next order at the next change.
    arm(now + jiff::SignedDuration::from_mins(16));
    assert_eq!((failed(), notices()), (2, 2));
}

/// The sandbox, with charges that wait while `hold` is set.
#[derive(Default)]
struct SlowGateway {
    hold: Mutex<bool>,
    released: std::sync::Condvar,
    charges: Mutex<Vec<String>>,
}

impl commcredits_engine::payments::PaymentGateway for SlowGateway {
    fn tokenize_card(
        &self,
        card: &CardInput,
        now: Timestamp,
    ) -> commcredits_core::Result<commcredits_engine::payments::CardToken> {
        commcredits_engine::payments::SandboxGateway.tokenize_card(card, now)
    }

    fn charge(
        &self,
        order_id: &str,
        amount_minor: i64,
        currency: &str,
        method: &commcredits_store::PaymentMethodRow,
        now: Timestamp,
    ) -> Result<String, commcredits_engine::payments::PaymentFailure> {
        let mut hold = self.hold.lock().unwrap();
        while *hold {
            hold = self.released.wait(hold).unwrap();
        }
        drop(hold);
        self.charges.lock().unwrap().push(order_id.into());
        commcredits_engine::payments::SandboxGateway.charge(order_id, amount_minor, currency, method, now)
    }
}

impl SlowGateway {
    fn release(&self) {
        *self.hold.lock().unwrap() = false;
        self.released.notify_all();
    }
}

/// Runs `f` on another thread and answers its result, failing if it takes longer than
/// a generous deadline (a call stuck behind the gateway).
fn answered<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(f()));
    rx.recv_timeout(Duration::from_secs(30)).expect("the call waited for the payment gateway")
}

#[test]
fn a_slow_gateway_does_not_hold_up_call_control_and_the_order_lands_once() {
    let gateway = Arc::new(SlowGateway::default());
    let store = commcredits_store::sqlite::SqliteStore::open("sqlite::memory:").unwrap();
    let e = Arc::new(Engine::with_gateway(Arc::new(store), gateway.clone()).unwrap());
    e.start_order_worker();
    let now = t("2026-11-02T09:00:00Z");
    let o = setup(&e, now);
    *gateway.hold.lock().unwrap() = true;
    // Arming auto-recharge below the threshold places an order; the gateway hangs.
    let (e2, org, card) = (e.clone(), o.id.clone(), o.card.clone());
    answered(move || {
        e2.apply_one(
            now,
            Command::SetAutoRecharge {
                org,
                enabled: true,
                amount: Some("50".into()),
                threshold: Some("10".into()),
                payment_method_id: Some(card),
            },
        )
        .unwrap()
    });
    // Call control answers meanwhile (a refusal: no funds yet), for this organization too.
    let (e2, org, bob) = (e.clone(), o.id.clone(), o.bob.clone());
    let refused =
        answered(move || auth(&e2, now, &org, "c1", "outbound", Some(&bob), "+442079460000", "+14155550100", None));
    assert_eq!(refused.granted_seconds, 0);
    let orders = e.orders(&o.id).unwrap();
    assert_eq!(orders.len(), 1);
    assert_eq!(orders[0].status, "pending");
    // The gateway answers: the order completes, once, and the jobs change nothing.
    gateway.release();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while e.orders(&o.id).unwrap()[0].status == "pending" {
        assert!(std::time::Instant::now() < deadline, "the order was never charged");
        std::thread::sleep(Duration::from_millis(20));
    }
    e.run_jobs(now).unwrap();
    let orders = e.orders(&o.id).unwrap();
    assert_eq!((orders.len(), orders[0].status.as_str()), (1, "succeeded"));
    assert_eq!(e.credits(&o.id).unwrap().balance, 5000);
    assert_eq!(gateway.charges.lock().unwrap().len(), 1);
}

#[test]
fn a_gateway_past_its_timeout_leaves_the_order_pending_for_the_jobs() {
    let gateway = Arc::new(SlowGateway::default());
    let store = commcredits_store::sqlite::SqliteStore::open("sqlite::memory:").unwrap();
    let mut e = Engine::with_gateway(Arc::new(store), gateway.clone()).unwrap();
    e.config.gateway_timeout = Duration::from_millis(50);
    let now = t("2026-11-02T09:00:00Z");
    let o = setup(&e, now);
    *gateway.hold.lock().unwrap() = true;
    let placed = e.purchase(&o.id, "50", &o.card, None, None, now).unwrap();
    assert_eq!(placed.status, "pending");
    gateway.release();
    e.run_jobs(now).unwrap();
    let orders = e.orders(&o.id).unwrap();
    assert_eq!((orders.len(), orders[0].status.as_str()), (1, "succeeded"));
    assert_eq!(e.credits(&o.id).unwrap().balance, 5000);
    e.run_jobs(now).unwrap();
    assert_eq!(e.credits(&o.id).unwrap().balance, 5000);
}
