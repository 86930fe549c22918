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

/// Sends one message by hand; returns the raw bytes the client received.
fn send_message(proxy: &Proxy, content: &[u8]) -> Vec<u8> {
    let mut client = RawClient::connect(proxy.addr);
    client.read_replies(1);
    client.send(b"EHLO raw.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n");
    client.read_replies(5);
    client.send(content);
    client.send(b"QUIT\r\n");
    client.read_to_close()
}

#[test]
fn no_bodies_keeps_size_digest_and_headers_only() {
    let proxy = Proxy::start(&["--no-bodies"]);
    let content: &[u8] = b"Subject: secret plans\r\nDate: today\r\n\r\nthe body\r\n";
    send_message(&proxy, &[content, b".\r\n"].concat());
    let session = &proxy.sessions(1)[0];
    let ex = exchanges(session);
    let message = &ex[5]["message"];
    assert_eq!(message["size"], content.len());
    assert_eq!(message["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(message["headers"]["subject"], "secret plans");
    assert!(message.get("body").is_none(), "{message}");
    let raw = std::fs::read_to_string(proxy.record_dir().read_dir().unwrap().next().unwrap().unwrap().path()).unwrap();
    assert!(!raw.contains("the body"));
}

#[test]
fn binary_body_is_recorded_base64_and_lossless() {
    let proxy = Proxy::start(&[]);
    let received = send_message(&proxy, b"Subject: bin\r\n\r\n\x00\xff\xfe\r\n\x80.\r\n.\r\n");
    assert!(String::from_utf8_lossy(&received).contains("250 2.0.0 Ok: queued"));
    let session = &proxy.sessions(1)[0];
    let ex = exchanges(session);
    assert_eq!(ex[5]["message"]["body"]["encoding"], "base64");
    assert_eq!(body_bytes(ex[5]), b"Subject: bin\r\n\r\n\x00\xff\xfe\r\n\x80.\r\n");
    assert!(session[0]["upstream"].as_str().unwrap().starts_with("builtin:127.0.0.1:"));
}

#[test]
fn every_listener_accepts_and_records_its_address() {
    let mut proxy = Proxy::start(&["--listen", "127.0.0.1:0"]);
    assert_eq!(proxy.addrs.len(), 2);
    for addr in proxy.addrs.clone() {
        proxy.addr = addr;
        send_message(&proxy, b"Subject: one\r\n\r\nx\r\n.\r\n");
    }
    let listens: Vec<String> = proxy.sessions(2).iter().map(|s| s[0]["listen"].as_str().unwrap().to_owned()).collect();
    for addr in &proxy.addrs {
        assert!(listens.contains(&addr.to_string()), "{addr} not in {listens:?}");
    }
}
