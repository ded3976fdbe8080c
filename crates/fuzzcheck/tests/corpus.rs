//! Replays every saved fuzz input (the seed corpora and every crash ever found) through
//! the same contract checks the fuzz targets run.

use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut count = 0;
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else { continue };
        for entry in entries {
            let path = entry.expect("a readable directory").path();
            let data = std::fs::read(&path).expect("a readable file");
            let outcome = std::panic::catch_unwind(|| check(&data));
            assert!(outcome.is_ok(), "{} broke the contract", path.display());
            count += 1;
        }
    }
    assert!(count > 0, "no saved inputs for {target}");
}

#[test]
fn amount() {
    replay("amount", commcredits_fuzzcheck::amount);
}

#[test]
fn currency_code() {
    replay("currency_code", commcredits_fuzzcheck::currency_code);
}

#[test]
fn phone() {
    replay("phone", commcredits_fuzzcheck::phone);
}

#[test]
fn period() {
    replay("period", commcredits_fuzzcheck::period);
}

#[test]
fn rate_deck() {
    replay("rate_deck", commcredits_fuzzcheck::rate_deck);
}

#[test]
fn cdr_file() {
    replay("cdr_file", commcredits_fuzzcheck::cdr_file);
}

#[test]
fn page_cursor() {
    replay("page_cursor", commcredits_fuzzcheck::page_cursor);
}

#[test]
fn call_control() {
    replay("call_control", commcredits_fuzzcheck::http::call_control);
}

#[test]
fn admin_form() {
    replay("admin_form", commcredits_fuzzcheck::http::admin_form);
}
