#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| commcredits_fuzzcheck::http::admin_form(data));
