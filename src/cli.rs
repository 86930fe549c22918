//! The command line: clap types, and their resolution into config structs.

use crate::auth::Redaction;
use crate::relay::{ProxyConfig, TlsSettings};
use crate::tls::TlsMode;
use clap::{Parser, Subcommand};
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
    /// Print recordings as transcripts (or a directory as one line per session).
    Show(crate::show::ShowArgs),
    /// Report misconfigurations found in recordings, with advice.
    Check(crate::check::CheckArgs),
    /// Send the client side of recordings to a server and compare its replies.
    Replay(crate::replay::ReplayArgs),
    /// Play the server side of a recording to any client that connects.
    Serve(crate::serve::ServeArgs),
    /// Run the built-in test server on its own: accepts (or rejects) mail, with AUTH and TLS.
    Sink(crate::server::sink::SinkArgs),
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

/// Where the certificates shown to clients come from (proxy, serve, sink).
#[derive(Debug, clap::Args)]
pub struct CertArgs {
    /// Directory of the local CA that signs the certificates shown to clients (created on first use).
    /// A certificate names what the client asked for (SNI), else the listening address.
    #[arg(long, value_name = "DIR", default_value = "./certs")]
    pub ca_dir: PathBuf,
    /// Present this certificate chain (PEM) to clients instead of one from the local CA.
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// The private key (PEM) for --cert.
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
}

impl CertArgs {
    /// `--cert` and `--key`, when given.
    pub fn fixed(&self) -> Option<(&PathBuf, &PathBuf)> {
        self.cert.as_ref().zip(self.key.as_ref())
    }
}

#[derive(Debug, clap::Args)]
pub struct ProxyArgs {
    /// Address to accept clients on (repeatable).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:2525")]
    pub listen: Vec<String>,
    /// The real server. Without it, smtptap runs its own test server in-process.
    #[arg(long, value_name = "HOST:PORT")]
    pub upstream: Option<String>,
    /// TLS towards the client.
    #[arg(long, value_enum, default_value_t = TlsMode::Starttls)]
    pub client_tls: TlsMode,
    /// TLS towards the server.
    #[arg(long, value_enum, default_value_t = TlsMode::Starttls)]
    pub upstream_tls: TlsMode,
    /// Extra trust anchors for the upstream's certificate (PEM), besides the system's.
    #[arg(long, value_name = "FILE")]
    pub upstream_ca: Option<PathBuf>,
    /// Do not verify the upstream's certificate (still checked and recorded). For test servers only.
    #[arg(long)]
    pub insecure_upstream: bool,
    #[command(flatten)]
    pub certs: CertArgs,
    /// Where session recordings go (created 0700 if missing).
    #[arg(long, value_name = "DIR", default_value = "./recordings")]
    pub record_dir: PathBuf,
    /// What recordings hide: secrets (passwords, tokens, SASL proofs), identities too, or nothing.
    #[arg(long, value_enum, default_value_t = Redaction::Secrets)]
    pub redact: Redaction,
    /// Keep message size, digest and headers, not the body.
    #[arg(long)]
    pub no_bodies: bool,
    /// Print `smtptap check`'s findings for each session as it ends.
    #[arg(long)]
    pub check: bool,
    /// Most sessions at once; more clients get `421` and are logged.
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// End a session when neither side sent anything for this long.
    #[arg(long, value_name = "SECS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_timeout: u64,
}

impl ProxyArgs {
    pub fn resolve(self) -> ProxyConfig {
        ProxyConfig {
            listen: self.listen,
            upstream: self.upstream,
            record_dir: self.record_dir,
            keep_bodies: !self.no_bodies,
            max_connections: self.max_connections as usize,
            idle_timeout: Duration::from_secs(self.idle_timeout),
            connect_timeout: Duration::from_secs(30),
            redaction: self.redact,
            tls: TlsSettings {
                client: self.client_tls,
                upstream: self.upstream_tls,
                upstream_ca: self.upstream_ca,
                insecure_upstream: self.insecure_upstream,
                ca_dir: self.certs.ca_dir,
                cert: self.certs.cert.zip(self.certs.key),
                handshake_timeout: Duration::from_secs(30),
            },
        }
    }
}
