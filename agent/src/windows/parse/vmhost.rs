//! `Get-VMHost`: the host's live-migration settings and the names it
//! reports (WINDOWS-FACTS §1).

use kcdsync_proto::v1::{MigrationAuthType, MigrationPerformance, MigrationSettings};
use serde_json::Value;

use super::ParseError;
use super::json::{as_u32, enum_code, json_single, opt_string, prop, req, req_bool};

/// Get-VMHost's answer: the migration settings plus the names it reports.
#[derive(Debug, Clone, PartialEq)]
pub struct VmHostInfo {
    /// `ComputerName`: the host's NetBIOS name, e.g. "HV01".
    pub computer_name: String,
    /// `FullyQualifiedDomainName`: the *domain* (Win32_ComputerSystem.Domain),
    /// not the host's FQDN.
    pub domain: String,
    /// `networks` is empty: it comes from [`parse_migration_networks`](super::parse_migration_networks).
    pub settings: MigrationSettings,
}

const AUTH_NAMES: &[(&str, i64)] = &[("CredSSP", 0), ("Kerberos", 1)];
const PERF_NAMES: &[(&str, i64)] = &[("TCPIP", 0), ("Compression", 1), ("SMB", 2)];

/// Output of [`PS_VMHOST`](crate::windows::scripts::PS_VMHOST). Auth type CredSSP = 0 / Kerberos = 1 and
/// performance TCPIP = 0 / Compression = 1 / SMB = 2 map to the proto
/// values; other numbers give UNSPECIFIED. `MaximumStorageMigrations` may be
/// absent (0 = unknown).
pub fn parse_vmhost_info(json: &str) -> Result<VmHostInfo, ParseError> {
    const W: &str = "Get-VMHost";
    let m = json_single(json, W)?;
    let auth = match enum_code(&m, W, "VirtualMachineMigrationAuthenticationType", AUTH_NAMES)? {
        Some(0) => MigrationAuthType::Credssp,
        Some(1) => MigrationAuthType::Kerberos,
        _ => MigrationAuthType::Unspecified,
    };
    let perf = match enum_code(&m, W, "VirtualMachineMigrationPerformanceOption", PERF_NAMES)? {
        Some(0) => MigrationPerformance::Tcpip,
        Some(1) => MigrationPerformance::Compression,
        Some(2) => MigrationPerformance::Smb,
        _ => MigrationPerformance::Unspecified,
    };
    let maximum_storage_migrations = match prop(&m, "MaximumStorageMigrations") {
        None | Some(Value::Null) => 0,
        Some(v) => as_u32(v, W, "MaximumStorageMigrations")?,
    };
    let settings = MigrationSettings {
        enabled: req_bool(&m, W, "VirtualMachineMigrationEnabled")?,
        authentication_type: auth as i32,
        maximum_migrations: as_u32(
            req(&m, W, "MaximumVirtualMachineMigrations")?,
            W,
            "MaximumVirtualMachineMigrations",
        )?,
        performance_option: perf as i32,
        use_any_network: req_bool(&m, W, "UseAnyNetworkForMigration")?,
        networks: Vec::new(),
        maximum_storage_migrations,
    };
    Ok(VmHostInfo {
        computer_name: opt_string(&m, W, "ComputerName")?,
        domain: opt_string(&m, W, "FullyQualifiedDomainName")?,
        settings,
    })
}

/// Output of [`PS_VMHOST`](crate::windows::scripts::PS_VMHOST), settings only (see [`parse_vmhost_info`]).
pub fn parse_vmhost(json: &str) -> Result<MigrationSettings, ParseError> {
    parse_vmhost_info(json).map(|i| i.settings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::windows::parse::fixtures::*;

    #[test]
    fn vmhost_ps51_kerberos_compression() {
        let info = parse_vmhost_info(VMHOST_PS51).unwrap();
        assert_eq!(info.computer_name, "HV01");
        assert_eq!(info.domain, "contoso.com");
        let s = info.settings;
        assert!(s.enabled);
        assert_eq!(s.authentication_type(), MigrationAuthType::Kerberos);
        assert_eq!(s.performance_option(), MigrationPerformance::Compression);
        assert_eq!(s.maximum_migrations, 2);
        assert_eq!(s.maximum_storage_migrations, 2);
        assert!(!s.use_any_network);
        assert!(s.networks.is_empty());
        assert_eq!(parse_vmhost(&crlf(VMHOST_PS51)).unwrap(), s);
    }

    #[test]
    fn vmhost_ps7_credssp_smb() {
        let s = parse_vmhost(VMHOST_PS7).unwrap();
        assert!(!s.enabled);
        assert_eq!(s.authentication_type(), MigrationAuthType::Credssp);
        assert_eq!(s.performance_option(), MigrationPerformance::Smb);
        assert_eq!(s.maximum_migrations, 4);
        assert!(s.use_any_network);
    }

    #[test]
    fn vmhost_tcpip_and_enum_names() {
        let j = VMHOST_PS7.replace(
            "\"VirtualMachineMigrationPerformanceOption\": 2",
            "\"VirtualMachineMigrationPerformanceOption\": 0",
        );
        assert_eq!(
            parse_vmhost(&j).unwrap().performance_option(),
            MigrationPerformance::Tcpip
        );
        let j = VMHOST_PS7.replace(
            "\"VirtualMachineMigrationAuthenticationType\": 0",
            "\"VirtualMachineMigrationAuthenticationType\": \"Kerberos\"",
        );
        assert_eq!(
            parse_vmhost(&j).unwrap().authentication_type(),
            MigrationAuthType::Kerberos
        );
    }

    #[test]
    fn vmhost_bogus_enums_are_unspecified() {
        let j = VMHOST_PS51
            .replace(
                "\"VirtualMachineMigrationAuthenticationType\":  1",
                "\"VirtualMachineMigrationAuthenticationType\":  99",
            )
            .replace(
                "\"VirtualMachineMigrationPerformanceOption\":  1",
                "\"VirtualMachineMigrationPerformanceOption\":  \"Bogus\"",
            );
        let s = parse_vmhost(&j).unwrap();
        assert_eq!(s.authentication_type(), MigrationAuthType::Unspecified);
        assert_eq!(s.performance_option(), MigrationPerformance::Unspecified);
        let j = VMHOST_PS51.replace(
            "\"VirtualMachineMigrationAuthenticationType\":  1",
            "\"VirtualMachineMigrationAuthenticationType\":  -3.5",
        );
        assert_eq!(
            parse_vmhost(&j).unwrap().authentication_type(),
            MigrationAuthType::Unspecified
        );
    }

    #[test]
    fn vmhost_wrong_types_and_shapes_are_errors() {
        let j = VMHOST_PS51.replace(
            "\"VirtualMachineMigrationEnabled\":  true",
            "\"VirtualMachineMigrationEnabled\":  \"yes\"",
        );
        let e = parse_vmhost(&j).unwrap_err();
        assert!(
            matches!(
                e,
                ParseError::WrongType {
                    field: "VirtualMachineMigrationEnabled",
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("VirtualMachineMigrationEnabled"), "{e}");

        let j = VMHOST_PS51.replace(
            "\"VirtualMachineMigrationAuthenticationType\":  1",
            "\"VirtualMachineMigrationAuthenticationType\":  [1]",
        );
        assert!(matches!(parse_vmhost(&j), Err(ParseError::WrongType { .. })));

        let j = VMHOST_PS51.replace(
            "\"MaximumVirtualMachineMigrations\":  2",
            "\"MaximumVirtualMachineMigrations\":  -1",
        );
        assert!(matches!(parse_vmhost(&j), Err(ParseError::OutOfRange { .. })));
        let j = VMHOST_PS51.replace(
            "\"MaximumVirtualMachineMigrations\":  2",
            "\"MaximumVirtualMachineMigrations\":  4294967296",
        );
        assert!(matches!(parse_vmhost(&j), Err(ParseError::OutOfRange { .. })));

        let j = VMHOST_PS51.replace("\"UseAnyNetworkForMigration\":  false", "\"Other\":  false");
        assert_eq!(
            parse_vmhost(&j).unwrap_err(),
            ParseError::Missing {
                what: "Get-VMHost".into(),
                field: "UseAnyNetworkForMigration"
            }
        );

        assert!(matches!(parse_vmhost(""), Err(ParseError::Shape { .. })));
        assert!(matches!(parse_vmhost("42"), Err(ParseError::Shape { .. })));
        assert!(matches!(
            parse_vmhost(&format!("[{VMHOST_PS51},{VMHOST_PS7}]")),
            Err(ParseError::Shape { .. })
        ));
        assert!(parse_vmhost(&format!("[{VMHOST_PS51}]")).is_ok());
        assert!(matches!(parse_vmhost("{\"a\": "), Err(ParseError::Json(_))));
    }

    #[test]
    fn vmhost_without_storage_migrations_is_zero() {
        let j = VMHOST_PS51.replace("\"MaximumStorageMigrations\":  2,", "");
        assert_eq!(parse_vmhost(&j).unwrap().maximum_storage_migrations, 0);
    }
}
