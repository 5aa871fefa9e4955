//! The one writer of what agents send: whatever is queued goes into the store in one
//! transaction, then the attempts it stored are acknowledged and reported failures become
//! reconcile triggers.

use kcdsync_proto::v1::controller_message::Body as Down;
use kcdsync_proto::v1::*;
use tokio::sync::{mpsc, oneshot};

use super::{AUTH_FAILURES, Downlink, Trigger};
use crate::store::{AuditRow, IngestBatch, Store};

/// Items the writer takes per transaction at most.
pub(super) const MAX_BATCH: usize = 4096;

/// What a stream hands the writer.
pub(super) enum Ingest {
    Report(String, HostReport),
    Attempts {
        host: String,
        seq: u64,
        attempts: Vec<MigrationAttempt>,
        reply: Downlink,
    },
    Seen(String),
    /// An audit event (a renewed certificate's) to commit with the next batch; `done` is told
    /// once it is, or why not.
    Audit {
        row: AuditRow,
        done: oneshot::Sender<Result<(), String>>,
    },
}

/// The one writer: batches whatever is queued into one transaction, then
/// acknowledges the attempts it stored.
pub(super) async fn writer(
    store: Store,
    mut rx: mpsc::Receiver<Ingest>,
    triggers: Option<mpsc::Sender<Trigger>>,
    events: tokio::sync::broadcast::Sender<(String, MigrationAttempt)>,
) {
    let mut items = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut items, MAX_BATCH).await > 0 {
        let mut batch = IngestBatch::default();
        let mut acks: Vec<(Downlink, u64, Vec<String>)> = Vec::new();
        let mut failed: Vec<Trigger> = Vec::new();
        let (mut audits, mut audited) = (Vec::new(), Vec::new());
        for item in items.drain(..) {
            match item {
                Ingest::Audit { row, done } => {
                    audits.push(row);
                    audited.push(done);
                }
                Ingest::Report(h, r) => batch.reports.push((h, r)),
                Ingest::Seen(h) => batch.seen.push(h),
                Ingest::Attempts {
                    host,
                    seq,
                    attempts,
                    reply,
                } => {
                    acks.push((reply, seq, attempts.iter().map(|a| a.attempt_id.clone()).collect()));
                    for a in attempts {
                        crate::metrics::get().attempts.add(
                            1,
                            &[
                                opentelemetry::KeyValue::new("result", if a.success { "success" } else { "failure" }),
                                opentelemetry::KeyValue::new("error_code", format!("0x{:08X}", a.error_code)),
                            ],
                        );
                        if !a.success && AUTH_FAILURES.contains(&a.error_code) {
                            // The diagnosis continues the agent's trace of the attempt.
                            let span = tracing::info_span!(
                                "diagnose",
                                host = %host,
                                attempt = %a.attempt_id,
                                error_code = %format!("0x{:08X}", a.error_code),
                                verdict = "authentication failure: reconcile the source host"
                            );
                            kcdsync_telemetry::set_parent(&span, &a.traceparent);
                            failed.push(Trigger {
                                host: host.clone(),
                                reason: format!("attempt:{}", a.attempt_id),
                                at_ms: a
                                    .time
                                    .as_ref()
                                    .map_or(0, |t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000),
                                traceparent: kcdsync_telemetry::traceparent(&span).unwrap_or_default(),
                            });
                        }
                        batch.attempts.push((host.clone(), a));
                    }
                }
            }
        }
        batch.seen.sort();
        batch.seen.dedup();
        if let Err(e) = store.ingest_audited(&batch, &audits).await {
            // No ack: the agents keep the attempts and send them again.
            tracing::error!(error = %e, "could not store agent reports; they will be resent");
            for done in audited {
                let _ = done.send(Err(e.to_string()));
            }
            continue;
        }
        for done in audited {
            let _ = done.send(Ok(()));
        }
        if events.receiver_count() > 0 {
            for (host, a) in &batch.attempts {
                let _ = events.send((host.clone(), a.clone()));
            }
        }
        for (reply, seq, ids) in acks {
            // A full or closed downlink loses only the ack: the agent resends
            // and the store ignores the duplicate.
            let _ = reply.try_send(Ok(ControllerMessage {
                body: Some(Down::Ack(Ack { seq, attempt_ids: ids })),
            }));
        }
        if let Some(t) = &triggers {
            for f in failed {
                tracing::info!(host = %f.host, reason = %f.reason, "authentication failure reported: reconcile requested");
                let _ = t.try_send(f);
            }
        }
    }
}
