#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| commcredits_fuzzcheck::currency_code(data));
