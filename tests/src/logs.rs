//! The process's log lines, captured for a test to read (what `serve` says it
//! did: "change notifications registered", "... reconnecting"). The capture is
//! a process-global subscriber, so a test using it has a binary of its own.

use std::sync::{Arc, Mutex};

#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// Installs the telemetry subscriber of `service` writing here, with `filter`.
    pub fn install(service: &'static str, filter: &str) -> Captured {
        let logs = Captured::default();
        let writer = logs.clone();
        kcdsync_telemetry::init_with_writer(
            service,
            kcdsync_telemetry::LogFormat::Human,
            filter,
            kcdsync_telemetry::BoxMakeWriter::new(move || writer.clone()),
        );
        logs
    }

    /// How many times `needle` was logged so far.
    pub fn count(&self, needle: &str) -> usize {
        String::from_utf8_lossy(&self.0.lock().unwrap()).matches(needle).count()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}
