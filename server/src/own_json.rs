//! Reading JSON that Warren wrote itself (its definitions store, `warren ctl`'s answers),
//! past `serde_json`'s default nesting limit of 128.
//!
//! A queue's arguments may hold field tables as deep as the AMQP codec lets a client
//! send them (`amqp_codec::table::MAX_DEPTH`, 64 levels), each two JSON levels in the
//! store's lossless form, and a global parameter any JSON the API or `warren ctl` read
//! (at most 128 levels). Wrapped in a snapshot or an answer, either can pass 128, which
//! made a confirmed queue unreadable at the next start. What is written is bounded by
//! those limits, so the recursion reading it back is bounded too.

use serde::Deserialize;

/// Reads `text`, written by Warren, whatever its depth.
///
/// # Errors
/// Not JSON, or not of `T`'s shape.
pub fn read<'a, T: Deserialize<'a>>(text: &'a [u8]) -> serde_json::Result<T> {
    let mut reader = serde_json::Deserializer::from_slice(text);
    reader.disable_recursion_limit();
    let value = T::deserialize(&mut reader)?;
    reader.end()?;
    Ok(value)
}
