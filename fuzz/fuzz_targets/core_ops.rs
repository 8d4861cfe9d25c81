#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| foreman_fuzz::core_ops(data));
