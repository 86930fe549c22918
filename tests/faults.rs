//! Fault injection, end to end: the real binary between hand-driven clients
//! and scripted upstreams that close, stall or reset at chosen points; limits,
//! signals and memory bounds. Every fault must give the client a clear reply
//! (or a clean close) and leave a complete, parseable recording.

mod common;
use common::*;

use serde_json::Value;
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// Upstream faults
// ---------------------------------------------------------------------------

#[test]
fn upstream_unreachable_gets_421_and_a_recording_that_says_why() {
    let dead = dead_address().to_string();
    let proxy = Proxy::start(&["--upstream", &dead]);
    let mut client = RawClient::connect(proxy.addr);
    let got = read_until_eof(&mut client);
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("421 4.4.0 "), "{text:?}");
    assert!(text.ends_with("\r\n") && text.matches("\r\n").count() == 1, "one reply line: {text:?}");

    let session = &proxy.sessions(1)[0];
    let end = end_of(session);
    assert_eq!(end["reason"], "upstream-unreachable");
    let error = end["error"].as_str().expect("error must say why");
    assert!(error.contains(&dead), "error names the upstream: {error}");
    assert_eq!(end["bytes_from_upstream"], 0);
    let ex = exchanges(session);
    assert_eq!(ex.len(), 1, "{ex:?}");
    assert_eq!(ex[0]["origin"], "proxy");
    assert!(ex[0]["command"].is_null());
    assert_eq!(ex[0]["reply"]["code"], 421);
    assert_eq!(ex[0]["reply"]["enhanced"], "4.4.0");
    assert_eq!(format!("421 {}\r\n", ex[0]["reply"]["lines"][0].as_str().unwrap()), text, "recorded as sent");
    assert_eq!(end["exchanges"], 1);
}

/// The upstream answers `command` with the first line of a multi-line reply, then closes.
fn upstream_closes_mid_reply_to(command: &'static [u8], verb: &str) {
    let upstream = FakeUpstream::start(|peer| {
        peer.send(b"220 fake.test ESMTP\r\n");
        if peer.line().is_some() {
            peer.send(b"250-first\r\n");
        }
    });
    let proxy = Proxy::start(&["--upstream", &upstream.addr()]);
    let mut client = RawClient::connect(proxy.addr);
    client.read_replies(1);
    client.send(command);
    let got = read_until_eof(&mut client);
    assert_eq!(
        String::from_utf8_lossy(&got),
        "220 fake.test ESMTP\r\n250-first\r\n",
        "the partial reply is relayed, then the close"
    );
    assert_eq!(upstream.conn(0).received(), command);

    let session = &proxy.sessions(1)[0];
    let end = end_of(session);
    assert_eq!(end["reason"], "upstream-closed");
    // The part of the reply that came answers the command, marked truncated.
    assert_eq!(summary(session), [("-".to_owned(), 220), (verb.to_owned(), 250)]);
    let cut = exchanges(session)[1];
    assert_eq!(
        (&cut["reply"]["lines"][0], &cut["reply"]["truncated"]),
        (&Value::from("first"), &Value::from(true)),
        "{cut}"
    );
    assert_eq!(cut["command"]["line"].as_str().unwrap().as_bytes(), &command[..command.len() - 2]);
    let notes = notes(session);
    assert!(notes.iter().any(|n| n.contains("middle of a server reply")), "note about the partial reply: {notes:?}");
    assert_eq!(end["bytes_from_upstream"], got.len());
}

#[test]
fn upstream_closing_mid_reply_is_passed_on_and_recorded() {
    upstream_closes_mid_reply_to(b"NOOP\r\n", "NOOP");
}

/// The same for an EHLO reply, which the observer holds back until complete
/// (to edit STARTTLS out of it): what it holds must still reach the client.
#[test]
fn upstream_closing_mid_ehlo_reply_is_passed_on_and_recorded() {
    upstream_closes_mid_reply_to(b"EHLO client.test\r\n", "EHLO");
}

#[test]
fn upstream_closing_mid_data_is_passed_on_and_recorded() {
    const PARTIAL: &[u8] = b"Subject: cut\r\n\r\nsome text that the server never sees ended";
    let upstream = FakeUpstream::start(|peer| {
        peer.send(b"220 fake.test ESMTP\r\n");
        for reply in [&b"250 ok\r\n"[..], b"250 ok\r\n", b"250 ok\r\n", b"354 go ahead\r\n"] {
            if peer.line().is_none() {
                return;
            }
            peer.send(reply);
        }
        let _ = peer.take(PARTIAL.len());
    });
    let proxy = Proxy::start(&["--upstream", &upstream.addr()]);
    let mut client = RawClient::connect(proxy.addr);
    client.read_replies(1);
    let commands: &[u8] = b"EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n";
    for (i, line) in commands.split_inclusive(|&b| b == b'\n').enumerate() {
        client.send(line);
        client.read_replies(i + 2);
    }
    client.send(PARTIAL);
    read_until_eof(&mut client);
    assert_eq!(upstream.conn(0).received(), [commands, PARTIAL].concat());

    let session = &proxy.sessions(1)[0];
    let end = end_of(session);
    assert_eq!(end["reason"], "upstream-closed");
    let ex = exchanges(session);
    assert_eq!(summary(session)[4], ("DATA".to_owned(), 354));
    let content = ex.last().unwrap();
    assert!(content["reply"].is_null(), "{content}");
    assert_eq!(content["message"]["complete"], false);
    assert_eq!(content["message"]["size"], PARTIAL.len());
    assert_eq!(body_bytes(content), PARTIAL);
    let notes = notes(session);
    assert!(!notes.iter().any(|n| n.contains("middle of a server reply")), "no reply was cut: {notes:?}");
}

/// An upstream that closes or resets before its greeting: the client gets a
/// 421 that says so, not a bare close, and the recording ends `upstream-closed`.
#[test]
fn an_upstream_gone_before_its_greeting_gets_the_client_a_421() {
    for resets in [false, true] {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let upstream = listener.local_addr().unwrap().to_string();
        let server = thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            if resets {
                reset(stream);
            }
        });
        let proxy = Proxy::start(&[&["--upstream", &upstream][..], &PLAINTEXT].concat());
        let mut client = RawClient::connect(proxy.addr);
        let text = String::from_utf8_lossy(&read_until_eof(&mut client)).into_owned();
        let how = if resets { "reset" } else { "closed" };
        let want = format!("421 4.4.0 smtptap: the upstream {how} the connection before its greeting");
        assert!(text.starts_with(&want), "{text:?}");
        server.join().unwrap();
        let session = &proxy.sessions(1)[0];
        let end = end_of(session);
        assert_eq!(end["reason"], "upstream-closed", "{end}");
        assert_eq!(end["error"].as_str().unwrap_or_default().contains("reset"), resets, "{end}");
        let last = *exchanges(session).last().unwrap();
        assert_eq!((last["origin"].as_str(), last["reply"]["code"].as_u64()), (Some("proxy"), Some(421)));
    }
}

#[test]
fn upstream_reset_is_passed_on_and_recorded_with_its_error() {
    let upstream = FakeUpstream::start(|peer| {
        peer.send(b"220 fake.test ESMTP\r\n");
        peer.wait_unread();
    });
    let proxy = Proxy::start(&["--upstream", &upstream.addr()]);
    let mut client = RawClient::connect(proxy.addr);
    client.read_replies(1);
    client.send(b"EHLO client.test\r\n");
    let got = read_until_eof(&mut client);
    assert_eq!(got, b"220 fake.test ESMTP\r\n");

    let session = &proxy.sessions(1)[0];
    let end = end_of(session);
    assert_eq!(end["reason"], "upstream-closed");
    let error = end["error"].as_str().expect("a reset is an error worth recording");
    assert!(error.to_lowercase().contains("reset"), "{error}");
    assert_eq!(summary(session), [("-".to_owned(), 220), ("EHLO".to_owned(), 0)]);
}

#[test]
fn upstream_stalling_mid_reply_times_out_without_corrupting_the_reply() {
    let upstream = FakeUpstream::start(|peer| {
        peer.send(b"220-fake.test still typing\r\n");
        peer.drain();
    });
    let proxy = Proxy::start(&["--upstream", &upstream.addr(), "--idle-timeout", "1"]);
    let mut client = RawClient::connect(proxy.addr);
    let got = read_until_eof(&mut client);
    assert_eq!(got, b"220-fake.test still typing\r\n", "no 421 spliced into the server's reply");
    assert_eq!(upstream.conn(0).wait_end(), PeerEnd::Eof, "upstream closed cleanly");
    let session = &proxy.sessions(1)[0];
    assert_eq!(end_of(session)["reason"], "timeout");
    let error = end_of(session)["error"].as_str().unwrap();
    assert!(error.ends_with("waiting for the upstream: the greeting"), "the phase is named: {error}");
    assert!(!exchanges(session).iter().any(|e| e["origin"] == "proxy"));
}

// ---------------------------------------------------------------------------
// Client faults
// ---------------------------------------------------------------------------

#[test]
fn client_closing_mid_command_closes_upstream_and_keeps_the_partial_line() {
    let upstream = FakeUpstream::smtp(|_| None);
    let proxy = Proxy::start(&["--upstream", &upstream.addr()]);
    let mut client = RawClient::connect(proxy.addr);
    client.read_replies(1);
    client.send(b"EHLO client.test\r\n");
    client.read_replies(2);
    client.send(b"MAIL FR");
    drop(client);

    let conn = upstream.conn(0);
    assert_eq!(conn.wait_end(), PeerEnd::Eof, "the proxy must close the upstream cleanly");
    assert_eq!(conn.received(), b"EHLO client.test\r\nMAIL FR");
    let session = &proxy.sessions(1)[0];
    let end = end_of(session);
    assert_eq!(end["reason"], "client-closed");
    assert!(end["error"].is_null(), "{end}");
    let last = *exchanges(session).last().unwrap();
    assert_eq!(last["command"]["line"], "MAIL FR");
    assert_eq!(last["command"]["verb"], "MAIL");
    assert_eq!(last["command"]["incomplete"], true);
    assert!(last["reply"].is_null());
    assert_eq!(end["bytes_from_client"], b"EHLO client.test\r\nMAIL FR".len());
}

#[test]
fn client_half_close_still_gets_the_servers_last_word() {
    let upstream = CaptureServer::start();
    let proxy = Proxy::start(&["--upstream", &upstream.addr.to_string()]);
    let mut client = RawClient::connect(proxy.addr);
    client.read_replies(1);
    // As `nc -N` or a script does: send everything, then shut down the sending side.
    client.send(b"EHLO c.test\r\nNOOP\r\nQUIT\r\n");
    client.stream.shutdown(std::net::Shutdown::Write).unwrap();
    let text = String::from_utf8_lossy(&read_until_eof(&mut client)).into_owned();
    assert!(text.contains("\r\n250 2.0.0 Ok\r\n221 2.0.0 Bye\r\n"), "replies after the half-close: {text:?}");
    assert_eq!(upstream.wait_connections(1)[0], b"EHLO c.test\r\nNOOP\r\nQUIT\r\n");
    let session = &proxy.sessions(1)[0];
    assert_eq!(end_of(session)["reason"], "quit");
    assert_eq!(summary(session)[2..], [("NOOP".to_owned(), 250), ("QUIT".to_owned(), 221)]);
}

/// Content cut off mid-line, with a stuffed dot before the cut.
const HALF: &[u8] = b"Subject: half\r\nFrom: <a@x.test>\r\n\r\nfirst line\r\n..stuffed\r\nsecond li";
/// `HALF` as delivered: dot-stuffing removed.
const HALF_DELIVERED: &[u8] = b"Subject: half\r\nFrom: <a@x.test>\r\n\r\nfirst line\r\n.stuffed\r\nsecond li";

fn assert_half_message_recorded(session: &[Value]) {
    let content = *exchanges(session).last().unwrap();
    assert!(content["command"].is_null() && content["reply"].is_null(), "{content}");
    let message = &content["message"];
    assert_eq!(message["complete"], false, "{message}");
    assert_eq!(message["size"], HALF_DELIVERED.len());
    assert_eq!(message["sha256"], hex(&Sha256::digest(HALF_DELIVERED)));
    assert_eq!(message["headers"]["subject"], "half");
    assert_eq!(body_bytes(content), HALF_DELIVERED);
}

#[test]
fn client_closing_mid_data_keeps_the_partial_message() {
    let upstream = CaptureServer::start();
    let proxy = Proxy::start(&["--upstream", &upstream.addr.to_string()]);
    let mut client = RawClient::connect(proxy.addr);
    client.read_replies(1);
    let commands: &[u8] = b"EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n";
    client.send(commands);
    let replies = client.read_replies(5);
    assert!(replies[4].starts_with("354 "), "{replies:?}");
    client.send(HALF);
    drop(client);

    assert_eq!(upstream.wait_connections(1)[0], [commands, HALF].concat(), "upstream gets exactly the bytes sent");
    let session = &proxy.sessions(1)[0];
    let end = end_of(session);
    assert_eq!(end["reason"], "client-closed");
    assert!(end["error"].is_null(), "{end}");
    assert_eq!(summary(session)[4], ("DATA".to_owned(), 354));
    assert_half_message_recorded(session);
    assert_eq!(end["bytes_from_client"], commands.len() + HALF.len());
}

#[test]
fn client_reset_mid_data_keeps_the_partial_message_and_the_proxy_serving() {
    let upstream = FakeUpstream::smtp(|_| None);
    let mut proxy = Proxy::start(&["--upstream", &upstream.addr()]);
    let mut client = RawClient::connect(proxy.addr);
    client.read_replies(1);
    let commands: &[u8] = b"EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n";
    client.send(commands);
    client.read_replies(4);
    client.send(b"DATA\r\n");
    // Wait for the 354 without consuming it: unread data at close makes the kernel send a reset.
    let mut peek = [0u8; 64];
    wait_for("the 354", || client.stream.peek(&mut peek).is_ok_and(|n| peek[..n].ends_with(b"\r\n")));
    assert!(peek.starts_with(b"354 "));
    client.send(HALF);
    let conn = upstream.conn(0);
    conn.wait_received(&[commands, b"DATA\r\n", HALF].concat());
    drop(client); // RST

    assert_eq!(conn.wait_end(), PeerEnd::Eof, "the proxy must close the upstream cleanly");
    assert_eq!(conn.received(), [commands, b"DATA\r\n", HALF].concat());
    let session = &proxy.sessions(1)[0];
    let end = end_of(session);
    assert_eq!(end["reason"], "client-closed");
    let error = end["error"].as_str().expect("a reset is an error worth recording");
    assert!(error.to_lowercase().contains("reset"), "{error}");
    assert_half_message_recorded(session);

    served_normally(proxy.addr);
    proxy.sessions(2);
    assert!(proxy_alive(&mut proxy));
    assert!(!proxy.stderr().contains("panicked"), "{}", proxy.stderr());
}

#[test]
fn idle_client_gets_421_and_the_session_times_out() {
    let proxy = Proxy::start(&["--idle-timeout", "1"]);
    let mut client = RawClient::connect(proxy.addr);
    client.read_replies(1);
    let greeting = client.received.len();
    let silent = Instant::now();
    let got = read_until_eof(&mut client);
    let waited = silent.elapsed();
    assert!(text_after(&got, greeting).starts_with("421 4.4.2 "), "{:?}", text_after(&got, greeting));
    assert!(waited >= Duration::from_millis(800), "timed out too early: {waited:?}");
    assert!(waited < Duration::from_secs(10), "timed out too late: {waited:?}");

    let session = &proxy.sessions(1)[0];
    let end = end_of(session);
    assert_eq!(end["reason"], "timeout");
    let error = end["error"].as_str().unwrap();
    assert!(error.ends_with("waiting for the client: its next command"), "the phase is named: {error}");
    let last = *exchanges(session).last().unwrap();
    assert_eq!((last["origin"].as_str(), last["reply"]["code"].as_u64()), (Some("proxy"), Some(421)));
    assert_eq!(last["reply"]["enhanced"], "4.4.2");
}

#[test]
fn connection_cap_refuses_with_421_then_recovers() {
    let proxy = Proxy::start(&["--max-connections", "1"]);
    let mut first = RawClient::connect(proxy.addr);
    first.read_replies(1);

    let mut second = RawClient::connect(proxy.addr);
    let asked = Instant::now();
    let got = read_until_eof(&mut second);
    assert!(asked.elapsed() < Duration::from_secs(5), "refusal must be immediate");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("421 4.7.0 "), "{text:?}");
    wait_for("a log line about the cap", || proxy.stderr().contains("too many connections"));

    first.send(b"QUIT\r\n");
    read_until_eof(&mut first);
    assert_eq!(end_of(&proxy.sessions(1)[0])["reason"], "quit");
    assert_eq!(recording_files(&proxy.record_dir()).len(), 1, "refused clients are not recorded");

    // The first session's slot is freed right after its recording ends.
    let deadline = Instant::now() + PATIENCE;
    let mut client = loop {
        let mut c = RawClient::connect(proxy.addr);
        let reply = c.read_replies(1).remove(0);
        if reply.starts_with("220 ") {
            break c;
        }
        assert!(reply.starts_with("421 4.7.0 ") && Instant::now() < deadline, "{reply}");
        thread::sleep(Duration::from_millis(10));
    };
    client.send(b"EHLO again.test\r\nQUIT\r\n");
    let text = String::from_utf8_lossy(&read_until_eof(&mut client)).into_owned();
    assert!(text.contains("\r\n221 "), "{text:?}");
    let sessions = proxy.sessions(2);
    assert_eq!(end_of(&sessions[1])["reason"], "quit");
}

/// A small tmpfs, unmounted on drop (before the directory holding it goes).
struct TinyDisk {
    mount_point: tempfile::TempDir,
}

impl TinyDisk {
    fn mount(kib: u32) -> TinyDisk {
        let mount_point = tempfile::tempdir().unwrap();
        let out = run_peer(
            "mount",
            &["-t", "tmpfs", "-o", &format!("size={kib}k,mode=0700"), "tmpfs", path_str(mount_point.path())],
            None,
        );
        assert_success(&out, "mount a tmpfs (the tests run as root)");
        TinyDisk { mount_point }
    }
}

impl Drop for TinyDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.mount_point.path()).status();
    }
}

/// A full disk stops the recording, never the mail: the message is still
/// delivered, the log says the recording is incomplete, and what was
/// written parses.
#[test]
fn a_full_disk_stops_the_recording_not_the_mail() {
    let disk = TinyDisk::mount(64);
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(disk.mount_point.path(), dir.path().join("recordings")).unwrap();
    let proxy = Proxy::start_in(dir, &PLAINTEXT);
    let body = b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\r\n".repeat(16 * 1024); // 1.1 MB
    one_session(proxy.addr, &body).expect("the message is delivered although the disk is full");
    wait_for("the log line about the incomplete recording", || {
        proxy.stderr().contains("recording failed; the session was relayed but its recording is incomplete")
    });
    let files = recording_files(&proxy.record_dir());
    assert_eq!(files.len(), 1);
    let records = read_records(&files[0]);
    assert_eq!(records[0]["type"], "session", "what was written before the disk filled is intact");
    drop(proxy); // before the disk goes
}

/// A record directory that cannot take files any more (here: replaced by a
/// plain file while the proxy runs) leaves sessions relayed, unrecorded, and
/// logged as such; a record directory that cannot be made stops the start.
#[test]
fn an_unusable_record_directory_never_stops_the_mail() {
    let proxy = Proxy::start(&PLAINTEXT);
    let records = proxy.record_dir();
    std::fs::remove_dir(&records).unwrap();
    std::fs::write(&records, b"not a directory").unwrap();
    one_session(proxy.addr, b"still delivered\r\n").expect("the message is delivered without a recording");
    wait_for("the log line about the unrecorded session", || {
        proxy.stderr().contains("cannot create the recording; relaying this session unrecorded")
    });

    let dir = tempfile::tempdir().unwrap();
    let blocked = dir.path().join("file");
    std::fs::write(&blocked, b"").unwrap();
    let out = Command::new(BIN)
        .args(["proxy", "--listen", "127.0.0.1:0", "--record-dir"])
        .arg(blocked.join("recordings"))
        .arg("--ca-dir")
        .arg(dir.path().join("certs"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot create the recordings directory") && err.contains("--record-dir"), "{err}");
}

/// A slowloris client: each byte comes well within the idle timeout, but the
/// command line never ends. The line itself has a deadline.
#[test]
fn a_command_line_dribbled_byte_by_byte_times_out() {
    let proxy = Proxy::start(&["--idle-timeout", "1"]);
    let mut client = RawClient::connect(proxy.addr);
    client.read_replies(1);
    let started = Instant::now();
    let closed = trickle(&mut client, b"NOOP and then some more");
    assert!(closed || client.received.windows(9).any(|w| w == b"421 4.4.2"), "the session outlived its line");
    assert!(started.elapsed() < Duration::from_secs(8), "closed too late: {:?}", started.elapsed());
    let session = &proxy.sessions(1)[0];
    let end = end_of(session);
    assert_eq!(end["reason"], "timeout");
    let error = end["error"].as_str().unwrap();
    assert!(error.contains("a command line took over 1 s"), "{error}");
    let last = *exchanges(session).last().unwrap();
    assert_eq!(last["reply"]["code"], 421);
    assert!(last["reply"]["lines"][0].as_str().unwrap().contains("command line not completed"));
}

/// 5,000 connections opened and dropped, 100 at a time, against a cap of 64:
/// the cap answers `421`, the listener survives, and descriptors and memory
/// come back down once the storm is over.
#[test]
fn connection_storm_is_capped_and_leaves_nothing_behind() {
    let proxy = Proxy::start(&[&PLAINTEXT[..], &["--max-connections", "64"]].concat());
    let pid = proxy.child.id();
    let mut warm = RawClient::connect(proxy.addr);
    warm.read_replies(1);
    warm.send(b"QUIT\r\n");
    read_until_eof(&mut warm);
    proxy.sessions(1);
    let (fds0, rss0) = fds_and_rss_kib(pid);

    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut greeted, mut refused) = (0usize, 0usize);
    for _ in 0..50 {
        assert!(Instant::now() < deadline, "the storm took too long");
        let mut wave: Vec<TcpStream> = (0..100).map(|_| TcpStream::connect(proxy.addr).expect("connect")).collect();
        for conn in &mut wave {
            conn.set_read_timeout(Some(PATIENCE)).unwrap();
            let mut first = [0u8; 10];
            conn.read_exact(&mut first).expect("every client hears something");
            match &first {
                b"220 smtpta" => greeted += 1,
                b"421 4.7.0 " => refused += 1,
                other => panic!("unexpected {:?}", String::from_utf8_lossy(other)),
            }
        }
    }
    eprintln!("storm: {greeted} greeted, {refused} refused");
    assert_eq!(greeted + refused, 5000);
    assert!(greeted >= 64 && refused > 0, "greeted {greeted}, refused {refused}");
    wait_for("every admitted session to be recorded", || {
        let files = recording_files(&proxy.record_dir());
        files.len() == greeted + 1 && files.iter().all(|f| read_records(f).last().is_some_and(|r| r["type"] == "end"))
    });
    wait_for("descriptors back to where they were", || fds_and_rss_kib(pid).0 <= fds0 + 2);
    let (_, rss) = fds_and_rss_kib(pid);
    assert!(rss < rss0 + 16 * 1024, "memory grew from {rss0} KiB to {rss} KiB and stayed");

    let mut after = RawClient::connect(proxy.addr);
    after.read_replies(1);
    after.send(b"EHLO after.test\r\nQUIT\r\n");
    let text = String::from_utf8_lossy(&read_until_eof(&mut after)).into_owned();
    assert!(text.contains("\r\n221 "), "still serving after the storm: {text:?}");
}

// ---------------------------------------------------------------------------
// Signals
// ---------------------------------------------------------------------------

#[test]
fn sigterm_tells_live_clients_and_completes_every_recording() {
    let mut proxy = Proxy::start(&[]);
    let mut mid = RawClient::connect(proxy.addr);
    mid.read_replies(1);
    mid.send(b"EHLO c.test\r\nMAIL FROM:<a@x.test>\r\n");
    let replies = mid.read_replies(3);
    assert!(replies[2].starts_with("250 "), "{replies:?}");
    let mut idle = RawClient::connect(proxy.addr);
    idle.read_replies(1);
    wait_for("both sessions to be recorded", || recording_files(&proxy.record_dir()).len() == 2);
    let (mid_seen, idle_seen) = (mid.received.len(), idle.received.len());

    let asked = Instant::now();
    let status = proxy.terminate();
    assert!(status.success(), "exit status {status:?}; stderr:\n{}", proxy.stderr());
    assert!(asked.elapsed() < Duration::from_secs(10), "shutdown took {:?}", asked.elapsed());
    for (client, seen) in [(&mut mid, mid_seen), (&mut idle, idle_seen)] {
        let got = read_until_eof(client);
        assert!(text_after(&got, seen).starts_with("421 4.3.2 "), "{:?}", text_after(&got, seen));
    }

    let files = recording_files(&proxy.record_dir());
    assert_eq!(files.len(), 2);
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.ends_with('\n'), "{}: unfinished last line", file.display());
        let records = read_records(&file);
        let end = end_of(&records);
        assert_eq!(end["reason"], "shutdown", "{}", file.display());
        let last = *exchanges(&records).last().unwrap();
        assert_eq!((last["origin"].as_str(), last["reply"]["enhanced"].as_str()), (Some("proxy"), Some("4.3.2")));
        if records.iter().any(|r| r["command"]["verb"] == "MAIL") {
            assert_eq!(summary(&records)[..3], [("-".into(), 220), ("EHLO".into(), 250), ("MAIL".into(), 250)]);
        }
    }
}

#[test]
fn sigterm_as_soon_as_the_proxy_listens_is_a_clean_shutdown() {
    // The readiness line promises the signal handlers are installed.
    for _ in 0..3 {
        let mut proxy = Proxy::start(&[]);
        let status = std::fs::read_to_string(format!("/proc/{}/status", proxy.child.id())).unwrap();
        let caught = status.lines().find_map(|l| l.strip_prefix("SigCgt:")).expect("SigCgt line").trim();
        let caught = u64::from_str_radix(caught, 16).unwrap();
        for (name, signal) in [("SIGINT", 2), ("SIGTERM", 15)] {
            assert!(caught & (1 << (signal - 1)) != 0, "{name} not handled yet when the proxy said it listens");
        }
        let status = proxy.terminate();
        assert!(status.success(), "exit status {status:?}; stderr:\n{}", proxy.stderr());
    }
}

/// One complete session with a message of `body` bytes; `Err` once the proxy is gone.
fn one_session(addr: SocketAddr, body: &[u8]) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(PATIENCE))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut expect = |code: &str| -> std::io::Result<()> {
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                return Err(ErrorKind::UnexpectedEof.into());
            }
            if line.len() < 4 || &line[3..4] != "-" {
                return if line.starts_with(code) { Ok(()) } else { Err(std::io::Error::other(line)) };
            }
        }
    };
    expect("220")?;
    stream.write_all(b"EHLO stream.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n")?;
    for code in ["250", "250", "250", "354"] {
        expect(code)?;
    }
    stream.write_all(b"Subject: stream\r\n\r\n")?;
    stream.write_all(body)?;
    stream.write_all(b"\r\n.\r\nQUIT\r\n")?;
    expect("250")?;
    expect("221")?;
    Ok(())
}

#[test]
fn kill_9_leaves_only_whole_json_lines() {
    let proxy = Proxy::start(&[]);
    let addr = proxy.addr;
    let done = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (count, halt) = (done.clone(), stop.clone());
    let stream = thread::spawn(move || {
        // Bodies past the in-memory spool limit, so exchange lines are long.
        let body: Vec<u8> = b"0123456789abcdefghijklmnopqrstuvwxyz\xc3\xa4\r\n".repeat(8_000);
        for _ in 0..50 {
            if halt.load(Ordering::SeqCst) || one_session(addr, &body).is_err() {
                return;
            }
            count.fetch_add(1, Ordering::SeqCst);
        }
    });
    let dir = proxy.record_dir();
    let ended = |dir: &Path| {
        recording_files(dir)
            .iter()
            .filter(|f| std::fs::read_to_string(f).is_ok_and(|t| t.contains(r#"{"type":"end""#)))
            .count()
    };
    wait_for("10 sessions to be recorded", || ended(&dir) >= 10);
    let mut proxy = proxy;
    signal(&proxy.child, "KILL");
    let status = wait_exit(&mut proxy.child);
    stop.store(true, Ordering::SeqCst);
    stream.join().expect("client thread");
    assert!(!status.success());

    let files = recording_files(&dir);
    assert!(files.len() >= 10 && ended(&dir) >= 10, "{} files", files.len());
    assert!(done.load(Ordering::SeqCst) >= 10);
    // The one thread that makes recordings creates a file, then writes its
    // first lines: a kill between the two leaves one empty file (an empty
    // prefix is still a valid one), never more.
    let empty = files.iter().filter(|f| std::fs::metadata(f).unwrap().len() == 0).count();
    assert!(empty <= 1, "{empty} empty recordings");
    for file in &files {
        let bytes = std::fs::read(file).unwrap();
        let mut lines: Vec<&[u8]> = bytes.split_inclusive(|&b| b == b'\n').collect();
        if lines.last().is_some_and(|l| !l.ends_with(b"\n")) {
            lines.pop(); // cut by the kill mid-write: allowed only as the very end
        }
        assert!(!lines.is_empty() || bytes.is_empty(), "{}: no whole line", file.display());
        for (i, line) in lines.iter().enumerate() {
            let record: Value = serde_json::from_slice(line)
                .unwrap_or_else(|e| panic!("{}:{}: {e}: {}", file.display(), i + 1, String::from_utf8_lossy(line)));
            assert!(record["type"].is_string());
            if i == 0 {
                assert_eq!(record["type"], "session");
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------

#[test]
fn overlong_and_non_utf8_lines_are_relayed_exactly_and_recorded_losslessly() {
    let upstream = FakeUpstream::smtp(|line| line.starts_with(b"HELO ").then_some(&b"250 h\xe9llo \xff\r\n"[..]));
    let proxy = Proxy::start(&["--upstream", &upstream.addr()]);
    let mut client = RawClient::connect(proxy.addr);
    client.read_replies(1);
    let conn = upstream.conn(0);

    // 100 KiB without a line end, in pieces the proxy must pass on as they come.
    let long_len = 5 + 100 * 1024;
    let mut sent = b"NOOP ".to_vec();
    client.send(b"NOOP ");
    for piece in 0..4u8 {
        let chunk = vec![b'a' + piece; 25 * 1024];
        client.send(&chunk);
        sent.extend_from_slice(&chunk);
        conn.wait_received(&sent);
    }
    client.send(b"\r\n");
    sent.extend_from_slice(b"\r\n");
    assert!(client.read_replies(2)[1].starts_with("250 "));

    let reply_at = client.received.len();
    let helo: &[u8] = b"HELO \xff\xfe\x80 host\r\n";
    client.send(helo);
    client.read_replies(3);
    assert_eq!(&client.received[reply_at..], b"250 h\xe9llo \xff\r\n", "reply bytes relayed unchanged");
    client.send(b"NOOP\r\nQUIT\r\n");
    read_until_eof(&mut client);
    sent.extend_from_slice(helo);
    sent.extend_from_slice(b"NOOP\r\nQUIT\r\n");
    assert_eq!(conn.received(), sent, "command bytes relayed unchanged");

    let session = &proxy.sessions(1)[0];
    assert_eq!(end_of(session)["reason"], "quit");
    let ex = exchanges(session);
    let long = &ex[1]["command"];
    assert_eq!(long["verb"], "NOOP");
    assert_eq!(long["length"], long_len, "full size of the cut line");
    assert_eq!(long["line"].as_str().unwrap().len(), 64 * 1024);
    assert!(long["line"].as_str().unwrap().starts_with("NOOP aaaa"));
    assert_eq!(ex[1]["reply"]["code"], 250);
    let helo_ex = ex[2];
    assert_eq!(b64(&helo_ex["command"]["line_base64"]), &helo[..helo.len() - 2]);
    assert_eq!(helo_ex["command"]["verb"], "HELO");
    assert_eq!(b64(&helo_ex["reply"]["lines_base64"][0]), b"h\xe9llo \xff");
    assert_eq!(summary(session)[3..], [("NOOP".into(), 250), ("QUIT".into(), 221)]);

    served_normally(proxy.addr);
}

// ---------------------------------------------------------------------------
// Resource bounds and file modes
// ---------------------------------------------------------------------------

/// A recording's records, read without holding any body in memory: each
/// `utf8` body's content is passed to `body` in blocks, and replaced in its
/// record by `{"encoding":"utf8","length":…}`.
fn scan_recording(path: &Path, mut body: impl FnMut(&[u8])) -> Vec<Value> {
    const MARKER: &[u8] = br#","body":{"encoding":"utf8","data":""#;
    let mut reader = BufReader::with_capacity(1 << 20, std::fs::File::open(path).unwrap());
    let mut records = Vec::new();
    let mut head = Vec::new();
    loop {
        // The line up to its end, or up to the start of a body.
        head.clear();
        let mut in_body = false;
        loop {
            let mut byte = [0u8];
            if reader.read(&mut byte).unwrap() == 0 {
                assert!(head.is_empty(), "unfinished last line");
                return records;
            }
            if byte[0] == b'\n' {
                break;
            }
            head.push(byte[0]);
            if head.ends_with(MARKER) {
                in_body = true;
                break;
            }
        }
        if !in_body {
            records.push(serde_json::from_slice(&head).expect("JSON line"));
            continue;
        }
        head.truncate(head.len() - MARKER.len());
        // The JSON string, unescaped into `plain` and passed on in large blocks.
        let (mut length, mut escape, mut ended) = (0usize, false, false);
        let mut plain = Vec::with_capacity(1 << 20);
        while !ended {
            let buf = reader.fill_buf().unwrap();
            assert!(!buf.is_empty(), "body cut off");
            let mut used = 0;
            while used < buf.len() && !ended {
                if escape {
                    plain.push(match buf[used] {
                        b'r' => b'\r',
                        b'n' => b'\n',
                        b't' => b'\t',
                        b @ (b'"' | b'\\' | b'/') => b,
                        other => panic!("unexpected escape \\{}", other as char),
                    });
                    escape = false;
                    used += 1;
                    continue;
                }
                let at = memchr::memchr2(b'\\', b'"', &buf[used..]).map_or(buf.len(), |at| used + at);
                plain.extend_from_slice(&buf[used..at]);
                used = at;
                if at < buf.len() {
                    used += 1;
                    escape = buf[at] == b'\\';
                    ended = !escape;
                }
            }
            reader.consume(used);
            if plain.len() >= 1 << 20 || ended {
                body(&plain);
                length += plain.len();
                plain.clear();
            }
        }
        let mut rest = Vec::new();
        reader.read_until(b'\n', &mut rest).unwrap();
        assert_eq!(rest, b"}}}\n", "after the body");
        head.extend_from_slice(b"}}");
        let mut record: Value = serde_json::from_slice(&head).expect("JSON line around the body");
        record["message"]["body"] = serde_json::json!({"encoding": "utf8", "length": length});
        records.push(record);
    }
}

/// A large message, made in chunks of about 1 MiB: the same bytes each time,
/// exactly `total` of them, ending with CRLF, with characters JSON escapes.
struct BigMessage {
    total: usize,
    made: usize,
    line: u64,
}

impl BigMessage {
    fn new(total: usize) -> BigMessage {
        BigMessage { total, made: 0, line: 0 }
    }

    /// Replaces `chunk` with the next part; false when the message is complete.
    fn next(&mut self, chunk: &mut Vec<u8>) -> bool {
        chunk.clear();
        if self.made == 0 {
            chunk.extend_from_slice(b"Subject: big\r\nFrom: <a@x.test>\r\n\r\n");
        }
        while chunk.len() < 1 << 20 && self.made + chunk.len() < self.total {
            let line =
                format!("{:010} the quick brown fox jumps over the lazy dog \"quoted\" \\ \t tab\r\n", self.line);
            let room = self.total - self.made - chunk.len();
            if line.len() + 2 <= room || line.len() == room {
                chunk.extend_from_slice(line.as_bytes());
            } else {
                // A shorter last line, so the content ends at exactly `total`.
                chunk.resize(chunk.len() + room - 2, b'x');
                chunk.extend_from_slice(b"\r\n");
            }
            self.line += 1;
        }
        self.made += chunk.len();
        !chunk.is_empty()
    }
}

#[test]
fn hundred_mib_message_streams_in_bounded_memory() {
    const TOTAL: usize = 100 * 1024 * 1024;
    // The default upstream: the built-in server, which counts and discards.
    let proxy = Proxy::start(&[]);
    let started = Instant::now();
    let mut client = RawClient::connect(proxy.addr);
    client.read_replies(1);
    client.send(b"EHLO big.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n");
    assert!(client.read_replies(5)[4].starts_with("354 "));
    let (mut message, mut chunk, mut hash, mut sent) = (BigMessage::new(TOTAL), Vec::new(), Sha256::new(), 0);
    while message.next(&mut chunk) {
        client.send(&chunk);
        hash.update(&chunk);
        sent += chunk.len();
    }
    assert_eq!(sent, TOTAL);
    client.send(b".\r\nQUIT\r\n");
    let text = String::from_utf8_lossy(&read_until_eof(&mut client)).into_owned();
    // Over the built-in server's 64 MiB limit: refused, but relayed and recorded in full.
    assert!(text.contains("\r\n552 5.3.4 ") && text.ends_with("\r\n221 2.0.0 Bye\r\n"), "{}", tail(&text));

    let file = recording_files(&proxy.record_dir()).remove(0);
    wait_for_end_line(&file);
    let hwm = vm_hwm_kib(proxy.child.id());
    assert!(hwm < 40 * 1024, "proxy peak resident memory {hwm} KiB");

    // The recorded body against the message made again.
    let (mut again, mut want, mut checked) = (BigMessage::new(TOTAL), Vec::new(), 0);
    let records = scan_recording(&file, |mut got| {
        while !got.is_empty() {
            if want.is_empty() {
                assert!(again.next(&mut want), "recorded body longer than the message");
            }
            let k = want.len().min(got.len());
            assert!(want[..k] == got[..k], "recorded body differs within {k} bytes of offset {checked}");
            want.drain(..k);
            got = &got[k..];
            checked += k;
        }
    });
    assert!(want.is_empty() && !again.next(&mut want), "recorded body shorter than the message: {checked}");
    let content = records.iter().find(|r| r["message"].is_object()).expect("message exchange");
    assert_eq!(content["message"]["size"], TOTAL);
    assert_eq!(content["message"]["sha256"], hex(&hash.finalize()));
    assert_eq!(content["message"]["headers"]["subject"], "big");
    assert_eq!(content["message"]["body"]["length"], TOTAL, "whole body recorded");
    assert_eq!(content["reply"]["code"], 552);
    assert_eq!(end_of(&records)["reason"], "quit");
    assert!(started.elapsed() < Duration::from_secs(120), "took {:?}", started.elapsed());
}

#[test]
fn recordings_are_private_files_in_a_private_directory() {
    let proxy = Proxy::start(&[]);
    served_normally(proxy.addr);
    proxy.sessions(1);
    let dir = proxy.record_dir();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&dir), 0o700, "record directory mode");
    let files = recording_files(&dir);
    assert_eq!(files.len(), 1);
    assert_eq!(mode(&files[0]), 0o600, "recording file mode");
}
