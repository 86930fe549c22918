//! `smtptap sink`: the built-in test server on its own, a target for
//! `smtptap replay`, swaks or any client. It accepts mail, or refuses it by
//! rule; authenticates against the given accounts; speaks TLS with a
//! certificate from the local CA; and can save every accepted message.

use super::auth::Account;
use super::rules::Rules;
use super::store::Store;
use super::{ServerConfig, ServerTls};
use crate::tls::TlsMode;
use crate::tls::config::{ServerCertificates, TlsConfigError};
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

const REPLIES: &str = "\
Replies to refused input:
  MAIL before AUTH, with --require-auth   530 5.7.0 Authentication required
  MAIL FROM a --reject-sender             550 5.7.1 Sender rejected
  MAIL with SIZE= over --max-size         552 5.3.4 Message size exceeds fixed limit
  RCPT TO a --reject-rcpt-domain          550 5.7.1 Relaying denied
  message content over --max-size         552 5.3.4 Message size exceeds fixed limit (after the end of data)
  AUTH with wrong credentials             535 5.7.8 Authentication credentials invalid
  AUTH cancelled with `*`                 501 5.7.0 Authentication cancelled
  AUTH data that is not base64            501 5.5.2 Cannot decode the response
  AUTH twice, or inside a transaction     503 5.5.1
  a message --save-dir cannot take        451 4.3.0 (the reason is logged)

Prints `listening on ADDR` for each listener once it accepts; runs until SIGINT or SIGTERM, then exits 0.";

#[derive(Debug, clap::Args)]
#[command(after_help = REPLIES)]
pub struct SinkArgs {
    /// Address to accept clients on (repeatable).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:2526")]
    pub listen: Vec<String>,
    /// TLS: offer STARTTLS after EHLO, speak TLS from the first byte (port-465 style), or never.
    #[arg(long, value_enum, value_name = "MODE", default_value_t = TlsMode::Starttls)]
    pub tls: TlsMode,
    #[command(flatten)]
    pub certs: crate::cli::CertArgs,
    /// The server's name in its greeting and EHLO reply (and in the certificate of a wildcard listener).
    #[arg(long, value_name = "NAME", default_value = "smtptap.test")]
    pub hostname: String,
    /// An account clients may authenticate as (repeatable; split at the first colon). With any, AUTH
    /// PLAIN, LOGIN and CRAM-MD5 are offered; without, AUTH is not.
    #[arg(long = "user", value_name = "NAME:PASSWORD", value_parser = AccountParser)]
    pub users: Vec<Account>,
    /// Refuse MAIL until the client has authenticated (530 5.7.0).
    #[arg(long, requires = "users")]
    pub require_auth: bool,
    /// Refuse recipients at this domain (550 5.7.1 Relaying denied; repeatable; subdomains are not included).
    #[arg(long, value_name = "DOMAIN")]
    pub reject_rcpt_domain: Vec<String>,
    /// Refuse this envelope sender (550 5.7.1 Sender rejected; repeatable; case-insensitive).
    #[arg(long, value_name = "ADDRESS")]
    pub reject_sender: Vec<String>,
    /// Largest message accepted, in octets: advertised as SIZE; larger ones get 552 5.3.4.
    #[arg(long, value_name = "BYTES", default_value_t = ServerConfig::default().max_message_size)]
    pub max_size: u64,
    /// Save the content of each accepted message as DIR/msg-N.eml (N from 0, existing files kept):
    /// exactly the bytes received, dot-stuffing removed. Created if missing.
    #[arg(long, value_name = "DIR")]
    pub save_dir: Option<PathBuf>,
    /// Disconnect a client silent this long (421).
    #[arg(long, value_name = "SECS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_timeout: u64,
}

/// Parses `--user NAME:PASSWORD`. Clap's own parsers repeat a refused value
/// in their error; this one never does, since the value holds a password.
#[derive(Clone)]
struct AccountParser;

impl clap::builder::TypedValueParser for AccountParser {
    type Value = Account;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<Account, clap::Error> {
        let arg = arg.map_or_else(|| "--user".to_owned(), ToString::to_string);
        let refused = |why: &str| {
            let message = format!("invalid value for '{arg}': {why}\n");
            clap::Error::raw(clap::error::ErrorKind::ValueValidation, message).with_cmd(cmd)
        };
        value.to_str().ok_or_else(|| refused("not UTF-8"))?.parse().map_err(|why: String| refused(&why))
    }
}

#[derive(Debug, thiserror::Error)]
enum SinkError {
    #[error("cannot handle SIGINT and SIGTERM: {0}")]
    Signals(io::Error),
    #[error("cannot listen on {addr}: {source}; choose another --listen address")]
    Listen { addr: String, source: io::Error },
    #[error("cannot save messages in {}: {source}; choose another --save-dir", dir.display())]
    SaveDir { dir: PathBuf, source: io::Error },
    #[error("{0}")]
    Tls(#[from] TlsConfigError),
}

/// Runs `smtptap sink` until SIGINT or SIGTERM; returns the exit code: 0,
/// or 2 when it could not start.
pub async fn run(args: SinkArgs) -> u8 {
    match sink(args).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("smtptap sink: {e}");
            2
        }
    }
}

async fn sink(args: SinkArgs) -> Result<(), SinkError> {
    let shutdown = crate::shutdown::signal().map_err(SinkError::Signals)?;
    let config = server_config(&args)?;
    let certificates = certificates(&args)?;
    let mut listeners = Vec::new();
    for addr in &args.listen {
        let listen_error = |source| SinkError::Listen { addr: addr.clone(), source };
        let listener = TcpListener::bind(addr).await.map_err(listen_error)?;
        let local = listener.local_addr().map_err(listen_error)?;
        let tls = match &certificates {
            Some(c) => Some(ServerTls {
                acceptor: tokio_rustls::TlsAcceptor::from(c.for_listener(local, &args.hostname)?),
                implicit: args.tls == TlsMode::Implicit,
            }),
            None => None,
        };
        listeners.push((listener, local, tls));
    }
    tracing::info!(
        hostname = %config.hostname, tls = ?args.tls, accounts = config.accounts.len(), require_auth = config.require_auth,
        max_size = config.max_message_size, save_dir = ?args.save_dir, "sink ready"
    );
    let mut servers = Vec::new();
    for (listener, local, tls) in listeners {
        // Machine-readable readiness line (tests and scripts wait for it).
        println!("listening on {local}");
        servers.push(tokio::spawn(super::serve(listener, config.clone(), tls)));
    }
    shutdown.await;
    tracing::info!("shutting down");
    servers.iter().for_each(tokio::task::JoinHandle::abort);
    Ok(())
}

fn server_config(args: &SinkArgs) -> Result<ServerConfig, SinkError> {
    let store = match &args.save_dir {
        Some(dir) => {
            Some(Arc::new(Store::open(dir).map_err(|source| SinkError::SaveDir { dir: dir.clone(), source })?))
        }
        None => None,
    };
    Ok(ServerConfig {
        hostname: args.hostname.clone(),
        max_message_size: args.max_size,
        idle_timeout: Duration::from_secs(args.idle_timeout),
        accounts: args.users.clone(),
        require_auth: args.require_auth,
        rules: Rules {
            reject_rcpt_domains: args.reject_rcpt_domain.clone(),
            reject_senders: args.reject_sender.clone(),
        },
        store,
    })
}

/// The certificates for `--tls starttls|implicit`; `None` with `--tls off`.
fn certificates(args: &SinkArgs) -> Result<Option<ServerCertificates>, TlsConfigError> {
    if args.tls == TlsMode::Off {
        return Ok(None);
    }
    ServerCertificates::load(&args.certs.ca_dir, args.certs.fixed()).map(Some)
}
