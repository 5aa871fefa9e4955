//! What the Windows probe runs on a Hyper-V host, and pure parsers for what
//! those commands print. No I/O here: [`crate::probe::windows`] runs the
//! commands, this module turns their output into `kcdsync.v1` messages. Every
//! parser is total: hostile or garbled input gives a [`ParseError`] (or an
//! `UNSPECIFIED` enum value for an unknown number), never a panic.
//!
//! Output shapes follow `shared/WINDOWS-FACTS.md`; the recorded samples are in
//! `agent/fixtures/windows/` with their provenance.
//!
//! One PowerShell invocation per question (Get-VMHost, Get-VMMigrationNetwork,
//! services, OS/Device Guard, events). Combining Get-VMHost and the migration
//! networks into one script would save one PowerShell start (~0.5 s) but would
//! nest an array inside an object, a shape PS 5.1's `ConvertTo-Json` is known
//! to mangle and that WINDOWS-FACTS does not describe; separate commands keep
//! every output in a documented shape, and one failing step does not hide the
//! others.
//!
//! The scripts contain no double quotes, so Windows command-line quoting of
//! the `-Command` argument cannot alter them.

use kcdsync_proto::v1::{
    HostIdentity, KerberosTicket, MigrationAttempt, MigrationAuthType, MigrationNetwork, MigrationPerformance,
    MigrationRole, MigrationSettings, ServiceState, ServiceStatus, StartMode,
};
use prost_types::Timestamp;
use serde_json::{Map, Value};

// ---------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------

/// Prepended to every script: stop on errors (so a failing cmdlet exits
/// non-zero with its message on stderr instead of printing nothing), no
/// progress records, UTF-8 output.
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

/// VMMS-Admin events after a cursor, oldest first, at most
/// [`VMMS_EVENTS_PAGE`] per call; `{CURSOR}` is replaced by
/// [`vmms_events_script`]. No matching event is an error for Get-WinEvent
/// ("No events were found…"), hence `-ErrorAction SilentlyContinue`: empty
/// output means no event. `TimeCreated` is projected to ISO-8601 UTC, which
/// PS 5.1 and PS 7 print alike.
pub const PS_VMMS_EVENTS: &str = concat!(
    ps_prelude!(),
    "Get-WinEvent -LogName Microsoft-Windows-Hyper-V-VMMS-Admin \
     -FilterXPath '*[System[EventRecordID>{CURSOR}]]' -Oldest -MaxEvents 500 \
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

/// [`PS_VMMS_EVENTS`] for events with a RecordId above `cursor`.
pub fn vmms_events_script(cursor: u64) -> String {
    PS_VMMS_EVENTS.replace("{CURSOR}", &cursor.to_string())
}

/// The arguments of `powershell.exe` for one script.
pub fn powershell_args(script: &str) -> Vec<String> {
    [
        "-NoProfile",
        "-NonInteractive",
        "-ExecutionPolicy",
        "Bypass",
        "-Command",
        script,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Why an output could not be read. Values quoted in messages are cut to a
/// short snippet, so a huge hostile string never makes a huge error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("not valid JSON: {0}")]
    Json(String),
    #[error("{what}: expected {expected}, found {found}")]
    Shape {
        what: String,
        expected: &'static str,
        found: String,
    },
    #[error("{what}: property `{field}` is missing")]
    Missing { what: String, field: &'static str },
    #[error("{what}: property `{field}` should be {expected}, found {found}")]
    WrongType {
        what: String,
        field: &'static str,
        expected: &'static str,
        found: String,
    },
    #[error("{what}: property `{field}` is out of range: {value}")]
    OutOfRange {
        what: String,
        field: &'static str,
        value: String,
    },
    #[error("{what}: property `{field}` is not a date PowerShell writes: {value}")]
    BadDate {
        what: String,
        field: &'static str,
        value: String,
    },
    #[error("klist line {line_no}: unrecognized line {line}")]
    KlistLine { line_no: usize, line: String },
    #[error("klist line {line_no}: {problem}: {line}")]
    KlistValue {
        line_no: usize,
        problem: &'static str,
        line: String,
    },
    #[error("klist ticket #{index} has no `{field}` line (truncated output?)")]
    KlistIncomplete { index: usize, field: &'static str },
    #[error("klist announced {announced} cached tickets but printed {found} (truncated output?)")]
    KlistCount { announced: u64, found: usize },
    #[error("klist printed no `Cached Tickets: (N)` line")]
    KlistNoCount,
    #[error("klist failed: {0}")]
    KlistFailed(String),
}

const SNIPPET_CHARS: usize = 120;

/// `s` quoted, cut to [`SNIPPET_CHARS`] characters.
fn snippet(s: &str) -> String {
    let mut out: String = s.chars().take(SNIPPET_CHARS).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    format!("{out:?}")
}

fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {}", snippet(&n.to_string())),
        Value::String(s) => format!("string {}", snippet(s)),
        Value::Array(a) => format!("an array of {} items", a.len()),
        Value::Object(_) => "an object".into(),
    }
}

// ---------------------------------------------------------------------------
// JSON helpers
// ---------------------------------------------------------------------------

/// ConvertTo-Json output: nothing (no object), one object, or an array of
/// objects. A UTF-8 BOM and surrounding whitespace are ignored.
fn json_items(text: &str, what: &str) -> Result<Vec<Map<String, Value>>, ParseError> {
    let t = text.trim_start_matches('\u{feff}').trim();
    if t.is_empty() {
        return Ok(Vec::new());
    }
    let v: Value = serde_json::from_str(t).map_err(|e| ParseError::Json(e.to_string()))?;
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Object(m) => Ok(vec![m]),
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::Object(m) => Ok(m),
                other => Err(ParseError::Shape {
                    what: format!("{what} item {i}"),
                    expected: "an object",
                    found: describe(&other),
                }),
            })
            .collect(),
        other => Err(ParseError::Shape {
            what: what.to_string(),
            expected: "an object or an array of objects",
            found: describe(&other),
        }),
    }
}

/// Exactly one object (an array of one is accepted).
fn json_single(text: &str, what: &str) -> Result<Map<String, Value>, ParseError> {
    let mut items = json_items(text, what)?;
    match items.len() {
        1 => Ok(items.remove(0)),
        n => Err(ParseError::Shape {
            what: what.to_string(),
            expected: "exactly one object",
            found: if n == 0 {
                "no output".to_string()
            } else {
                format!("{n} objects")
            },
        }),
    }
}

/// A property, matched exactly first, then case-insensitively (PowerShell
/// property names are case-insensitive).
fn prop<'a>(m: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    m.get(name)
        .or_else(|| m.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v))
}

fn req<'a>(m: &'a Map<String, Value>, what: &str, field: &'static str) -> Result<&'a Value, ParseError> {
    prop(m, field).ok_or_else(|| ParseError::Missing {
        what: what.to_string(),
        field,
    })
}

fn wrong(what: &str, field: &'static str, expected: &'static str, v: &Value) -> ParseError {
    ParseError::WrongType {
        what: what.to_string(),
        field,
        expected,
        found: describe(v),
    }
}

fn req_bool(m: &Map<String, Value>, what: &str, field: &'static str) -> Result<bool, ParseError> {
    match req(m, what, field)? {
        Value::Bool(b) => Ok(*b),
        other => Err(wrong(what, field, "a boolean", other)),
    }
}

/// A non-negative integer that fits u32; numeric strings are accepted
/// (Win32_OperatingSystem.BuildNumber is a string).
fn as_u32(v: &Value, what: &str, field: &'static str) -> Result<u32, ParseError> {
    let out_of_range = || ParseError::OutOfRange {
        what: what.to_string(),
        field,
        value: describe(v),
    };
    match v {
        Value::Number(n) => match n.as_u64() {
            Some(x) => u32::try_from(x).map_err(|_| out_of_range()),
            None => Err(out_of_range()),
        },
        Value::String(s) => {
            let s = s.trim();
            if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(wrong(what, field, "an unsigned integer", v));
            }
            s.parse::<u32>().map_err(|_| out_of_range())
        }
        other => Err(wrong(what, field, "an unsigned integer", other)),
    }
}

fn opt_string(m: &Map<String, Value>, what: &str, field: &'static str) -> Result<String, ParseError> {
    match prop(m, field) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(wrong(what, field, "a string", other)),
    }
}

/// The .NET value of an enum property: a number as ConvertTo-Json writes it,
/// or its name (as with `-EnumsAsStrings`). `None` for null or an unknown
/// name or a non-integer number; the caller maps `None` and unknown numbers
/// to UNSPECIFIED. Other JSON types are an error.
fn enum_code(
    m: &Map<String, Value>,
    what: &str,
    field: &'static str,
    names: &[(&str, i64)],
) -> Result<Option<i64>, ParseError> {
    match req(m, what, field)? {
        Value::Null => Ok(None),
        Value::Number(n) => Ok(n.as_i64()),
        Value::String(s) => {
            let s = s.trim();
            if let Ok(n) = s.parse::<i64>() {
                return Ok(Some(n));
            }
            Ok(names
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(s))
                .map(|(_, n)| *n))
        }
        other => Err(wrong(what, field, "an enum number or name", other)),
    }
}

// ---------------------------------------------------------------------------
// Get-VMHost, Get-VMMigrationNetwork
// ---------------------------------------------------------------------------

/// Get-VMHost's answer: the migration settings plus the names it reports.
#[derive(Debug, Clone, PartialEq)]
pub struct VmHostInfo {
    /// `ComputerName`: the host's NetBIOS name, e.g. "HV01".
    pub computer_name: String,
    /// `FullyQualifiedDomainName`: the *domain* (Win32_ComputerSystem.Domain),
    /// not the host's FQDN.
    pub domain: String,
    /// `networks` is empty: it comes from [`parse_migration_networks`].
    pub settings: MigrationSettings,
}

const AUTH_NAMES: &[(&str, i64)] = &[("CredSSP", 0), ("Kerberos", 1)];
const PERF_NAMES: &[(&str, i64)] = &[("TCPIP", 0), ("Compression", 1), ("SMB", 2)];

/// Output of [`PS_VMHOST`]. Auth type CredSSP = 0 / Kerberos = 1 and
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

/// Output of [`PS_VMHOST`], settings only (see [`parse_vmhost_info`]).
pub fn parse_vmhost(json: &str) -> Result<MigrationSettings, ParseError> {
    parse_vmhost_info(json).map(|i| i.settings)
}

/// Output of [`PS_MIGRATION_NETWORKS`]: empty output = no network, one
/// object, or an array. `Priority` may be null.
pub fn parse_migration_networks(json: &str) -> Result<Vec<MigrationNetwork>, ParseError> {
    json_items(json, "Get-VMMigrationNetwork")?
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let what = format!("Get-VMMigrationNetwork item {i}");
            let subnet = match req(m, &what, "Subnet")? {
                Value::String(s) => s.clone(),
                other => return Err(wrong(&what, "Subnet", "a string", other)),
            };
            let priority = match prop(m, "Priority") {
                None | Some(Value::Null) => None,
                Some(v @ Value::Number(n)) => Some(n.as_i64().and_then(|x| i32::try_from(x).ok()).ok_or_else(
                    || ParseError::OutOfRange {
                        what: what.clone(),
                        field: "Priority",
                        value: describe(v),
                    },
                )?),
                Some(other) => return Err(wrong(&what, "Priority", "an integer or null", other)),
            };
            Ok(MigrationNetwork { subnet, priority })
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Get-Service
// ---------------------------------------------------------------------------

const STATUS_NAMES: &[(&str, i64)] = &[
    ("Stopped", 1),
    ("StartPending", 2),
    ("StopPending", 3),
    ("Running", 4),
    ("ContinuePending", 5),
    ("PausePending", 6),
    ("Paused", 7),
];
const START_NAMES: &[(&str, i64)] = &[
    ("Boot", 0),
    ("System", 1),
    ("Automatic", 2),
    ("Manual", 3),
    ("Disabled", 4),
];

/// Output of [`PS_SERVICES`]: one object or an array (empty output = none of
/// the services exists). `Status` 1..7 maps 1:1 to [`ServiceState`];
/// `StartType` 0..4 to [`StartMode`] + 1; other numbers give UNSPECIFIED.
pub fn parse_services(json: &str) -> Result<Vec<ServiceStatus>, ParseError> {
    json_items(json, "Get-Service")?
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let what = format!("Get-Service item {i}");
            let name = match req(m, &what, "Name")? {
                Value::String(s) => s.clone(),
                other => return Err(wrong(&what, "Name", "a string", other)),
            };
            let state = match enum_code(m, &what, "Status", STATUS_NAMES)? {
                Some(n @ 1..=7) => ServiceState::try_from(n as i32).unwrap_or(ServiceState::Unspecified),
                _ => ServiceState::Unspecified,
            };
            let start_mode = match enum_code(m, &what, "StartType", START_NAMES)? {
                Some(n @ 0..=4) => StartMode::try_from(n as i32 + 1).unwrap_or(StartMode::Unspecified),
                _ => StartMode::Unspecified,
            };
            Ok(ServiceStatus {
                name,
                state: state as i32,
                start_mode: start_mode as i32,
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------
// OS build, Credential Guard
// ---------------------------------------------------------------------------

/// Output of [`PS_OS_DEVICE_GUARD`]: `(os_build, caption, credential_guard_running)`.
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

/// Output of [`PS_OS_DEVICE_GUARD`] as a [`HostIdentity`]: build, caption and
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

// ---------------------------------------------------------------------------
// klist
// ---------------------------------------------------------------------------

#[derive(Default)]
struct TicketBuilder {
    index: usize,
    client: Option<String>,
    server: Option<String>,
    encryption_type: Option<String>,
    flags: Option<u32>,
    start: Option<Timestamp>,
    end: Option<Timestamp>,
    renew: Option<Timestamp>,
}

impl TicketBuilder {
    fn build(self) -> Result<KerberosTicket, ParseError> {
        let index = self.index;
        let missing = |field| ParseError::KlistIncomplete { index, field };
        Ok(KerberosTicket {
            client: self.client.ok_or_else(|| missing("Client"))?,
            server: self.server.ok_or_else(|| missing("Server"))?,
            encryption_type: self
                .encryption_type
                .ok_or_else(|| missing("KerbTicket Encryption Type"))?,
            ticket_flags: self.flags.ok_or_else(|| missing("Ticket Flags"))?,
            start_time: Some(self.start.ok_or_else(|| missing("Start Time"))?),
            end_time: Some(self.end.ok_or_else(|| missing("End Time"))?),
            // Optional: a ticket that is not renewable may lack it.
            renew_until: self.renew,
        })
    }
}

enum KlistField {
    Client,
    Server,
    EncryptionType,
    Start,
    End,
    Renew,
    Ignored,
    CachedTickets,
}

/// A label reduced to lower-case ASCII letters, digits and single spaces.
/// Non-ASCII letters are dropped, so "démarrage" read as UTF-8 and
/// "d\u{FFFD}marrage" (klist writes the OEM code page; the probe decodes
/// lossily) compare equal.
fn normalize_label(label: &str) -> String {
    let mut out = String::new();
    for word in label.split_whitespace() {
        let w: String = word
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .map(|c| c.to_ascii_lowercase())
            .collect();
        if w.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&w);
    }
    out
}

fn klist_field(label: &str) -> Option<KlistField> {
    use KlistField::*;
    Some(match normalize_label(label).as_str() {
        "client" => Client,
        "server" | "serveur" => Server,
        "kerbticket encryption type" | "type de chiffrement kerbticket" => EncryptionType,
        "start time" | "heure de dmarrage" => Start,
        "end time" | "heure de fin" => End,
        "renew time" | "heure de renouvellement" => Renew,
        "session key type" | "type de cl de session" | "cache flags" | "kdc called" => Ignored,
        "cached tickets" | "tickets mis en cache" => CachedTickets,
        _ => return None,
    })
}

/// Raw output of `klist -li 0x3e7` (English or French labels as in
/// WINDOWS-FACTS §4; other languages give [`ParseError::KlistLine`]).
///
/// Tabs, trailing spaces and CRLF are tolerated; `Ticket Flags 0x… -> …`
/// has no colon. Client and server are kept as klist prints them
/// (`HV01$ @ CONTOSO.COM`).
///
/// **Times are read as UTC.** klist prints `M/D/YYYY H:MM:SS (local)` in the
/// host's local time zone, and the output does not say which zone that is;
/// the timestamps are therefore off by the host's UTC offset. Compare them
/// with each other (ticket age, expiry order) or with the host's own clock
/// read the same way, not with true UTC instants.
///
/// Every line must be recognised; an unknown or garbled line is an error
/// naming it, and a ticket count different from `Cached Tickets: (N)` is an
/// error (truncated output). `klist failed with …` is [`ParseError::KlistFailed`].
pub fn parse_klist(text: &str) -> Result<Vec<KerberosTicket>, ParseError> {
    let mut tickets = Vec::new();
    let mut current: Option<TicketBuilder> = None;
    let mut announced: Option<u64> = None;

    for (i, raw) in text.split('\n').enumerate() {
        let line_no = i + 1;
        let line = raw.trim_start_matches('\u{feff}').trim();
        if line.is_empty() {
            continue;
        }
        let unrecognized = || ParseError::KlistLine {
            line_no,
            line: snippet(line),
        };
        let bad = |problem| ParseError::KlistValue {
            line_no,
            problem,
            line: snippet(line),
        };
        let lower = line.to_ascii_lowercase();

        if lower.starts_with("klist failed") {
            return Err(ParseError::KlistFailed(snippet(line)));
        }
        if ["current logonid is ", "targeted logonid is ", "logonid est "]
            .iter()
            .any(|p| lower.starts_with(p))
        {
            if current.is_some() {
                return Err(unrecognized());
            }
            continue;
        }

        // "#N>" opens a ticket; the rest of the line is its first field.
        let mut body = line;
        if let Some(rest) = line.strip_prefix('#') {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            let after = &rest[digits..];
            let (Some(after), true) = (after.strip_prefix('>'), digits > 0 && digits <= 6) else {
                return Err(bad("bad ticket number"));
            };
            if announced.is_none() {
                return Err(bad("ticket before the `Cached Tickets` line"));
            }
            if let Some(t) = current.take() {
                tickets.push(t.build()?);
            }
            current = Some(TicketBuilder {
                index: tickets.len(),
                ..Default::default()
            });
            body = after.trim();
            if body.is_empty() {
                continue;
            }
        }
        let body_lower = body.to_ascii_lowercase();

        // "Ticket Flags 0x40e10000 -> forwardable ..." (no colon).
        let flags_rest = ["ticket flags", "indicateurs de tickets"]
            .iter()
            .find(|p| body_lower.starts_with(*p))
            .map(|p| body[p.len()..].trim_start().trim_start_matches(':').trim_start());
        if let Some(rest) = flags_rest {
            let t = current.as_mut().ok_or_else(unrecognized)?;
            let hex = rest.split_whitespace().next().unwrap_or("");
            let hex = hex
                .strip_prefix("0x")
                .or_else(|| hex.strip_prefix("0X"))
                .ok_or_else(|| bad("bad ticket flags"))?;
            t.flags = Some(u32::from_str_radix(hex, 16).map_err(|_| bad("bad ticket flags"))?);
            continue;
        }

        let Some((label, value)) = body.split_once(':') else {
            return Err(unrecognized());
        };
        let value = value.trim();
        match klist_field(label).ok_or_else(unrecognized)? {
            KlistField::CachedTickets => {
                if announced.is_some() || current.is_some() {
                    return Err(unrecognized());
                }
                let n = value
                    .strip_prefix('(')
                    .and_then(|v| v.strip_suffix(')'))
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .ok_or_else(|| bad("bad ticket count"))?;
                announced = Some(n);
            }
            field => {
                let t = current.as_mut().ok_or_else(unrecognized)?;
                match field {
                    KlistField::Client => t.client = Some(value.to_string()),
                    KlistField::Server => t.server = Some(value.to_string()),
                    KlistField::EncryptionType => t.encryption_type = Some(value.to_string()),
                    KlistField::Start => t.start = Some(parse_klist_time(value).ok_or_else(|| bad("bad date"))?),
                    KlistField::End => t.end = Some(parse_klist_time(value).ok_or_else(|| bad("bad date"))?),
                    KlistField::Renew => t.renew = Some(parse_klist_time(value).ok_or_else(|| bad("bad date"))?),
                    KlistField::Ignored | KlistField::CachedTickets => {}
                }
            }
        }
    }
    if let Some(t) = current.take() {
        tickets.push(t.build()?);
    }
    let announced = announced.ok_or(ParseError::KlistNoCount)?;
    if announced != tickets.len() as u64 {
        return Err(ParseError::KlistCount {
            announced,
            found: tickets.len(),
        });
    }
    Ok(tickets)
}

/// `12/17/2025 8:50:52 (local)` → a Timestamp, reading the wall-clock time
/// as UTC (see [`parse_klist`]).
fn parse_klist_time(value: &str) -> Option<Timestamp> {
    let v = value.trim();
    let lower = v.to_ascii_lowercase();
    let v = match lower.strip_suffix("(local)") {
        Some(_) => v[..v.len() - "(local)".len()].trim_end(),
        None => v,
    };
    let (date, time) = v.split_once(' ')?;
    let mut d = date.split('/');
    let month = small_number(d.next()?, 2)?;
    let day = small_number(d.next()?, 2)?;
    let year = small_number(d.next()?, 4)?;
    if d.next().is_some() {
        return None;
    }
    let mut t = time.trim().split(':');
    let hour = small_number(t.next()?, 2)?;
    let minute = small_number(t.next()?, 2)?;
    let second = small_number(t.next()?, 2)?;
    if t.next().is_some() {
        return None;
    }
    let seconds = civil_seconds(year as i64, month, day, hour, minute, second)?;
    Some(Timestamp { seconds, nanos: 0 })
}

/// 1 to `max_digits` ASCII digits.
fn small_number(s: &str, max_digits: usize) -> Option<u32> {
    if s.is_empty() || s.len() > max_digits || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

/// Seconds since the Unix epoch of a validated proleptic-Gregorian UTC time.
fn civil_seconds(year: i64, month: u32, day: u32, hour: u32, minute: u32, second: u32) -> Option<i64> {
    if !(1..=9999).contains(&year) || !(1..=12).contains(&month) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let days_in_month = match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    if day == 0 || day > days_in_month {
        return None;
    }
    // Howard Hinnant's days_from_civil.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hour as i64 * 3600 + minute as i64 * 60 + second as i64)
}

// ---------------------------------------------------------------------------
// VMMS events
// ---------------------------------------------------------------------------

/// A stored message is cut to this many characters.
const MAX_MESSAGE_CHARS: usize = 8 * 1024;
/// Only the start of a message is scanned for names and codes.
const MAX_SCAN_BYTES: usize = 64 * 1024;

/// One page of [`PS_VMMS_EVENTS`] output.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct VmmsEventBatch {
    /// Migration outcomes (success or failure), by RecordId ascending.
    pub attempts: Vec<(u64, MigrationAttempt)>,
    /// Highest RecordId of *all* events read, migration-related or not: the
    /// next cursor. `None` when there was no event.
    pub max_record_id: Option<u64>,
}

/// Output of [`PS_VMMS_EVENTS`] (or the same selection with PS 5.1's raw
/// `"\/Date(ms)\/"` TimeCreated): empty output = no event, one object, or an
/// array. Returns the migration outcomes only; see [`parse_vmms_event_batch`]
/// for the cursor.
pub fn parse_vmms_events(json: &str, local_host: &str) -> Result<Vec<(u64, MigrationAttempt)>, ParseError> {
    parse_vmms_event_batch(json, local_host).map(|b| b.attempts)
}

/// Like [`parse_vmms_events`], plus the highest RecordId read.
///
/// Outcome and details come from the message text, not the event id:
/// success for "successfully completed the live migration" (20415, 20417,
/// 20418); failure for a message that mentions a migration (or "with host")
/// and a failure; anything else (migration started, unrelated VMMS events,
/// null message) is skipped. `attempt_id` is `"<local_host>:<RecordId>"`.
pub fn parse_vmms_event_batch(json: &str, local_host: &str) -> Result<VmmsEventBatch, ParseError> {
    let mut batch = VmmsEventBatch::default();
    for (i, m) in json_items(json, "Get-WinEvent")?.iter().enumerate() {
        let what = format!("Get-WinEvent item {i}");
        let record_id = match req(m, &what, "RecordId")? {
            Value::Number(n) => n.as_u64().ok_or_else(|| ParseError::OutOfRange {
                what: what.clone(),
                field: "RecordId",
                value: n.to_string(),
            })?,
            other => return Err(wrong(&what, "RecordId", "an unsigned integer", other)),
        };
        let event_id = as_u32(req(m, &what, "Id")?, &what, "Id")?;
        let time = match prop(m, "TimeCreated") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(parse_event_time(s).ok_or_else(|| ParseError::BadDate {
                what: what.clone(),
                field: "TimeCreated",
                value: snippet(s),
            })?),
            Some(other) => return Err(wrong(&what, "TimeCreated", "a date string", other)),
        };
        let message = match prop(m, "Message") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.as_str()),
            Some(other) => return Err(wrong(&what, "Message", "a string", other)),
        };
        batch.max_record_id = Some(batch.max_record_id.map_or(record_id, |x| x.max(record_id)));
        let Some(message) = message else { continue };
        let Some(outcome) = classify_message(message, local_host) else {
            continue;
        };
        batch.attempts.push((
            record_id,
            MigrationAttempt {
                attempt_id: format!("{local_host}:{record_id}"),
                time,
                vm_name: outcome.vm_name.unwrap_or_default(),
                vm_id: outcome.vm_id.unwrap_or_default(),
                peer: outcome.peer.unwrap_or_default(),
                role: outcome.role as i32,
                success: outcome.success,
                event_id,
                error_code: outcome.error_code.unwrap_or(0),
                message: cut_chars(message.trim(), MAX_MESSAGE_CHARS),
                account: String::new(),
                traceparent: String::new(),
            },
        ));
    }
    batch.attempts.sort_by_key(|(id, _)| *id);
    Ok(batch)
}

fn cut_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => s[..i].to_string(),
        None => s.to_string(),
    }
}

/// The first [`MAX_SCAN_BYTES`] of `s`, cut on a character boundary.
fn scan_window(s: &str) -> &str {
    if s.len() <= MAX_SCAN_BYTES {
        return s;
    }
    let mut end = MAX_SCAN_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// What a VMMS message says about a migration.
#[derive(Debug, Clone, PartialEq)]
pub struct MigrationOutcome {
    pub success: bool,
    pub role: MigrationRole,
    pub vm_name: Option<String>,
    pub vm_id: Option<String>,
    pub peer: Option<String>,
    /// For failures only.
    pub error_code: Option<u32>,
}

/// Reads a VMMS message; `None` when it is not a migration outcome.
pub fn classify_message(message: &str, local_host: &str) -> Option<MigrationOutcome> {
    let msg = scan_window(message);
    let lower = msg.to_ascii_lowercase();
    let success = lower.contains("successfully completed the live migration");
    let failure = !success && lower.contains("fail") && (lower.contains("migration") || lower.contains("with host"));
    if !success && !failure {
        return None;
    }
    Some(MigrationOutcome {
        success,
        role: parse_role(msg, local_host),
        vm_name: parse_vm_name(msg),
        vm_id: parse_vm_id(msg),
        peer: parse_peer_host(msg, local_host),
        error_code: if failure { parse_error_code(msg) } else { None },
    })
}

/// The HRESULT a message reports: the first `0x` + 8 hex digits with the
/// failure bit set (`(0x8009030E)`, `0x8009030E.`, `0x8009030d`), else the
/// first `0x` + 8 hex digits, else a negative decimal of 9–10 digits
/// (`-2146893042`) read as a 32-bit two's complement.
pub fn parse_error_code(message: &str) -> Option<u32> {
    let b = scan_window(message).as_bytes();
    let boundary = |i: usize| i >= b.len() || !b[i].is_ascii_alphanumeric();
    let mut first_any = None;
    for i in 0..b.len().saturating_sub(1) {
        if b[i] != b'0' || !(b[i + 1] == b'x' || b[i + 1] == b'X') {
            continue;
        }
        if i > 0 && b[i - 1].is_ascii_alphanumeric() {
            continue;
        }
        let start = i + 2;
        let end = start + 8;
        if end > b.len() || !b[start..end].iter().all(u8::is_ascii_hexdigit) || !boundary(end) {
            continue;
        }
        // All ASCII hex digits: valid UTF-8 and a valid u32.
        let Ok(code) = u32::from_str_radix(std::str::from_utf8(&b[start..end]).ok()?, 16) else {
            continue;
        };
        if code & 0x8000_0000 != 0 {
            return Some(code);
        }
        first_any.get_or_insert(code);
    }
    if first_any.is_some() {
        return first_any;
    }
    for i in 0..b.len() {
        if b[i] != b'-' || (i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'-')) {
            continue;
        }
        let digits = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if !(9..=10).contains(&digits) || !boundary(i + 1 + digits) {
            continue;
        }
        let text = std::str::from_utf8(&b[i..i + 1 + digits]).ok()?;
        if let Ok(v) = text.parse::<i64>()
            && (i32::MIN as i64..0).contains(&v)
        {
            return Some(v as i32 as u32);
        }
    }
    None
}

/// Phrases that name a host, in the order they are tried for the peer.
const HOST_PHRASES: &[&str] = &[
    "with host ",
    "destination host ",
    "destination node ",
    "at migration destination ",
    "at migration source ",
];

/// The other host of the migration: the first host named by `with host "X"`
/// / `'X'` / `X:`, `destination host "X."`, `destination node "X"`, or
/// `at migration destination/source "X"` that is not the local host
/// (compared on the first DNS label, case-insensitively). Quotes and
/// trailing dots are trimmed.
pub fn parse_peer_host(message: &str, local_host: &str) -> Option<String> {
    let msg = scan_window(message);
    let lower = msg.to_ascii_lowercase();
    for phrase in HOST_PHRASES {
        let mut from = 0;
        while let Some(pos) = lower[from..].find(phrase) {
            let at = from + pos + phrase.len();
            from = at;
            if let Some(host) = host_after(&msg[at..])
                && !same_host(&host, local_host)
            {
                return Some(host);
            }
        }
    }
    None
}

/// A host name at the start of `s`: quoted with `"` or `'`, or bare up to
/// `:`, `,`, `;`, `(`, `)` or whitespace.
fn host_after(s: &str) -> Option<String> {
    let s = s.trim_start_matches(' ');
    let raw = match s.chars().next()? {
        q @ ('"' | '\'') => {
            let rest = &s[1..];
            &rest[..rest.find(q)?]
        }
        _ => {
            let end = s
                .find(|c: char| c.is_whitespace() || matches!(c, ':' | ',' | ';' | '(' | ')'))
                .unwrap_or(s.len());
            &s[..end]
        }
    };
    let host = raw.trim().trim_end_matches('.');
    let valid = !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_'));
    valid.then(|| host.to_string())
}

fn first_label(h: &str) -> &str {
    h.split('.').next().unwrap_or(h)
}

fn same_host(a: &str, b: &str) -> bool {
    !b.is_empty() && first_label(a).eq_ignore_ascii_case(first_label(b))
}

/// The local host's side of the migration: SOURCE for "at migration source"
/// / "at the source host", DESTINATION for "at migration destination" / "at
/// the destination host" / "on the destination node|host" (the earliest
/// phrase wins; a host merely *named* "DESTINATION-…" does not count). When
/// the phrase names a host that is not the local host, the failure happened
/// on the peer and the local role is the other one.
pub fn parse_role(message: &str, local_host: &str) -> MigrationRole {
    let msg = scan_window(message);
    let lower = msg.to_ascii_lowercase();
    let phrases: &[(&str, MigrationRole)] = &[
        ("at migration source", MigrationRole::Source),
        ("at the source host", MigrationRole::Source),
        ("at migration destination", MigrationRole::Destination),
        ("at the destination host", MigrationRole::Destination),
        ("on the destination node", MigrationRole::Destination),
        ("on the destination host", MigrationRole::Destination),
    ];
    let Some((pos, phrase, role)) = phrases
        .iter()
        .filter_map(|(p, r)| lower.find(p).map(|pos| (pos, *p, *r)))
        .min_by_key(|(pos, _, _)| *pos)
    else {
        return MigrationRole::Unspecified;
    };
    let after = &msg[pos + phrase.len()..];
    let named = after.strip_prefix(' ').and_then(host_after);
    match named {
        Some(h) if !local_host.is_empty() && !same_host(&h, local_host) => match role {
            MigrationRole::Source => MigrationRole::Destination,
            MigrationRole::Destination => MigrationRole::Source,
            other => other,
        },
        _ => role,
    }
}

/// The quoted VM name: after "operation for", else "virtual machine", else
/// "migration of" (one or more spaces, then `'…'` or `"…"`).
pub fn parse_vm_name(message: &str) -> Option<String> {
    let msg = scan_window(message);
    let lower = msg.to_ascii_lowercase();
    for phrase in ["operation for", "virtual machine", "migration of"] {
        let mut from = 0;
        while let Some(pos) = lower[from..].find(phrase) {
            let at = from + pos + phrase.len();
            from = at;
            let rest = &msg[at..];
            let trimmed = rest.trim_start_matches(' ');
            if trimmed.len() == rest.len() {
                continue; // "virtual machines", "virtual machine's": not followed by a space
            }
            let Some(q @ ('"' | '\'')) = trimmed.chars().next() else {
                continue;
            };
            let inner = &trimmed[1..];
            if let Some(end) = inner.find(q) {
                let name = inner[..end].trim();
                if !name.is_empty() && name.len() <= 512 {
                    return Some(name.to_string());
                }
            }
        }
    }
    None
}

/// The GUID after "VMID" or "Virtual machine ID" (upper-cased as written).
pub fn parse_vm_id(message: &str) -> Option<String> {
    let msg = scan_window(message);
    let lower = msg.to_ascii_lowercase();
    for phrase in ["vmid", "virtual machine id"] {
        let mut from = 0;
        while let Some(pos) = lower[from..].find(phrase) {
            let at = from + pos + phrase.len();
            from = at;
            let rest = msg[at..].trim_start_matches([' ', ':']);
            if let Some(guid) = rest.get(..36)
                && is_guid(guid)
            {
                return Some(guid.to_string());
            }
        }
    }
    None
}

fn is_guid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// `TimeCreated` as ConvertTo-Json writes it: PS 5.1 `/Date(ms)/` (the JSON
/// text `"\/Date(ms)\/"`, Unix milliseconds, UTC) or ISO-8601 with `Z`, an
/// offset, or no zone (read as UTC), up to 9 fractional digits.
pub fn parse_event_time(s: &str) -> Option<Timestamp> {
    let s = s.trim();
    if let Some(inner) = s.strip_prefix("/Date(").and_then(|r| r.strip_suffix(")/")) {
        let digits = inner.strip_prefix('-').unwrap_or(inner);
        if digits.is_empty() || digits.len() > 15 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let ms: i64 = inner.parse().ok()?;
        return Some(kcdsync_proto::timestamp_from_ms(ms));
    }
    parse_iso8601(s)
}

fn parse_iso8601(s: &str) -> Option<Timestamp> {
    if !s.is_ascii() || s.len() < 19 || s.len() > 40 {
        return None;
    }
    let b = s.as_bytes();
    // `s` is ASCII and at least 19 bytes long: these slices are in bounds.
    let num = |r: std::ops::Range<usize>| small_number(&s[r.clone()], r.len());
    if b[4] != b'-'
        || b[7] != b'-'
        || !(b[10] == b'T' || b[10] == b't' || b[10] == b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut rest = &s[19..];
    let mut nanos: i64 = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return None;
        }
        for (k, c) in frac.bytes().take(n.min(9)).enumerate() {
            nanos += (c - b'0') as i64 * 10i64.pow(8 - k as u32);
        }
        rest = &frac[n..];
    }
    let offset_secs: i64 = match rest {
        "" | "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let z = &rest[1..];
            let (h, m) = match z.len() {
                5 if z.as_bytes()[2] == b':' => (small_number(&z[..2], 2)?, small_number(&z[3..], 2)?),
                4 => (small_number(&z[..2], 2)?, small_number(&z[2..], 2)?),
                2 => (small_number(z, 2)?, 0),
                _ => return None,
            };
            if h > 23 || m > 59 {
                return None;
            }
            sign * (h as i64 * 3600 + m as i64 * 60)
        }
    };
    let local = civil_seconds(year as i64, month, day, hour, minute, second)?;
    Some(Timestamp {
        seconds: local - offset_secs,
        nanos: nanos as i32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    macro_rules! fixture {
        ($name:literal) => {
            include_str!(concat!("../fixtures/windows/", $name))
        };
    }

    const VMHOST_PS51: &str = fixture!("vmhost_ps51.json");
    const VMHOST_PS7: &str = fixture!("vmhost_ps7.json");
    const NETS_EMPTY: &str = fixture!("migration_networks_empty.txt");
    const NETS_ONE: &str = fixture!("migration_networks_one_ps51.json");
    const NETS_MANY: &str = fixture!("migration_networks_many_ps51.json");
    const SERVICES_PS51: &str = fixture!("services_ps51.json");
    const SERVICES_SINGLE_PS7: &str = fixture!("services_single_ps7.json");
    const OS_WS2022: &str = fixture!("os_ps51_ws2022.json");
    const OS_WS2025: &str = fixture!("os_ps7_ws2025_credguard.json");
    const OS_NO_DG: &str = fixture!("os_ps51_no_deviceguard.json");
    const KLIST_USER: &str = fixture!("klist_user_s12.txt");
    const KLIST_SYSTEM: &str = fixture!("klist_system_hv01.txt");
    const KLIST_EMPTY: &str = fixture!("klist_system_empty.txt");
    const KLIST_FR: &str = fixture!("klist_fr_s15.txt");
    const KLIST_FAILED: &str = fixture!("klist_failed_s16.txt");
    const KLIST_PURGE: &str = fixture!("klist_purge_s13.txt");
    const EVENTS_EMPTY: &str = fixture!("events_empty.txt");
    const EVENTS_SEED: &str = fixture!("events_ps51_seed_single.json");
    const EVENTS_PS51: &str = fixture!("events_ps51_array.json");
    const EVENTS_PS7: &str = fixture!("events_ps7_array.json");

    const ALL_FIXTURES: &[(&str, &str)] = &[
        ("vmhost_ps51", VMHOST_PS51),
        ("vmhost_ps7", VMHOST_PS7),
        ("nets_empty", NETS_EMPTY),
        ("nets_one", NETS_ONE),
        ("nets_many", NETS_MANY),
        ("services_ps51", SERVICES_PS51),
        ("services_single_ps7", SERVICES_SINGLE_PS7),
        ("os_ws2022", OS_WS2022),
        ("os_ws2025", OS_WS2025),
        ("os_no_dg", OS_NO_DG),
        ("klist_user", KLIST_USER),
        ("klist_system", KLIST_SYSTEM),
        ("klist_empty", KLIST_EMPTY),
        ("klist_fr", KLIST_FR),
        ("klist_failed", KLIST_FAILED),
        ("klist_purge", KLIST_PURGE),
        ("events_empty", EVENTS_EMPTY),
        ("events_seed", EVENTS_SEED),
        ("events_ps51", EVENTS_PS51),
        ("events_ps7", EVENTS_PS7),
    ];

    const HV01: &str = "hv01.contoso.com";

    fn ts(seconds: i64) -> Option<Timestamp> {
        Some(Timestamp { seconds, nanos: 0 })
    }

    fn crlf(s: &str) -> String {
        s.replace('\n', "\r\n")
    }

    // --- commands -------------------------------------------------------

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
        assert!(ev.contains("-FilterXPath '*[System[EventRecordID>4711]]'"), "{ev}");
        assert!(ev.contains("-ErrorAction SilentlyContinue"));
        assert!(ev.contains("-MaxEvents 500") && VMMS_EVENTS_PAGE == 500);
        assert!(ev.contains("$_.TimeCreated.ToUniversalTime().ToString('o')"));
        assert!(!ev.contains("{CURSOR}"));
        assert_eq!(KLIST_SYSTEM_ARGS, ["-li", "0x3e7"]);
        assert_eq!(KLIST_PURGE_ARGS, ["purge", "-li", "0x3e7"]);
    }

    // --- Get-VMHost -----------------------------------------------------

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

    // --- Get-VMMigrationNetwork ----------------------------------------

    #[test]
    fn migration_networks_none_one_many() {
        assert!(parse_migration_networks(NETS_EMPTY).unwrap().is_empty());
        assert!(parse_migration_networks("\r\n").unwrap().is_empty());
        assert_eq!(
            parse_migration_networks(NETS_ONE).unwrap(),
            vec![MigrationNetwork {
                subnet: "192.168.10.0/24".into(),
                priority: Some(0)
            }]
        );
        assert_eq!(
            parse_migration_networks(&crlf(NETS_MANY)).unwrap(),
            vec![
                MigrationNetwork {
                    subnet: "192.168.10.0/24".into(),
                    priority: Some(0)
                },
                MigrationNetwork {
                    subnet: "10.20.0.0/16".into(),
                    priority: None
                },
            ]
        );
    }

    #[test]
    fn migration_networks_bad_values() {
        assert!(matches!(
            parse_migration_networks(&NETS_ONE.replace("0\n", "\"high\"\n")),
            Err(ParseError::WrongType { field: "Priority", .. })
        ));
        assert!(matches!(
            parse_migration_networks(&NETS_ONE.replace("0\n", "9999999999\n")),
            Err(ParseError::OutOfRange { field: "Priority", .. })
        ));
        assert!(matches!(
            parse_migration_networks("[{\"Priority\": 1}]"),
            Err(ParseError::Missing { field: "Subnet", .. })
        ));
        assert!(matches!(
            parse_migration_networks("[1, 2]"),
            Err(ParseError::Shape { .. })
        ));
    }

    // --- Get-Service ----------------------------------------------------

    #[test]
    fn services_array_and_single() {
        let s = parse_services(SERVICES_PS51).unwrap();
        assert_eq!(
            s,
            vec![
                ServiceStatus {
                    name: "vmms".into(),
                    state: ServiceState::Running as i32,
                    start_mode: StartMode::Automatic as i32
                },
                ServiceStatus {
                    name: "WinRM".into(),
                    state: ServiceState::Running as i32,
                    start_mode: StartMode::Automatic as i32
                },
            ]
        );
        let s = parse_services(SERVICES_SINGLE_PS7).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].state(), ServiceState::Stopped);
        assert_eq!(s[0].start_mode(), StartMode::Manual);
        assert!(parse_services("").unwrap().is_empty());
    }

    #[test]
    fn services_every_number_maps() {
        for (status, state) in [
            (1, ServiceState::Stopped),
            (2, ServiceState::StartPending),
            (3, ServiceState::StopPending),
            (4, ServiceState::Running),
            (5, ServiceState::ContinuePending),
            (6, ServiceState::PausePending),
            (7, ServiceState::Paused),
            (0, ServiceState::Unspecified),
            (99, ServiceState::Unspecified),
            (-1, ServiceState::Unspecified),
        ] {
            let j = format!("{{\"Name\": \"vmms\", \"Status\": {status}, \"StartType\": 2}}");
            assert_eq!(parse_services(&j).unwrap()[0].state(), state, "{status}");
        }
        for (start, mode) in [
            (0, StartMode::Boot),
            (1, StartMode::System),
            (2, StartMode::Automatic),
            (3, StartMode::Manual),
            (4, StartMode::Disabled),
            (5, StartMode::Unspecified),
            (99, StartMode::Unspecified),
        ] {
            let j = format!("{{\"Name\": \"vmms\", \"Status\": 4, \"StartType\": {start}}}");
            assert_eq!(parse_services(&j).unwrap()[0].start_mode(), mode, "{start}");
        }
        let j = "{\"Name\": \"vmms\", \"Status\": \"Running\", \"StartType\": \"Disabled\"}";
        let s = &parse_services(j).unwrap()[0];
        assert_eq!(
            (s.state(), s.start_mode()),
            (ServiceState::Running, StartMode::Disabled)
        );
    }

    #[test]
    fn services_wrong_types() {
        assert!(matches!(
            parse_services("{\"Name\": \"vmms\", \"Status\": true, \"StartType\": 2}"),
            Err(ParseError::WrongType { field: "Status", .. })
        ));
        assert!(matches!(
            parse_services("{\"Name\": 5, \"Status\": 4, \"StartType\": 2}"),
            Err(ParseError::WrongType { field: "Name", .. })
        ));
        assert!(matches!(
            parse_services("{\"Name\": \"vmms\", \"Status\": 4}"),
            Err(ParseError::Missing { field: "StartType", .. })
        ));
    }

    // --- OS, Device Guard ----------------------------------------------

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

    // --- klist ----------------------------------------------------------

    #[test]
    fn klist_system_session() {
        let t = parse_klist(KLIST_SYSTEM).unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(
            t[0],
            KerberosTicket {
                client: "HV01$ @ CONTOSO.COM".into(),
                server: "krbtgt/CONTOSO.COM @ CONTOSO.COM".into(),
                start_time: ts(1793689509),              // 11/3/2026 7:05:09, read as UTC
                end_time: ts(1793689509 + 10 * 3600),    // 17:05:09
                renew_until: ts(1793689509 + 7 * 86400), // 11/10/2026 7:05:09
                ticket_flags: 0x40e1_0000,
                encryption_type: "AES-256-CTS-HMAC-SHA1-96".into(),
            }
        );
        assert_eq!(
            t[1].server,
            "Microsoft Virtual System Migration Service/HV02.contoso.com @ CONTOSO.COM"
        );
        assert_eq!(t[1].ticket_flags & 0x0004_0000, 0x0004_0000, "ok_as_delegate");
        assert_eq!(t[2].encryption_type, "RSADSI RC4-HMAC(NT)");
        assert_eq!(parse_klist(&crlf(KLIST_SYSTEM)).unwrap(), t);
    }

    #[test]
    fn klist_user_transcript_s12() {
        let t = parse_klist(KLIST_USER).unwrap();
        assert_eq!(t.len(), 6);
        assert_eq!(t[0].ticket_flags, 0x60a1_0000);
        assert_eq!(t[0].client, "jsykora @ MINDFREAK.LAB.LAN");
        assert_eq!(t[0].start_time, ts(1765961452)); // 12/17/2025 8:50:52
        assert_eq!(
            t[5].server,
            "LDAP/CrissDC01.mindfreak.lab.lan/mindfreak.lab.lan @ MINDFREAK.LAB.LAN"
        );
    }

    #[test]
    fn klist_empty_cache() {
        assert!(parse_klist(KLIST_EMPTY).unwrap().is_empty());
        assert!(parse_klist(&crlf(KLIST_EMPTY)).unwrap().is_empty());
    }

    #[test]
    fn klist_french_labels() {
        let t = parse_klist(KLIST_FR).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].client, "jdupond @ domain.local");
        assert_eq!(t[0].server, "krbtgt/domain.local @ domain.local");
        assert_eq!(t[0].encryption_type, "RSADSI RC4-HMAC(NT)");
        assert_eq!(t[0].ticket_flags, 0x50a0_0000);
        assert_eq!(t[0].start_time, ts(1516818360)); // 1/24/2018 18:26:00
        // klist writes the OEM code page; decoded lossily, "é" becomes U+FFFD.
        let lossy = KLIST_FR.replace('é', "\u{FFFD}");
        assert_eq!(parse_klist(&lossy).unwrap(), t);
    }

    #[test]
    fn klist_failure_and_purge_output() {
        let e = parse_klist(KLIST_FAILED).unwrap_err();
        assert!(
            matches!(e, ParseError::KlistFailed(ref m) if m.contains("0x8009030e")),
            "{e}"
        );
        assert_eq!(parse_error_code(KLIST_FAILED), Some(0x8009_030E));
        // Purge output is not a ticket list: named line, not a panic.
        let e = parse_klist(KLIST_PURGE).unwrap_err();
        assert!(matches!(e, ParseError::KlistLine { line_no: 2, .. }), "{e}");
        assert!(e.to_string().contains("Deleting all tickets"), "{e}");
    }

    #[test]
    fn klist_unknown_language_is_a_named_error() {
        // German labels are not supported: the first unknown line is named.
        let de = KLIST_EMPTY.replace("Cached Tickets: (0)", "Zwischengespeicherte Tickets: (0)");
        let e = parse_klist(&de).unwrap_err();
        assert!(matches!(e, ParseError::KlistLine { line_no: 5, .. }), "{e}");
        assert!(e.to_string().contains("Zwischengespeicherte"), "{e}");
    }

    #[test]
    fn klist_garbled() {
        let bad_date = KLIST_SYSTEM.replacen("11/3/2026 7:05:09", "13/45/2026 7:05:09", 1);
        let e = parse_klist(&bad_date).unwrap_err();
        assert!(
            matches!(
                e,
                ParseError::KlistValue {
                    line_no: 11,
                    problem: "bad date",
                    ..
                }
            ),
            "{e}"
        );
        let e = parse_klist(&KLIST_SYSTEM.replacen("Ticket Flags 0x40e10000", "Ticket Flags 0xZZ", 1)).unwrap_err();
        assert!(
            matches!(
                e,
                ParseError::KlistValue {
                    problem: "bad ticket flags",
                    ..
                }
            ),
            "{e}"
        );
        let e = parse_klist(&KLIST_SYSTEM.replacen("\tServer:", "\tServeur du futur:", 1)).unwrap_err();
        assert!(matches!(e, ParseError::KlistLine { line_no: 8, .. }), "{e}");
        let e = parse_klist(&KLIST_SYSTEM.replace("Cached Tickets: (3)", "Cached Tickets: (4)")).unwrap_err();
        assert_eq!(e, ParseError::KlistCount { announced: 4, found: 3 });
        let cut = &KLIST_SYSTEM[..KLIST_SYSTEM.find("\tEnd Time").unwrap()];
        let e = parse_klist(cut).unwrap_err();
        assert!(
            matches!(
                e,
                ParseError::KlistIncomplete {
                    index: 0,
                    field: "End Time"
                }
            ),
            "{e}"
        );
        assert_eq!(parse_klist("").unwrap_err(), ParseError::KlistNoCount);
        assert!(matches!(
            parse_klist("#0>\tClient: x"),
            Err(ParseError::KlistValue { .. })
        ));
        assert!(matches!(
            parse_klist("garbage without colon"),
            Err(ParseError::KlistLine { line_no: 1, .. })
        ));
        let huge = format!("Cached Tickets: (0)\n{}", "A".repeat(1 << 20));
        let e = parse_klist(&huge).unwrap_err();
        assert!(e.to_string().len() < 400, "error text stays short");
    }

    #[test]
    fn klist_time_validation() {
        assert_eq!(parse_klist_time("2/29/2024 0:00:00 (local)"), ts(1709164800));
        assert_eq!(parse_klist_time("2/29/2023 0:00:00 (local)"), None);
        assert_eq!(parse_klist_time("1/1/1970 0:00:00"), ts(0));
        assert_eq!(parse_klist_time("1/1/1970 24:00:00"), None);
        assert_eq!(parse_klist_time("1/1/1970 0:00"), None);
        assert_eq!(parse_klist_time("1/1/19700 0:00:00"), None);
        assert_eq!(parse_klist_time("1/1/1970 0:00:00 PM"), None);
    }

    // --- events ---------------------------------------------------------

    #[test]
    fn events_seed_failure_ps51_single_object() {
        let b = parse_vmms_event_batch(EVENTS_SEED, HV01).unwrap();
        assert_eq!(b.max_record_id, Some(4711));
        assert_eq!(b.attempts.len(), 1);
        let (rid, a) = &b.attempts[0];
        assert_eq!(*rid, 4711);
        assert_eq!(a.attempt_id, "hv01.contoso.com:4711");
        assert!(!a.success);
        assert_eq!(a.error_code, 0x8009_030E);
        assert_eq!(a.role(), MigrationRole::Source);
        assert_eq!(a.peer, "", "the seed's host name is redacted");
        assert_eq!(a.vm_name, "");
        assert_eq!(a.event_id, 21502);
        assert_eq!(
            a.time,
            Some(Timestamp {
                seconds: 1_762_160_000,
                nanos: 0
            })
        );
        assert!(
            a.message
                .starts_with("Virtual machine migration operation failed at migration source.")
        );
        assert!(
            a.message
                .contains("No credentials are available in the security package (0x8009030E).")
        );
    }

    #[test]
    fn events_ps51_array_0x8009030d_and_unquoted_host() {
        let b = parse_vmms_event_batch(&crlf(EVENTS_PS51), HV01).unwrap();
        assert_eq!(
            b.max_record_id,
            Some(4714),
            "the skipped 'initiated' event still moves the cursor"
        );
        let ids: Vec<u64> = b.attempts.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, [4712, 4714]);
        let a = &b.attempts[0].1;
        assert_eq!(a.error_code, 0x8009_030D);
        assert_eq!(a.peer, "DESTINATION-SERVER");
        assert_eq!(
            a.role(),
            MigrationRole::Source,
            "a peer named DESTINATION-… does not make us the destination"
        );
        assert_eq!(
            a.time,
            Some(Timestamp {
                seconds: 1793697165,
                nanos: 123_456_700
            })
        );
        let a = &b.attempts[1].1;
        assert_eq!(a.error_code, 0x8009_030E);
        assert_eq!(a.peer, "HV02");
        assert_eq!(a.role(), MigrationRole::Source);
    }

    #[test]
    fn events_ps7_array_successes_and_failures() {
        let b = parse_vmms_event_batch(EVENTS_PS7, "HYPER-V4.contoso.com").unwrap();
        assert_eq!(b.max_record_id, Some(5007));
        let by_id = |id: u64| {
            &b.attempts
                .iter()
                .find(|(r, _)| *r == id)
                .unwrap_or_else(|| panic!("{id}"))
                .1
        };
        assert_eq!(b.attempts.len(), 6, "the null-message event is skipped");

        let a = by_id(5001);
        assert!(a.success);
        assert_eq!(a.event_id, 20415);
        assert_eq!(a.vm_name, "903194-nyc201");
        assert_eq!(a.vm_id, "F5EF233C-B586-4380-B5EA-00C1D5499815");
        assert_eq!(a.error_code, 0);
        assert_eq!(a.role(), MigrationRole::Unspecified);
        assert_eq!(
            a.time,
            Some(Timestamp {
                seconds: 1793697165,
                nanos: 639_441_600
            }),
            "-07:00 offset applied"
        );
        assert_eq!(a.attempt_id, "HYPER-V4.contoso.com:5001");

        let a = by_id(5002);
        assert!(a.success);
        assert_eq!(a.vm_name, "VM");

        let a = by_id(5003);
        assert!(!a.success);
        assert_eq!(a.error_code, 0x8009_0322);
        assert_eq!(a.vm_name, "WindowsAdminCenter");
        assert_eq!(a.vm_id, "39D45F49-72D2-4D19-B98A-9F55481A8047");
        assert_eq!(a.peer, "hyper-v01");
        assert_eq!(a.role(), MigrationRole::Source);
        assert_eq!(
            a.time,
            Some(Timestamp {
                seconds: 1793698270,
                nanos: 250_000_000
            })
        );

        let a = by_id(5004);
        assert!(!a.success);
        assert_eq!(a.error_code, 0x8007_000E);
        assert_eq!(a.vm_name, "vm1");
        assert_eq!(a.peer, "S2D1");
        assert_eq!(
            a.role(),
            MigrationRole::Source,
            "the failure is at the named destination, another host"
        );

        let a = by_id(5005);
        assert!(!a.success);
        assert_eq!(a.role(), MigrationRole::Destination);
        assert_eq!((a.error_code, a.peer.as_str(), a.vm_name.as_str()), (0, "", ""));

        let a = by_id(5006);
        assert!(a.success);
        assert_eq!(a.vm_name, "ws2025-core-01");
    }

    #[test]
    fn events_role_seen_from_the_other_host() {
        let b = parse_vmms_event_batch(EVENTS_PS7, "hyper-v01").unwrap();
        let a = &b.attempts.iter().find(|(r, _)| *r == 5003).unwrap().1;
        assert_eq!(a.role(), MigrationRole::Destination);
        assert_eq!(a.peer, "HYPER-V4");
    }

    #[test]
    fn events_empty_and_null() {
        let b = parse_vmms_event_batch(EVENTS_EMPTY, HV01).unwrap();
        assert_eq!(b, VmmsEventBatch::default());
        assert!(parse_vmms_events("null", HV01).unwrap().is_empty());
    }

    #[test]
    fn events_bad_fields() {
        let ev = |body: &str| parse_vmms_event_batch(&format!("{{{body}}}"), HV01);
        assert!(matches!(
            ev("\"Id\": 1, \"Message\": \"x\""),
            Err(ParseError::Missing { field: "RecordId", .. })
        ));
        assert!(matches!(
            ev("\"RecordId\": \"12\", \"Id\": 1"),
            Err(ParseError::WrongType { field: "RecordId", .. })
        ));
        assert!(matches!(
            ev("\"RecordId\": -1, \"Id\": 1"),
            Err(ParseError::OutOfRange { field: "RecordId", .. })
        ));
        assert!(matches!(
            ev("\"RecordId\": 1, \"Id\": 1, \"Message\": 42"),
            Err(ParseError::WrongType { field: "Message", .. })
        ));
        assert!(matches!(
            ev("\"RecordId\": 1, \"Id\": 1, \"TimeCreated\": \"/Date(abc)/\""),
            Err(ParseError::BadDate {
                field: "TimeCreated",
                ..
            })
        ));
        assert!(matches!(
            ev("\"RecordId\": 1, \"Id\": 1, \"TimeCreated\": 5"),
            Err(ParseError::WrongType { .. })
        ));
        let b = ev("\"RecordId\": 9, \"Id\": 1, \"TimeCreated\": null, \"Message\": \"Live migration of 'x' failed.\"")
            .unwrap();
        assert_eq!(b.attempts[0].1.time, None);
    }

    #[test]
    fn events_huge_message_is_cut() {
        let msg = format!(
            "Virtual machine migration operation failed at migration source. (0x8009030E) {}",
            "é".repeat(3_000_000)
        );
        let json = serde_json::json!({"RecordId": 1, "Id": 21502, "Level": 2, "TimeCreated": null, "Message": msg})
            .to_string();
        let b = parse_vmms_event_batch(&json, HV01).unwrap();
        let a = &b.attempts[0].1;
        assert_eq!(a.message.chars().count(), MAX_MESSAGE_CHARS);
        assert_eq!(a.error_code, 0x8009_030E);
    }

    #[test]
    fn event_times() {
        assert_eq!(
            parse_event_time("/Date(1595374458918)/"),
            Some(Timestamp {
                seconds: 1595374458,
                nanos: 918_000_000
            })
        );
        assert_eq!(
            parse_event_time("/Date(-1)/"),
            Some(Timestamp {
                seconds: -1,
                nanos: 999_000_000
            })
        );
        assert_eq!(
            parse_event_time("2021-08-05T16:13:05.6394416-07:00"),
            Some(Timestamp {
                seconds: 1628205185,
                nanos: 639_441_600
            })
        );
        assert_eq!(parse_event_time("2021-08-05T23:13:05Z"), ts(1628205185));
        assert_eq!(parse_event_time("2021-08-05T23:13:05"), ts(1628205185));
        assert_eq!(parse_event_time("2021-08-06T01:13:05+0200"), ts(1628205185));
        assert_eq!(
            parse_event_time("2021-08-05T23:13:05.123456789123Z").unwrap().nanos,
            123_456_789
        );
        for bad in [
            "",
            "2021-08-05",
            "2021-13-05T00:00:00Z",
            "2021-08-05T00:00:00+25:00",
            "2021-08-05T00:00:00.Z",
            "/Date()/",
            "/Date(1e5)/",
            "2021-08-05T00:00:00 PST",
            "２０２１-08-05T00:00:00Z",
        ] {
            assert_eq!(parse_event_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn error_codes_from_text() {
        let c = parse_error_code;
        assert_eq!(
            c("No credentials are available in the security package (0x8009030E)."),
            Some(0x8009_030E)
        );
        assert_eq!(c("in the security package 0x8009030E."), Some(0x8009_030E));
        assert_eq!(c("were not recognized (0x8009030d)"), Some(0x8009_030D));
        assert_eq!(c("0X80090322"), Some(0x8009_0322));
        assert_eq!(c("error -2146893042: no credentials"), Some(0x8009_030E));
        assert_eq!(c("(-2146893043)."), Some(0x8009_030D));
        assert_eq!(
            c("klist failed with 0x8009030e/-2146893042: No credentials"),
            Some(0x8009_030E)
        );
        assert_eq!(c("(0x000013AB)."), Some(0x13AB));
        assert_eq!(c("(0x000013AB) then (0x8007274D) and (0x80072746)"), Some(0x8007_274D));
        assert_eq!(c("LogonId 0:0x3e7"), None);
        assert_eq!(c("abc0x80090322"), None);
        assert_eq!(c("0x800903221"), None);
        assert_eq!(c("VMID E0D09432-1234-4A34-9D0E-6F3A2C1B7E55"), None);
        assert_eq!(c("took -12 seconds, id 12-2146893042"), None);
        assert_eq!(c("-9999999999"), None);
        assert_eq!(c(""), None);
        assert_eq!(c("0x"), None);
        assert_eq!(c("-"), None);
    }

    #[test]
    fn peer_vm_and_role_helpers() {
        assert_eq!(parse_peer_host("with host \"X.\": fails", ""), Some("X".into()));
        assert_eq!(
            parse_peer_host("with host 'hv02.contoso.com.'", ""),
            Some("hv02.contoso.com".into())
        );
        assert_eq!(
            parse_peer_host("with host HV03: No credentials", "hv01"),
            Some("HV03".into())
        );
        assert_eq!(
            parse_peer_host("with host *computer name*: No credentials", "hv01"),
            None
        );
        assert_eq!(
            parse_peer_host("to destination host \"Node11.\"", "hv01"),
            Some("Node11".into())
        );
        assert_eq!(parse_peer_host("with host \"unterminated", "hv01"), None);
        assert_eq!(
            parse_peer_host("with host \"HV01\"", "hv01.contoso.com"),
            None,
            "the local host is not a peer"
        );
        assert_eq!(parse_vm_name("Live migration of \"VM\" failed."), Some("VM".into()));
        assert_eq!(
            parse_vm_name("migration on virtual machine \"VM\" because"),
            Some("VM".into())
        );
        assert_eq!(parse_vm_name("virtual machines 'x'"), None);
        assert_eq!(parse_vm_name("virtual machine ''"), None);
        assert_eq!(
            parse_vm_id("(VMID e0d09432-1b5f-4a34-9d0e-6f3a2c1b7e5)"),
            None,
            "35 characters"
        );
        assert_eq!(
            parse_role("failed at migration destination: Logon failure", "hv01"),
            MigrationRole::Destination
        );
        assert_eq!(parse_role("nothing here", "hv01"), MigrationRole::Unspecified);
        assert!(
            classify_message(
                "initiated the live migration of virtual machine \"VM01\" to destination host \"Node11.\"",
                HV01
            )
            .is_none()
        );
        assert!(classify_message("The virtual switch was created.", HV01).is_none());
    }

    // --- hostile input --------------------------------------------------

    /// Deterministic pseudo-random numbers (no extra dependency).
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self, n: usize) -> usize {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.0 >> 33) as usize) % n.max(1)
        }
    }

    fn char_boundaries(s: &str) -> Vec<usize> {
        s.char_indices()
            .map(|(i, _)| i)
            .chain(std::iter::once(s.len()))
            .collect()
    }

    fn variants(s: &str, rng: &mut Lcg) -> Vec<String> {
        let mut out = Vec::new();
        let b = char_boundaries(s);
        let step = (b.len() / 150).max(1);
        for &cut in b.iter().step_by(step) {
            out.push(s[..cut].to_string());
            out.push(s[cut..].to_string());
        }
        const JUNK: &[&str] = &[
            "\"",
            "{",
            "}",
            "[",
            "]",
            ":",
            ",",
            "0",
            "9",
            "\t",
            "\n",
            "\r\n",
            "#",
            "#0>",
            ">",
            "(",
            ")",
            "/",
            "-",
            "0x",
            "é",
            "\u{FFFD}",
            "\\",
            "\\u0000",
            "99",
            "-1",
            "1e999",
            "18446744073709551616",
            "null",
            "true",
            "Ticket Flags",
            "Cached Tickets: (",
            " : ",
            "'",
            "with host ",
            "at migration source ",
            "/Date(",
            "0x8009030E",
            "-2146893042",
        ];
        for _ in 0..250 {
            let mut v = s.to_string();
            for _ in 0..=rng.next(3) {
                let bv = char_boundaries(&v);
                let at = bv[rng.next(bv.len())];
                match rng.next(3) {
                    0 => v.insert_str(at, JUNK[rng.next(JUNK.len())]),
                    1 => {
                        let end = bv[(bv.iter().position(|&x| x == at).unwrap() + 1 + rng.next(8)).min(bv.len() - 1)];
                        v.replace_range(at..end, "");
                    }
                    _ => {
                        let end = bv[(bv.iter().position(|&x| x == at).unwrap() + 1).min(bv.len() - 1)];
                        v.replace_range(at..end, JUNK[rng.next(JUNK.len())]);
                    }
                }
            }
            out.push(v);
        }
        // Bogus numbers everywhere, duplicated lines, huge strings.
        out.push(s.replace(|c: char| c.is_ascii_digit(), "9"));
        out.push(s.replace('1', "99").replace('4', "-4"));
        out.push(s.lines().flat_map(|l| [l, l]).collect::<Vec<_>>().join("\n"));
        out.push(s.replace('"', ""));
        out.push(s.replace(':', ""));
        let mid = b[b.len() / 2];
        out.push(format!("{}{}{}", &s[..mid], "A".repeat(1 << 20), &s[mid..]));
        out.push(format!("{}{}{}", &s[..mid], "[".repeat(10_000), &s[mid..]));
        out
    }

    fn run_every_parser(input: &str) {
        let _ = parse_vmhost_info(input);
        let _ = parse_migration_networks(input);
        let _ = parse_services(input);
        let _ = parse_os_and_device_guard(input);
        let _ = parse_host_identity(input);
        let _ = parse_klist(input);
        let _ = parse_vmms_event_batch(input, HV01);
        let _ = parse_vmms_event_batch(input, "");
        let _ = parse_error_code(input);
        let _ = classify_message(input, HV01);
        let _ = parse_event_time(input);
        let _ = parse_klist_time(input);
    }

    #[test]
    fn fuzz_every_fixture_never_panics() {
        let mut rng = Lcg(0x006b_6364_7379_6e63);
        let mut n = 0;
        for (name, text) in ALL_FIXTURES {
            for v in variants(text, &mut rng) {
                // A panic fails the test and names the input.
                let r = std::panic::catch_unwind(|| run_every_parser(&v));
                assert!(r.is_ok(), "panic on a variant of {name}: {:?}", snippet(&v));
                n += 1;
            }
        }
        assert!(n > 5_000, "{n} variants");
    }
}
