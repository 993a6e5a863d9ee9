//! A whole client session against an in-process broker over an in-memory stream; see
//! `integration_tests::fuzz::connection`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| integration_tests::fuzz::connection(data));
