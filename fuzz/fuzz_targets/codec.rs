//! Arbitrary bytes through the frame decoder and the content assembler, at arbitrary
//! read splits and `frame_max` values; see `amqp_codec::fuzz::codec`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| amqp_codec::fuzz::codec(data));
