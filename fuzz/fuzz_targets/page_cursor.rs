#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| commcredits_fuzzcheck::page_cursor(data));
