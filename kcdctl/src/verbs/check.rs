//! `check` and `matrix`: can a VM live-migrate, and why not. `check` answers
//! in its exit code too (0 ready, 3 not ready) so scripts can branch before
//! they run Move-VM.

use std::process::ExitCode;

use anyhow::Result;
use kcdsync_proto::v1 as pb;
use serde_json::{Value, json};

use crate::cli::Output;
use crate::client::{Client, status_err};
use crate::output::{finding_json, kind, print, readiness};

/// `check`'s exit code when the migration would fail.
const NOT_READY: u8 = 3;

pub async fn check(
    c: &mut Client,
    out: Output,
    source: String,
    destination: String,
    account: String,
    initiator: Option<String>,
) -> Result<ExitCode> {
    let r = c
        .check_migration(pb::CheckMigrationRequest {
            source,
            destination,
            account,
            initiator: initiator.unwrap_or_default(),
        })
        .await
        .map_err(status_err)?
        .into_inner();
    let findings = |fs: &[pb::Finding]| fs.iter().map(finding_json).collect::<Vec<_>>();
    let json = json!({"readiness": readiness(r.readiness), "summary": r.summary,
        "blocking": findings(&r.blocking), "warnings": findings(&r.warnings)});
    print(out, json, || {
        let mut s = format!("{}\n", r.summary);
        for f in &r.blocking {
            s.push_str(&format!(
                "  blocking: {}: {}\n    fix: {}\n",
                kind(f.kind),
                f.summary,
                f.remediation
            ));
        }
        for f in &r.warnings {
            s.push_str(&format!("  warning: {}: {}\n", kind(f.kind), f.summary));
        }
        s
    });
    Ok(if r.readiness == pb::Readiness::Ready as i32 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(NOT_READY)
    })
}

pub async fn matrix(c: &mut Client, out: Output, group: String, account: String) -> Result<()> {
    let r = c
        .readiness_matrix(pb::ReadinessMatrixRequest { group, account })
        .await
        .map_err(status_err)?
        .into_inner();
    let cells: Vec<Value> = r
        .cells
        .iter()
        .map(|c| {
            json!({"source": c.source, "destination": c.destination, "readiness": readiness(c.readiness),
                "reasons": reasons(c)})
        })
        .collect();
    print(out, json!({"hosts": r.hosts, "cells": cells}), || matrix_table(&r));
    Ok(())
}

/// A grid of short host names (FROM rows, TO columns: `ok`, `NO`, or `-` when
/// the controller sent no cell), then one line per pair that is not ready.
fn matrix_table(r: &pb::ReadinessMatrixResponse) -> String {
    let short: Vec<String> = r
        .hosts
        .iter()
        .map(|h| h.split('.').next().unwrap_or(h).to_owned())
        .collect();
    let w = short.iter().map(String::len).max().unwrap_or(4).max(8);
    let mut s = format!("{:<w$}", "FROM\\TO");
    for h in &short {
        s.push_str(&format!(" {h:<w$}"));
    }
    s.push('\n');
    for (i, src) in r.hosts.iter().enumerate() {
        s.push_str(&format!("{:<w$}", short[i]));
        for dst in &r.hosts {
            let cell = r.cells.iter().find(|c| &c.source == src && &c.destination == dst);
            let mark = match cell {
                None => "-",
                Some(c) if c.readiness == pb::Readiness::Ready as i32 => "ok",
                Some(_) => "NO",
            };
            s.push_str(&format!(" {mark:<w$}"));
        }
        s.push('\n');
    }
    for c in r.cells.iter().filter(|c| c.readiness != pb::Readiness::Ready as i32) {
        s.push_str(&format!(
            "  {} -> {}: {}\n",
            c.source,
            c.destination,
            reasons(c).join(", ")
        ));
    }
    s
}

fn reasons(c: &pb::MatrixCell) -> Vec<String> {
    c.reasons.iter().map(|k| kind(*k)).collect()
}
