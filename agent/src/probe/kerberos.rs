//! MIT Kerberos tools (kinit, kvno, klist, kdestroy) run against one ticket
//! cache and one krb5.conf. The simulated probe uses them to make a
//! migration a real S4U2Self + S4U2Proxy check against the lab KDC, and the
//! lab harness (`kcdsync-tests`) asks the KDC the same question with them:
//! one way to ask, so both get the same answer. Each tool runs through
//! [`crate::process`], with a time limit.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kcdsync_proto::timestamp_from_ms;
use kcdsync_proto::v1::KerberosTicket;

use crate::calendar::days_from_civil;
use crate::process::{self, RunError};

/// The tools, pointed at one configuration and one ticket cache.
#[derive(Debug, Clone)]
pub struct MitKerberos {
    /// `KRB5_CONFIG`: which KDC and realm.
    pub krb5_config: PathBuf,
    /// `KRB5CCNAME`, e.g. `FILE:/var/lib/host/system.ccache`.
    pub ccache: String,
    /// Limit for each tool run.
    pub timeout: Duration,
}

impl MitKerberos {
    /// Runs one tool; `input` is written as one line to its standard input
    /// (kinit reads a password there). On success, what it printed (standard
    /// output, then error output).
    pub async fn run(&self, args: &[&str], input: Option<&str>) -> Result<String, RunError> {
        let mut cmd = process::Command::new(args[0], self.timeout)
            .args(&args[1..])
            .env("KRB5_CONFIG", &self.krb5_config)
            .env("KRB5CCNAME", &self.ccache);
        if let Some(line) = input {
            cmd = cmd.input(format!("{line}\n"));
        }
        let out = cmd.run().await?;
        Ok(format!("{}{}", out.stdout, out.stderr))
    }

    /// `klist -s`: the cache holds a valid ticket (a TGT after kinit).
    pub async fn has_tickets(&self) -> bool {
        self.run(&["klist", "-s"], None).await.is_ok()
    }

    /// A TGT for `principal` from a keytab.
    pub async fn kinit_keytab(&self, principal: &str, keytab: &Path) -> Result<(), RunError> {
        let keytab = keytab.display().to_string();
        self.run(&["kinit", "-k", "-t", &keytab, principal], None)
            .await
            .map(drop)
    }

    /// A TGT for `principal` from its password.
    pub async fn kinit_password(&self, principal: &str, password: &str) -> Result<(), RunError> {
        self.run(&["kinit", principal], Some(password)).await.map(drop)
    }

    /// `kvno -U <account> -P <spn>`: S4U2Self for `account`, then S4U2Proxy
    /// to `spn`, as the cache's principal: what a Hyper-V host asks the KDC
    /// before a live migration. `Ok` when the KDC grants both.
    pub async fn s4u(&self, account: &str, spn: &str) -> Result<(), RunError> {
        self.run(&["kvno", "-U", account, "-P", spn], None).await.map(drop)
    }

    /// The tickets in the cache (`klist`).
    pub async fn tickets(&self) -> Result<Vec<KerberosTicket>, RunError> {
        self.run(&["klist"], None).await.map(|text| parse_mit_klist(&text))
    }

    /// `kdestroy`: empties the cache.
    pub async fn destroy(&self) -> Result<(), RunError> {
        self.run(&["kdestroy"], None).await.map(drop)
    }
}

/// What a failed tool said, for a verdict: everything it printed (standard
/// output, then error output) trimmed; for a tool that did not run to its
/// end, why.
pub fn said(e: &RunError) -> String {
    match e {
        RunError::Failed { stdout, stderr, .. } => format!("{stdout}{stderr}").trim().to_owned(),
        RunError::Io { source, .. } => source.to_string(),
        other => other.to_string(),
    }
}

/// Tickets in an MIT ccache as `klist` prints them:
/// `11/25/26 08:30:01  11/25/26 18:30:01  krbtgt/LAB.TEST@LAB.TEST`.
fn parse_mit_klist(text: &str) -> Vec<KerberosTicket> {
    let mut out = Vec::new();
    for line in text.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        if parts.len() >= 5 && parts[0].contains('/') && parts[1].contains(':') {
            let start = mit_time(parts[0], parts[1]);
            let end = mit_time(parts[2], parts[3]);
            out.push(KerberosTicket {
                server: parts[4].to_owned(),
                start_time: start.map(timestamp_from_ms),
                end_time: end.map(timestamp_from_ms),
                ..Default::default()
            });
        }
    }
    out
}

/// `MM/DD/YY HH:MM:SS` (local time of a UTC lab machine) as Unix ms.
fn mit_time(date: &str, time: &str) -> Option<i64> {
    let d: Vec<i64> = date.split('/').map(|p| p.parse().ok()).collect::<Option<_>>()?;
    let t: Vec<i64> = time.split(':').map(|p| p.parse().ok()).collect::<Option<_>>()?;
    if d.len() != 3 || t.len() != 3 {
        return None;
    }
    let year = if d[2] < 100 { 2000 + d[2] } else { d[2] };
    let days = days_from_civil(year, d[0], d[1]);
    Some(((days * 86400) + t[0] * 3600 + t[1] * 60 + t[2]) * 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mit_klist_lines_become_tickets() {
        let t = parse_mit_klist(
            "Ticket cache: FILE:/tmp/x\nDefault principal: HV01$@LAB.TEST\n\nValid starting       Expires              Service principal\n11/25/26 08:30:01  11/25/26 18:30:01  krbtgt/LAB.TEST@LAB.TEST\n\trenew until 11/26/26 08:30:01\n",
        );
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].server, "krbtgt/LAB.TEST@LAB.TEST");
        assert_eq!(t[0].start_time.unwrap().seconds, 1795595401);
    }
}
