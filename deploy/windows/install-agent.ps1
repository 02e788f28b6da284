<#
.SYNOPSIS
    Install the Nebula Command node agent on Windows as a scheduled task at startup.

.DESCRIPTION
    Safe to run again: each step checks what is already there.
      1. Finds nebula.exe (or creates a virtual environment and installs the package).
      2. Sets NEBULA_DATA_DIR for the machine and limits the data folder to SYSTEM and
         Administrators (the agent's tokens live there).
      3. Enrolls with the control plane when -Server and -Token are given and the
         machine is not enrolled yet (or -Reenroll).
      4. Registers the task "Nebula Agent" (runs `nebula agent run` as SYSTEM at
         startup, restarts it if it stops) and starts it.
      5. Opens the agent's port in Windows Firewall for the Tailscale range only.

.EXAMPLE
    .\install-agent.ps1 -Server https://nebula.example -Token nbe_...

.EXAMPLE
    .\install-agent.ps1 -PackageSpec "nebula-command==0.1.0" -Server http://100.64.0.1:8000 -Token nbe_...
#>
[CmdletBinding()]
param(
    # The control plane's URL, e.g. https://nebula.example
    [string]$Server,
    # The one-time enrollment token from `nebula node add NAME` on the control plane.
    [string]$Token,
    # nebula.exe to run; found on PATH or under -InstallDir when not given.
    [string]$NebulaExe,
    # Where to create a virtual environment when nebula.exe is not installed yet.
    [string]$InstallDir = (Join-Path $env:ProgramData "Nebula"),
    # What pip installs into that environment (a version, a wheel file, a git URL).
    [string]$PackageSpec = "nebula-command",
    # The agent's data folder: config (agent.toml), state.json, audit.jsonl.
    [string]$DataDir = (Join-Path $env:ProgramData "nebula"),
    [ValidateRange(1, 65535)]
    [int]$Port = 9765,
    # Callers the firewall lets in (Tailscale's range by default).
    [string[]]$AllowFrom = @("100.64.0.0/10"),
    [string]$TaskName = "Nebula Agent",
    # Enroll again even though the machine already is (a new token from the server).
    [switch]$Reenroll
)

Set-StrictMode -Version Latest
$ErrorActionPreference = "Stop"

function Assert-Administrator {
    $identity = [Security.Principal.WindowsIdentity]::GetCurrent()
    $principal = New-Object Security.Principal.WindowsPrincipal($identity)
    if (-not $principal.IsInRole([Security.Principal.WindowsBuiltInRole]::Administrator)) {
        throw "Run this script from an elevated PowerShell (Run as administrator)."
    }
}

function Find-Nebula {
    if ($NebulaExe) {
        if (-not (Test-Path $NebulaExe)) { throw "No nebula.exe at $NebulaExe." }
        return (Resolve-Path $NebulaExe).Path
    }
    $venvExe = Join-Path $InstallDir "venv\Scripts\nebula.exe"
    if (Test-Path $venvExe) { return $venvExe }
    $onPath = Get-Command nebula.exe -ErrorAction SilentlyContinue
    if ($onPath) { return $onPath.Source }
    $python = Get-Command python.exe -ErrorAction SilentlyContinue
    if (-not $python) {
        throw "Neither nebula.exe nor python.exe was found. Install Python 3.11+ or pass -NebulaExe."
    }
    Write-Host "Installing $PackageSpec into $InstallDir\venv ..."
    New-Item -ItemType Directory -Force -Path $InstallDir | Out-Null
    & $python.Source -m venv (Join-Path $InstallDir "venv")
    if ($LASTEXITCODE -ne 0) { throw "Creating the virtual environment failed." }
    & (Join-Path $InstallDir "venv\Scripts\python.exe") -m pip install --upgrade $PackageSpec
    if ($LASTEXITCODE -ne 0) { throw "pip install $PackageSpec failed." }
    return $venvExe
}

function Set-DataDir {
    New-Item -ItemType Directory -Force -Path $DataDir | Out-Null
    # Only SYSTEM and Administrators may read the agent's tokens.
    & icacls.exe $DataDir /inheritance:r /grant:r "*S-1-5-18:(OI)(CI)F" "*S-1-5-32-544:(OI)(CI)F" | Out-Null
    if ($LASTEXITCODE -ne 0) { throw "Setting permissions on $DataDir failed." }
    if ([Environment]::GetEnvironmentVariable("NEBULA_DATA_DIR", "Machine") -ne $DataDir) {
        [Environment]::SetEnvironmentVariable("NEBULA_DATA_DIR", $DataDir, "Machine")
    }
    $env:NEBULA_DATA_DIR = $DataDir
}

function Invoke-Enroll([string]$Exe) {
    $state = Join-Path $DataDir "agent\state.json"
    if ((Test-Path $state) -and -not $Reenroll) {
        Write-Host "Already enrolled ($state); pass -Reenroll to enroll again."
        return
    }
    if (-not $Server -or -not $Token) {
        Write-Host "Not enrolled: pass -Server and -Token to enroll (the agent serves pull-only until then)."
        return
    }
    # The token goes through the environment, not the command line other users can see.
    $env:NEBULA_ENROLL_TOKEN = $Token
    try {
        & $Exe agent enroll --server $Server
        if ($LASTEXITCODE -ne 0) { throw "Enrollment failed (see the error above)." }
    }
    finally {
        Remove-Item Env:\NEBULA_ENROLL_TOKEN -ErrorAction SilentlyContinue
    }
}

function Register-AgentTask([string]$Exe) {
    $action = New-ScheduledTaskAction -Execute $Exe -Argument "agent run --port $Port" `
        -WorkingDirectory $DataDir
    $trigger = New-ScheduledTaskTrigger -AtStartup
    $principal = New-ScheduledTaskPrincipal -UserId "SYSTEM" -LogonType ServiceAccount -RunLevel Highest
    $settings = New-ScheduledTaskSettingsSet -AllowStartIfOnBatteries -DontStopIfGoingOnBatteries `
        -StartWhenAvailable -ExecutionTimeLimit ([TimeSpan]::Zero) `
        -RestartCount 999 -RestartInterval (New-TimeSpan -Minutes 1) -MultipleInstances IgnoreNew
    $existing = Get-ScheduledTask -TaskName $TaskName -ErrorAction SilentlyContinue
    if ($existing -and $existing.State -eq "Running") {
        Stop-ScheduledTask -TaskName $TaskName
    }
    Register-ScheduledTask -TaskName $TaskName -Action $action -Trigger $trigger `
        -Principal $principal -Settings $settings -Force `
        -Description "Nebula Command node agent (nebula agent run)" | Out-Null
    Start-ScheduledTask -TaskName $TaskName
    Write-Host "Task '$TaskName' registered and started."
}

function Open-Firewall {
    $rule = "Nebula Agent (TCP $Port)"
    $existing = Get-NetFirewallRule -DisplayName $rule -ErrorAction SilentlyContinue
    if ($existing) {
        $existing | Set-NetFirewallRule -RemoteAddress $AllowFrom -LocalPort $Port -Protocol TCP
    }
    else {
        New-NetFirewallRule -DisplayName $rule -Direction Inbound -Action Allow -Protocol TCP `
            -LocalPort $Port -RemoteAddress $AllowFrom | Out-Null
    }
    Write-Host "Firewall: TCP $Port open to $($AllowFrom -join ', ')."
}

Assert-Administrator
$exe = Find-Nebula
Write-Host "Using $exe"
Set-DataDir
Invoke-Enroll $exe
Register-AgentTask $exe
Open-Firewall
Write-Host "Done. Check it with: & '$exe' agent show"
