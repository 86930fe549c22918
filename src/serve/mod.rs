//! `smtptap serve`: plays the server side of a recording (SPEC.md).

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The recording whose server side is played.
    #[arg(value_name = "RECORDING")]
    pub recording: std::path::PathBuf,
}

/// Runs `smtptap serve`; returns the exit code.
pub async fn run(_args: ServeArgs) -> u8 {
    eprintln!("smtptap serve: not implemented yet");
    2
}
