//! A lossless JSON form of AMQP field tables, for the definitions files.
//!
//! `amq-protocol`'s own serde form goes through JSON numbers, and JSON has no NaN nor
//! infinities: `serde_json` writes them as `null` and cannot read that back, so one queue
//! argument holding a NaN (py-amqp sends them) made the whole definitions log unreadable
//! from that line on. Here every value is a one-key object whose key is its AMQP type tag
//! (RabbitMQ's tags, `_` for the short string that only Warren itself creates) and floats
//! are kept as their IEEE-754 bits, so that every value reads back bit for bit: NaN
//! payloads, ±inf, -0.0, f32 and f64 alike.
//!
//! ```text
//! {"t":true} {"b":-1} {"B":1} {"s":-2} {"u":2} {"I":-3} {"i":3} {"l":-4}
//! {"f":"7fc00000"} {"d":"7ff8000000000000"} {"D":[2,12345]} {"T":1700000000}
//! {"S":"text"} {"Sx":"00ff"} (a long string that is not UTF-8) {"x":"00ff"}
//! {"_":"short"} {"A":[…]} {"F":{"key":…}} {"V":null}
//! ```
//!
//! Reading also accepts `amq-protocol`'s serde form, in which definitions of format
//! version 1 were written, taking its `null` floats as NaN (the value was NaN or an
//! infinity; NaN is the closest that can be recovered).

use amqp_codec::amq_protocol::types::{
    AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString, ShortString,
};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Value, json};

/// Serializes a field table in the lossless form (for `#[serde(with = ...)]`).
///
/// # Errors
/// Those of the serializer.
pub fn serialize<S: Serializer>(table: &FieldTable, s: S) -> Result<S::Ok, S::Error> {
    table_to_json(table).serialize(s)
}

/// Deserializes a field table from the lossless form or from `amq-protocol`'s serde form
/// (for `#[serde(with = ...)]`).
///
/// # Errors
/// The JSON is neither form.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<FieldTable, D::Error> {
    let value = Value::deserialize(d)?;
    table_from_json(&value).map_err(serde::de::Error::custom)
}

/// The lossless JSON form of `table`.
pub fn table_to_json(table: &FieldTable) -> Value {
    Value::Object(
        table
            .inner()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), value_to_json(v)))
            .collect(),
    )
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn unhex(s: &str) -> Result<Vec<u8>, String> {
    if s.len() % 2 != 0 {
        return Err(format!("odd-length hex string {s:?}"));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            s.get(i..i + 2)
                .and_then(|d| u8::from_str_radix(d, 16).ok())
                .ok_or_else(|| format!("invalid hex string {s:?}"))
        })
        .collect()
}

fn value_to_json(value: &AMQPValue) -> Value {
    match value {
        AMQPValue::Boolean(v) => json!({ "t": v }),
        AMQPValue::ShortShortInt(v) => json!({ "b": v }),
        AMQPValue::ShortShortUInt(v) => json!({ "B": v }),
        AMQPValue::ShortInt(v) => json!({ "s": v }),
        AMQPValue::ShortUInt(v) => json!({ "u": v }),
        AMQPValue::LongInt(v) => json!({ "I": v }),
        AMQPValue::LongUInt(v) => json!({ "i": v }),
        AMQPValue::LongLongInt(v) => json!({ "l": v }),
        AMQPValue::Float(v) => json!({ "f": format!("{:08x}", v.to_bits()) }),
        AMQPValue::Double(v) => json!({ "d": format!("{:016x}", v.to_bits()) }),
        AMQPValue::DecimalValue(v) => json!({ "D": [v.scale, v.value] }),
        AMQPValue::ShortString(v) => json!({ "_": v.as_str() }),
        AMQPValue::LongString(v) => match std::str::from_utf8(v.as_bytes()) {
            Ok(text) => json!({ "S": text }),
            Err(_) => json!({ "Sx": hex(v.as_bytes()) }),
        },
        AMQPValue::FieldArray(v) => {
            json!({ "A": v.as_slice().iter().map(value_to_json).collect::<Vec<_>>() })
        }
        AMQPValue::Timestamp(v) => json!({ "T": v }),
        AMQPValue::FieldTable(v) => json!({ "F": table_to_json(v) }),
        AMQPValue::ByteArray(v) => json!({ "x": hex(v.as_slice()) }),
        AMQPValue::Void => json!({ "V": null }),
    }
}

/// Reads a field table from either JSON form.
///
/// # Errors
/// What is wrong, in words.
pub fn table_from_json(value: &Value) -> Result<FieldTable, String> {
    let Value::Object(map) = value else {
        return Err(format!(
            "a field table must be a JSON object, found {value}"
        ));
    };
    let mut table = FieldTable::default();
    for (key, v) in map {
        let key = ShortString::try_new(key.as_str()).map_err(|e| e.to_string())?;
        table.insert(key, value_from_json(v)?);
    }
    Ok(table)
}

fn int<T: TryFrom<i64> + TryFrom<u64>>(v: &Value) -> Result<T, String> {
    let out = match v {
        Value::Number(n) if n.is_i64() => n.as_i64().and_then(|i| T::try_from(i).ok()),
        Value::Number(n) => n.as_u64().and_then(|u| T::try_from(u).ok()),
        _ => None,
    };
    out.ok_or_else(|| format!("{v} is not an integer of the right range"))
}

fn text(v: &Value) -> Result<&str, String> {
    v.as_str().ok_or_else(|| format!("{v} is not a string"))
}

fn value_from_json(value: &Value) -> Result<AMQPValue, String> {
    let tagged = match value {
        Value::Object(map) if map.len() == 1 => map.iter().next(),
        _ => None,
    };
    let Some((tag, v)) = tagged else {
        return legacy_value(value);
    };
    Ok(match tag.as_str() {
        "t" => AMQPValue::Boolean(v.as_bool().ok_or_else(|| format!("{v} is not a bool"))?),
        "b" => AMQPValue::ShortShortInt(int(v)?),
        "B" => AMQPValue::ShortShortUInt(int(v)?),
        "s" => AMQPValue::ShortInt(int(v)?),
        "u" => AMQPValue::ShortUInt(int(v)?),
        "I" => AMQPValue::LongInt(int(v)?),
        "i" => AMQPValue::LongUInt(int(v)?),
        "l" => AMQPValue::LongLongInt(int(v)?),
        "f" => AMQPValue::Float(f32::from_bits(
            u32::from_str_radix(text(v)?, 16).map_err(|e| e.to_string())?,
        )),
        "d" => AMQPValue::Double(f64::from_bits(
            u64::from_str_radix(text(v)?, 16).map_err(|e| e.to_string())?,
        )),
        "D" => match v.as_array().map(Vec::as_slice) {
            Some([scale, value]) => AMQPValue::DecimalValue(DecimalValue {
                scale: int(scale)?,
                value: int(value)?,
            }),
            _ => return Err(format!("{v} is not a decimal [scale, value]")),
        },
        "_" => AMQPValue::ShortString(ShortString::try_new(text(v)?).map_err(|e| e.to_string())?),
        "S" => AMQPValue::LongString(LongString::from(text(v)?.as_bytes().to_vec())),
        "Sx" => AMQPValue::LongString(LongString::from(unhex(text(v)?)?)),
        "A" => {
            let items = v.as_array().ok_or_else(|| format!("{v} is not an array"))?;
            let mut array = FieldArray::default();
            for item in items {
                array.push(value_from_json(item)?);
            }
            AMQPValue::FieldArray(array)
        }
        "T" => AMQPValue::Timestamp(int(v)?),
        "F" => AMQPValue::FieldTable(table_from_json(v)?),
        "x" => AMQPValue::ByteArray(ByteArray::from(unhex(text(v)?)?)),
        "V" => AMQPValue::Void,
        _ => return legacy_value(value),
    })
}

/// A value in `amq-protocol`'s serde form (definitions format version 1), whose
/// non-finite floats were written as `null`.
fn legacy_value(value: &Value) -> Result<AMQPValue, String> {
    if let Value::Object(map) = value
        && let Some((tag, inner)) = map.iter().next()
        && map.len() == 1
    {
        match (tag.as_str(), inner) {
            ("Double", Value::Null) => return Ok(AMQPValue::Double(f64::NAN)),
            ("Float", Value::Null) => return Ok(AMQPValue::Float(f32::NAN)),
            ("FieldTable", table) => return table_from_json(table).map(AMQPValue::FieldTable),
            ("FieldArray", Value::Array(items)) => {
                let mut array = FieldArray::default();
                for item in items {
                    array.push(value_from_json(item)?);
                }
                return Ok(AMQPValue::FieldArray(array));
            }
            _ => {}
        }
    }
    serde_json::from_value(value.clone())
        .map_err(|e| format!("unreadable field value {value}: {e}"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Bit-exact equality of field values (NaN equals a NaN with the same bits).
    pub(crate) fn same_value(a: &AMQPValue, b: &AMQPValue) -> bool {
        match (a, b) {
            (AMQPValue::Float(x), AMQPValue::Float(y)) => x.to_bits() == y.to_bits(),
            (AMQPValue::Double(x), AMQPValue::Double(y)) => x.to_bits() == y.to_bits(),
            (AMQPValue::FieldArray(x), AMQPValue::FieldArray(y)) => {
                x.as_slice().len() == y.as_slice().len()
                    && x.as_slice()
                        .iter()
                        .zip(y.as_slice())
                        .all(|(x, y)| same_value(x, y))
            }
            (AMQPValue::FieldTable(x), AMQPValue::FieldTable(y)) => same_table(x, y),
            _ => a == b,
        }
    }

    /// Bit-exact equality of field tables.
    pub(crate) fn same_table(a: &FieldTable, b: &FieldTable) -> bool {
        a.inner().len() == b.inner().len()
            && a.inner()
                .iter()
                .zip(b.inner())
                .all(|((ka, va), (kb, vb))| ka == kb && same_value(va, vb))
    }

    fn leaf() -> impl Strategy<Value = AMQPValue> {
        prop_oneof![
            any::<bool>().prop_map(AMQPValue::Boolean),
            any::<i8>().prop_map(AMQPValue::ShortShortInt),
            any::<u8>().prop_map(AMQPValue::ShortShortUInt),
            any::<i16>().prop_map(AMQPValue::ShortInt),
            any::<u16>().prop_map(AMQPValue::ShortUInt),
            any::<i32>().prop_map(AMQPValue::LongInt),
            any::<u32>().prop_map(AMQPValue::LongUInt),
            any::<i64>().prop_map(AMQPValue::LongLongInt),
            // Any bits: NaNs with payloads, infinities, -0.0, subnormals.
            any::<u32>().prop_map(|b| AMQPValue::Float(f32::from_bits(b))),
            any::<u64>().prop_map(|b| AMQPValue::Double(f64::from_bits(b))),
            Just(AMQPValue::Double(f64::NAN)),
            Just(AMQPValue::Double(f64::NEG_INFINITY)),
            Just(AMQPValue::Double(-0.0)),
            (any::<u8>(), any::<u32>())
                .prop_map(|(scale, value)| AMQPValue::DecimalValue(DecimalValue { scale, value })),
            "\\PC{0,20}"
                .prop_map(|s| AMQPValue::ShortString(ShortString::try_new(s).unwrap_or_default())),
            proptest::collection::vec(any::<u8>(), 0..40)
                .prop_map(|b| AMQPValue::LongString(LongString::from(b))),
            "\\PC{0,30}".prop_map(|s| AMQPValue::LongString(LongString::from(s.into_bytes()))),
            any::<u64>().prop_map(AMQPValue::Timestamp),
            proptest::collection::vec(any::<u8>(), 0..40)
                .prop_map(|b| AMQPValue::ByteArray(ByteArray::from(b))),
            Just(AMQPValue::Void),
        ]
    }

    fn key() -> impl Strategy<Value = ShortString> {
        // Any UTF-8 up to the short string limit of 255 bytes.
        "\\PC{0,12}|[a-z-]{0,255}".prop_map(|s| {
            let mut s = s;
            while s.len() > 255 {
                s.pop();
            }
            ShortString::try_new(s).unwrap_or_default()
        })
    }

    fn value() -> impl Strategy<Value = AMQPValue> {
        leaf().prop_recursive(6, 64, 8, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(|v| {
                    let mut a = FieldArray::default();
                    for x in v {
                        a.push(x);
                    }
                    AMQPValue::FieldArray(a)
                }),
                proptest::collection::btree_map(key(), inner, 0..6).prop_map(|m| {
                    let mut t = FieldTable::default();
                    for (k, v) in m {
                        t.insert(k, v);
                    }
                    AMQPValue::FieldTable(t)
                }),
            ]
        })
    }

    /// Any field table a client can send (and some only Warren builds).
    pub(crate) fn table() -> impl Strategy<Value = FieldTable> {
        proptest::collection::btree_map(key(), value(), 0..8).prop_map(|m| {
            let mut t = FieldTable::default();
            for (k, v) in m {
                t.insert(k, v);
            }
            t
        })
    }

    proptest! {
        #[test]
        fn every_field_table_round_trips_bit_for_bit(t in table()) {
            let text = serde_json::to_string(&table_to_json(&t)).expect("serialize");
            let back = table_from_json(&serde_json::from_str(&text).expect("json")).expect("read back");
            prop_assert!(same_table(&t, &back), "{t:?}\n{text}\n{back:?}");
        }
    }

    #[test]
    fn the_legacy_form_is_still_read_and_its_null_floats_are_nan() {
        let mut t = FieldTable::default();
        t.insert("x-max-length".into(), AMQPValue::LongLongInt(10));
        t.insert("name".into(), AMQPValue::LongString("v".into()));
        t.insert("void".into(), AMQPValue::Void);
        let legacy = serde_json::to_value(&t).expect("legacy form");
        let back = table_from_json(&legacy).expect("read");
        assert!(same_table(&t, &back), "{legacy}");
        let nan: Value = serde_json::json!({ "x": { "Double": null }, "y": { "Float": null } });
        let back = table_from_json(&nan).expect("read");
        assert!(matches!(back.inner().get("x"), Some(AMQPValue::Double(d)) if d.is_nan()));
        assert!(matches!(back.inner().get("y"), Some(AMQPValue::Float(f)) if f.is_nan()));
    }
}
