//! Client operation records and the JSON-lines history file format.
//!
//! One line holds one JSON object describing one client operation; the
//! fields are described in `docs/HISTORY.md`. Reading validates every line
//! and reports the file, the line number and what is wrong.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};

/// What a client asked the store to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpKind {
    /// Write `value` under `key`.
    Put,
    /// Read the value under `key` (`result`, null when absent).
    Get,
    /// Compare-and-set: write `value` iff the current value equals
    /// `expected` (null meaning "key absent").
    Cas,
    /// Make `key` absent.
    Delete,
}

impl OpKind {
    /// The name used in history files: `put`, `get`, `cas` or `delete`.
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Put => "put",
            OpKind::Get => "get",
            OpKind::Cas => "cas",
            OpKind::Delete => "delete",
        }
    }
}

/// One client operation as recorded by a load generator: what was asked,
/// when, and what came back.
///
/// The serialised form uses exactly the field names below, except that
/// `kind` is written as `op`. Every field must be present in a history file
/// (possibly as `null`), except `expected`, which may be left out for
/// operations other than `cas`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Operation {
    /// The client that issued the operation.
    pub client: u64,
    /// The operation.
    #[serde(rename = "op")]
    pub kind: OpKind,
    /// The key operated on.
    pub key: String,
    /// `put`: the value written; `cas`: the new value; otherwise `None`.
    #[serde(deserialize_with = "present")]
    pub value: Option<String>,
    /// `cas` only: the value required before the swap (`None`: key absent).
    #[serde(default)]
    pub expected: Option<String>,
    /// When the client sent the request (ns, one monotonic clock).
    pub invoke_ns: u64,
    /// When the answer arrived; `None` when no answer came.
    #[serde(deserialize_with = "present")]
    pub complete_ns: Option<u64>,
    /// `Some(true)`: done; `Some(false)`: definitely failed (for `cas`: the
    /// comparison failed); `None`: outcome unknown (timeout, lost
    /// connection).
    #[serde(deserialize_with = "present")]
    pub ok: Option<bool>,
    /// `get` only: the value read (`None`: key absent).
    #[serde(deserialize_with = "present")]
    pub result: Option<String>,
}

/// Deserialises an optional field that must nevertheless be present in the
/// object (as a value or as `null`): with a `deserialize_with` function,
/// serde reports a missing field instead of defaulting to `None`.
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d)
}

impl Operation {
    /// Checks the fields against each other; the message says what is
    /// wrong. [`parse_history`] and [`read_history`] call this on every
    /// line.
    pub fn validate(&self) -> Result<(), String> {
        let op = self.kind.name();
        match self.kind {
            OpKind::Put | OpKind::Cas if self.value.is_none() => {
                return Err(format!("{op} needs a string \"value\""));
            }
            OpKind::Get | OpKind::Delete if self.value.is_some() => {
                return Err(format!("\"value\" must be null for {op}"));
            }
            _ => {}
        }
        if self.kind != OpKind::Cas && self.expected.is_some() {
            return Err(format!("\"expected\" is only for cas, not {op}"));
        }
        if self.kind != OpKind::Get && self.result.is_some() {
            return Err(format!("\"result\" is only for get, not {op}"));
        }
        match (self.ok, self.complete_ns) {
            (Some(ok), None) => {
                return Err(format!(
                    "\"ok\" is {ok} but \"complete_ns\" is null: an answered operation needs its completion time"
                ));
            }
            (_, Some(done)) if done < self.invoke_ns => {
                return Err(format!(
                    "\"complete_ns\" ({done}) is before \"invoke_ns\" ({})",
                    self.invoke_ns
                ));
            }
            _ => {}
        }
        Ok(())
    }

    /// The call and its answer, e.g. `put("k1", "v7")`, `get("k1") -> null`,
    /// `cas("k1", "v7" -> "v8")`, `delete("k1")`.
    pub fn call(&self) -> String {
        let key = quoted(Some(&self.key));
        match self.kind {
            OpKind::Put => format!("put({key}, {})", quoted(self.value.as_deref())),
            OpKind::Get => {
                if self.ok == Some(true) {
                    format!("get({key}) -> {}", quoted(self.result.as_deref()))
                } else {
                    format!("get({key})")
                }
            }
            OpKind::Cas => format!(
                "cas({key}, {} -> {})",
                quoted(self.expected.as_deref()),
                quoted(self.value.as_deref())
            ),
            OpKind::Delete => format!("delete({key})"),
        }
    }

    /// `ok`, `failed` or `unknown outcome`.
    pub fn outcome(&self) -> &'static str {
        match self.ok {
            Some(true) => "ok",
            Some(false) => "failed",
            None => "unknown outcome",
        }
    }
}

/// `"text"` with JSON escapes, or `null`.
fn quoted(v: Option<&str>) -> String {
    match v {
        // Serialising a string cannot fail; fall back to Debug just in case.
        Some(s) => serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}")),
        None => "null".to_string(),
    }
}

impl fmt::Display for Operation {
    /// One line: `client 3: put("k1", "v7"): ok, invoked at 100 ns,
    /// completed at 250 ns`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "client {}: {}: {}, invoked at {} ns, ",
            self.client,
            self.call(),
            self.outcome(),
            self.invoke_ns
        )?;
        match self.complete_ns {
            Some(t) => write!(f, "completed at {t} ns"),
            None => write!(f, "no answer"),
        }
    }
}

/// Why a history could not be read.
#[derive(Debug)]
pub enum HistoryError {
    /// The file could not be read at all.
    Io { path: PathBuf, source: io::Error },
    /// A line is not a valid operation. `line` counts from 1; `path` is
    /// `None` for text given to [`parse_history`].
    Line {
        path: Option<PathBuf>,
        line: usize,
        message: String,
    },
}

impl fmt::Display for HistoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HistoryError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            HistoryError::Line {
                path: Some(path),
                line,
                message,
            } => write!(f, "{}:{line}: {message}", path.display()),
            HistoryError::Line {
                path: None,
                line,
                message,
            } => write!(f, "line {line}: {message}"),
        }
    }
}

impl std::error::Error for HistoryError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            HistoryError::Io { source, .. } => Some(source),
            HistoryError::Line { .. } => None,
        }
    }
}

/// Reads a JSON-lines history file. Blank lines are skipped; every other
/// line must be one valid [`Operation`].
pub fn read_history(path: &Path) -> Result<Vec<Operation>, HistoryError> {
    let bytes = fs::read(path).map_err(|source| HistoryError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_lines(&bytes, Some(path))
}

/// Parses JSON-lines history text (see [`read_history`]).
pub fn parse_history(text: &str) -> Result<Vec<Operation>, HistoryError> {
    parse_lines(text.as_bytes(), None)
}

fn parse_lines(bytes: &[u8], path: Option<&Path>) -> Result<Vec<Operation>, HistoryError> {
    let error = |line: usize, message: String| HistoryError::Line {
        path: path.map(Path::to_path_buf),
        line,
        message,
    };
    let mut ops = Vec::new();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = i + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let text =
            std::str::from_utf8(raw).map_err(|e| error(line, format!("not valid UTF-8 ({e})")))?;
        if text.trim().is_empty() {
            continue;
        }
        let op: Operation =
            serde_json::from_str(text).map_err(|e| error(line, json_message(&e)))?;
        op.validate().map_err(|m| error(line, m))?;
        ops.push(op);
    }
    Ok(ops)
}

/// serde_json's message without its "at line 1 column N" suffix (the line
/// is always 1 here), with the column put back in a form that reads well
/// after our own line number.
fn json_message(e: &serde_json::Error) -> String {
    let full = e.to_string();
    let bare = match full.rfind(" at line ") {
        Some(i) => &full[..i],
        None => full.as_str(),
    };
    if e.column() > 0 {
        format!("{bare} (column {})", e.column())
    } else {
        bare.to_string()
    }
}

/// Writes one operation as one JSON line (a load generator records its
/// history with this). `expected` is written only for `cas`.
pub fn write_op(w: &mut impl Write, op: &Operation) -> io::Result<()> {
    if op.kind == OpKind::Cas {
        serde_json::to_writer(&mut *w, op)?;
    } else {
        serde_json::to_writer(&mut *w, &WithoutExpected(op))?;
    }
    w.write_all(b"\n")
}

/// Serialises an operation other than `cas` without the `expected` field.
struct WithoutExpected<'a>(&'a Operation);

impl Serialize for WithoutExpected<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let op = self.0;
        let mut st = s.serialize_struct("Operation", 8)?;
        st.serialize_field("client", &op.client)?;
        st.serialize_field("op", &op.kind)?;
        st.serialize_field("key", &op.key)?;
        st.serialize_field("value", &op.value)?;
        st.serialize_field("invoke_ns", &op.invoke_ns)?;
        st.serialize_field("complete_ns", &op.complete_ns)?;
        st.serialize_field("ok", &op.ok)?;
        st.serialize_field("result", &op.result)?;
        st.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PUT: &str = r#"{"client":1,"op":"put","key":"k","value":"a","invoke_ns":5,"complete_ns":9,"ok":true,"result":null}"#;

    #[test]
    fn round_trip() {
        let ops = parse_history(&format!("{PUT}\n\n")).expect("valid");
        assert_eq!(ops.len(), 1);
        let mut out = Vec::new();
        write_op(&mut out, &ops[0]).expect("write");
        assert_eq!(String::from_utf8(out).expect("utf8"), format!("{PUT}\n"));
    }

    #[test]
    fn missing_field_is_an_error_but_expected_may_be_absent() {
        let no_ok = PUT.replace(r#""ok":true,"#, "");
        let e = parse_history(&format!("{PUT}\n{no_ok}\n")).expect_err("missing ok");
        let text = e.to_string();
        assert!(text.starts_with("line 2: "), "{text}");
        assert!(text.contains("missing field `ok`"), "{text}");
    }

    #[test]
    fn inconsistent_fields_are_errors() {
        let cases = [
            (PUT.replace(r#""value":"a""#, r#""value":null"#), "needs"),
            (
                PUT.replace(r#""complete_ns":9"#, r#""complete_ns":null"#),
                "completion",
            ),
            (
                PUT.replace(r#""complete_ns":9"#, r#""complete_ns":2"#),
                "before",
            ),
            (
                PUT.replace(r#""result":null"#, r#""result":"x""#),
                "only for get",
            ),
            (
                PUT.replace(r#""op":"put""#, r#""op":"append""#),
                "unknown variant",
            ),
            (PUT.replace('}', r#","extra":1}"#), "unknown field"),
        ];
        for (line, what) in cases {
            let e = parse_history(&line).expect_err(&line);
            assert!(e.to_string().contains(what), "{e} for {line}");
        }
    }

    #[test]
    fn display() {
        let ops = parse_history(PUT).expect("valid");
        assert_eq!(
            ops[0].to_string(),
            r#"client 1: put("k", "a"): ok, invoked at 5 ns, completed at 9 ns"#
        );
    }
}
