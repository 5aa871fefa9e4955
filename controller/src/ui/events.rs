//! `/ui/events`: the API's Watch events as server-sent events, so an open
//! page shows an approval, a new plan or a repaired drift without a reload.
//! Only the event's kind is sent: the page re-reads itself through the same
//! session, so nothing reaches the browser that the page would not show.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use kcdsync_proto::v1 as pb;
use tokio::sync::broadcast;

use super::{Ui, Visitor};

/// A comment line this often keeps proxies and the browser from timing the stream out.
const KEEPALIVE: Duration = Duration::from_secs(20);

pub async fn stream(axum::extract::State(ui): axum::extract::State<Ui>, v: Visitor) -> Response {
    if let Err(r) = v.reader() {
        return r;
    }
    let rx = ui.api.state.events.subscribe();
    let body = futures::stream::unfold(rx, |mut rx| async move {
        let frame = match tokio::time::timeout(KEEPALIVE, rx.recv()).await {
            Err(_) => ": keepalive\n\n".to_owned(),
            Ok(Ok(ev)) => format!("event: fleet\ndata: {}\n\n", kind(&ev)),
            // Fell behind: the page re-reads itself anyway, so say "changed".
            Ok(Err(broadcast::error::RecvError::Lagged(_))) => "event: fleet\ndata: lagged\n\n".to_owned(),
            Ok(Err(broadcast::error::RecvError::Closed)) => return None,
        };
        Some((Ok::<_, std::convert::Infallible>(Bytes::from(frame)), rx))
    });
    let mut r = Body::from_stream(body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    super::html::secure_headers(h);
    r
}

/// The event's kind, as a fixed word (never text from AD or an agent).
fn kind(ev: &pb::FleetEvent) -> &'static str {
    use pb::fleet_event::Event;
    match ev.event {
        Some(Event::FindingRaised(_)) => "finding-raised",
        Some(Event::FindingCleared(_)) => "finding-cleared",
        Some(Event::PlanCreated(_)) => "plan-created",
        Some(Event::PlanApplied(_)) => "plan-applied",
        Some(Event::AttemptReported(_)) => "attempt-reported",
        Some(Event::HostStale(_)) => "host-stale",
        None => "changed",
    }
}
