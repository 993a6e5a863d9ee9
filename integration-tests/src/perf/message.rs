//! Encoding one stamped message — `basic.publish`, content header, body frames — into
//! a producer's output buffer, with no allocation per message.
//!
//! The `basic.publish` frame is the same for every message of a producer, so it is
//! encoded once (by `amqp_codec::encode::method`) and copied; the content goes through
//! `amqp_codec::encode::content`, which splits bodies by `frame_max`.

use amqp_codec::amq_protocol::protocol::{AMQPClass, basic};
use amqp_codec::encode;
use bytes::BytesMut;

use super::stamp::{MessageId, STAMP_LEN, Stamp, plain_properties};

/// Writes a producer's messages.
#[derive(Debug)]
pub struct MessageWriter {
    channel: u16,
    frame_max: u32,
    publish_frame: BytesMut,
    body: Vec<u8>,
    properties: Vec<u8>,
    delivery_mode: Option<u8>,
    encoded_len: usize,
}

impl MessageWriter {
    /// A writer for messages of `size` body bytes published on `channel` to
    /// `exchange` with `routing_key`, persistent (delivery-mode 2) or not.
    pub fn new(
        channel: u16,
        exchange: &str,
        routing_key: &str,
        size: usize,
        persistent: bool,
        frame_max: u32,
    ) -> Self {
        let mut publish_frame = BytesMut::new();
        encode::method(
            &mut publish_frame,
            channel,
            &AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: exchange.into(),
                routing_key: routing_key.into(),
                mandatory: false,
                immediate: false,
            })),
        );
        let delivery_mode = persistent.then_some(2);
        let mut writer = Self {
            channel,
            frame_max,
            publish_frame,
            body: vec![0; size],
            properties: plain_properties(delivery_mode),
            delivery_mode,
            encoded_len: 0,
        };
        let mut probe = BytesMut::new();
        writer.write(
            &mut probe,
            Stamp {
                sent_nanos: 0,
                id: MessageId(0),
            },
        );
        writer.encoded_len = probe.len();
        writer
    }

    /// Appends one message carrying `stamp` to `out`.
    pub fn write(&mut self, out: &mut BytesMut, stamp: Stamp) {
        out.extend_from_slice(&self.publish_frame);
        if self.body.len() >= STAMP_LEN {
            stamp.write_body(&mut self.body);
        } else {
            stamp.write_properties(self.delivery_mode, &mut self.properties);
        }
        encode::content(
            out,
            self.channel,
            &self.properties,
            &self.body,
            self.frame_max,
        );
    }

    /// Bytes one message takes on the wire: the same for every message of a writer
    /// (stamps have a fixed size), so a byte count tells how many messages were sent.
    pub fn encoded_len(&self) -> usize {
        self.encoded_len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::perf::wire::{self, BODY, HEADER, METHOD};

    fn frames(out: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut at = 0;
        let mut all = Vec::new();
        while let Some((f, used)) = wire::split_frame(&out[at..], 4096).expect("valid") {
            all.push((f.kind, f.payload.to_vec()));
            at += used;
        }
        assert_eq!(at, out.len());
        all
    }

    #[test]
    fn big_bodies_carry_the_stamp_in_the_body() {
        let stamp = Stamp {
            sent_nanos: 5,
            id: MessageId::new(1, 2, 3),
        };
        let mut w = MessageWriter::new(1, "", "q", 5000, true, 4096);
        let mut out = BytesMut::new();
        w.write(&mut out, stamp);
        let f = frames(&out);
        let kinds: Vec<u8> = f.iter().map(|(k, _)| *k).collect();
        assert_eq!(kinds, [METHOD, HEADER, BODY, BODY]);
        let (size, props) = wire::header_fields(&f[1].1).expect("header");
        assert_eq!((size, props), (5000, &[0x10u8, 0, 2][..]));
        assert_eq!(Stamp::read_body(&f[2].1), Some(stamp));
        assert_eq!(w.encoded_len(), out.len());
    }

    #[test]
    fn small_bodies_carry_the_stamp_in_properties() {
        let stamp = Stamp {
            sent_nanos: 9,
            id: MessageId::new(1, 0, 77),
        };
        for size in [0, 15] {
            let mut w = MessageWriter::new(1, "x", "", size, false, 4096);
            let mut out = BytesMut::new();
            w.write(&mut out, stamp);
            let f = frames(&out);
            assert_eq!(f.len(), if size == 0 { 2 } else { 3 });
            assert_eq!(w.encoded_len(), out.len());
            let (_, props) = wire::header_fields(&f[1].1).expect("header");
            assert_eq!(Stamp::read_properties(props), Some(stamp));
        }
    }
}
