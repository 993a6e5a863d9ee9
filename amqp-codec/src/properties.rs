//! Read access to encoded `basic` content properties without decoding all of them.

use bytes::Bytes;

use crate::error::ProtocolError;
use crate::reply::ReplyCode;

/// The encoding of each basic property, in flag order (bit 15 first).
#[derive(Clone, Copy)]
enum Kind {
    Short,
    Table,
    Octet,
    Timestamp,
}

const LAYOUT: [Kind; 14] = [
    Kind::Short,     // content-type
    Kind::Short,     // content-encoding
    Kind::Table,     // headers
    Kind::Octet,     // delivery-mode
    Kind::Octet,     // priority
    Kind::Short,     // correlation-id
    Kind::Short,     // reply-to
    Kind::Short,     // expiration
    Kind::Short,     // message-id
    Kind::Timestamp, // timestamp
    Kind::Short,     // type
    Kind::Short,     // user-id
    Kind::Short,     // app-id
    Kind::Short,     // cluster-id
];

/// Index of each property in flag order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Property {
    /// MIME content type.
    ContentType = 0,
    /// MIME content encoding.
    ContentEncoding = 1,
    /// Application headers (a field table).
    Headers = 2,
    /// 1 transient, 2 persistent.
    DeliveryMode = 3,
    /// Message priority, 0 to 9.
    Priority = 4,
    /// Correlation id for RPC.
    CorrelationId = 5,
    /// Reply-to queue for RPC.
    ReplyTo = 6,
    /// Per-message TTL in milliseconds, as a decimal string.
    Expiration = 7,
    /// Application message id.
    MessageId = 8,
    /// Timestamp in seconds.
    Timestamp = 9,
    /// Message type name.
    Type = 10,
    /// Validated user id.
    UserId = 11,
    /// Application id.
    AppId = 12,
    /// Cluster id (deprecated).
    ClusterId = 13,
}

/// A view over encoded properties: the 16-bit flags followed by the present values.
#[derive(Clone, Debug)]
pub struct PropertiesView<'a> {
    raw: &'a [u8],
}

impl<'a> PropertiesView<'a> {
    /// Checks that `raw` is a well-formed property list and wraps it.
    ///
    /// # Errors
    /// A 502 SYNTAX_ERROR when a value runs past the end or bytes are left over.
    pub fn new(raw: &'a [u8]) -> Result<Self, ProtocolError> {
        let view = Self { raw };
        let end = view.offset_of(LAYOUT.len()).ok_or_else(malformed)?;
        if end != raw.len() {
            return Err(malformed());
        }
        if let Some(headers) = view.raw(Property::Headers)
            && crate::table::check_table(headers).is_none()
        {
            return Err(malformed());
        }
        Ok(view)
    }

    fn flags(&self) -> u16 {
        u16::from_be_bytes([self.raw[0], self.raw[1]])
    }

    /// Byte offset just past the value of property `index - 1` (or of the flags), i.e.
    /// where property `index` starts; `None` if the encoding is cut short.
    fn offset_of(&self, index: usize) -> Option<usize> {
        if self.raw.len() < 2 {
            return None;
        }
        let flags = self.flags();
        let mut at = 2usize;
        for (i, kind) in LAYOUT.iter().enumerate().take(index) {
            if flags & (1 << (15 - i)) == 0 {
                continue;
            }
            let len = match kind {
                Kind::Short => 1 + usize::from(*self.raw.get(at)?),
                Kind::Table => {
                    let b = self.raw.get(at..at + 4)?;
                    4 + u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
                }
                Kind::Octet => 1,
                Kind::Timestamp => 8,
            };
            at = at.checked_add(len)?;
            if at > self.raw.len() {
                return None;
            }
        }
        Some(at)
    }

    /// The encoded value of a property, if present: for short strings without the length
    /// octet, for the headers table including its length prefix.
    pub fn raw(&self, property: Property) -> Option<&'a [u8]> {
        let index = property as usize;
        if self.flags() & (1 << (15 - index)) == 0 {
            return None;
        }
        let start = self.offset_of(index)?;
        let end = self.offset_of(index + 1)?;
        match LAYOUT[index] {
            Kind::Short => self.raw.get(start + 1..end),
            _ => self.raw.get(start..end),
        }
    }

    /// The encoded properties with `property` left out (the broker strips `expiration`
    /// from dead-lettered messages).
    pub fn without(&self, property: Property) -> Bytes {
        let index = property as usize;
        let bit = 1 << (15 - index);
        let (Some(start), Some(end)) = (self.offset_of(index), self.offset_of(index + 1)) else {
            return Bytes::copy_from_slice(self.raw);
        };
        if self.flags() & bit == 0 {
            return Bytes::copy_from_slice(self.raw);
        }
        let mut out = Vec::with_capacity(self.raw.len() - (end - start));
        out.extend_from_slice(&(self.flags() & !bit).to_be_bytes());
        out.extend_from_slice(&self.raw[2..start]);
        out.extend_from_slice(&self.raw[end..]);
        Bytes::from(out)
    }

    /// `delivery-mode`: 2 means persistent.
    pub fn delivery_mode(&self) -> Option<u8> {
        self.raw(Property::DeliveryMode).map(|b| b[0])
    }

    /// `priority`.
    pub fn priority(&self) -> Option<u8> {
        self.raw(Property::Priority).map(|b| b[0])
    }

    /// A short-string property as text, if present and UTF-8.
    pub fn short_str(&self, property: Property) -> Option<&'a str> {
        self.raw(property).and_then(|b| std::str::from_utf8(b).ok())
    }

    /// The headers table, decoded; `None` when absent or malformed.
    pub fn headers(&self) -> Option<amq_protocol::types::FieldTable> {
        let raw = self.raw(Property::Headers)?;
        amq_protocol::types::parsing::parse_field_table(raw)
            .ok()
            .map(|(_, table)| table)
    }
}

fn malformed() -> ProtocolError {
    ProtocolError::new(
        ReplyCode::SyntaxError,
        "malformed content header properties",
    )
}

/// Decodes every property with `amq-protocol`, for the rare paths that rewrite a message
/// (dead-lettering, redelivery counts); `None` when malformed.
pub fn decode_properties(raw: &[u8]) -> Option<amq_protocol::protocol::BasicProperties> {
    let (rest, properties) = amq_protocol::protocol::basic::parse_properties(raw).ok()?;
    rest.is_empty().then_some(properties)
}

/// Encodes properties with `amq-protocol`, for messages the broker itself creates.
pub fn encode_properties(properties: &amq_protocol::protocol::BasicProperties) -> Bytes {
    let mut out = Vec::with_capacity(32);
    // Writing into a Vec cannot fail.
    if let Ok((buf, _)) = cookie_factory::r#gen(
        amq_protocol::protocol::basic::gen_properties(properties),
        Vec::new(),
    ) {
        out = buf;
    }
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::protocol::BasicProperties;
    use amq_protocol::types::{AMQPValue, FieldTable, ShortString};

    #[test]
    fn reads_what_amq_protocol_wrote() {
        let mut headers = FieldTable::default();
        headers.insert(ShortString::from("x-k"), AMQPValue::LongString("v".into()));
        let props = BasicProperties::default()
            .with_content_type("text/plain".into())
            .with_headers(headers.clone())
            .with_delivery_mode(2)
            .with_priority(7)
            .with_expiration("1500".into());
        let raw = encode_properties(&props);
        let view = PropertiesView::new(&raw).expect("valid");
        assert_eq!(view.delivery_mode(), Some(2));
        assert_eq!(view.priority(), Some(7));
        assert_eq!(view.short_str(Property::Expiration), Some("1500"));
        assert_eq!(view.short_str(Property::ContentType), Some("text/plain"));
        assert_eq!(view.short_str(Property::ReplyTo), None);
        assert_eq!(view.headers(), Some(headers.clone()));
        assert_eq!(decode_properties(&raw), Some(props.clone()));
        let stripped = view.without(Property::Expiration);
        let expected = BasicProperties::default()
            .with_content_type("text/plain".into())
            .with_headers(headers)
            .with_delivery_mode(2)
            .with_priority(7);
        assert_eq!(decode_properties(&stripped), Some(expected));
        assert_eq!(&view.without(Property::ReplyTo)[..], &raw[..]);
    }

    #[test]
    fn empty_properties_are_valid() {
        let raw = encode_properties(&BasicProperties::default());
        let view = PropertiesView::new(&raw).expect("valid");
        assert_eq!(view.delivery_mode(), None);
        assert_eq!(view.headers(), None);
    }

    #[test]
    fn truncated_or_padded_properties_are_rejected() {
        let raw = encode_properties(&BasicProperties::default().with_content_type("abc".into()));
        assert!(PropertiesView::new(&raw[..raw.len() - 1]).is_err());
        let mut padded = raw.to_vec();
        padded.push(0);
        assert!(PropertiesView::new(&padded).is_err());
        assert!(PropertiesView::new(&[0x80]).is_err());
        // A table whose length points past the end.
        assert!(PropertiesView::new(&[0x20, 0x00, 0xff, 0xff, 0xff, 0xff]).is_err());
    }
}
