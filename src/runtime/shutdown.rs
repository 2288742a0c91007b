//! Graceful shutdown: SIGTERM or SIGINT cancels one token that every task watches.

use tokio_util::sync::CancellationToken;

/// Returns a token cancelled on the first SIGTERM/SIGINT.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
            _ = int.recv() => tracing::info!("SIGINT received, shutting down"),
            _ = t.cancelled() => {}
        }
        t.cancel();
    });
    token
}
