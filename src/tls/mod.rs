//! TLS: the local CA, rustls configurations for both sides, certificate facts
//! for the record.

pub mod ca;
pub mod config;
pub mod info;
pub mod instructions;

/// TLS towards one side of the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Plaintext only.
    Off,
    /// Offer or use STARTTLS.
    Starttls,
    /// TLS from the first byte (port-465 style).
    Implicit,
}
