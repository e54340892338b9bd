//! `raft-ctl check FILE`: is a recorded history linearizable?

use std::path::Path;
use std::process::ExitCode;

use raftkit::check::{self, CheckOptions, OpKind, Operation};
use serde_json::json;

/// Exit code for a file that cannot be read or parsed.
const EXIT_BAD_FILE: u8 = 2;

pub struct Windows {
    /// No write may be acknowledged (complete with ok=true) in [a, b].
    pub no_acks_between: Option<(u64, u64)>,
    /// Some write must be acknowledged after this instant.
    pub acks_after: Option<u64>,
}

fn is_write(op: &Operation) -> bool {
    op.kind != OpKind::Get
}

pub fn run(path: &Path, windows: &Windows, json_out: bool) -> ExitCode {
    let ops = match check::read_history(path) {
        Ok(ops) => ops,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_BAD_FILE);
        }
    };
    let verdict = check::check(&ops, &CheckOptions::default());
    let mut extra_failures = Vec::new();
    if let Some((a, b)) = windows.no_acks_between {
        let acked: Vec<&Operation> = ops
            .iter()
            .filter(|o| is_write(o) && o.ok == Some(true))
            .filter(|o| o.complete_ns.is_some_and(|c| c >= a && c <= b))
            .collect();
        if !acked.is_empty() {
            extra_failures.push(format!(
                "{} writes acknowledged while they should not have been (between {a} and {b} ns), first: {}",
                acked.len(),
                acked[0]
            ));
        }
    }
    if let Some(t) = windows.acks_after {
        let after = ops
            .iter()
            .filter(|o| is_write(o) && o.ok == Some(true))
            .filter(|o| o.complete_ns.is_some_and(|c| c > t))
            .count();
        if after == 0 {
            extra_failures.push(format!(
                "no write was acknowledged after {t} ns: the cluster did not resume"
            ));
        }
    }
    let code = if !extra_failures.is_empty() {
        1
    } else {
        verdict.exit_code()
    };
    if json_out {
        println!(
            "{}",
            json!({
                "linearizable": verdict.is_linearizable(),
                "violation": verdict.has_violation(),
                "operations": verdict.operations,
                "keys": verdict.keys,
                "failed_keys": verdict.failures.iter().map(|f| f.key.clone()).collect::<Vec<_>>(),
                "undecided_keys": verdict.unknown.iter().map(|u| u.key.clone()).collect::<Vec<_>>(),
                "other_failures": extra_failures,
                "elapsed_ms": verdict.elapsed.as_millis() as u64,
            })
        );
    } else {
        for f in &extra_failures {
            println!("FAILED: {f}");
        }
        let text = verdict.to_string();
        print!("{text}");
        if !text.ends_with('\n') {
            println!();
        }
    }
    ExitCode::from(code as u8)
}
