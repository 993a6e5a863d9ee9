//! How RabbitMQ's error texts print values: Erlang terms as `io_lib` formats them, so
//! that Warren's texts match RabbitMQ's to the letter where clients compare them.

use serde_json::Value;

/// A binary printed with `~ts`: UTF-8 when valid, otherwise one character per byte.
pub(crate) fn chars(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_owned(),
        Err(_) => bytes.iter().map(|&b| char::from(b)).collect(),
    }
}

/// Whether `io_lib` prints a character inside a string (its latin-1 printable range).
pub(crate) fn printable(c: char) -> bool {
    matches!(c, ' '..='~' | '\u{a0}'..='\u{ff}' | '\n' | '\r' | '\t' | '\u{b}' | '\u{8}' | '\u{c}' | '\u{1b}')
}

/// A string printed with `~p`: quoted and escaped, or a list of character codes when it
/// holds a character outside the printable range.
pub(crate) fn string(s: &str) -> String {
    if s.is_empty() {
        return "[]".to_owned();
    }
    if !s.chars().all(printable) {
        let codes: Vec<String> = s.chars().map(|c| u32::from(c).to_string()).collect();
        return format!("[{}]", codes.join(","));
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\u{1b}' => out.push_str("\\e"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A binary nested in a table or array, printed with `~tp`: `<<"abc">>`,
/// `<<"é"/utf8>>` or `<<1,2>>`.
pub(crate) fn binary(bytes: &[u8]) -> String {
    if let Ok(s) = std::str::from_utf8(bytes) {
        if !s.is_ascii() && s.chars().all(printable) {
            return format!("<<{}/utf8>>", string(s));
        }
    }
    latin1_binary(bytes)
}

/// A binary printed with `~p` (no `t`): its bytes as latin-1 characters, `<<"abc">>`,
/// or `<<1,2>>` when one is not printable. UTF-8 text therefore shows as its bytes:
/// `é` prints as `<<"Ã©">>`.
pub(crate) fn latin1_binary(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "<<>>".to_owned();
    }
    let latin1: String = bytes.iter().map(|&b| char::from(b)).collect();
    if latin1.chars().all(printable) {
        return format!("<<{}>>", string(&latin1));
    }
    let codes: Vec<String> = bytes.iter().map(u8::to_string).collect();
    format!("<<{}>>", codes.join(","))
}

/// A float as Erlang prints it: the shortest digits that read back, in plain or
/// scientific notation, whichever is shorter (plain on a tie), always scientific from
/// 2^53 up: `1.5`, `100.0`, `1.0e3`, `1.2e-4`.
pub(crate) fn float(x: f64) -> String {
    if !x.is_finite() {
        // Erlang has no such floats; RabbitMQ could not have parsed one.
        return x.to_string();
    }
    let sign = if x.is_sign_negative() { "-" } else { "" };
    let abs = x.abs();
    if abs == 0.0 {
        return format!("{sign}0.0");
    }
    // Rust's `{:e}` gives the shortest round-trip digits: "1.2345e4", "1e3", "5e-324".
    let sci = format!("{abs:e}");
    let (mantissa, exponent) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exponent: i64 = exponent.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let (first, rest) = digits.split_at(1);
    let scientific = format!(
        "{first}.{}e{exponent}",
        if rest.is_empty() { "0" } else { rest }
    );
    let plain = if exponent >= 0 {
        let int_len = usize::try_from(exponent).unwrap_or(0) + 1;
        if digits.len() <= int_len {
            format!("{digits}{}.0", "0".repeat(int_len - digits.len()))
        } else {
            let (int, frac) = digits.split_at(int_len);
            format!("{int}.{frac}")
        }
    } else {
        let zeros = usize::try_from(-exponent - 1).unwrap_or(0);
        format!("0.{}{digits}", "0".repeat(zeros))
    };
    let two_pow_53 = 9_007_199_254_740_992.0;
    let shown = if abs < two_pow_53 && plain.len() <= scientific.len() {
        plain
    } else {
        scientific
    };
    format!("{sign}{shown}")
}

/// Entries of a JSON object as RabbitMQ prints the proplist they decode to:
/// `[{<<"key">>,value},…]`.
pub(crate) fn proplist<'a>(entries: impl IntoIterator<Item = (&'a String, &'a Value)>) -> String {
    let terms: Vec<String> = entries
        .into_iter()
        .map(|(key, value)| format!("{{{},{}}}", binary(key.as_bytes()), json(value)))
        .collect();
    format!("[{}]", terms.join(","))
}

/// A JSON value as RabbitMQ prints the term it decodes to (`~tp`): strings are binaries,
/// objects maps, `null` an atom.
pub(crate) fn json(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => i.to_string(),
            (None, Some(u)) => u.to_string(),
            (None, None) => float(n.as_f64().unwrap_or_default()),
        },
        Value::String(s) => binary(s.as_bytes()),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(json).collect();
            format!("[{}]", items.join(","))
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by_key(|&(key, _)| key);
            let entries: Vec<String> = entries
                .into_iter()
                .map(|(k, v)| format!("{} => {}", binary(k.as_bytes()), json(v)))
                .collect();
            format!("#{{{}}}", entries.join(","))
        }
    }
}
