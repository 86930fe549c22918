//! The built-in test SMTP server: the default upstream of `smtptap proxy`,
//! so the tool works out of the box, and on its own `smtptap sink`. It
//! speaks ESMTP (RFC 5321) with PIPELINING (RFC 2920), SIZE (RFC 1870),
//! 8BITMIME, ENHANCEDSTATUSCODES (RFC 2034), CHUNKING (RFC 3030), STARTTLS
//! or implicit TLS, and AUTH when it has accounts. By default it accepts all
//! mail and discards it; [`ServerConfig`] adds accounts, refusal rules and a
//! directory to save messages in.
//!
//! - [`session`]: the protocol logic, [`ServerSession`], plain code over bytes.
//! - [`auth`], [`rules`]: AUTH and the refusal rules, sans IO.
//! - [`store`]: saving messages as files.
//! - [`sink`]: the `smtptap sink` command.
//!
//! [`serve`] only moves bytes between sessions and sockets.

pub mod auth;
pub mod rules;
pub mod session;
pub mod sink;
pub mod store;

pub use session::{Flow, ServerSession};

use auth::Account;
use rules::Rules;
use std::io;
use std::sync::Arc;
use std::time::Duration;
use store::Store;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument as _;

/// What the test server advertises and enforces. The default accepts all
/// mail up to 64 MiB, offers no AUTH and saves nothing.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The name in the greeting and the EHLO reply.
    pub hostname: String,
    /// Largest message accepted, in octets (advertised as `SIZE`).
    pub max_message_size: u64,
    /// A client silent this long is disconnected with `421`.
    pub idle_timeout: Duration,
    /// Accounts for AUTH; with none, AUTH is not offered.
    pub accounts: Vec<Account>,
    /// Refuse `MAIL` with `530` until the client has authenticated.
    pub require_auth: bool,
    /// Envelope senders and recipient domains to refuse.
    pub rules: Rules,
    /// Where accepted messages are saved; `None` discards them.
    pub store: Option<Arc<Store>>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            hostname: "smtptap.test".into(),
            max_message_size: 64 * 1024 * 1024,
            idle_timeout: Duration::from_secs(300),
            accounts: Vec::new(),
            require_auth: false,
            rules: Rules::default(),
            store: None,
        }
    }
}

/// TLS for the test server: STARTTLS offered after EHLO, or TLS from the first byte.
#[derive(Clone)]
pub struct ServerTls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub implicit: bool,
}

/// Accepts connections on `listener` forever, one task per session.
pub async fn serve(listener: TcpListener, config: ServerConfig, tls: Option<ServerTls>) {
    let shared = Arc::new((config, tls));
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let shared = shared.clone();
                let session = async move {
                    let (config, tls) = &*shared;
                    if let Err(e) = run_connection(stream, config, tls.as_ref()).await {
                        tracing::debug!(error = %e, "test server session ended with an error");
                    }
                };
                tokio::spawn(session.instrument(tracing::info_span!("test server", %peer)));
            }
            Err(e) => {
                tracing::warn!(error = %e, "test server could not accept a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Runs one session on a connection, with TLS as configured.
pub async fn run_connection(mut stream: TcpStream, config: &ServerConfig, tls: Option<&ServerTls>) -> io::Result<()> {
    let mut session = ServerSession::new(config.clone());
    match tls {
        Some(tls) if tls.implicit => {
            let mut stream = tls.acceptor.accept(stream).await?;
            session.tls_started();
            converse(&mut stream, &mut session, true).await?;
            stream.shutdown().await
        }
        Some(tls) => {
            session.offer_starttls();
            if converse(&mut stream, &mut session, true).await? == Flow::StartTls {
                let mut stream = tls.acceptor.accept(stream).await?;
                session.tls_started();
                converse(&mut stream, &mut session, false).await?;
                stream.shutdown().await?;
            }
            Ok(())
        }
        None => converse(&mut stream, &mut session, true).await.map(drop),
    }
}

/// Reads what the client sends next; `None` when it stayed silent for
/// `idle`, after telling it `421` (a server's idle timeout, RFC 5321 4.5.3.2).
pub(crate) async fn read_before_idle<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &mut [u8],
    idle: Duration,
) -> io::Result<Option<usize>> {
    match tokio::time::timeout(idle, stream.read(buf)).await {
        Ok(read) => read.map(Some),
        Err(_) => {
            // The session ends either way: a client that cannot take the 421 changes nothing.
            let _ = stream.write_all(b"421 4.4.2 Idle timeout, closing connection\r\n").await;
            Ok(None)
        }
    }
}

/// Exchanges SMTP until the session closes or switches to TLS.
async fn converse<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    session: &mut ServerSession,
    greet: bool,
) -> io::Result<Flow> {
    let mut out = Vec::new();
    if greet {
        session.greeting(&mut out);
        stream.write_all(&out).await?;
    }
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let Some(n) = read_before_idle(stream, &mut buf, session.idle_timeout()).await? else {
            return Ok(Flow::Close);
        };
        if n == 0 {
            return Ok(Flow::Close);
        }
        out.clear();
        let flow = session.feed(&buf[..n], &mut out);
        if !out.is_empty() {
            stream.write_all(&out).await?;
        }
        match flow {
            Flow::Continue => {}
            Flow::Close => {
                stream.shutdown().await?;
                return Ok(Flow::Close);
            }
            Flow::StartTls => return Ok(Flow::StartTls),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::read_before_idle;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_silent_client_is_told_421_and_a_talking_one_is_read() {
        let (mut server, mut client) = tokio::io::duplex(1024);
        let mut buf = [0u8; 64];
        assert_eq!(read_before_idle(&mut server, &mut buf, Duration::from_millis(20)).await.unwrap(), None);
        let mut told = vec![0u8; 64];
        let n = client.read(&mut told).await.unwrap();
        assert_eq!(&told[..n], b"421 4.4.2 Idle timeout, closing connection\r\n");

        client.write_all(b"NOOP\r\n").await.unwrap();
        assert_eq!(read_before_idle(&mut server, &mut buf, Duration::from_secs(5)).await.unwrap(), Some(6));
        assert_eq!(&buf[..6], b"NOOP\r\n");
    }
}
