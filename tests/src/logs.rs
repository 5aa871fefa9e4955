//! The process's log lines, captured for a test to read (what `serve` says it
//! did: "change notifications registered", "... reconnecting"). The capture is
//! a process-global subscriber, so a test using it has a binary of its own.

use std::sync::{Arc, Mutex};

/// Something to do the moment a log line containing `needle` is written.
struct Hook {
    needle: String,
    /// Where in the capture to look from: lines logged before the hook was set do not count.
    from: usize,
    action: Box<dyn FnOnce() + Send>,
}

#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>, Arc<Mutex<Vec<Hook>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let fired: Vec<Hook> = {
            let mut text = self.0.lock().unwrap();
            text.extend_from_slice(buf);
            let mut hooks = self.1.lock().unwrap();
            let (fired, waiting) = std::mem::take(&mut *hooks)
                .into_iter()
                .partition(|h: &Hook| String::from_utf8_lossy(&text[h.from..]).contains(&h.needle));
            *hooks = waiting;
            fired
        };
        // Run on the thread that logged, before it goes on: the code under test is stopped
        // right after the line, whatever it does next.
        for h in fired {
            (h.action)();
        }
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

    /// Runs `action` once, synchronously in the logging thread, as soon as a line containing
    /// `needle` is logged from now on (a test's way to act at an exact point of a run).
    pub fn when_logged(&self, needle: &str, action: impl FnOnce() + Send + 'static) {
        let from = self.0.lock().unwrap().len();
        self.1.lock().unwrap().push(Hook {
            needle: needle.to_owned(),
            from,
            action: Box::new(action),
        });
    }

    /// How many times `needle` was logged so far.
    pub fn count(&self, needle: &str) -> usize {
        String::from_utf8_lossy(&self.0.lock().unwrap()).matches(needle).count()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}
