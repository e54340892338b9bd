//! `raft-ctl json PATH [FILE]`: one value out of a JSON document (raft-ctl's
//! own `--json` output, usually), printed so that a shell script can use it
//! as it is. The scripts read JSON with this instead of sed or awk.
//!
//! PATH is a list of steps separated by `.` (empty or `.`: the whole
//! document):
//! - `name`: the field of an object;
//! - `2`: the element of an array at that position (from 0);
//! - `id=2`: the first element of an array whose field `id` prints as `2`;
//! - `*`: every element of an array (or value of an object); the steps
//!   after it apply to each.
//!
//! Output: a string as it is (no quotes), a number or boolean as in JSON,
//! null as an empty line; an array one element per line; an object as
//! compact JSON. A step that finds nothing is an error (exit 1).

use std::io::{Read, Write};
use std::path::Path;
use std::process::ExitCode;

use serde_json::Value;

use crate::{fail, EXIT_BAD_ARGS, EXIT_ERROR};

/// A document larger than this is refused: the outputs it is meant for
/// are a few kilobytes (a bench report, a status).
const DOCUMENT_BYTES_MAX: u64 = 64 << 20;

pub fn run(path: &str, file: Option<&Path>) -> ExitCode {
    let text = match read(file) {
        Ok(t) => t,
        Err(e) => return fail(EXIT_BAD_ARGS, e),
    };
    let doc: Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => return fail(EXIT_ERROR, format!("{}: not JSON: {e}", source_name(file))),
    };
    let found = match select(&doc, path) {
        Ok(v) => v,
        Err(e) => return fail(EXIT_ERROR, format!("{}: {e}", source_name(file))),
    };
    let mut out = String::new();
    for v in found {
        render(v, &mut out);
    }
    match std::io::stdout().lock().write_all(out.as_bytes()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(EXIT_ERROR, format!("cannot write to stdout: {e}")),
    }
}

fn source_name(file: Option<&Path>) -> String {
    file.map_or("stdin".into(), |f| f.display().to_string())
}

fn read(file: Option<&Path>) -> Result<String, String> {
    let mut text = String::new();
    let r = match file {
        Some(f) => std::fs::File::open(f)
            .and_then(|h| h.take(DOCUMENT_BYTES_MAX).read_to_string(&mut text)),
        None => std::io::stdin()
            .lock()
            .take(DOCUMENT_BYTES_MAX)
            .read_to_string(&mut text),
    };
    r.map_err(|e| format!("cannot read {}: {e}", source_name(file)))?;
    Ok(text)
}

/// The values `path` leads to in `doc` (several after a `*`).
pub fn select<'a>(doc: &'a Value, path: &str) -> Result<Vec<&'a Value>, String> {
    let mut current = vec![doc];
    let steps = path.split('.').filter(|s| !s.is_empty());
    for step in steps {
        let mut next = Vec::new();
        for v in current {
            step_into(v, step, &mut next)?;
        }
        current = next;
    }
    Ok(current)
}

fn step_into<'a>(v: &'a Value, step: &str, next: &mut Vec<&'a Value>) -> Result<(), String> {
    let found = match (v, step) {
        (Value::Array(a), "*") => {
            next.extend(a.iter());
            return Ok(());
        }
        (Value::Object(o), "*") => {
            next.extend(o.values());
            return Ok(());
        }
        (Value::Array(a), _) => match step.split_once('=') {
            Some((field, want)) => a
                .iter()
                .find(|e| e.get(field).is_some_and(|f| plain(f) == want)),
            None => step.parse::<usize>().ok().and_then(|i| a.get(i)),
        },
        (Value::Object(o), _) => o.get(step),
        _ => None,
    };
    match found {
        Some(f) => {
            next.push(f);
            Ok(())
        }
        None => Err(format!("no {step:?} in {}", kind(v))),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A scalar as a script wants it; arrays and objects as compact JSON.
fn plain(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn render(v: &Value, out: &mut String) {
    match v {
        Value::Array(a) => {
            for e in a {
                out.push_str(&plain(e));
                out.push('\n');
            }
        }
        other => {
            out.push_str(&plain(other));
            out.push('\n');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lines(doc: &Value, path: &str) -> Result<String, String> {
        let mut out = String::new();
        for v in select(doc, path)? {
            render(v, &mut out);
        }
        Ok(out)
    }

    #[test]
    fn select_field_index_match_and_each() {
        let doc = json!([
            {"id": 1, "role": "follower", "reachable": true},
            {"id": 3, "role": null, "reachable": false},
        ]);
        assert_eq!(lines(&doc, "id=3.reachable").unwrap(), "false\n");
        assert_eq!(lines(&doc, "0.role").unwrap(), "follower\n");
        assert_eq!(lines(&doc, "id=3.role").unwrap(), "\n");
        assert_eq!(lines(&doc, "*.id").unwrap(), "1\n3\n");
        assert!(lines(&doc, "id=2.role").is_err());
        assert!(lines(&doc, "0.term").is_err());
    }

    #[test]
    fn select_arrays_print_one_element_a_line() {
        let doc = json!({"leaders_seen": [1, 2], "ok": 7, "name": "a b", "o": {"x": 1}});
        assert_eq!(lines(&doc, "leaders_seen").unwrap(), "1\n2\n");
        assert_eq!(lines(&doc, "ok").unwrap(), "7\n");
        assert_eq!(lines(&doc, "name").unwrap(), "a b\n");
        assert_eq!(lines(&doc, "o").unwrap(), "{\"x\":1}\n");
        assert_eq!(lines(&doc, ".").unwrap(), doc.to_string() + "\n");
    }
}
