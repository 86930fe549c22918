//! `smtptap sink`: the built-in test server on its own.

#[derive(Debug, clap::Args)]
pub struct SinkArgs {}

/// Runs `smtptap sink`; returns the exit code.
pub async fn run(_args: SinkArgs) -> u8 {
    eprintln!("smtptap sink: not implemented yet");
    2
}
