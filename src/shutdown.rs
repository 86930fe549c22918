//! Stopping on SIGINT or SIGTERM, for the commands that run until stopped.

/// Installs the SIGINT and SIGTERM handlers now, so that a signal sent once
/// the command says it is listening is never lost; the future completes on
/// either. Call it inside the async runtime.
pub fn signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}
