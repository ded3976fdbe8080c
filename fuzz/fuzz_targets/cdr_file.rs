#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| commcredits_fuzzcheck::cdr_file(data));
