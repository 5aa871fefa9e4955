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
            s.push_str(&format!("  blocking: {}: {}\n", kind(f.kind), f.summary));
            // The evidence says exactly what is missing where (an entry, a bit, an RBCD grant).
            for e in &f.evidence {
                s.push_str(&format!("    {}: {}\n", e.key, e.value));
            }
            s.push_str(&format!("    fix: {}\n", f.remediation));
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
    print(out, json!({"hosts": r.hosts, "cells": cells}), || {
        super::grid::render(&r, crate::output::stdout_colour())
    });
    Ok(())
}

fn reasons(c: &pb::MatrixCell) -> Vec<String> {
    c.reasons.iter().map(|k| kind(*k)).collect()
}
