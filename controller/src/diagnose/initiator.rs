//! Who runs Move-VM. When it runs on the source, the source's own delegation
//! decides (`source`). When it runs elsewhere — a management gateway, an
//! orchestrator's host — that machine first has to act for the account
//! towards the source (`cifs/` and the migration service), so it needs
//! delegation of its own: classic KCD on its computer object, with protocol
//! transition (Hyper-V remoting from it goes through WinRM, which holds no
//! forwardable ticket of the user: the seed's 0x8009030E, one hop earlier), or
//! RBCD on the source naming it.
//!
//! The initiator is usually outside the managed scope, so kcdsync explains
//! what is missing and never writes it. The edge reads the initiator from AD
//! (`Ad::computers_named`); everything here is pure.

use super::Facts;
use super::source::missing_entries;
use crate::exposure::sd;
use crate::model::names::HostName;
use crate::model::{
    ACCOUNTDISABLE, ATTR_DELEGATE_TO, ATTR_RBCD, ATTR_UAC, Computer, Finding, FindingKind as Kind, Severity,
    TRUSTED_TO_AUTH_FOR_DELEGATION,
};

/// The machine where Move-VM runs, as far as AD tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Initiator {
    /// The source itself (or the caller did not say): nothing more to check.
    Source,
    /// No computer of this name in AD.
    Missing(String),
    /// Several computers claim this DNS name, and none is the machine
    /// account Windows would give it: which one runs Move-VM is unknown.
    Ambiguous { name: String, claimants: Vec<String> },
    /// The initiator's computer object (only `INITIATOR_ATTRS` when read
    /// from outside the scope).
    Computer(Box<Computer>),
}

impl Initiator {
    /// The name to show, or `None` for the source.
    pub fn name(&self) -> Option<String> {
        match self {
            Initiator::Source => None,
            Initiator::Missing(n) | Initiator::Ambiguous { name: n, .. } => Some(n.clone()),
            Initiator::Computer(c) => Some(c.display_name()),
        }
    }
}

/// Which of the computers an AD search returned for `name` is the initiator.
///
/// A NetBIOS name is the machine account `NAME$`, unique in the domain. For an
/// FQDN, the machine account Windows derives from it (`first label$`) wins if
/// its dNSHostName agrees (or is unset): that is the principal the KDC sees
/// when the machine asks for tickets, whatever another object's dNSHostName
/// claims (anyone who may write a dNSHostName could claim the name). Failing
/// that, the one object whose dNSHostName is the FQDN (a host whose NetBIOS
/// name differs from its first label); several such objects are ambiguous.
pub fn pick(name: &HostName, found: Vec<Computer>) -> Initiator {
    let shown = name.to_string();
    match name {
        HostName::Netbios(n) => match found.into_iter().find(|c| &c.netbios() == n) {
            Some(c) => Initiator::Computer(Box::new(c)),
            None => Initiator::Missing(shown),
        },
        HostName::Fqdn(f) => {
            let derived = name.derived_netbios();
            let dns_agrees = |c: &Computer| c.fqdn().is_none_or(|d| &d == f);
            if let Some(i) = found.iter().position(|c| c.netbios() == derived && dns_agrees(c)) {
                return Initiator::Computer(Box::new(found.into_iter().nth(i).expect("found")));
            }
            let mut claimants: Vec<Computer> = found.into_iter().filter(|c| c.fqdn().as_ref() == Some(f)).collect();
            match claimants.len() {
                0 => Initiator::Missing(shown),
                1 => Initiator::Computer(Box::new(claimants.remove(0))),
                _ => Initiator::Ambiguous {
                    name: shown,
                    claimants: claimants.iter().map(|c| c.sam_account_name.clone()).collect(),
                },
            }
        }
    }
}

impl Facts<'_> {
    /// The initiator as the managed scope already knows it: the source
    /// itself, or another computer of the scope. `None` when AD must be asked.
    pub fn initiator_in_scope(&self, name: &HostName, source: &str) -> Option<Initiator> {
        let i = self.index.find(name)?;
        let c = &self.observed.computers[i];
        let is_source = self.computer(source).is_some_and(|s| s.dn == c.dn);
        Some(if is_source {
            Initiator::Source
        } else {
            Initiator::Computer(Box::new(c.clone()))
        })
    }
}

/// What the initiator lacks to act for the account towards `src`.
pub(super) fn initiator_findings(initiator: &Initiator, src: &Computer) -> Vec<Finding> {
    let s = src.display_name();
    match initiator {
        Initiator::Source => Vec::new(),
        Initiator::Missing(n) => vec![
            Finding::new(
                Kind::HostMissingFromAd,
                Severity::Critical,
                &[n, &s],
                "",
                format!("initiator: no computer `{n}` in AD"),
            )
            .fix(
                "name the machine that runs Move-VM by its FQDN or NetBIOS name; it must be a computer of this domain",
                false,
            ),
        ],
        Initiator::Ambiguous { name, claimants } => vec![
            Finding::new(
                Kind::HostIdentityConflict,
                Severity::Critical,
                &[name, &s],
                "",
                format!("initiator: several computers claim `{name}`: which one runs Move-VM is unknown"),
            )
            .evidence("dNSHostName", format!("held by {}", claimants.join(", ")))
            .fix(
                "name the initiator by its NetBIOS name (sAMAccountName without `$`), and correct the dNSHostName of the others",
                false,
            ),
        ],
        Initiator::Computer(gw) if gw.dn.eq_ignore_ascii_case(&src.dn) => Vec::new(),
        Initiator::Computer(gw) => delegation_findings(gw, src),
    }
}

/// Whether the source's RBCD descriptor lets `gw` delegate to it.
enum Rbcd {
    Unset,
    Grants,
    Lacks,
    Unreadable(String),
}

fn rbcd(gw: &Computer, src: &Computer) -> Rbcd {
    if src.rbcd.is_empty() {
        return Rbcd::Unset;
    }
    match sd::dacl_sids(&src.rbcd) {
        Ok(sids) if gw.object_sid.as_ref().is_some_and(|g| sids.effective().contains(g)) => Rbcd::Grants,
        Ok(_) => Rbcd::Lacks,
        Err(e) => Rbcd::Unreadable(e.to_string()),
    }
}

/// The initiator `gw` (not the source) towards the source `src`.
fn delegation_findings(gw: &Computer, src: &Computer) -> Vec<Finding> {
    // Commands and evidence name the computer object; the text names the host.
    let (g, shown, s) = (gw.netbios(), gw.display_name(), src.display_name());
    let mut out = Vec::new();
    if gw.uac & ACCOUNTDISABLE != 0 {
        out.push(
            Finding::new(
                Kind::ComputerAccountDisabled,
                Severity::Critical,
                &[&shown],
                "",
                format!("{shown} (where Move-VM runs) is disabled: it cannot obtain tickets"),
            )
            .evidence(ATTR_UAC, format!("0x{:x}", gw.uac))
            .fix(format!("enable {g}, or run Move-VM elsewhere"), false),
        );
    }
    let rbcd = rbcd(gw, src);
    if matches!(rbcd, Rbcd::Grants) {
        return out;
    }
    let (required, by_netbios) = missing_entries(&gw.allowed_to_delegate_to, src);
    let transition = gw.uac & TRUSTED_TO_AUTH_FOR_DELEGATION != 0;
    if required.is_empty() && transition {
        if !by_netbios.is_empty() {
            out.push(
                Finding::new(
                    Kind::InitiatorCannotDelegate,
                    Severity::Warning,
                    &[&shown, &s],
                    "",
                    format!(
                        "{shown} may not delegate to {s} by its NetBIOS name: Move-VM addressed to `{}` fails",
                        src.netbios()
                    ),
                )
                .evidence(
                    &format!("{ATTR_DELEGATE_TO} of {g}"),
                    format!("missing {}", by_netbios.join(", ")),
                )
                .fix(classic_fix(&g, &by_netbios, true), false),
            );
        }
        return out;
    }
    let mut f = Finding::new(
        Kind::InitiatorCannotDelegate,
        Severity::Critical,
        &[&shown, &s],
        "",
        format!(
            "{shown} runs Move-VM but may not delegate to {s}: neither classic delegation with protocol transition on {g} nor RBCD on {s} allows it"
        ),
    )
    .evidence("initiator", format!("{} ({})", gw.sam_account_name, gw.dn));
    let mut add = required;
    add.extend(by_netbios);
    if !add.is_empty() {
        f = f.evidence(
            &format!("{ATTR_DELEGATE_TO} of {g}"),
            format!("missing {}", add.join(", ")),
        );
    }
    if !transition {
        f = f.evidence(
            &format!("{ATTR_UAC} of {g}"),
            format!(
                "0x{:x} (no 0x1000000 \"use any authentication protocol\": Hyper-V remoting from {g} goes through WinRM, which has no forwardable ticket of the user to delegate)",
                gw.uac
            ),
        );
    }
    let sid = gw.object_sid.as_deref().unwrap_or("its SID");
    let rbcd_says = match &rbcd {
        Rbcd::Unset => format!("unset on {s}"),
        Rbcd::Lacks => format!("{s}'s does not allow {} ({sid})", gw.sam_account_name),
        Rbcd::Unreadable(e) => format!("{s}'s cannot be read: {e}"),
        Rbcd::Grants => unreachable!("returned above"),
    };
    f = f.evidence(ATTR_RBCD, rbcd_says);
    let rbcd_fix = format!(
        "`Set-ADComputer {} -PrincipalsAllowedToDelegateToAccount {}`{}",
        src.netbios(),
        ps_quote(&gw.sam_account_name),
        if matches!(rbcd, Rbcd::Unset) {
            ""
        } else {
            " (it replaces the list: name the principals it allows today too)"
        }
    );
    out.push(f.fix(
        format!(
            "kcdsync does not write delegation for {g} (it is not a host it manages); on AD, either {}, or {rbcd_fix} (RBCD on the source)",
            classic_fix(&g, &add, transition)
        ),
        false,
    ));
    out
}

/// The PowerShell that gives `g` classic delegation to the `missing` entries,
/// with protocol transition unless it has it already.
fn classic_fix(g: &str, missing: &[String], transition: bool) -> String {
    let mut steps = Vec::new();
    if !missing.is_empty() {
        let values: Vec<String> = missing.iter().map(|e| ps_quote(e)).collect();
        steps.push(format!(
            "Set-ADComputer {g} -Add @{{'{ATTR_DELEGATE_TO}'={}}}",
            values.join(",")
        ));
    }
    if !transition {
        steps.push(format!(
            "Set-ADAccountControl {} -TrustedToAuthForDelegation $true",
            ps_quote(&format!("{g}$"))
        ));
    }
    format!("`{}` (classic KCD on {g})", steps.join("; "))
}

/// A PowerShell single-quoted string (names come from AD: quote them).
fn ps_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::WORKSTATION_TRUST_ACCOUNT as WS;
    use crate::model::fixtures::{computer, entries_to};

    const GW_SID: &str = "S-1-5-21-1-2-3-1601";

    /// GW01, outside the scope, read with `INITIATOR_ATTRS` only.
    fn gateway(uac: u32, delegate: &[String]) -> Computer {
        let mut c = computer("GW01", uac, &[]);
        c.dn = "CN=GW01,OU=Admin,DC=lab,DC=test".into();
        c.allowed_to_delegate_to = delegate.to_vec();
        c.spns.clear();
        c.object_sid = Some(GW_SID.into());
        c
    }

    fn hv01() -> Computer {
        computer("HV01", WS | TRUSTED_TO_AUTH_FOR_DELEGATION, &[])
    }

    fn check(gw: Computer, src: &Computer) -> Vec<Finding> {
        initiator_findings(&Initiator::Computer(Box::new(gw)), src)
    }

    fn evidence<'a>(f: &'a Finding, key: &str) -> &'a str {
        f.evidence
            .iter()
            .find(|(k, _)| k == key)
            .map_or("", |(_, v)| v.as_str())
    }

    #[test]
    fn a_gateway_with_no_delegation_is_told_exactly_what_to_set() {
        let f = check(gateway(WS, &[]), &hv01());
        assert_eq!(f.len(), 1, "{f:#?}");
        let f = &f[0];
        assert_eq!(
            (f.kind, f.severity),
            (Kind::InitiatorCannotDelegate, Severity::Critical)
        );
        assert_eq!(f.hosts, ["gw01.lab.test", "hv01.lab.test"]);
        let missing = evidence(f, "msDS-AllowedToDelegateTo of GW01");
        for e in entries_to("HV01") {
            assert!(missing.contains(&e), "{e} not named in {missing}");
        }
        assert!(evidence(f, "userAccountControl of GW01").contains("no 0x1000000"));
        assert_eq!(evidence(f, ATTR_RBCD), "unset on hv01.lab.test");
        assert!(!f.automatic, "kcdsync does not write the initiator");
        assert!(
            f.remediation.contains(
                "Set-ADComputer GW01 -Add @{'msDS-AllowedToDelegateTo'='Microsoft Virtual System Migration Service/hv01.lab.test','cifs/hv01.lab.test','Microsoft Virtual System Migration Service/HV01','cifs/HV01'}"
            ),
            "{}",
            f.remediation
        );
        assert!(
            f.remediation
                .contains("Set-ADAccountControl 'GW01$' -TrustedToAuthForDelegation $true")
        );
        assert!(
            f.remediation
                .contains("Set-ADComputer HV01 -PrincipalsAllowedToDelegateToAccount 'GW01$'")
        );
    }

    #[test]
    fn classic_delegation_needs_protocol_transition_too() {
        // "Kerberos only": the entries alone do not do (WinRM holds no forwardable ticket).
        let f = check(gateway(WS, &entries_to("HV01")), &hv01());
        assert_eq!(f.len(), 1);
        assert_eq!(evidence(&f[0], "msDS-AllowedToDelegateTo of GW01"), "");
        assert!(evidence(&f[0], "userAccountControl of GW01").starts_with("0x1000 "));
        assert!(!f[0].remediation.contains("-Add"), "{}", f[0].remediation);

        let ready = check(
            gateway(WS | TRUSTED_TO_AUTH_FOR_DELEGATION, &entries_to("HV01")),
            &hv01(),
        );
        assert!(ready.is_empty(), "{ready:#?}");
    }

    #[test]
    fn fqdn_entries_are_required_and_netbios_ones_only_warned_about() {
        let upper: Vec<String> = entries_to("HV01")
            .into_iter()
            .filter(|e| e.contains('.'))
            .map(|e| e.to_uppercase())
            .collect();
        let f = check(gateway(WS | TRUSTED_TO_AUTH_FOR_DELEGATION, &upper), &hv01());
        assert_eq!(f.len(), 1, "FQDN entries in any case do: {f:#?}");
        assert_eq!(f[0].severity, Severity::Warning);
        assert!(f[0].summary.contains("NetBIOS name"));

        let only_cifs = vec!["cifs/hv01.lab.test".to_owned(), "cifs/HV01".to_owned()];
        let f = check(gateway(WS | TRUSTED_TO_AUTH_FOR_DELEGATION, &only_cifs), &hv01());
        assert_eq!(f[0].severity, Severity::Critical);
        let missing = evidence(&f[0], "msDS-AllowedToDelegateTo of GW01");
        assert!(!missing.contains("cifs/"), "{missing}");
        assert!(missing.contains("Microsoft Virtual System Migration Service/hv01.lab.test"));
        assert!(
            !f[0].remediation.contains("Set-ADAccountControl"),
            "it has protocol transition"
        );
    }

    #[test]
    fn rbcd_on_the_source_naming_the_gateway_is_enough() {
        let mut src = hv01();
        src.rbcd = sd::rbcd_descriptor(&[GW_SID]).unwrap();
        assert!(
            check(gateway(WS, &[]), &src).is_empty(),
            "RBCD needs no protocol transition"
        );

        src.rbcd = sd::rbcd_descriptor(&["S-1-5-21-1-2-3-9999"]).unwrap();
        let f = check(gateway(WS, &[]), &src);
        assert!(evidence(&f[0], ATTR_RBCD).contains("does not allow GW01$ (S-1-5-21-1-2-3-1601)"));
        assert!(f[0].remediation.contains("it replaces the list"));

        src.rbcd = vec![1, 2, 3];
        let f = check(gateway(WS, &[]), &src);
        assert!(evidence(&f[0], ATTR_RBCD).contains("cannot be read"), "{f:#?}");
    }

    #[test]
    fn a_disabled_gateway_blocks_even_when_delegation_is_right() {
        let f = check(
            gateway(
                WS | TRUSTED_TO_AUTH_FOR_DELEGATION | ACCOUNTDISABLE,
                &entries_to("HV01"),
            ),
            &hv01(),
        );
        assert_eq!(
            f.iter().map(|f| f.kind).collect::<Vec<_>>(),
            [Kind::ComputerAccountDisabled]
        );
    }

    #[test]
    fn the_source_missing_and_ambiguous_initiators() {
        let src = hv01();
        assert!(initiator_findings(&Initiator::Source, &src).is_empty());
        let same = Initiator::Computer(Box::new(hv01()));
        assert!(
            initiator_findings(&same, &src).is_empty(),
            "the source is no second hop"
        );
        let f = initiator_findings(&Initiator::Missing("GW09".into()), &src);
        assert_eq!(
            (f[0].kind, f[0].severity),
            (Kind::HostMissingFromAd, Severity::Critical)
        );
        assert_eq!(f[0].summary, "initiator: no computer `GW09` in AD");
    }

    #[test]
    fn the_machine_account_wins_over_a_dns_name_claimed_by_another_object() {
        let gw = gateway(WS, &[]);
        let mut impostor = computer("EVIL", WS | TRUSTED_TO_AUTH_FOR_DELEGATION, &[]);
        impostor.dns_host_name = Some("gw01.lab.test".into());
        let fqdn = HostName::parse("GW01.lab.test").unwrap();
        assert_eq!(
            pick(&fqdn, vec![impostor.clone(), gw.clone()]),
            Initiator::Computer(Box::new(gw.clone()))
        );
        assert_eq!(
            pick(&HostName::parse("gw01").unwrap(), vec![impostor.clone(), gw.clone()]),
            Initiator::Computer(Box::new(gw.clone()))
        );
        // Only one object answers to the FQDN: a host whose NetBIOS name is not its first label.
        assert_eq!(
            pick(&fqdn, vec![impostor.clone()]),
            Initiator::Computer(Box::new(impostor.clone()))
        );
        let mut other = impostor.clone();
        other.sam_account_name = "OTHER$".into();
        match pick(&fqdn, vec![impostor, other]) {
            Initiator::Ambiguous { claimants, .. } => assert_eq!(claimants, ["EVIL$", "OTHER$"]),
            i => panic!("{i:?}"),
        }
        assert_eq!(pick(&fqdn, Vec::new()), Initiator::Missing("gw01.lab.test".into()));
        // GW01$ whose dNSHostName names another host is not what was asked for.
        let mut moved = gw;
        moved.dns_host_name = Some("gw01.elsewhere.test".into());
        assert_eq!(pick(&fqdn, vec![moved]), Initiator::Missing("gw01.lab.test".into()));
    }

    #[test]
    fn names_from_ad_are_quoted_for_powershell() {
        assert_eq!(ps_quote("O'Brien$"), "'O''Brien$'");
    }
}
