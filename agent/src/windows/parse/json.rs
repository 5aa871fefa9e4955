//! Reading `ConvertTo-Json` output: the three shapes it prints for "zero,
//! one or many objects", and typed access to properties with errors that
//! name the property. Shared by every JSON parser.

use serde_json::{Map, Value};

use super::{ParseError, describe};

/// ConvertTo-Json output: nothing (no object), one object, or an array of
/// objects. A UTF-8 BOM and surrounding whitespace are ignored.
pub(super) fn json_items(text: &str, what: &str) -> Result<Vec<Map<String, Value>>, ParseError> {
    let t = text.trim_start_matches('\u{feff}').trim();
    if t.is_empty() {
        return Ok(Vec::new());
    }
    let v: Value = serde_json::from_str(t).map_err(|e| ParseError::Json(e.to_string()))?;
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Object(m) => Ok(vec![m]),
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::Object(m) => Ok(m),
                other => Err(ParseError::Shape {
                    what: format!("{what} item {i}"),
                    expected: "an object",
                    found: describe(&other),
                }),
            })
            .collect(),
        other => Err(ParseError::Shape {
            what: what.to_string(),
            expected: "an object or an array of objects",
            found: describe(&other),
        }),
    }
}

/// Exactly one object (an array of one is accepted).
pub(super) fn json_single(text: &str, what: &str) -> Result<Map<String, Value>, ParseError> {
    let mut items = json_items(text, what)?;
    match items.len() {
        1 => Ok(items.remove(0)),
        n => Err(ParseError::Shape {
            what: what.to_string(),
            expected: "exactly one object",
            found: if n == 0 {
                "no output".to_string()
            } else {
                format!("{n} objects")
            },
        }),
    }
}

/// A property, matched exactly first, then case-insensitively (PowerShell
/// property names are case-insensitive).
pub(super) fn prop<'a>(m: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    m.get(name)
        .or_else(|| m.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v))
}

pub(super) fn req<'a>(m: &'a Map<String, Value>, what: &str, field: &'static str) -> Result<&'a Value, ParseError> {
    prop(m, field).ok_or_else(|| ParseError::Missing {
        what: what.to_string(),
        field,
    })
}

pub(super) fn wrong(what: &str, field: &'static str, expected: &'static str, v: &Value) -> ParseError {
    ParseError::WrongType {
        what: what.to_string(),
        field,
        expected,
        found: describe(v),
    }
}

pub(super) fn req_bool(m: &Map<String, Value>, what: &str, field: &'static str) -> Result<bool, ParseError> {
    match req(m, what, field)? {
        Value::Bool(b) => Ok(*b),
        other => Err(wrong(what, field, "a boolean", other)),
    }
}

/// A non-negative integer that fits u32; numeric strings are accepted
/// (Win32_OperatingSystem.BuildNumber is a string).
pub(super) fn as_u32(v: &Value, what: &str, field: &'static str) -> Result<u32, ParseError> {
    let out_of_range = || ParseError::OutOfRange {
        what: what.to_string(),
        field,
        value: describe(v),
    };
    match v {
        Value::Number(n) => match n.as_u64() {
            Some(x) => u32::try_from(x).map_err(|_| out_of_range()),
            None => Err(out_of_range()),
        },
        Value::String(s) => {
            let s = s.trim();
            if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(wrong(what, field, "an unsigned integer", v));
            }
            s.parse::<u32>().map_err(|_| out_of_range())
        }
        other => Err(wrong(what, field, "an unsigned integer", other)),
    }
}

pub(super) fn opt_string(m: &Map<String, Value>, what: &str, field: &'static str) -> Result<String, ParseError> {
    match prop(m, field) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(wrong(what, field, "a string", other)),
    }
}

/// The .NET value of an enum property: a number as ConvertTo-Json writes it,
/// or its name (as with `-EnumsAsStrings`). `None` for null or an unknown
/// name or a non-integer number; the caller maps `None` and unknown numbers
/// to UNSPECIFIED. Other JSON types are an error.
pub(super) fn enum_code(
    m: &Map<String, Value>,
    what: &str,
    field: &'static str,
    names: &[(&str, i64)],
) -> Result<Option<i64>, ParseError> {
    match req(m, what, field)? {
        Value::Null => Ok(None),
        Value::Number(n) => Ok(n.as_i64()),
        Value::String(s) => {
            let s = s.trim();
            if let Ok(n) = s.parse::<i64>() {
                return Ok(Some(n));
            }
            Ok(names
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(s))
                .map(|(_, n)| *n))
        }
        other => Err(wrong(what, field, "an enum number or name", other)),
    }
}
