//! The host-identity script (Win32_OperatingSystem, Win32_ComputerSystem,
//! Win32_DeviceGuard): names, OS build and whether Credential Guard runs,
//! which decides whether CredSSP migration can work at all.

use kcdsync_proto::v1::HostIdentity;
use serde_json::Value;

use super::ParseError;
use super::json::{as_u32, json_single, opt_string, prop, req, wrong};

/// Output of [`PS_OS_DEVICE_GUARD`](crate::windows::scripts::PS_OS_DEVICE_GUARD): `(os_build, caption, credential_guard_running)`.
/// `BuildNumber` may be a string or a number (null → 0, unknown);
/// Credential Guard runs when `SecurityServicesRunning` contains 1. A missing
/// Win32_DeviceGuard class (null or absent property) means not running.
pub fn parse_os_and_device_guard(json: &str) -> Result<(u32, String, bool), ParseError> {
    const W: &str = "Win32_OperatingSystem/Win32_DeviceGuard";
    let m = json_single(json, W)?;
    let build = match req(&m, W, "BuildNumber")? {
        Value::Null => 0,
        v => as_u32(v, W, "BuildNumber")?,
    };
    let caption = opt_string(&m, W, "Caption")?;
    let running = match prop(&m, "SecurityServicesRunning") {
        None => false,
        Some(v) => security_services_contain(v, 1, W)?,
    };
    Ok((build, caption, running))
}

/// Output of [`PS_OS_DEVICE_GUARD`](crate::windows::scripts::PS_OS_DEVICE_GUARD) as a [`HostIdentity`]: build, caption and
/// Credential Guard as [`parse_os_and_device_guard`] reads them;
/// `netbios_name` = `ComputerName`; `fqdn` = `DNSHostName.Domain` in lower
/// case when `PartOfDomain` is true, else `DNSHostName` alone (a host whose
/// primary DNS suffix differs from its AD domain is not handled). Missing
/// names stay empty.
pub fn parse_host_identity(json: &str) -> Result<HostIdentity, ParseError> {
    const W: &str = "Win32_OperatingSystem/Win32_DeviceGuard";
    let (os_build, os_caption, credential_guard_running) = parse_os_and_device_guard(json)?;
    let m = json_single(json, W)?;
    let netbios_name = opt_string(&m, W, "ComputerName")?.trim().to_string();
    let dns = opt_string(&m, W, "DNSHostName")?
        .trim()
        .trim_end_matches('.')
        .to_string();
    let domain = opt_string(&m, W, "Domain")?.trim().trim_matches('.').to_string();
    let joined = match prop(&m, "PartOfDomain") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => return Err(wrong(W, "PartOfDomain", "a boolean", other)),
    };
    let fqdn = if dns.is_empty() {
        String::new()
    } else if joined && !domain.is_empty() {
        format!("{dns}.{domain}").to_ascii_lowercase()
    } else {
        dns.to_ascii_lowercase()
    };
    Ok(HostIdentity {
        fqdn,
        netbios_name,
        os_build,
        os_caption,
        credential_guard_running,
    })
}

fn security_services_contain(v: &Value, code: u64, what: &str) -> Result<bool, ParseError> {
    const F: &str = "SecurityServicesRunning";
    let is_code = |x: &Value| match x {
        Value::Number(n) => Ok(n.as_u64() == Some(code)),
        Value::String(s) => Ok(s.trim().parse::<u64>().ok() == Some(code)),
        Value::Null => Ok(false),
        other => Err(wrong(what, F, "an array of numbers", other)),
    };
    match v {
        Value::Array(items) => {
            let mut found = false;
            for x in items {
                found |= is_code(x)?;
            }
            Ok(found)
        }
        // PS 5.1 sometimes writes an array property as {"value": [...], "Count": n}.
        Value::Object(m) => match prop(m, "value") {
            Some(inner @ Value::Array(_)) => security_services_contain(inner, code, what),
            _ => Err(wrong(what, F, "an array of numbers", v)),
        },
        scalar => is_code(scalar),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::windows::parse::fixtures::*;

    #[test]
    fn os_and_device_guard_fixtures() {
        assert_eq!(
            parse_os_and_device_guard(OS_WS2022).unwrap(),
            (20348, "Microsoft Windows Server 2022 Datacenter".to_string(), false)
        );
        assert_eq!(
            parse_os_and_device_guard(OS_WS2025).unwrap(),
            (26100, "Microsoft Windows Server 2025 Datacenter".to_string(), true)
        );
        assert_eq!(
            parse_os_and_device_guard(&crlf(OS_NO_DG)).unwrap(),
            (14393, "Microsoft Windows Server 2016 Datacenter".to_string(), false)
        );
    }

    #[test]
    fn host_identity_from_the_os_script() {
        assert_eq!(
            parse_host_identity(OS_WS2022).unwrap(),
            HostIdentity {
                fqdn: "hv01.contoso.com".into(),
                netbios_name: "HV01".into(),
                os_build: 20348,
                os_caption: "Microsoft Windows Server 2022 Datacenter".into(),
                credential_guard_running: false,
            }
        );
        let id = parse_host_identity(OS_WS2025).unwrap();
        assert_eq!(
            (id.fqdn.as_str(), id.os_build, id.credential_guard_running),
            ("hv02.contoso.com", 26100, true)
        );
        let id = parse_host_identity(OS_NO_DG).unwrap();
        assert_eq!(
            (id.fqdn.as_str(), id.netbios_name.as_str()),
            ("lab-hv9", "LAB-HV9"),
            "workgroup: no domain suffix"
        );
        let id = parse_host_identity("{\"BuildNumber\": \"1\"}").unwrap();
        assert_eq!((id.fqdn.as_str(), id.netbios_name.as_str()), ("", ""));
        assert!(matches!(
            parse_host_identity("{\"BuildNumber\": \"1\", \"PartOfDomain\": \"yes\"}"),
            Err(ParseError::WrongType {
                field: "PartOfDomain",
                ..
            })
        ));
    }

    #[test]
    fn os_variants() {
        let p = parse_os_and_device_guard;
        assert_eq!(
            p("{\"BuildNumber\": 17763, \"Caption\": null}").unwrap(),
            (17763, String::new(), false)
        );
        assert_eq!(
            p("{\"BuildNumber\": null, \"SecurityServicesRunning\": 1}").unwrap(),
            (0, String::new(), true)
        );
        assert!(
            p("{\"BuildNumber\": \"26100\", \"SecurityServicesRunning\": {\"value\": [2, 1], \"Count\": 2}}")
                .unwrap()
                .2
        );
        assert!(
            !p("{\"BuildNumber\": \"26100\", \"SecurityServicesRunning\": [2, 99]}")
                .unwrap()
                .2
        );
        assert!(
            !p("{\"BuildNumber\": \"26100\", \"SecurityServicesRunning\": []}")
                .unwrap()
                .2
        );
        assert!(matches!(
            p("{\"BuildNumber\": \"abc\"}"),
            Err(ParseError::WrongType {
                field: "BuildNumber",
                ..
            })
        ));
        assert!(matches!(
            p("{\"BuildNumber\": \"99999999999\"}"),
            Err(ParseError::WrongType { .. })
        ));
        assert!(matches!(
            p("{\"BuildNumber\": 1, \"SecurityServicesRunning\": [[1]]}"),
            Err(ParseError::WrongType { .. })
        ));
        assert!(matches!(
            p("{\"Caption\": \"x\"}"),
            Err(ParseError::Missing {
                field: "BuildNumber",
                ..
            })
        ));
    }
}
