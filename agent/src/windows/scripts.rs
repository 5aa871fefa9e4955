//! The commands the Windows probe runs, as constants: one PowerShell script
//! per question and the klist arguments. Kept apart from the parsers so the
//! whole command surface of the agent on a host can be reviewed in one
//! screen; each script selects exactly the properties its parser in
//! [`crate::windows::parse`] reads.
//!
//! The scripts contain no double quotes, so Windows command-line quoting of
//! the `-Command` argument cannot alter them.

/// Prepended to every script. `$ErrorActionPreference='Stop'`: a failing
/// cmdlet exits non-zero with its message on stderr instead of printing
/// nothing (an empty output is a valid answer for several scripts).
/// `$ProgressPreference='SilentlyContinue'`: no progress records written to
/// the output streams. `OutputEncoding` UTF-8: names and messages outside
/// the OEM code page survive the pipe.
macro_rules! ps_prelude {
    () => {
        "$ErrorActionPreference='Stop'; $ProgressPreference='SilentlyContinue'; \
         [Console]::OutputEncoding=[System.Text.Encoding]::UTF8; "
    };
}

/// Hyper-V host migration settings: one object (WINDOWS-FACTS §1). Only
/// scalar properties are selected (Get-VMHost has nested members).
pub const PS_VMHOST: &str = concat!(
    ps_prelude!(),
    "Get-VMHost | Select-Object ComputerName,FullyQualifiedDomainName,\
     VirtualMachineMigrationEnabled,VirtualMachineMigrationAuthenticationType,\
     VirtualMachineMigrationPerformanceOption,MaximumVirtualMachineMigrations,\
     MaximumStorageMigrations,UseAnyNetworkForMigration | ConvertTo-Json"
);

/// User-managed migration networks: nothing, one object or an array.
pub const PS_MIGRATION_NETWORKS: &str = concat!(
    ps_prelude!(),
    "Get-VMMigrationNetwork | Select-Object Subnet,Priority | ConvertTo-Json"
);

/// vmms and WinRM. A service that does not exist is left out of the output
/// (not an error), so the probe can say which one is missing.
pub const PS_SERVICES: &str = concat!(
    ps_prelude!(),
    "Get-Service -Name vmms,WinRM -ErrorAction SilentlyContinue | \
     Select-Object Name,Status,StartType | ConvertTo-Json"
);

/// The host's names, OS build and caption, and the Device Guard services
/// running, as one object of our own making. The Win32_DeviceGuard class may
/// be missing (older builds, no VBS): then `SecurityServicesRunning` is null.
/// `ComputerName` is `%COMPUTERNAME%` (the NetBIOS name); `DNSHostName`,
/// `Domain` and `PartOfDomain` come from Win32_ComputerSystem.
pub const PS_OS_DEVICE_GUARD: &str = concat!(
    ps_prelude!(),
    "$os = Get-CimInstance -ClassName Win32_OperatingSystem; \
     $cs = Get-CimInstance -ClassName Win32_ComputerSystem; \
     $dg = $null; \
     try { $dg = Get-CimInstance -Namespace root\\Microsoft\\Windows\\DeviceGuard \
     -ClassName Win32_DeviceGuard -ErrorAction Stop } catch { $dg = $null }; \
     [pscustomobject]@{ BuildNumber = $os.BuildNumber; Caption = $os.Caption; \
     SecurityServicesRunning = $dg.SecurityServicesRunning; ComputerName = $env:COMPUTERNAME; \
     DNSHostName = $cs.DNSHostName; Domain = $cs.Domain; PartOfDomain = $cs.PartOfDomain } | \
     ConvertTo-Json"
);

/// VMMS-Admin events from a cursor on (the record at the cursor included,
/// so its TimeCreated can tell a cleared log), oldest first, at most
/// [`VMMS_EVENTS_PAGE`] per call; `{CURSOR}` is replaced by
/// [`vmms_events_script`]. No matching event is an error for Get-WinEvent
/// ("No events were found…"), hence `-ErrorAction SilentlyContinue`: empty
/// output means no event. `TimeCreated` is projected to ISO-8601 UTC, which
/// PS 5.1 and PS 7 print alike.
pub const PS_VMMS_EVENTS: &str = concat!(
    ps_prelude!(),
    "Get-WinEvent -LogName Microsoft-Windows-Hyper-V-VMMS-Admin \
     -FilterXPath '*[System[EventRecordID>={CURSOR}]]' -Oldest -MaxEvents 500 \
     -ErrorAction SilentlyContinue | \
     Select-Object RecordId,Id,Level,\
     @{n='TimeCreated';e={$_.TimeCreated.ToUniversalTime().ToString('o')}},Message | \
     ConvertTo-Json"
);

/// The newest VMMS-Admin event, in [`PS_VMMS_EVENTS`]'s shape: asked only
/// when nothing is left at or after the cursor, to tell a cleared log
/// (RecordIds restarted below the cursor) from a quiet one.
pub const PS_VMMS_NEWEST_EVENT: &str = concat!(
    ps_prelude!(),
    "Get-WinEvent -LogName Microsoft-Windows-Hyper-V-VMMS-Admin -MaxEvents 1 \
     -ErrorAction SilentlyContinue | \
     Select-Object RecordId,Id,Level,\
     @{n='TimeCreated';e={$_.TimeCreated.ToUniversalTime().ToString('o')}},Message | \
     ConvertTo-Json"
);

/// `-MaxEvents` of [`PS_VMMS_EVENTS`]: a page; the next call continues after
/// the highest RecordId seen.
pub const VMMS_EVENTS_PAGE: u32 = 500;

/// klist arguments listing the SYSTEM logon session's tickets.
pub const KLIST_SYSTEM_ARGS: [&str; 2] = ["-li", "0x3e7"];

/// klist arguments purging the SYSTEM logon session's tickets, in the order
/// Microsoft's klist documentation gives (`klist purge -li 0x3e7`).
pub const KLIST_PURGE_ARGS: [&str; 3] = ["purge", "-li", "0x3e7"];

/// [`PS_VMMS_EVENTS`] for events with a RecordId at or above `cursor`.
pub fn vmms_events_script(cursor: u64) -> String {
    PS_VMMS_EVENTS.replace("{CURSOR}", &cursor.to_string())
}

/// The arguments of `powershell.exe` for one script.
pub fn powershell_args(script: &str) -> Vec<String> {
    [
        // No profile scripts: the agent runs as LocalSystem, whose profile
        // anyone with admin rights could have changed; also a faster start.
        "-NoProfile",
        // A prompt (a missing parameter, a confirmation) fails instead of
        // waiting for a console that is not there.
        "-NonInteractive",
        // A host's script execution policy must not block `-Command`.
        "-ExecutionPolicy",
        "Bypass",
        "-Command",
        script,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn powershell_args_are_fixed_and_script_is_last() {
        assert_eq!(
            powershell_args("Get-VMHost"),
            [
                "-NoProfile",
                "-NonInteractive",
                "-ExecutionPolicy",
                "Bypass",
                "-Command",
                "Get-VMHost"
            ]
        );
    }

    #[test]
    fn scripts_have_no_double_quotes_and_select_the_parsed_properties() {
        for s in [
            PS_VMHOST,
            PS_MIGRATION_NETWORKS,
            PS_SERVICES,
            PS_OS_DEVICE_GUARD,
            PS_VMMS_EVENTS,
        ] {
            assert!(!s.contains('"'), "{s}");
            assert!(s.contains("ConvertTo-Json"), "{s}");
            assert!(s.starts_with("$ErrorActionPreference='Stop'"), "{s}");
        }
        assert!(
            PS_VMHOST.contains("Select-Object ComputerName,FullyQualifiedDomainName,VirtualMachineMigrationEnabled,")
        );
        assert!(PS_SERVICES.contains("Get-Service -Name vmms,WinRM"));
        assert!(PS_OS_DEVICE_GUARD.contains("root\\Microsoft\\Windows\\DeviceGuard"));
        let ev = vmms_events_script(4711);
        assert!(ev.contains("-LogName Microsoft-Windows-Hyper-V-VMMS-Admin"));
        assert!(ev.contains("-FilterXPath '*[System[EventRecordID>=4711]]'"), "{ev}");
        assert!(ev.contains("-ErrorAction SilentlyContinue"));
        assert!(ev.contains("-MaxEvents 500") && VMMS_EVENTS_PAGE == 500);
        assert!(ev.contains("$_.TimeCreated.ToUniversalTime().ToString('o')"));
        assert!(!ev.contains("{CURSOR}"));
        assert_eq!(KLIST_SYSTEM_ARGS, ["-li", "0x3e7"]);
        assert_eq!(KLIST_PURGE_ARGS, ["purge", "-li", "0x3e7"]);
    }
}
