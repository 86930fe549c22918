//! TLS handshakes on either side of a session, each bounded in time and
//! described for the record whether it succeeds or fails.

use super::stream::Stream;
use crate::record::format::{TlsInfo, TlsSide};
use crate::tls::config::UpstreamTls;
use crate::tls::info;
use rustls_pki_types::ServerName;
use std::sync::Arc;
use std::time::Duration;

/// Runs the server side of a handshake with the client on `stream`.
/// On failure the stream is unusable and the returned record says why
/// (with the alert the client sent, e.g. that it does not trust the CA).
pub async fn with_client(
    stream: &mut Stream,
    config: Arc<rustls::ServerConfig>,
    limit: Duration,
    t: String,
) -> Result<TlsInfo, TlsInfo> {
    let mut record =
        TlsInfo { side: TlsSide::Client, t, version: None, cipher: None, sni: None, peer: None, error: None };
    let tcp = stream.take_plain().map_err(|e| failed(&mut record, e.to_string()))?;
    let accept = tokio_rustls::TlsAcceptor::from(config).accept(tcp);
    let tls = match tokio::time::timeout(limit, accept).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return Err(failed(&mut record, format!("TLS handshake with the client failed: {e}"))),
        Err(_) => return Err(failed(&mut record, format!("TLS handshake with the client timed out after {limit:?}"))),
    };
    let (_, conn) = tls.get_ref();
    record.version = info::version(conn);
    record.cipher = info::cipher(conn);
    record.sni = conn.server_name().map(str::to_owned);
    *stream = Stream::Server(Box::new(tls));
    Ok(record)
}

/// Runs the client side of a handshake with the upstream on `stream`, and
/// records the server's certificate with its verification result.
pub async fn with_upstream(
    stream: &mut Stream,
    tls: &UpstreamTls,
    name: ServerName<'static>,
    limit: Duration,
    t: String,
) -> Result<TlsInfo, TlsInfo> {
    let sni = match &name {
        ServerName::DnsName(n) => Some(n.as_ref().to_owned()),
        _ => None,
    };
    let mut record = TlsInfo { side: TlsSide::Upstream, t, version: None, cipher: None, sni, peer: None, error: None };
    let tcp = stream.take_plain().map_err(|e| failed(&mut record, e.to_string()))?;
    let connect = tokio_rustls::TlsConnector::from(tls.config.clone()).connect(name.clone(), tcp);
    let stream_tls = match tokio::time::timeout(limit, connect).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(failed(&mut record, format!("TLS handshake with the upstream failed: {e}"))),
        Err(_) => {
            return Err(failed(&mut record, format!("TLS handshake with the upstream timed out after {limit:?}")));
        }
    };
    let (_, conn) = stream_tls.get_ref();
    record.version = info::version(conn);
    record.cipher = info::cipher(conn);
    if let Some(chain) = conn.peer_certificates()
        && let Some(leaf) = chain.first()
    {
        record.peer = Some(info::peer_certificate(leaf, tls.verifies(chain, &name)));
    }
    *stream = Stream::Client(Box::new(stream_tls));
    Ok(record)
}

fn failed(record: &mut TlsInfo, error: String) -> TlsInfo {
    record.error = Some(error);
    record.clone()
}
