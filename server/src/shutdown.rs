//! The broker-wide stop signal as connections see it.

use tokio::sync::watch;

/// A connection's view of the broker-wide stop signal.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl From<watch::Receiver<bool>> for Shutdown {
    fn from(stopping: watch::Receiver<bool>) -> Self {
        Self(stopping)
    }
}

impl Shutdown {
    /// Resolves once the broker is stopping (at once if it already is).
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|stopping| *stopping).await;
    }
}
