//! The command line: clap types, and their resolution into config structs.

use crate::relay::ProxyConfig;
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(name = "smtptap", version, about = "A man-in-the-middle SMTP recording proxy")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Relay clients to one upstream SMTP server, recording every exchange.
    Proxy(ProxyArgs),
    /// Create or show smtptap's local certificate authority.
    #[command(subcommand)]
    Ca(CaCmd),
}

#[derive(Debug, Subcommand)]
pub enum CaCmd {
    /// Create the CA (ca.pem, ca-key.pem) if it does not exist yet.
    Init(CaArgs),
    /// Print the CA's path, SHA-256 fingerprint and how to trust it.
    Show(CaArgs),
}

#[derive(Debug, clap::Args)]
pub struct CaArgs {
    /// Directory of the local CA.
    #[arg(long, value_name = "DIR", default_value = "./certs")]
    pub ca_dir: PathBuf,
}

/// TLS towards one side of the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TlsMode {
    /// Plaintext only.
    Off,
    /// Offer or use STARTTLS.
    Starttls,
    /// TLS from the first byte (port-465 style).
    Implicit,
}

#[derive(Debug, clap::Args)]
pub struct ProxyArgs {
    /// Address to accept clients on (repeatable).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:2525")]
    pub listen: Vec<String>,
    /// The real server. Without it, smtptap runs its own test server in-process.
    #[arg(long, value_name = "HOST:PORT")]
    pub upstream: Option<String>,
    /// TLS towards the client (only `off` is available in this version).
    #[arg(long, value_enum, default_value_t = TlsMode::Off)]
    pub client_tls: TlsMode,
    /// TLS towards the server (only `off` is available in this version).
    #[arg(long, value_enum, default_value_t = TlsMode::Off)]
    pub upstream_tls: TlsMode,
    /// Where session recordings go (created 0700 if missing).
    #[arg(long, value_name = "DIR", default_value = "./recordings")]
    pub record_dir: PathBuf,
    /// Keep message size, digest and headers, not the body.
    #[arg(long)]
    pub no_bodies: bool,
    /// Most sessions at once; more clients get `421` and are logged.
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// End a session when neither side sent anything for this long.
    #[arg(long, value_name = "SECS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_timeout: u64,
}

/// A flag combination this version cannot honour.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "--{flag} {mode} is not supported yet: this version relays plaintext only. \
         Use --{flag} off (TLS interception is planned); smtptap never falls back to plaintext silently"
    )]
    TlsNotYetSupported { flag: &'static str, mode: &'static str },
}

impl ProxyArgs {
    pub fn resolve(self) -> Result<ProxyConfig, ConfigError> {
        for (flag, mode) in [("client-tls", self.client_tls), ("upstream-tls", self.upstream_tls)] {
            match mode {
                TlsMode::Off => {}
                TlsMode::Starttls => return Err(ConfigError::TlsNotYetSupported { flag, mode: "starttls" }),
                TlsMode::Implicit => return Err(ConfigError::TlsNotYetSupported { flag, mode: "implicit" }),
            }
        }
        Ok(ProxyConfig {
            listen: self.listen,
            upstream: self.upstream,
            record_dir: self.record_dir,
            keep_bodies: !self.no_bodies,
            max_connections: self.max_connections as usize,
            idle_timeout: Duration::from_secs(self.idle_timeout),
            connect_timeout: Duration::from_secs(30),
        })
    }
}
