//! Which host names may go into a certificate, and their one spelling
//! (lower-case, no trailing dot): issuing and reading certificates both
//! pass names through here, so a claim and a certificate compare equal.

use std::net::IpAddr;

use super::{CertError, Result};

fn name_err(input: &str, reason: &'static str) -> CertError {
    CertError::InvalidName {
        input: input.chars().take(80).collect(),
        reason,
    }
}

/// Validates a DNS host name and returns it lower-cased, without a trailing
/// dot. Only ASCII letters, digits, '-' and '.' are accepted; labels are 1 to
/// 63 characters and do not start or end with '-'; wildcards and IP addresses
/// are refused. Single-label names (`localhost`) are accepted.
pub fn normalize_dns_name(input: &str) -> Result<String> {
    if input.is_empty() {
        return Err(name_err(input, "it is empty"));
    }
    if !input.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.') {
        return Err(name_err(input, "only letters, digits, '-' and '.' are allowed"));
    }
    let name = input.strip_suffix('.').unwrap_or(input).to_ascii_lowercase();
    if name.parse::<IpAddr>().is_ok() {
        return Err(name_err(
            input,
            "this is an IP address, not a host name (use --ip for addresses)",
        ));
    }
    if name.len() > 253 {
        return Err(name_err(input, "a DNS name is at most 253 characters"));
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(name_err(input, "each DNS label must be 1 to 63 characters"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(name_err(input, "a DNS label may not start or end with '-'"));
        }
    }
    Ok(name)
}

/// Validates an agent's host name: a DNS name as [`normalize_dns_name`]
/// checks it, and an FQDN (at least two labels, e.g. `hv01.contoso.com`) —
/// the computer's dNSHostName, which is what the agent reports as
/// `HostIdentity.fqdn`. Returns it lower-cased. Apply the same function to the
/// host an agent claims before comparing it with
/// [`peer_host_names`](super::peer_host_names).
pub fn normalize_host_fqdn(input: &str) -> Result<String> {
    let name = normalize_dns_name(input)?;
    if !name.contains('.') {
        return Err(name_err(
            input,
            "give the host's FQDN (its dNSHostName, e.g. hv01.contoso.com), not a NetBIOS or short name",
        ));
    }
    Ok(name)
}

pub(super) fn validate_ca_name(input: &str) -> Result<()> {
    let err = |reason| CertError::InvalidCaName {
        input: input.chars().take(80).collect(),
        reason,
    };
    if input.trim().is_empty() {
        return Err(err("it is empty"));
    }
    if input.chars().count() > 64 {
        return Err(err("a common name is at most 64 characters"));
    }
    if input.chars().any(char::is_control) {
        return Err(err("control characters are not allowed"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::test_util::HOSTILE;
    use crate::certs::{Ca, Validity};

    #[test]
    fn hostile_host_names_are_refused() {
        let ca = Ca::new("kcdsync test CA").unwrap();
        let long_label = format!("{}.contoso.com", "a".repeat(64));
        let long_name = format!("{}.com", ["abcdefghij"; 25].join("."));
        for bad in HOSTILE.iter().copied().chain([long_label.as_str(), long_name.as_str()]) {
            assert!(
                matches!(
                    ca.issue_agent(bad, Validity::days(1)),
                    Err(CertError::InvalidName { .. })
                ),
                "{bad:?}"
            );
            assert!(normalize_host_fqdn(bad).is_err(), "{bad:?}");
        }
        assert!(ca.issue_server(&["kcdsync/x"], &[], Validity::days(1)).is_err());
        assert!(ca.issue_server(&["10.0.0.1"], &[], Validity::days(1)).is_err());
        assert!(ca.issue_server(&[], &[], Validity::days(1)).is_err());
        // Single-label names are fine for the controller, not for agents.
        ca.issue_server(&["localhost"], &[], Validity::days(1)).unwrap();
        assert_eq!(normalize_host_fqdn("HV01.lab.test.").unwrap(), "hv01.lab.test");
    }
}
