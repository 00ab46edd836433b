//! JSON bytes exactly as nova writes them.
//!
//! nova serialises with `oslo_serialization.jsonutils.dump_as_bytes`, which is
//! Python's `json.dumps` with its defaults: `", "` and `": "` separators,
//! `ensure_ascii=True` (everything outside printable ASCII as `\uXXXX`, lower
//! case hex, surrogate pairs above the BMP) and `repr()` floats. serde_json's
//! compact output differs in all three, so [`PythonFormatter`] adapts it.
//! Object keys come out in the order the value gives them; [`Object`] keeps
//! the order nova builds its dicts in.
use serde::{Serialize, ser::SerializeMap};
use serde_json::ser::Formatter;
use std::io::{self, Write};

/// Serialises `value` as `json.dumps(value)` would.
pub fn dumps<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, PythonFormatter);
    value
        .serialize(&mut serializer)
        .expect("serialising to memory cannot fail");
    out
}

/// A JSON object whose keys keep insertion order (nova's dict order), without
/// turning on serde_json's `preserve_order` for the whole program.
#[derive(Clone, Debug, Default)]
pub struct Object {
    entries: Vec<(String, Member)>,
}

#[derive(Clone, Debug)]
enum Member {
    Value(serde_json::Value),
    Objects(Vec<Object>),
}

impl Object {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<serde_json::Value>) {
        self.entries.push((key.into(), Member::Value(value.into())));
    }

    pub fn insert_objects(&mut self, key: impl Into<String>, objects: Vec<Object>) {
        self.entries.push((key.into(), Member::Objects(objects)));
    }
}

impl Serialize for Object {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.entries.len()))?;
        for (key, member) in &self.entries {
            match member {
                Member::Value(value) => map.serialize_entry(key, value)?,
                Member::Objects(objects) => map.serialize_entry(key, objects)?,
            }
        }
        map.end()
    }
}

/// `dumps` of an object whose members are `before`, then `key` with a
/// string value left open, then `after`: the bytes before the value and
/// after it. The value goes in between as it is, so it must need no
/// escaping (base64 does not). This is how an answer that differs only in
/// one random string is rendered once and completed per request.
pub fn dumps_around_string(before: &Object, key: &str, after: &Object) -> (Vec<u8>, Vec<u8>) {
    let mut prefix = dumps(before);
    // `{...}` -> `{..., "key": "` (or `{"key": "` when `before` is empty).
    prefix.pop();
    if !before.entries.is_empty() {
        prefix.extend_from_slice(b", ");
    }
    let mut key_json = dumps(key);
    prefix.append(&mut key_json);
    prefix.extend_from_slice(b": \"");
    let mut suffix = b"\"".to_vec();
    let rest = dumps(after);
    if after.entries.is_empty() {
        suffix.push(b'}');
    } else {
        // `{...}` -> `, ...}`.
        suffix.extend_from_slice(b", ");
        suffix.extend_from_slice(&rest[1..]);
    }
    (prefix, suffix)
}

/// `json.dumps` defaults as a serde_json formatter.
pub struct PythonFormatter;

impl Formatter for PythonFormatter {
    fn begin_array_value<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_key<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }

    /// serde_json has already escaped `"`, `\` and C0 controls (the same way
    /// Python does); what is left to escape is DEL and everything non-ASCII.
    fn write_string_fragment<W: ?Sized + Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut plain_start = 0;
        for (index, ch) in fragment.char_indices() {
            if (' '..='~').contains(&ch) {
                continue;
            }
            w.write_all(&fragment.as_bytes()[plain_start..index])?;
            let mut units = [0u16; 2];
            for unit in ch.encode_utf16(&mut units) {
                write!(w, "\\u{unit:04x}")?;
            }
            plain_start = index + ch.len_utf8();
        }
        w.write_all(&fragment.as_bytes()[plain_start..])
    }

    fn write_f64<W: ?Sized + Write>(&mut self, w: &mut W, value: f64) -> io::Result<()> {
        w.write_all(python_float_repr(value).as_bytes())
    }

    fn write_f32<W: ?Sized + Write>(&mut self, w: &mut W, value: f32) -> io::Result<()> {
        self.write_f64(w, f64::from(value))
    }
}

/// Python's `repr(float)`: the shortest round-tripping digits, positional for
/// decimal exponents -4..16, otherwise `d.ddde+XX`. (JSON values never hold
/// NaN or infinities, so those are not handled.)
fn python_float_repr(value: f64) -> String {
    // `{:e}` gives the shortest round-tripping digits, e.g. "1.5e-7".
    let scientific = format!("{value:e}");
    let (mantissa, exponent) = scientific
        .split_once('e')
        .expect("LowerExp always writes an exponent");
    let exponent: i32 = exponent.parse().expect("LowerExp exponent is an integer");
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if (-4..16).contains(&exponent) {
        let point = exponent + 1; // digits before the decimal point
        if point <= 0 {
            format!("{sign}0.{}{digits}", "0".repeat((-point) as usize))
        } else if point as usize >= digits.len() {
            let zeros = "0".repeat(point as usize - digits.len());
            format!("{sign}{digits}{zeros}.0")
        } else {
            let (int_part, frac_part) = digits.split_at(point as usize);
            format!("{sign}{int_part}.{frac_part}")
        }
    } else {
        let (first, rest) = digits.split_at(1);
        let fraction = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let exp_sign = if exponent < 0 { '-' } else { '+' };
        format!("{sign}{first}{fraction}e{exp_sign}{:02}", exponent.abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn text(value: &serde_json::Value) -> String {
        String::from_utf8(dumps(value)).unwrap()
    }

    #[test]
    fn separators_match_json_dumps() {
        // json.dumps({"a": [1, 2], "b": {}}) == '{"a": [1, 2], "b": {}}'
        assert_eq!(
            text(&json!({"a": [1, 2], "b": {}})),
            r#"{"a": [1, 2], "b": {}}"#
        );
        assert_eq!(text(&json!([])), "[]");
        assert_eq!(text(&json!(null)), "null");
    }

    #[test]
    fn strings_are_ascii_escaped_like_json_dumps() {
        // json.dumps("é\u2603\U0001F600\x7f\n\"\\/\x01")
        assert_eq!(
            text(&json!("é\u{2603}\u{1F600}\u{7f}\n\"\\/\u{1}")),
            r#""\u00e9\u2603\ud83d\ude00\u007f\n\"\\/\u0001""#
        );
    }

    #[test]
    fn floats_use_python_repr() {
        // repr() of each value in CPython 3.
        for (value, expected) in [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (-2.5, "-2.5"),
            (1e16, "1e+16"),
            (1234567890123456.0, "1234567890123456.0"),
            (1.5e-7, "1.5e-07"),
            (0.0001, "0.0001"),
            (0.00012, "0.00012"),
            (1e-5, "1e-05"),
            (123.456, "123.456"),
            (1e100, "1e+100"),
            (0.0, "0.0"),
        ] {
            assert_eq!(python_float_repr(value), expected, "{value}");
        }
    }

    #[test]
    fn a_string_hole_completes_to_the_whole_object() {
        let mut before = Object::new();
        before.insert("uuid", "u");
        before.insert("n", 1);
        let mut after = Object::new();
        after.insert("project_id", serde_json::Value::Null);
        after.insert_objects("devices", vec![Object::new()]);
        let mut whole = before.clone();
        whole.insert("seed", "QUJD");
        whole.entries.extend(after.entries.clone());
        let (prefix, suffix) = dumps_around_string(&before, "seed", &after);
        assert_eq!([prefix, b"QUJD".to_vec(), suffix].concat(), dumps(&whole));

        let (prefix, suffix) = dumps_around_string(&Object::new(), "seed", &Object::new());
        assert_eq!(
            [prefix, b"x".to_vec(), suffix].concat(),
            br#"{"seed": "x"}"#
        );
    }

    #[test]
    fn object_keeps_insertion_order() {
        let mut object = Object::new();
        object.insert("z", 1);
        object.insert("a", "x");
        assert_eq!(
            String::from_utf8(dumps(&object)).unwrap(),
            r#"{"z": 1, "a": "x"}"#
        );
    }
}
