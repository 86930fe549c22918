//! The relay core end to end: the real binary between a raw client and a
//! capturing upstream. Byte-exactness, pipelining and pairing.

mod common;
use common::*;

#[test]
fn pipelined_session_is_relayed_byte_exact_and_paired() {
    let upstream = CaptureServer::start();
    let proxy = Proxy::start(&["--upstream", &upstream.addr.to_string()]);
    let mut client = RawClient::connect(proxy.addr);
    client.read_replies(1);
    let batch: &[u8] = b"EHLO raw.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<c@y.test>\r\nDATA\r\n";
    client.send(batch);
    client.read_replies(5);
    let content: &[u8] = b"Subject: hi\r\nFrom: <a@x.test>\r\n\r\n..stuffed\r\nbare\nlf\r\n.\r\n";
    client.send(content);
    client.read_replies(6);
    client.send(b"NOOP\r\nQUIT\r\n");
    client.read_to_close();

    let mut sent = b"".to_vec();
    sent.extend_from_slice(batch);
    sent.extend_from_slice(content);
    sent.extend_from_slice(b"NOOP\r\nQUIT\r\n");
    assert_eq!(upstream.wait_connections(1)[0], sent, "upstream must receive exactly what the client sent");
    assert!(client.received.starts_with(b"220 smtptap.test"), "client must receive the upstream's bytes");

    let session = &proxy.sessions(1)[0];
    assert_eq!(session[0]["type"], "session");
    let s = summary(session);
    let want = [
        ("-", 220),
        ("EHLO", 250),
        ("MAIL", 250),
        ("RCPT", 250),
        ("RCPT", 250),
        ("DATA", 354),
        ("-", 250),
        ("NOOP", 250),
        ("QUIT", 221),
    ];
    assert_eq!(s, want.map(|(v, c)| (v.to_owned(), c)).to_vec());
    let ex = exchanges(session);
    let pipelined: Vec<bool> = ex.iter().filter_map(|e| e["pipelined"].as_bool()).collect();
    assert_eq!(pipelined, [false, true, true, true, true, false, true]);
    assert_eq!(ex[1]["reply"]["lines"][1], "PIPELINING");
    assert_eq!(ex[2]["reply"]["enhanced"], "2.1.0");
    let message = &ex[6]["message"];
    let delivered: &[u8] = b"Subject: hi\r\nFrom: <a@x.test>\r\n\r\n.stuffed\r\nbare\nlf\r\n";
    assert_eq!(body_bytes(ex[6]), delivered);
    assert_eq!(message["size"], delivered.len());
    assert_eq!(message["headers"]["subject"], "hi");
    let end = session.last().unwrap();
    assert_eq!(end["reason"], "quit");
    assert_eq!(end["exchanges"], 9);
    assert_eq!(end["messages"], 1);
    assert_eq!(end["bytes_from_client"], sent.len());
    assert_eq!(end["bytes_from_upstream"], client.received.len());
}
