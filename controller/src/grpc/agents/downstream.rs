//! How a stream ends: why the hub cuts one off, the downlink tonic sends (which ends with
//! that status), and the watch that cuts the streams of hosts revoked meanwhile.

use std::sync::Weak;

use kcdsync_proto::v1::ControllerMessage;
use tokio::sync::{mpsc, watch};
use tonic::Status;

use super::{AgentHub, DOWN_QUEUE, Inner};
use crate::revocation;

/// Why the hub ends a stream.
#[derive(Debug, Clone)]
pub(super) enum Cut {
    /// Its agent does not read (a command found its queue full).
    NotReading,
    /// Its host was revoked while it streamed; what it is told.
    Revoked(String),
}

impl Cut {
    pub(super) fn status(&self) -> Status {
        match self {
            Cut::NotReading => not_reading(),
            Cut::Revoked(why) => Status::permission_denied(why.clone()),
        }
    }
}

/// What an agent cut off for not reading is told (if it ever reads again).
pub(super) fn not_reading() -> Status {
    Status::resource_exhausted(format!(
        "this agent did not read its stream ({DOWN_QUEUE} messages were waiting): disconnected; reconnect to get the purges it missed"
    ))
}

/// One agent's downlink as tonic sends it: the queued messages, until the hub
/// cuts the agent off — then RESOURCE_EXHAUSTED (not reading) or PERMISSION_DENIED
/// (revoked) and the end, whatever is still queued (the purges among it are
/// recorded for the next connection).
pub struct Downstream {
    rx: mpsc::Receiver<Result<ControllerMessage, Status>>,
    cut: std::pin::Pin<Box<dyn std::future::Future<Output = Status> + Send + Sync>>,
    ended: bool,
}

impl Downstream {
    pub(super) fn new(
        rx: mpsc::Receiver<Result<ControllerMessage, Status>>,
        mut cut: watch::Receiver<Option<Cut>>,
    ) -> Downstream {
        // A hub that drops the connection without cutting it (the agent left)
        // ends the stream by closing the queue instead.
        let cut = Box::pin(async move {
            let why = cut
                .wait_for(|c| c.is_some())
                .await
                .ok()
                .map(|c| c.as_ref().map_or_else(not_reading, Cut::status));
            match why {
                Some(status) => status,
                // The hub dropped the stream without cutting it: the queue's end ends it.
                None => std::future::pending().await,
            }
        });
        Downstream { rx, cut, ended: false }
    }
}

impl tokio_stream::Stream for Downstream {
    type Item = Result<ControllerMessage, Status>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        if self.ended {
            return Poll::Ready(None);
        }
        if let Poll::Ready(status) = self.cut.as_mut().poll(cx) {
            self.ended = true;
            return Poll::Ready(Some(Err(status)));
        }
        self.rx.poll_recv(cx)
    }
}

/// Re-reads the deny-list every [`revocation::POLL`] while any stream is open and cuts the
/// streams of hosts on it: a host revoked on any replica loses its live stream here within
/// that. Stops when the hub is gone.
pub(super) async fn watch_revocations(hub: Weak<Inner>) {
    let mut tick = tokio::time::interval(revocation::POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        let Some(inner) = hub.upgrade() else { return };
        let hub = AgentHub { inner };
        // Nothing to cut: no need to ask the store (an idle replica stays quiet).
        if hub.inner.streams.lock().unwrap().is_empty() {
            continue;
        }
        match hub.inner.store.agent_revocations().await {
            Ok(list) => {
                if failing {
                    tracing::info!("the agent revocation list is readable again");
                }
                failing = false;
                hub.cut_revoked(&list);
            }
            Err(e) => {
                // Once per outage, not twice a second; new streams are refused meanwhile
                // (their Hello cannot be checked), live ones are cut once it reads again.
                if !failing {
                    tracing::error!(error = %e, "cannot read the agent revocation list: streams of hosts revoked now are cut once it can be read");
                }
                failing = true;
            }
        }
    }
}
