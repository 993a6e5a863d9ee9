//! The bounded field-table walker and the content-properties reader against
//! amq-protocol's decoders; see `amqp_codec::fuzz::field_table`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| amqp_codec::fuzz::field_table(data));
