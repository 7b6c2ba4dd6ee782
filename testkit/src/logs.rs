//! The log lines of a test process, captured to be read back (nextest runs each test in a
//! process of its own, so one global subscriber per test).
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

/// Every log line of this test process, from [`Logs::capture`] on.
#[derive(Clone, Default, Debug)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    /// Installs the process's subscriber, at every level, writing here.
    #[allow(clippy::missing_panics_doc)]
    pub fn capture() -> Logs {
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        logs
    }

    /// What was logged so far.
    #[allow(clippy::missing_panics_doc)]
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}
