//! Windows service glue: lets the agent run under the Service Control
//! Manager (SCM) as the `kcdsync-agent` service that
//! `deploy/windows/install-agent.ps1` registers (LocalSystem, automatic
//! start, restart on failure).
//!
//! The binary calls [`run_as_service`] with the same work it runs in the
//! foreground. The SCM's Stop and Shutdown requests become `true` on a
//! [`tokio::sync::watch`] channel, exactly like Ctrl-C in the foreground:
//!
//! ```ignore
//! kcdsync_agent::service::run_as_service(|stop| {
//!     let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
//!     rt.block_on(agent_main(config, stop))
//! })
//! ```
//!
//! [`run_as_service`] blocks until the service stops. Called from a console
//! instead of by the SCM, it fails at once with
//! "cannot connect to the service control manager".
//!
//! The service reports Running as soon as it is registered and Stopped
//! (exit code 0, or service-specific 1 when `run` failed or panicked) when
//! `run` returns. The installer sets recovery actions that also apply to a
//! Stopped with a non-zero exit code (`sc.exe failureflag … 1`).
#![cfg(windows)]

use std::ffi::OsString;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context, anyhow};
use tokio::sync::watch;
use windows_service::service::{
    ServiceControl, ServiceControlAccept, ServiceExitCode, ServiceState, ServiceStatus, ServiceType,
};
use windows_service::service_control_handler::{self, ServiceControlHandlerResult, ServiceStatusHandle};
use windows_service::{define_windows_service, service_dispatcher};

/// The service name the installer registers.
pub const SERVICE_NAME: &str = "kcdsync-agent";

/// How long the SCM is told to wait between Stop and Stopped.
const STOP_WAIT_HINT: Duration = Duration::from_secs(30);

type RunFn = Box<dyn FnOnce(watch::Receiver<bool>) -> anyhow::Result<()> + Send>;

// The SCM calls a plain `extern "system" fn`, so the work and its outcome
// pass through statics. One service per process.
static RUN: Mutex<Option<RunFn>> = Mutex::new(None);
static OUTCOME: Mutex<Option<anyhow::Result<()>>> = Mutex::new(None);
static STATUS: OnceLock<ServiceStatusHandle> = OnceLock::new();
static STOP: Mutex<Option<watch::Sender<bool>>> = Mutex::new(None);

define_windows_service!(ffi_service_main, service_main);

/// Runs `run` as the `kcdsync-agent` Windows service; `run` receives a
/// channel that turns `true` when the SCM asks the service to stop (Stop,
/// Shutdown, Preshutdown) and must return soon after. Returns `run`'s result
/// once the service has stopped.
pub fn run_as_service<F>(run: F) -> anyhow::Result<()>
where
    F: FnOnce(watch::Receiver<bool>) -> anyhow::Result<()> + Send + 'static,
{
    *lock(&RUN) = Some(Box::new(run));
    service_dispatcher::start(SERVICE_NAME, ffi_service_main).context(
        "cannot connect to the service control manager (not started as a service? \
         use `kcdsync-agent run` in a console)",
    )?;
    lock(&OUTCOME)
        .take()
        .unwrap_or_else(|| Err(anyhow!("the service was never started by the SCM")))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Called by the SCM on its own thread. The outcome is stored *before*
/// Stopped is reported: once the SCM sees Stopped, `service_dispatcher::start`
/// returns in [`run_as_service`], which then reads it.
fn service_main(_arguments: Vec<OsString>) {
    // The channel exists before the handler can receive Stop.
    let (stop_tx, stop_rx) = watch::channel(false);
    *lock(&STOP) = Some(stop_tx);
    let handle = match register() {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "cannot start the service");
            *lock(&OUTCOME) = Some(Err(e));
            return;
        }
    };
    let run = lock(&RUN).take();
    let outcome = match run {
        None => Err(anyhow!("no work given to run_as_service")),
        Some(run) => match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(stop_rx))) {
            Ok(r) => r,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                Err(anyhow!("the agent panicked: {what}"))
            }
        },
    };
    if let Err(e) = &outcome {
        tracing::error!(error = %format!("{e:#}"), "service stopped with an error");
    }
    let exit = if outcome.is_ok() {
        ServiceExitCode::Win32(0)
    } else {
        ServiceExitCode::ServiceSpecific(1)
    };
    *lock(&OUTCOME) = Some(outcome);
    if let Err(e) = handle.set_service_status(status(ServiceState::Stopped, exit)) {
        tracing::error!(error = %e, "cannot report Stopped to the SCM");
    }
}

/// Registers the control handler and reports Running.
fn register() -> anyhow::Result<ServiceStatusHandle> {
    let handler = |control| match control {
        ServiceControl::Stop | ServiceControl::Shutdown | ServiceControl::Preshutdown => {
            if let Some(h) = STATUS.get() {
                let _ = h.set_service_status(status(ServiceState::StopPending, ServiceExitCode::Win32(0)));
            }
            if let Some(tx) = lock(&STOP).as_ref() {
                let _ = tx.send(true);
            }
            ServiceControlHandlerResult::NoError
        }
        ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
        _ => ServiceControlHandlerResult::NotImplemented,
    };
    let handle = service_control_handler::register(SERVICE_NAME, handler)
        .context("cannot register the service control handler")?;
    let _ = STATUS.set(handle);
    handle
        .set_service_status(status(ServiceState::Running, ServiceExitCode::Win32(0)))
        .context("cannot report Running to the SCM")?;
    Ok(handle)
}

fn status(state: ServiceState, exit_code: ServiceExitCode) -> ServiceStatus {
    let (controls_accepted, wait_hint) = match state {
        ServiceState::Running => (
            ServiceControlAccept::STOP | ServiceControlAccept::SHUTDOWN,
            Duration::ZERO,
        ),
        ServiceState::StopPending => (ServiceControlAccept::empty(), STOP_WAIT_HINT),
        _ => (ServiceControlAccept::empty(), Duration::ZERO),
    };
    ServiceStatus {
        service_type: ServiceType::OWN_PROCESS,
        current_state: state,
        controls_accepted,
        exit_code,
        checkpoint: 0,
        wait_hint,
        process_id: None,
    }
}
