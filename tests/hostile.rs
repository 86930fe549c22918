//! Hostile input and faults (issue 7), end to end: the real binary between
//! misbehaving clients and upstreams written for the purpose. The proxy must
//! keep working, relay nothing it should not, and lose nothing it received.

mod common;
use common::*;

use serde_json::Value;
use sha2::{Digest, Sha256};
use smtptap::smtp::data::DotDecoder;
use std::io::Write;
use std::net::Shutdown;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// What a fake upstream does with one connection.
type Script = fn(&mut Peer);

/// Bytes a client writes, and how many replies that earns it.
type Sent = (Vec<u8>, usize);

/// The bytes of one MAIL and one RCPT, then `$then`.
macro_rules! envelope_then {
    ($then:literal) => {
        concat!("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n", $then).as_bytes()
    };
}

/// `data` base64-encoded.
fn b64e(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// The only session whose client said `EHLO name`.
fn session_of<'a>(sessions: &'a [Vec<Value>], name: &str) -> &'a [Value] {
    let line = format!("EHLO {name}");
    let mut found = sessions.iter().filter(|s| exchanges(s).iter().any(|e| e["command"]["line"] == line.as_str()));
    let session = found.next().unwrap_or_else(|| panic!("no session for {name}"));
    assert!(found.next().is_none(), "two sessions for {name}");
    session
}

/// Everything the proxy wrote: every file under its directory, and its log.
fn everything_written(proxy: &Proxy) -> String {
    fn walk(dir: &Path, into: &mut String) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().map_while(Result::ok) {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, into);
            } else {
                into.push_str(&read_text(&path));
            }
        }
    }
    let mut all = proxy.stderr();
    walk(proxy.dir.path(), &mut all);
    all
}

// ---------------------------------------------------------------------------
// SMTP smuggling through the proxy
// ---------------------------------------------------------------------------

/// Each smuggled end-of-data, and the `check` rule that must flag it.
const SMUGGLED: [(&[u8], &str); 5] = [
    (b"\n.\n", "bare-lf"),
    (b"\r.\r", "bare-cr"),
    (b"\n.\r\n", "bare-lf"),
    (b"\r\n.\n", "bare-lf"),
    (b"\r.\r\n", "bare-cr"),
];

/// Every smuggling form, cut into two reads at each point around it: the
/// server receives exactly the bytes sent, one message ends where the real
/// `CRLF . CRLF` is, the recording holds that message as the server got it,
/// the smuggled MAIL is never an exchange, and `check` flags the bare ending.
#[test]
fn smuggled_end_of_data_is_relayed_unchanged_and_recorded_where_the_message_really_ends() {
    let upstream = CaptureServer::start();
    let proxy = Proxy::start(&[&["--upstream", &upstream.addr.to_string()][..], &PLAINTEXT].concat());
    let mut sent = Vec::new();
    for (i, (mark, _)) in SMUGGLED.iter().enumerate() {
        let head = b"Subject: smuggle\r\n\r\nhello";
        let content = [&head[..], mark, b"MAIL FROM:<evil@x.test>\r\nRCPT TO:<victim@y.test>\r\nDATA\r\n"].concat();
        let mut want = Vec::new();
        let (used, ended) = DotDecoder::default().decode(&[&content[..], b".\r\n"].concat(), &mut |c| {
            want.extend_from_slice(c);
        });
        assert_eq!((used, ended), (content.len() + 3, true));
        for split in head.len() - 1..=head.len() + mark.len() + 1 {
            let name = format!("s{i}-{split}");
            let mut client = RawClient::connect(proxy.addr);
            client.read_replies(1);
            let commands = format!("EHLO {name}\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n");
            client.send(commands.as_bytes());
            assert!(client.read_replies(5)[4].starts_with("354 "));
            client.send(&content[..split]);
            client.stream.flush().unwrap();
            thread::sleep(Duration::from_millis(2)); // most likely two reads (every split: the unit test)
            client.send(&content[split..]);
            client.send(b".\r\nQUIT\r\n");
            let replies = client.read_replies(7);
            assert!(replies[5].starts_with("250 ") && replies[6].starts_with("221 "), "{name}: {replies:?}");
            sent.push((name, [commands.as_bytes(), &content, b".\r\nQUIT\r\n"].concat(), want.clone()));
        }
    }
    let received = upstream.wait_connections(sent.len());
    let sessions = proxy.sessions(sent.len());
    for (name, bytes, delivered) in &sent {
        assert!(received.contains(bytes), "{name}: the server did not receive the bytes as sent");
        let session = session_of(&sessions, name);
        assert_eq!(
            summary(session),
            want(&[("-", 220), ("EHLO", 250), ("MAIL", 250), ("RCPT", 250), ("DATA", 354), ("-", 250), ("QUIT", 221)]),
            "{name}"
        );
        let message = exchanges(session).into_iter().find(|e| e["message"].is_object()).unwrap();
        assert_eq!(body_bytes(message), *delivered, "{name}");
        assert_eq!(message["message"]["size"], delivered.len());
    }
    // `check` flags each form's bare line ending (one recording per form).
    for (i, (_, rule)) in SMUGGLED.iter().enumerate() {
        let name = &sent.iter().find(|(n, ..)| n.starts_with(&format!("s{i}-"))).unwrap().0;
        let file = recording_files(&proxy.record_dir())
            .into_iter()
            .find(|f| read_text(f).contains(&format!("EHLO {name}\"")))
            .unwrap();
        let out = run_peer(BIN, &["check", "--format", "json", path_str(&file)], None);
        let doc: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", output_text(&out)));
        let rules: Vec<&str> =
            doc["recordings"][0]["findings"].as_array().unwrap().iter().map(|f| f["rule"].as_str().unwrap()).collect();
        assert!(rules.contains(rule), "{name}: {rule} not in {rules:?}");
    }
}

// ---------------------------------------------------------------------------
// No downgrade
// ---------------------------------------------------------------------------

/// An upstream that accepts STARTTLS, then fails the handshake as `fail` does.
fn starttls_then(fail: fn(&mut Peer)) -> FakeUpstream {
    FakeUpstream::start(move |peer| {
        peer.send(b"220 fake.test ESMTP\r\n");
        while let Some(line) = peer.line() {
            match line.get(..4).map(<[u8]>::to_ascii_uppercase).as_deref() {
                Some(b"EHLO") => peer.send(b"250-fake.test\r\n250-PIPELINING\r\n250 STARTTLS\r\n"),
                Some(b"STAR") => {
                    peer.send(b"220 2.0.0 go ahead\r\n");
                    return fail(peer);
                }
                _ => peer.send(b"250 ok\r\n"),
            }
        }
    })
}

/// A client pipelines AUTH, MAIL and DATA right behind STARTTLS; the server
/// says 220 and then the handshake fails (garbage, a close, a reset). The
/// client gets `421 4.7.0`, and not one byte of what followed STARTTLS
/// reaches the server in plaintext, nor the password any file or log.
#[test]
fn a_failed_upstream_starttls_is_never_followed_by_plaintext_auth_or_data() {
    let failures: [(&str, Script); 3] = [
        ("garbage", |peer| {
            peer.send(b"this is not TLS at all\r\n");
            peer.drain();
        }),
        ("close", |_| {}),
        ("reset", |peer| reset(peer.stream.try_clone().unwrap())),
    ];
    const PASSWORD: &str = "Tr0ub4dor-downgrade";
    for (what, fail) in failures {
        let upstream = starttls_then(fail);
        let proxy = Proxy::start(&["--upstream", &upstream.addr()]);
        let mut client = RawClient::connect(proxy.addr);
        client.read_replies(1);
        client.send(b"EHLO victim.test\r\n");
        client.read_replies(2);
        let auth = format!("AUTH PLAIN {}\r\n", b64e(format!("\0user@x.test\0{PASSWORD}").as_bytes()));
        let after = [auth.as_bytes(), envelope_then!("DATA\r\nSubject: x\r\n\r\n")].concat();
        client.send(&[&b"STARTTLS\r\n"[..], &after].concat());
        let text = String::from_utf8_lossy(&read_until_eof(&mut client)).into_owned();
        let last = text.trim_end().lines().last().unwrap_or_default();
        assert!(last.starts_with("421 4.7.0 ") && !text.contains("\r\n220 "), "{what}: {text:?}");

        let conn = upstream.conn(0);
        conn.wait_end();
        let got = conn.received();
        assert!(got.starts_with(b"EHLO victim.test\r\nSTARTTLS\r\n"), "{what}");
        let rest = &got[b"EHLO victim.test\r\nSTARTTLS\r\n".len()..];
        for word in [&b"AUTH"[..], b"MAIL", b"RCPT", b"DATA", b"Subject"] {
            assert!(!rest.windows(word.len()).any(|w| w == word), "{what}: plaintext {word:?} after STARTTLS");
        }
        let session = &proxy.sessions(1)[0];
        assert_eq!(end_of(session)["reason"], "tls-failed", "{what}");
        let last = *exchanges(session).last().unwrap();
        assert_eq!((last["origin"].as_str(), last["reply"]["code"].as_u64()), (Some("proxy"), Some(421)), "{what}");
        assert!(!summary(session).iter().any(|(verb, _)| verb == "AUTH" || verb == "MAIL"), "{what}");
        let written = everything_written(&proxy);
        for form in secret_forms(PASSWORD) {
            assert!(!written.contains(&form), "{what}: the password leaked as {form}");
        }
    }
}

// ---------------------------------------------------------------------------
// Limits: bounded memory, relayed or refused, never a panic or a hang
// ---------------------------------------------------------------------------

/// An upstream answering `HELP` with 5,000 continuation lines.
fn chatty(line: &[u8]) -> Option<&'static [u8]> {
    static HELP: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    line.starts_with(b"HELP").then(|| {
        HELP.get_or_init(|| {
            let mut reply: Vec<u8> = (0..5000).flat_map(|i| format!("214-help line {i}\r\n").into_bytes()).collect();
            reply.extend_from_slice(b"214 end\r\n");
            reply
        })
        .as_slice()
    })
}

/// Oversized and malformed input, each in its own session on one proxy: the
/// bytes reach the server exactly as sent, each session is recorded to its
/// end, the proxy's peak memory stays within a few MiB of where it started
/// (a 10 MiB line is never buffered), and it keeps serving.
#[test]
fn oversized_and_malformed_input_is_relayed_in_bounded_memory() {
    let upstream = FakeUpstream::smtp(chatty);
    let mut proxy = Proxy::start(&[&["--upstream", &upstream.addr()][..], &PLAINTEXT].concat());
    served_normally(proxy.addr);
    proxy.sessions(1);
    let (_, rss0) = fds_and_rss_kib(proxy.child.id());
    let ten_mib = [b"NOOP ".as_slice(), &vec![b'x'; 10 << 20], b"\r\n"].concat();
    let long_text = [b"Subject: long\r\n\r\n".as_slice(), &vec![b'y'; 5000], b"\r\n.\r\n"].concat();
    // Each case: the client's writes, each with the replies it gets.
    let cases: Vec<(&str, Vec<Sent>)> = vec![
        ("command line of 600 octets", vec![([b"NOOP ".as_slice(), &[b'z'; 595], b"\r\n"].concat(), 1)]),
        ("10 MiB line without CRLF until the end", vec![(ten_mib, 1)]),
        ("text line of 5,000 octets", vec![(envelope_then!("DATA\r\n").to_vec(), 3), (long_text, 1)]),
        ("reply of 5,000 lines", vec![(b"HELP\r\n".to_vec(), 1)]),
        ("NUL bytes", vec![(b"MAIL FROM:<a\0b@x.test>\r\n\0\0\0\r\n".to_vec(), 2)]),
        ("invalid UTF-8", vec![(b"EHLO \xc3\x28\xff\r\n".to_vec(), 1)]),
    ];
    for (i, (what, writes)) in cases.iter().enumerate() {
        let mut client = RawClient::connect(proxy.addr);
        client.read_replies(1);
        let mut replies = 1;
        for (bytes, answers) in writes {
            client.send(bytes);
            replies += answers;
            client.read_replies(replies);
        }
        client.send(b"QUIT\r\n");
        let got = read_until_eof(&mut client);
        assert!(String::from_utf8_lossy(&got).ends_with("221 2.0.0 bye\r\n"), "{what}");
        let conn = upstream.conn(i + 1);
        conn.wait_end();
        let sent: Vec<u8> = writes.iter().flat_map(|(b, _)| b.iter().copied()).chain(*b"QUIT\r\n").collect();
        assert!(conn.received() == sent, "{what}: bytes changed");
        if *what == "reply of 5,000 lines" {
            let lines = String::from_utf8_lossy(&got).matches("214-help line ").count();
            assert_eq!(lines, 5000, "every reply line reaches the client");
        }
    }
    // A client that sends only CRs, then goes.
    let mut client = RawClient::connect(proxy.addr);
    client.read_replies(1);
    client.send(&vec![b'\r'; 1 << 20]);
    client.stream.shutdown(Shutdown::Write).unwrap();
    read_until_eof(&mut client);
    let conn = upstream.conn(cases.len() + 1);
    conn.wait_end();
    assert_eq!(conn.received(), vec![b'\r'; 1 << 20]);

    let sessions = proxy.sessions(cases.len() + 2);
    let hwm = vm_hwm_kib(proxy.child.id());
    assert!(hwm < rss0 + 8 * 1024, "peak memory {hwm} KiB from {rss0} KiB");
    let by_what = |i: usize| &sessions[i + 1];
    let long = &exchanges(by_what(1))[1]["command"];
    assert_eq!((long["verb"].as_str(), long["length"].as_u64()), (Some("NOOP"), Some(5 + (10 << 20))));
    let help = &exchanges(by_what(3))[1]["reply"];
    assert_eq!(help["lines"].as_array().unwrap().len() as u64 + help["omitted_lines"].as_u64().unwrap_or(0), 5001);
    let crs = end_of(sessions.last().unwrap());
    assert_eq!((crs["reason"].as_str(), crs["bytes_from_client"].as_u64()), (Some("client-closed"), Some(1 << 20)));
    for session in &sessions[1..cases.len() + 1] {
        assert_eq!(end_of(session)["reason"], "quit");
    }
    assert!(proxy_alive(&mut proxy) && !proxy.stderr().contains("panicked"), "{}", proxy.stderr());
    served_normally(proxy.addr);
}

/// A client that speaks before the server greets is relayed in order, and
/// its command pairs with the reply after the greeting.
#[test]
fn a_client_talking_before_the_greeting_is_relayed_and_paired() {
    let upstream = FakeUpstream::start(|peer| {
        let Some(early) = peer.line() else { return };
        assert_eq!(early, b"EHLO early.test\r\n");
        peer.send(b"220 fake.test ESMTP\r\n250 fake.test\r\n");
        if peer.line().is_some() {
            peer.send(b"221 bye\r\n");
        }
    });
    let proxy = Proxy::start(&[&["--upstream", &upstream.addr()][..], &PLAINTEXT].concat());
    let mut client = RawClient::connect(proxy.addr);
    client.send(b"EHLO early.test\r\n");
    client.read_replies(2);
    client.send(b"QUIT\r\n");
    read_until_eof(&mut client);
    let session = &proxy.sessions(1)[0];
    assert_eq!(summary(session), want(&[("-", 220), ("EHLO", 250), ("QUIT", 221)]));
    assert_eq!(exchanges(session)[1]["pipelined"], true, "sent while the greeting was due");
}

// ---------------------------------------------------------------------------
// Slow and idle peers: every phase has a deadline, and the record names it
// ---------------------------------------------------------------------------

/// What a client does in a timeout case once greeted.
enum Then {
    /// Sends these commands, reads `replies` replies in all, then goes silent.
    Stop(&'static [u8], usize),
    /// Sends these commands, reads `replies` replies, then trickles bytes.
    Trickle(&'static [u8], usize),
}

/// Challenges AUTH; answers BDAT only once its chunk is in (here: never).
fn challenges_auth_awaits_chunks(line: &[u8]) -> Option<&'static [u8]> {
    match line.get(..4)? {
        b"AUTH" => Some(b"334 VXNlcm5hbWU6\r\n"),
        b"BDAT" => Some(b""),
        _ => None,
    }
}

/// A client stopping or trickling in each phase where it owes the proxy
/// bytes: the 421 says why, and the record names the phase.
#[test]
fn every_client_phase_has_a_deadline_and_the_421_names_it() {
    let cases: [(&str, Then, &str, &str); 5] = [
        (
            "stops mid-DATA",
            Then::Stop(envelope_then!("DATA\r\nSubject: x\r\n\r\npart"), 4),
            "no data for 1 s",
            "nothing for 1 s, waiting for the client: message content (DATA)",
        ),
        (
            "stops mid-BDAT",
            Then::Stop(envelope_then!("BDAT 100 LAST\r\n0123456789"), 3),
            "no data for 1 s",
            "nothing for 1 s, waiting for the client: a BDAT chunk",
        ),
        (
            "stops in AUTH",
            Then::Stop(b"AUTH LOGIN\r\n", 2),
            "no data for 1 s",
            "nothing for 1 s, waiting for the client: an AUTH response",
        ),
        (
            "trickles DATA",
            Then::Trickle(envelope_then!("DATA\r\n"), 4),
            "message content too slow",
            "waiting for the client: message content (DATA)",
        ),
        (
            "trickles a BDAT chunk",
            Then::Trickle(envelope_then!("BDAT 1000 LAST\r\n"), 3),
            "message content too slow",
            "waiting for the client: a BDAT chunk",
        ),
    ];
    let upstream = FakeUpstream::smtp(challenges_auth_awaits_chunks);
    let proxy = Proxy::start(&[&["--upstream", &upstream.addr(), "--idle-timeout", "1"][..], &PLAINTEXT].concat());
    for (i, (what, then, said, phase)) in cases.iter().enumerate() {
        let started = Instant::now();
        let mut client = RawClient::connect(proxy.addr);
        client.read_replies(1);
        match then {
            Then::Stop(commands, replies) => {
                client.send(commands);
                client.read_replies(*replies);
                read_until_eof(&mut client);
            }
            Then::Trickle(commands, replies) => {
                client.send(commands);
                client.read_replies(*replies);
                assert!(trickle(&mut client, b"slow content\r\n"), "{what}: the session outlived its deadline");
            }
        }
        assert!(started.elapsed() < Duration::from_secs(8), "{what}: took {:?}", started.elapsed());
        let text = String::from_utf8_lossy(&client.received).into_owned();
        assert!(text.contains(&format!("421 4.4.2 smtptap: {said}")), "{what}: {text:?}");
        let session = &proxy.sessions(i + 1)[i];
        let end = end_of(session);
        assert_eq!(end["reason"], "timeout", "{what}");
        let error = end["error"].as_str().unwrap();
        assert!(error.contains(phase) && (error.contains(said) || error.starts_with("nothing")), "{what}: {error}");
        let last = *exchanges(session).last().unwrap();
        assert_eq!((last["origin"].as_str(), last["reply"]["code"].as_u64()), (Some("proxy"), Some(421)), "{what}");
    }
}

/// The upstream's phases: one that never greets gets the client a `421`;
/// one that stops mid-reply gets a close (no 421 spliced into its reply).
#[test]
fn every_upstream_phase_has_a_deadline_and_the_record_names_it() {
    /// What, the upstream, what the client sends and receives, the phase named.
    type Case = (&'static str, Script, &'static [u8], &'static [u8], &'static str);
    let cases: [Case; 2] = [
        (
            "never greets",
            Peer::drain,
            b"",
            b"421 4.4.2 smtptap: no data for 1 s",
            "waiting for the upstream: the greeting",
        ),
        (
            "stops mid-reply",
            |peer| {
                peer.send(b"220 fake.test\r\n");
                if peer.line().is_some() {
                    peer.send(b"250-first half\r\n");
                    peer.drain();
                }
            },
            b"MAIL FROM:<a@x.test>\r\n",
            b"220 fake.test\r\n250-first half\r\n",
            "waiting for the upstream: the reply to MAIL",
        ),
    ];
    for (what, script, send, want_received, phase) in cases {
        let upstream = FakeUpstream::start(script);
        let proxy = Proxy::start(&[&["--upstream", &upstream.addr(), "--idle-timeout", "1"][..], &PLAINTEXT].concat());
        let mut client = RawClient::connect(proxy.addr);
        client.send(send);
        let got = read_until_eof(&mut client);
        assert!(got.starts_with(want_received), "{what}: {:?}", String::from_utf8_lossy(&got));
        assert_eq!(upstream.conn(0).wait_end(), PeerEnd::Eof, "{what}: the upstream is closed cleanly");
        let session = &proxy.sessions(1)[0];
        assert_eq!(end_of(session)["reason"], "timeout", "{what}");
        assert!(end_of(session)["error"].as_str().unwrap().ends_with(phase), "{what}: {}", end_of(session));
    }
}

// ---------------------------------------------------------------------------
// Half-close and reset, either side, at every phase
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq)]
enum Side {
    Client,
    Upstream,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Cut {
    HalfClose,
    Reset,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Greeting,
    Command,
    Data,
    Bdat,
    Auth,
    TlsHandshake,
}

type Case = (Side, Cut, Phase);

/// Ends the upstream's side of the connection as `cut` says.
fn cut_upstream(peer: &mut Peer, cut: Cut) {
    match cut {
        Cut::HalfClose => {
            let _ = peer.stream.shutdown(Shutdown::Write);
            peer.drain();
        }
        Cut::Reset => reset(peer.stream.try_clone().unwrap()),
    }
}

/// The upstream of the matrix: a small SMTP server that, when the case is
/// its own, cuts the connection at the case's phase. The test sets the case
/// before each connection.
fn matrix_upstream(case: Arc<Mutex<Option<Case>>>) -> FakeUpstream {
    FakeUpstream::start(move |peer| {
        let (side, cut, phase) = case.lock().unwrap().expect("a case");
        let mine = |p: Phase| side == Side::Upstream && phase == p;
        if mine(Phase::Greeting) {
            return cut_upstream(peer, cut);
        }
        if side == Side::Client && phase == Phase::Greeting {
            return peer.drain(); // never greets: the client cuts first
        }
        peer.send(b"220 fake.test ESMTP\r\n");
        while let Some(line) = peer.line() {
            match line.get(..4).map(<[u8]>::to_ascii_uppercase).as_deref() {
                Some(b"EHLO") => peer.send(b"250-fake.test\r\n250-CHUNKING\r\n250 STARTTLS\r\n"),
                Some(b"RCPT") if mine(Phase::Command) => return cut_upstream(peer, cut),
                Some(b"DATA") => {
                    peer.send(b"354 go ahead\r\n");
                    if mine(Phase::Data) {
                        let _ = peer.take(4);
                        return cut_upstream(peer, cut);
                    }
                }
                Some(b"BDAT") => {
                    let _ = peer.take(4);
                    if mine(Phase::Bdat) {
                        return cut_upstream(peer, cut);
                    }
                }
                Some(b"AUTH") => {
                    peer.send(b"334 VXNlcm5hbWU6\r\n");
                    if mine(Phase::Auth) {
                        let _ = peer.take(4);
                        return cut_upstream(peer, cut);
                    }
                }
                Some(b"STAR") => {
                    peer.send(b"220 2.0.0 go ahead\r\n");
                    peer.wait_unread(); // the proxy's ClientHello: it has read the 220
                    return cut_upstream(peer, cut);
                }
                _ => peer.send(b"250 ok\r\n"),
            }
        }
    })
}

/// Drives a client into `phase`, every reply due read: its last write is
/// cut short when the client is to cut, and whole when the upstream is.
fn client_to(client: &mut RawClient, phase: Phase, side: Side) {
    let steps: &[(&[u8], usize)] = match (phase, side) {
        (Phase::Greeting, _) => &[],
        (Phase::Command, Side::Client) => &[(b"EHLO c.test\r\nMAIL FROM:<a@x.test>\r\n", 3), (b"RCPT TO:<b", 0)],
        (Phase::Command, Side::Upstream) => &[(b"EHLO c.test\r\nMAIL FROM:<a@x.test>\r\n", 3), (b"RCPT TO:<b>\r\n", 0)],
        (Phase::Data, _) => {
            &[(b"EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n", 5), (b"Subj", 0)]
        }
        (Phase::Bdat, _) => {
            &[(b"EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n", 4), (b"BDAT 9 LAST\r\nabcd", 0)]
        }
        (Phase::Auth, _) => &[(b"EHLO c.test\r\n", 2), (b"AUTH LOGIN\r\n", 3), (b"dXNl", 0)],
        (Phase::TlsHandshake, _) => &[(b"EHLO c.test\r\n", 2), (b"STARTTLS\r\n", 0)],
    };
    if phase != Phase::Greeting {
        client.read_replies(1);
    }
    for (bytes, replies) in steps {
        client.send(bytes);
        if *replies > 0 {
            client.read_replies(*replies);
        }
    }
}

/// Either side half-closing or resetting at every phase: the other side sees
/// a clean close, the proxy's recording ends with the right reason (and the
/// error of a reset), and the proxy goes on serving.
#[test]
fn half_close_and_reset_at_every_phase_on_either_side() {
    let case: Arc<Mutex<Option<Case>>> = Arc::default();
    let upstream = matrix_upstream(case.clone());
    let addr = upstream.addr();
    // The client side's TLS handshake is with the proxy itself (it answers
    // STARTTLS); the upstream's needs STARTTLS mirrored to the server.
    let answering = Proxy::start(&["--upstream", &addr, "--client-tls", "starttls", "--upstream-tls", "off"]);
    let mirroring = Proxy::start(&["--upstream", &addr, "--client-tls", "starttls", "--upstream-tls", "starttls"]);
    let phases = [Phase::Greeting, Phase::Command, Phase::Data, Phase::Bdat, Phase::Auth, Phase::TlsHandshake];
    let mut conns = 0;
    let mut done = (0, 0);
    for side in [Side::Client, Side::Upstream] {
        for cut in [Cut::HalfClose, Cut::Reset] {
            for phase in phases {
                let this = (side, cut, phase);
                *case.lock().unwrap() = Some(this);
                let mirror = side == Side::Upstream && phase == Phase::TlsHandshake;
                let proxy = if mirror { &mirroring } else { &answering };
                let mut client = RawClient::connect(proxy.addr);
                client_to(&mut client, phase, side);
                if phase == Phase::TlsHandshake && side == Side::Client {
                    client.read_replies(3); // the proxy's own 220
                }
                let conn = upstream.conn(conns);
                conns += 1;
                match (side, cut) {
                    (Side::Client, Cut::Reset) => reset(client.stream),
                    (Side::Client, Cut::HalfClose) => {
                        client.stream.shutdown(Shutdown::Write).unwrap();
                        read_until_eof(&mut client);
                    }
                    (Side::Upstream, _) => {
                        let got = String::from_utf8_lossy(&read_until_eof(&mut client)).into_owned();
                        if mirror {
                            assert!(got.trim_end().ends_with("not relaying in plaintext"), "{this:?}: {got:?}");
                        }
                    }
                }
                if side == Side::Client {
                    assert_eq!(conn.wait_end(), PeerEnd::Eof, "{this:?}: the upstream sees a clean close");
                }
                let counter = if mirror { &mut done.1 } else { &mut done.0 };
                *counter += 1;
                let sessions = proxy.sessions(*counter);
                let end = end_of(sessions.last().unwrap());
                let reason = match (side, phase) {
                    (_, Phase::TlsHandshake) => "tls-failed",
                    (Side::Client, _) => "client-closed",
                    (Side::Upstream, _) => "upstream-closed",
                };
                assert_eq!(end["reason"], reason, "{this:?}: {end}");
                if phase != Phase::TlsHandshake {
                    let error = end["error"].as_str().unwrap_or_default().to_lowercase();
                    assert_eq!(cut == Cut::Reset, error.contains("reset"), "{this:?}: {end}");
                }
            }
        }
    }
    for proxy in [answering, mirroring] {
        assert!(!proxy.stderr().contains("panicked"), "{}", proxy.stderr());
    }
}

// ---------------------------------------------------------------------------
// Pipelined BDAT
// ---------------------------------------------------------------------------

/// 2,000 BDAT chunks of 8 KiB sent without waiting for a reply: every chunk
/// is answered, the message recorded whole, and the proxy's memory bounded.
#[test]
fn pipelined_bdat_chunks_stream_in_bounded_memory() {
    const CHUNKS: usize = 2000;
    const SIZE: usize = 8 * 1024;
    let proxy = Proxy::start(&PLAINTEXT);
    served_normally(proxy.addr);
    proxy.sessions(1);
    let (_, rss0) = fds_and_rss_kib(proxy.child.id());
    let mut client = RawClient::connect(proxy.addr);
    client.read_replies(1);
    client.send(b"EHLO bdat.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n");
    client.read_replies(4);
    let mut writer = client.stream.try_clone().unwrap();
    let sender = thread::spawn(move || {
        let mut hash = Sha256::new();
        for i in 0..CHUNKS {
            let chunk: Vec<u8> = (0..SIZE).map(|j| b"abcdefghijklmnopqrstuvwxyz\r\n"[(i + j) % 28]).collect();
            hash.update(&chunk);
            writer.write_all(format!("BDAT {SIZE}\r\n").as_bytes()).unwrap();
            writer.write_all(&chunk).unwrap();
        }
        writer.write_all(b"BDAT 0 LAST\r\nQUIT\r\n").unwrap();
        hash.finalize()
    });
    let got = read_until_eof(&mut client);
    let digest = sender.join().unwrap();
    recording_files(&proxy.record_dir()).iter().for_each(|f| wait_for_end_line(f)); // a long last line
    let text = String::from_utf8_lossy(&got);
    assert_eq!(text.matches("\r\n250 ").count(), 3 + CHUNKS + 1, "{}", tail(&text));
    assert!(text.ends_with("\r\n221 2.0.0 Bye\r\n"));
    let sessions = proxy.sessions(2);
    let hwm = vm_hwm_kib(proxy.child.id());
    assert!(hwm < rss0 + 16 * 1024, "peak memory {hwm} KiB from {rss0} KiB");
    let message = exchanges(&sessions[1]).into_iter().find(|e| e["message"].is_object()).expect("message");
    assert_eq!(message["message"]["size"], CHUNKS * SIZE);
    assert_eq!(message["message"]["sha256"], hex(&digest));
    assert_eq!(end_of(&sessions[1])["reason"], "quit");
}

// ---------------------------------------------------------------------------
// Secrets under faults; logs and paths that peers cannot steer
// ---------------------------------------------------------------------------

/// AUTH cut, malformed and split in every way a peer can: the password is
/// never in any file the proxy wrote, nor in its log.
#[test]
fn secrets_stay_secret_when_auth_is_cut_malformed_or_split() {
    const PASSWORD: &str = "Corr3ct-Horse-Battery";
    let upstream = FakeUpstream::start(|peer| {
        peer.send(b"220 fake.test ESMTP\r\n");
        while let Some(line) = peer.line() {
            let reply: &[u8] = match &line[..] {
                l if l.starts_with(b"EHLO") => b"250 ok\r\n",
                l if l.starts_with(b"AUTH LOGIN") => b"334 VXNlcm5hbWU6\r\n",
                b"dXNlckB4LnRlc3Q=\r\n" => b"334 UGFzc3dvcmQ6\r\n",
                l if l.starts_with(b"AUTH\t") => b"", // no answer before the client goes
                l if l.starts_with(b"AUTH XUNKNOWN") => b"504 5.5.4 unknown mechanism\r\n",
                l if l.starts_with(b"AUTH") => b"235 2.7.0 ok\r\n",
                l if l.starts_with(b"QUIT") => return peer.send(b"221 bye\r\n"),
                // A password line: the server resets when the client asked it to.
                _ if peer.log.received().starts_with(b"EHLO reset") => return reset(peer.stream.try_clone().unwrap()),
                _ => b"250 ok\r\n",
            };
            peer.send(reply);
        }
    });
    let proxy = Proxy::start(&[&["--upstream", &upstream.addr()][..], &PLAINTEXT].concat());
    let plain = b64e(format!("\0user@x.test\0{PASSWORD}").as_bytes());
    let login_password = format!("{}\r\n", b64e(PASSWORD.as_bytes()));
    // Each case: what the client sends, as separate writes; then it closes.
    let cases: Vec<(&str, Vec<String>)> = vec![
        ("PLAIN split across reads", plain.as_bytes().chunks(5).map(|c| String::from_utf8_lossy(c).into()).collect()),
        ("PLAIN cut mid-line", vec![format!("AUTH PLAIN {}", &plain[..plain.len() - 3])]),
        ("PLAIN not base64", vec![format!("AUTH PLAIN !{PASSWORD}!\r\n")]),
        ("PLAIN without NULs", vec![format!("AUTH PLAIN {}\r\n", b64e(PASSWORD.as_bytes()))]),
        (
            "LOGIN cut mid-password",
            vec!["AUTH LOGIN\r\n".into(), "dXNlckB4LnRlc3Q=\r\n".into(), login_password[..9].into()],
        ),
        (
            "LOGIN upstream resets",
            vec![
                "EHLO reset\r\n".into(),
                "AUTH LOGIN\r\n".into(),
                "dXNlckB4LnRlc3Q=\r\n".into(),
                login_password.clone(),
            ],
        ),
        ("sent ahead of a refused AUTH", vec![format!("AUTH XUNKNOWN\r\n{plain}\r\n")]),
        ("tab-separated, pipelined", vec![format!("AUTH\tPLAIN\r\n{plain}\r\n")]),
    ];
    for (what, writes) in &cases {
        let mut client = RawClient::connect(proxy.addr);
        client.read_replies(1);
        let mut writes = writes.clone();
        if *what == "PLAIN split across reads" {
            writes.insert(0, "AUTH PLAIN ".into());
            writes.push("\r\n".into());
        }
        for write in &writes {
            client.send(write.as_bytes());
            client.stream.flush().unwrap();
            thread::sleep(Duration::from_millis(5)); // separate reads
        }
        if *what == "LOGIN upstream resets" {
            read_until_eof(&mut client);
        }
        drop(client);
    }
    proxy.sessions(cases.len());
    let written = everything_written(&proxy);
    for form in secret_forms(PASSWORD).iter().chain([&plain]) {
        assert!(!written.contains(form.as_str()), "the password leaked as {form}");
    }
    assert!(written.contains("user@x.test"), "the identity is kept (the search looks in the right place)");
}

/// CR and LF in anything a peer says (EHLO, MAIL, an AUTH user, a server's
/// reply that ends up in the session's error) cannot forge a log line.
#[test]
fn peer_text_cannot_forge_log_lines() {
    const FORGED: &str = "2099-01-01T00:00:00.000000Z  INFO smtptap: forged";
    let refuses = FakeUpstream::start(|peer| {
        peer.send(b"220 fake.test ESMTP\r\n");
        while let Some(line) = peer.line() {
            match &line[..4] {
                b"EHLO" => peer.send(b"250-fake.test\r\n250 STARTTLS\r\n"),
                _ => return peer.send(format!("454 4.7.0 no\r{FORGED}\r\n").as_bytes()),
            }
        }
    });
    let first = Proxy::start(&["--upstream", &refuses.addr(), "--client-tls", "off", "--upstream-tls", "starttls"]);
    let mut client = RawClient::connect(first.addr);
    read_until_eof(&mut client);
    first.sessions(1);

    let resets = FakeUpstream::smtp(|line| line.starts_with(b"AUTH").then_some(&b"334 UGFzc3dvcmQ6\r\n"[..]));
    let second = Proxy::start(&[&["--upstream", &resets.addr()][..], &PLAINTEXT].concat());
    let mut client = RawClient::connect(second.addr);
    client.read_replies(1);
    let user = b64e(format!("u\r\n{FORGED}").as_bytes());
    client.send(format!("EHLO x\r{FORGED}\r\nMAIL FROM:<a\r{FORGED}@x>\r\nAUTH LOGIN {user}\r\n").as_bytes());
    client.read_replies(4);
    reset(client.stream);
    second.sessions(1);
    for proxy in [&first, &second] {
        let log = proxy.stderr();
        assert!(log.contains("session ended"), "{log}");
        let forged: Vec<&str> = log.split(['\n', '\r']).filter(|l| l.starts_with("2099-")).collect();
        assert!(forged.is_empty(), "forged log lines: {forged:?}\n{log}");
    }
    assert!(first.stderr().contains("forged"), "the server's text is logged, escaped: {}", first.stderr());
}

/// Names a client chooses cannot steer where the proxy writes: each session
/// is one file named by time and a random id, inside the record directory.
#[test]
fn client_strings_never_steer_a_file_path() {
    let proxy = Proxy::start(&PLAINTEXT);
    let mut client = RawClient::connect(proxy.addr);
    client.read_replies(1);
    client.send(b"EHLO ../../../../tmp/evil.jsonl\r\nMAIL FROM:<../../x/y@z>\r\nRCPT TO:</etc/passwd@y>\r\nQUIT\r\n");
    read_until_eof(&mut client);
    proxy.sessions(1);
    let mut names: Vec<String> = std::fs::read_dir(proxy.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["certs", "recordings"], "nothing beside the record and CA directories");
    let files = recording_files(&proxy.record_dir());
    let entries = std::fs::read_dir(proxy.record_dir()).unwrap().count();
    assert_eq!((files.len(), entries), (1, 1));
    let name = files[0].file_name().unwrap().to_str().unwrap().to_owned();
    let (stamp, id) = name.strip_suffix(".jsonl").unwrap().split_once('-').unwrap();
    assert!(stamp.len() == 16 && stamp.ends_with('Z') && stamp.as_bytes()[8] == b'T', "{name}");
    assert!(id.len() == 8 && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()), "{name}");
}
