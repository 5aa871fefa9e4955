<#
.SYNOPSIS
    Installs, updates or removes the kcdsync agent as a Windows service on a Hyper-V host.

.DESCRIPTION
    Installs kcdsync-agent.exe into -InstallDir, creates the data directory -DataDir
    (readable by SYSTEM and Administrators only: it holds the agent's private key and
    the outbox of migration attempts not yet acknowledged by the controller), copies the
    CA, certificate and key there, writes the agent configuration (agent.toml), checks
    it with `kcdsync-agent.exe check-config`, and registers the `kcdsync-agent` service:
    automatic start, LocalSystem (reading and purging the SYSTEM logon session's Kerberos
    tickets with `klist -li 0x3e7` needs it), restarted by the service control manager
    after a failure. Then it starts the service.

    Running it again updates the binary, the files and the configuration in place and
    restarts the service. -Uninstall stops and removes the service and the install
    directory; the data directory is kept unless -RemoveData is given (its outbox may
    still hold attempts the controller has not acknowledged).

.PARAMETER ControllerUrl
    The controller's agent endpoint, an https:// URL (the agent only talks mTLS),
    e.g. https://kcdsync.contoso.com:7443

.PARAMETER CaFile
    PEM file of the CA that signed the controller's certificate.

.PARAMETER CertFile
    PEM file of this host's client certificate. Its name must be this host's name:
    the controller binds the stream to the host named in the certificate. Not needed
    with -EnrollSpn.

.PARAMETER KeyFile
    PEM file of the private key of -CertFile. It is copied into -DataDir; delete the
    original afterwards if it was left anywhere less protected. Not needed with
    -EnrollSpn.

.PARAMETER EnrollSpn
    Optional. The controller's service principal (agents.enroll.service_principal,
    e.g. kcdsync/kcdsync.contoso.com): the agent then enrolls by Kerberos as this
    computer's account and writes its certificate and key itself (docs/enrollment.md).

.PARAMETER TlsServerName
    Optional. Name to verify in the controller's certificate when -ControllerUrl holds
    an IP address or a different name.

.PARAMETER BinaryPath
    The kcdsync-agent.exe to install. Default: kcdsync-agent.exe beside this script.
    On a re-run without a new binary, the installed one is kept.

.PARAMETER InstallDir
    Where the binary goes. Default: C:\Program Files\kcdsync

.PARAMETER DataDir
    Configuration, TLS files and outbox. Default: C:\ProgramData\kcdsync

.PARAMETER Uninstall
    Stop and remove the service and -InstallDir.

.PARAMETER RemoveData
    With -Uninstall: also delete -DataDir (key, configuration, un-acknowledged outbox).

.EXAMPLE
    .\install-agent.ps1 -ControllerUrl https://kcdsync.contoso.com:7443 -CaFile .\ca.pem -CertFile .\hv01.pem -KeyFile .\hv01.key

    Installs (or updates) the agent and starts it.

.EXAMPLE
    .\install-agent.ps1 -ControllerUrl https://kcdsync.contoso.com:7443 -CaFile .\ca.pem -EnrollSpn kcdsync/kcdsync.contoso.com

    Installs the agent without a certificate: it enrolls as the computer account.

.EXAMPLE
    .\install-agent.ps1 -Uninstall

    Removes the service and the binary, keeps C:\ProgramData\kcdsync.

.NOTES
    Service command line: "<InstallDir>\kcdsync-agent.exe" service --config "<DataDir>\agent.toml".
    Logs: the agent writes to standard error; as a service, see the Windows event log of the
    service control manager for start/stop failures. Check a host with
    `kcdsync-agent.exe probe --config <DataDir>\agent.toml` from an elevated console.
#>
#Requires -Version 5.1
#Requires -RunAsAdministrator
[CmdletBinding(DefaultParameterSetName = 'Install')]
param(
    [Parameter(Mandatory = $true, ParameterSetName = 'Install')]
    [ValidatePattern('^https://[^\s''"]+$')]
    [string] $ControllerUrl,

    [Parameter(Mandatory = $true, ParameterSetName = 'Install')]
    [string] $CaFile,

    [Parameter(ParameterSetName = 'Install')]
    [string] $CertFile,

    [Parameter(ParameterSetName = 'Install')]
    [string] $KeyFile,

    [Parameter(ParameterSetName = 'Install')]
    [ValidatePattern('^[A-Za-z0-9.\-]+/[A-Za-z0-9.\-]+(@[A-Za-z0-9.\-]+)?$')]
    [string] $EnrollSpn,

    [Parameter(ParameterSetName = 'Install')]
    [ValidatePattern('^[A-Za-z0-9.\-]+$')]
    [string] $TlsServerName,

    [Parameter(ParameterSetName = 'Install')]
    [string] $BinaryPath = (Join-Path $PSScriptRoot 'kcdsync-agent.exe'),

    [string] $InstallDir = (Join-Path $env:ProgramFiles 'kcdsync'),

    [string] $DataDir = (Join-Path $env:ProgramData 'kcdsync'),

    [Parameter(Mandatory = $true, ParameterSetName = 'Uninstall')]
    [switch] $Uninstall,

    [Parameter(ParameterSetName = 'Uninstall')]
    [switch] $RemoveData
)

Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'

$ServiceName = 'kcdsync-agent'          # = kcdsync_agent::service::SERVICE_NAME
$DisplayName = 'kcdsync agent'
$Description = 'Reports this Hyper-V host''s live-migration state (VMMS, WinRM, migration settings, SYSTEM Kerberos tickets, migration attempts) to the kcdsync controller.'
$ExeName = 'kcdsync-agent.exe'
# Well-known SIDs: names such as "Administrators" are translated on non-English Windows.
$SidSystem = 'S-1-5-18'
$SidAdministrators = 'S-1-5-32-544'

function Invoke-Native {
    # Runs a native command and throws when it exits non-zero. Locally 'Continue':
    # under 'Stop', Windows PowerShell 5.1 turns the first line a native command
    # writes to stderr (with 2>&1) into a terminating error.
    param([string] $File, [string[]] $Arguments)
    $ErrorActionPreference = 'Continue'
    $out = & $File @Arguments 2>&1 | ForEach-Object { "$_" }
    if ($LASTEXITCODE -ne 0) {
        throw "$File $($Arguments -join ' ') failed with exit code ${LASTEXITCODE}: $($out -join ' ')"
    }
    $out
}

function Stop-AgentService {
    $svc = Get-Service -Name $ServiceName -ErrorAction SilentlyContinue
    if ($null -ne $svc -and $svc.Status -ne 'Stopped') {
        Write-Host "Stopping $ServiceName ..."
        Stop-Service -Name $ServiceName -Force
        $svc.WaitForStatus('Stopped', [TimeSpan]::FromSeconds(60))
    }
}

function Test-SamePath([string] $A, [string] $B) {
    if (-not (Test-Path -LiteralPath $A) -or -not (Test-Path -LiteralPath $B)) { return $false }
    return (Resolve-Path -LiteralPath $A).ProviderPath -eq (Resolve-Path -LiteralPath $B).ProviderPath
}

function Copy-IfDifferent([string] $From, [string] $To) {
    if (-not (Test-Path -LiteralPath $From -PathType Leaf)) { throw "$From does not exist or is not a file" }
    if (-not (Test-SamePath $From $To)) { Copy-Item -LiteralPath $From -Destination $To -Force }
}

function Assert-NotReparsePoint([string] $Path) {
    # A junction or symbolic link planted in C:\ProgramData (any user may create folders
    # there): the ACL changes and writes below, run elevated, would land on its target.
    $item = Get-Item -LiteralPath $Path -Force
    if ($item.Attributes -band [System.IO.FileAttributes]::ReparsePoint) {
        throw "$Path is a reparse point (junction or symbolic link); remove it, or give -DataDir a real directory"
    }
}

function Protect-DataDir([string] $Path) {
    Assert-NotReparsePoint $Path
    # Someone else's directory stays theirs (an owner may always rewrite the DACL):
    # Administrators become the owner of it and of everything in it.
    Invoke-Native icacls.exe @($Path, '/setowner', "*$SidAdministrators", '/T', '/C', '/Q') | Out-Null
    # Children back to inherited-only ACEs, then the directory itself: inheritance off,
    # full control for SYSTEM and Administrators, nothing else.
    if (Get-ChildItem -LiteralPath $Path -Force) {
        Invoke-Native icacls.exe @("$Path\*", '/reset', '/T', '/C', '/Q') | Out-Null
    }
    Invoke-Native icacls.exe @($Path, '/inheritance:r', '/grant:r',
        "*${SidSystem}:(OI)(CI)F", "*${SidAdministrators}:(OI)(CI)F", '/Q') | Out-Null
    # Explicit entries left from an earlier ACL (icacls /grant:r only replaces its own SIDs).
    $acl = Get-Acl -LiteralPath $Path
    $changed = $false
    foreach ($rule in $acl.Access) {
        $sid = $rule.IdentityReference.Translate([System.Security.Principal.SecurityIdentifier]).Value
        if ($sid -ne $SidSystem -and $sid -ne $SidAdministrators) {
            $acl.RemoveAccessRuleAll($rule)
            $changed = $true
        }
    }
    if ($changed) { Set-Acl -LiteralPath $Path -AclObject $acl }
}

function ConvertTo-TomlLiteral([string] $Value) {
    # TOML literal string: no escapes, so Windows paths stay as they are.
    if ($Value.Contains("'") -or $Value.Contains("`n") -or $Value.Contains("`r")) {
        throw "cannot write $Value into the configuration: it contains a quote or a line break"
    }
    "'$Value'"
}

if ($Uninstall) {
    Stop-AgentService
    if (Get-Service -Name $ServiceName -ErrorAction SilentlyContinue) {
        Write-Host "Removing service $ServiceName ..."
        Invoke-Native sc.exe @('delete', $ServiceName) | Out-Null
    }
    if (Test-Path -LiteralPath $InstallDir) {
        Remove-Item -LiteralPath $InstallDir -Recurse -Force
    }
    if ($RemoveData -and (Test-Path -LiteralPath $DataDir)) {
        Remove-Item -LiteralPath $DataDir -Recurse -Force
        Write-Host "Removed $DataDir."
    } elseif (Test-Path -LiteralPath $DataDir) {
        Write-Host "Kept $DataDir (configuration, key, outbox); -RemoveData deletes it."
    }
    Write-Host "kcdsync agent uninstalled."
    return
}

# --- install or update -------------------------------------------------------

if (-not $EnrollSpn -and (-not $CertFile -or -not $KeyFile)) {
    throw "give -CertFile and -KeyFile (a certificate made with kcdsync-controller certs agent), or -EnrollSpn to enroll by Kerberos"
}
$files = @($CaFile)
if ($CertFile) { $files += $CertFile }
if ($KeyFile) { $files += $KeyFile }
foreach ($f in $files) {
    if (-not (Test-Path -LiteralPath $f -PathType Leaf)) { throw "$f does not exist or is not a file" }
}
$exe = Join-Path $InstallDir $ExeName
if (-not (Test-Path -LiteralPath $BinaryPath -PathType Leaf) -and -not (Test-Path -LiteralPath $exe -PathType Leaf)) {
    throw "no agent binary: $BinaryPath does not exist and nothing is installed at $exe (use -BinaryPath)"
}

Stop-AgentService

# Binary.
New-Item -ItemType Directory -Force -Path $InstallDir | Out-Null
if (Test-Path -LiteralPath $BinaryPath -PathType Leaf) {
    Copy-IfDifferent $BinaryPath $exe
}

# Data directory: protected before any secret is copied in.
$tlsDir = Join-Path $DataDir 'tls'
$outboxDir = Join-Path $DataDir 'outbox'
New-Item -ItemType Directory -Force -Path $DataDir | Out-Null
Protect-DataDir $DataDir
New-Item -ItemType Directory -Force -Path $tlsDir, $outboxDir | Out-Null
$ca = Join-Path $tlsDir 'ca.pem'
$cert = Join-Path $tlsDir 'agent.pem'
$key = Join-Path $tlsDir 'agent.key'
Copy-IfDifferent $CaFile $ca
if ($CertFile) { Copy-IfDifferent $CertFile $cert }
if ($KeyFile) { Copy-IfDifferent $KeyFile $key }
Protect-DataDir $DataDir

# Configuration (UTF-8 without BOM).
$config = Join-Path $DataDir 'agent.toml'
$lines = @(
    '# Written by deploy/windows/install-agent.ps1; re-running it rewrites this file.',
    "controller_url = $(ConvertTo-TomlLiteral $ControllerUrl)"
)
if ($TlsServerName) { $lines += "tls_server_name = $(ConvertTo-TomlLiteral $TlsServerName)" }
$lines += @(
    "ca_file = $(ConvertTo-TomlLiteral $ca)",
    "cert_file = $(ConvertTo-TomlLiteral $cert)",
    "key_file = $(ConvertTo-TomlLiteral $key)",
    "outbox_dir = $(ConvertTo-TomlLiteral $outboxDir)",
    'probe = "windows"'
)
if ($EnrollSpn) {
    $lines += @('', '[enroll]', "service_principal = $(ConvertTo-TomlLiteral $EnrollSpn)")
}
[System.IO.File]::WriteAllText($config, (($lines -join "`r`n") + "`r`n"), (New-Object System.Text.UTF8Encoding($false)))
Invoke-Native $exe @('check-config', '--config', $config) | Write-Host

# Service: LocalSystem, automatic start.
$binPath = '"{0}" service --config "{1}"' -f $exe, $config
$existing = Get-CimInstance -ClassName Win32_Service -Filter "Name='$ServiceName'"
if ($null -eq $existing) {
    Write-Host "Registering service $ServiceName ..."
    New-Service -Name $ServiceName -BinaryPathName $binPath -DisplayName $DisplayName `
        -Description $Description -StartupType Automatic | Out-Null
} else {
    Write-Host "Updating service $ServiceName ..."
    $r = Invoke-CimMethod -InputObject $existing -MethodName Change -Arguments @{
        DisplayName   = $DisplayName
        PathName      = $binPath
        StartMode     = 'Automatic'
        StartName     = 'LocalSystem'
        StartPassword = ''
    }
    if ($r.ReturnValue -ne 0) { throw "Win32_Service.Change failed with return value $($r.ReturnValue)" }
    Set-Service -Name $ServiceName -Description $Description
}
# Restart after 10 s, 30 s, then every 60 s; the failure count resets after a day.
# failureflag 1: also when the service stops itself with a non-zero exit code.
Invoke-Native sc.exe @('failure', $ServiceName, 'reset=', '86400', 'actions=', 'restart/10000/restart/30000/restart/60000') | Out-Null
Invoke-Native sc.exe @('failureflag', $ServiceName, '1') | Out-Null

Write-Host "Starting $ServiceName ..."
Start-Service -Name $ServiceName
(Get-Service -Name $ServiceName).WaitForStatus('Running', [TimeSpan]::FromSeconds(30))
Write-Host "kcdsync agent running: $exe, configuration $config."
