//! Test harness: runs the real `smtptap` binary on 127.0.0.1:0, a capturing
//! upstream, and readers for recordings. Every child and temp dir is cleaned
//! up on drop; readiness is awaited, never slept for.
#![allow(dead_code)] // each test binary uses a different part of the harness

use serde_json::Value;
use std::fs::File;
use std::io::{BufRead, BufReader, ErrorKind, Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_smtptap");

/// Longest any test waits for something that should happen at once.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A running `smtptap proxy`, killed on drop.
pub struct Proxy {
    pub child: Child,
    /// The first listener's address.
    pub addr: SocketAddr,
    /// Every listener's address, in the order of the `--listen` flags.
    pub addrs: Vec<SocketAddr>,
    pub dir: tempfile::TempDir,
    stderr: Arc<Mutex<String>>,
}

impl Proxy {
    /// Starts the proxy with `args` added to `--listen 127.0.0.1:0 --record-dir <tmp>`.
    pub fn start(args: &[&str]) -> Proxy {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::start_in(dir, args)
    }

    pub fn start_in(dir: tempfile::TempDir, args: &[&str]) -> Proxy {
        let record_dir = dir.path().join("recordings");
        let mut child = Command::new(BIN)
            .arg("proxy")
            .args(["--listen", "127.0.0.1:0", "--record-dir"])
            .arg(&record_dir)
            .arg("--ca-dir")
            .arg(dir.path().join("certs"))
            .args(args)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "smtptap=debug".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn smtptap");
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err_pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = tx.send(addr.parse::<SocketAddr>().expect("address"));
                }
            }
        });
        let listeners = 1 + args.iter().filter(|a| **a == "--listen").count();
        let mut addrs = Vec::new();
        while addrs.len() < listeners {
            match rx.recv_timeout(PATIENCE) {
                Ok(a) => addrs.push(a),
                Err(_) => {
                    let _ = child.kill();
                    panic!("smtptap did not start listening; stderr:\n{}", stderr.lock().unwrap());
                }
            }
        }
        Proxy { child, addr: addrs[0], addrs, dir, stderr }
    }

    pub fn record_dir(&self) -> PathBuf {
        self.dir.path().join("recordings")
    }

    /// The local CA certificate clients must trust.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.path().join("certs").join("ca.pem")
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until `n` recordings exist and each has its `end` line; returns them
    /// parsed, oldest first.
    pub fn sessions(&self, n: usize) -> Vec<Vec<Value>> {
        wait_sessions(&self.record_dir(), n, || self.stderr())
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        signal(&self.child, "TERM");
        wait_exit(&mut self.child)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn signal(child: &Child, name: &str) {
    let ok = Command::new("kill").arg(format!("-{name}")).arg(child.id().to_string()).status().expect("kill");
    assert!(ok.success());
}

pub fn wait_exit(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        assert!(Instant::now() < deadline, "process did not exit");
        thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until `n` recordings in `dir` exist and each has its `end` line;
/// returns them parsed, oldest first (`stderr` gives the process's log on failure).
pub fn wait_sessions(dir: &Path, n: usize, stderr: impl Fn() -> String) -> Vec<Vec<Value>> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let sessions = read_dir_sessions(dir);
        let ended = sessions.iter().filter(|s| s.last().is_some_and(|r| r["type"] == "end")).count();
        if ended >= n {
            assert_eq!(sessions.len(), n, "more recordings than expected");
            return sessions;
        }
        assert!(Instant::now() < deadline, "only {ended} of {n} sessions ended; stderr:\n{}", stderr());
        thread::sleep(Duration::from_millis(20));
    }
}

/// All recordings in `dir`, each as its parsed lines, ordered by session
/// start. A file the recorder has made but not yet written to is left out.
pub fn read_dir_sessions(dir: &Path) -> Vec<Vec<Value>> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> = entries
        .map_while(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    let mut sessions: Vec<Vec<Value>> =
        files.iter().map(|f| read_records(f)).filter(|records| !records.is_empty()).collect();
    sessions.sort_by(|a, b| a[0]["started"].as_str().cmp(&b[0]["started"].as_str()));
    sessions
}

/// Parses every complete line of a recording; panics on a line that is not
/// JSON. A last line without its newline is still being written (a long
/// body goes out in several writes) and is left out.
pub fn read_records(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("read recording");
    let whole = text.rfind('\n').map_or("", |end| &text[..=end]);
    whole
        .lines()
        .enumerate()
        .map(|(i, l)| serde_json::from_str(l).unwrap_or_else(|e| panic!("{}:{}: {e}: {l}", path.display(), i + 1)))
        .collect()
}

/// The exchanges of a session.
pub fn exchanges(session: &[Value]) -> Vec<&Value> {
    session.iter().filter(|r| r["type"] == "exchange").collect()
}

/// `(verb or "-", reply code)` per exchange: a compact view to assert on.
pub fn summary(session: &[Value]) -> Vec<(String, u64)> {
    exchanges(session)
        .iter()
        .map(|e| (e["command"]["verb"].as_str().unwrap_or("-").to_owned(), e["reply"]["code"].as_u64().unwrap_or(0)))
        .collect()
}

/// The message content of an exchange's `message.body`, decoded.
pub fn body_bytes(exchange: &Value) -> Vec<u8> {
    use base64::Engine as _;
    let body = &exchange["message"]["body"];
    let data = body["data"].as_str().expect("body data");
    match body["encoding"].as_str() {
        Some("utf8") => data.as_bytes().to_vec(),
        Some("base64") => base64::engine::general_purpose::STANDARD.decode(data).expect("base64"),
        other => panic!("unknown encoding {other:?}"),
    }
}

/// A capturing upstream: the built-in test server's protocol logic on a
/// thread, keeping every byte it received per connection.
pub struct CaptureServer {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl CaptureServer {
    pub fn start() -> CaptureServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let store = received.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let store = store.clone();
                thread::spawn(move || capture_session(stream, &store));
            }
        });
        CaptureServer { addr, received }
    }

    /// Waits until `n` connections have closed; returns what each one received.
    pub fn wait_connections(&self, n: usize) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let got = self.received.lock().unwrap().clone();
            if got.len() >= n {
                return got;
            }
            assert!(Instant::now() < deadline, "only {} of {n} upstream connections closed", got.len());
            thread::sleep(Duration::from_millis(10));
        }
    }
}

fn capture_session(mut stream: TcpStream, store: &Mutex<Vec<Vec<u8>>>) {
    use smtptap::server::{Flow, ServerConfig, ServerSession};
    let mut session = ServerSession::new(ServerConfig::default());
    let mut out = Vec::new();
    session.greeting(&mut out);
    let mut received = Vec::new();
    let mut buf = [0u8; 16384];
    if stream.write_all(&out).is_ok() {
        while let Ok(n) = stream.read(&mut buf) {
            if n == 0 {
                break;
            }
            received.extend_from_slice(&buf[..n]);
            out.clear();
            let flow = session.feed(&buf[..n], &mut out);
            if stream.write_all(&out).is_err() || flow == Flow::Close {
                break;
            }
        }
    }
    store.lock().unwrap().push(received);
}

/// A plain TCP client for hand-written SMTP.
pub struct RawClient {
    pub stream: TcpStream,
    pub received: Vec<u8>,
}

impl RawClient {
    pub fn connect(addr: SocketAddr) -> RawClient {
        let stream = TcpStream::connect(addr).expect("connect to proxy");
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        RawClient { stream, received: Vec::new() }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    /// Reads until `n` complete replies (final lines) have arrived in total.
    pub fn read_replies(&mut self, n: usize) -> Vec<String> {
        let mut buf = [0u8; 16384];
        loop {
            let text = String::from_utf8_lossy(&self.received).into_owned();
            let finals: Vec<String> = text
                .split("\r\n")
                .filter(|l| l.len() >= 4 && l.as_bytes()[3] == b' ' || l.len() == 3)
                .map(str::to_owned)
                .collect();
            if finals.len() >= n {
                return finals;
            }
            let got = self.stream.read(&mut buf).expect("read reply");
            assert!(got > 0, "connection closed after {} replies: {text:?}", finals.len());
            self.received.extend_from_slice(&buf[..got]);
        }
    }

    /// Reads until the server closes; returns everything received.
    pub fn read_to_close(&mut self) -> Vec<u8> {
        let _ = self.stream.read_to_end(&mut self.received);
        self.received.clone()
    }
}

/// A loopback address with nothing listening: bound, then released.
pub fn dead_address() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Runs an external peer program (swaks, python3, …) for at most 120 s; a
/// missing one fails the test with a hint, never skips it.
pub fn run_peer(program: &str, args: &[&str], input: Option<&[u8]>) -> std::process::Output {
    let mut cmd = Command::new("timeout");
    cmd.arg("120").arg(program).args(args).stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run coreutils timeout");
    if let Some(input) = input {
        child.stdin.take().unwrap().write_all(input).unwrap();
    }
    let out = child.wait_with_output().expect("peer output");
    match out.status.code() {
        Some(127) => panic!("{program} is not installed; run scripts/test, which installs the test peers"),
        Some(124) => panic!("{program} did not finish within 120 s; stderr:\n{}", String::from_utf8_lossy(&out.stderr)),
        _ => out,
    }
}

// ---------------------------------------------------------------------------
// Peer processes and their output
// ---------------------------------------------------------------------------

/// The envelope sender the peer tests use.
pub const FROM: &str = "a@x.test";
/// The envelope recipient the peer tests use.
pub const TO: &str = "b@y.test";

/// Proxy flags for plaintext on both sides, rather than relying on defaults.
pub const PLAINTEXT: [&str; 4] = ["--client-tls", "off", "--upstream-tls", "off"];

/// A peer process, killed and reaped when dropped — also when a test panics.
pub struct ChildGuard {
    pub child: Child,
}

impl ChildGuard {
    /// Spawns `cmd`; a program that is not installed fails the test.
    pub fn spawn(cmd: &mut Command, what: &str) -> ChildGuard {
        match cmd.spawn() {
            Ok(child) => ChildGuard { child },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                panic!("{what} is not installed; run scripts/test, which installs the test peers")
            }
            Err(e) => panic!("cannot start {what}: {e}"),
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The path of `name` in tests/peers.
pub fn peer_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers").join(name)
}

/// A file's content as text (lossy); empty when it cannot be read.
pub fn read_text(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

/// A path as `&str`, for command-line arguments; panics unless it is UTF-8.
pub fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// Writes `content` to a fresh file in `dir`.
pub fn write_file(dir: &Path, name: &str, content: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).expect("write temp file");
    path
}

/// A process's standard output as text (lossy).
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A process's standard error as text (lossy).
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A process's standard output and error, labelled, for failure messages.
pub fn output_text(out: &Output) -> String {
    format!("stdout:\n{}\nstderr:\n{}", stdout(out), stderr(out))
}

/// Panics with the peer's output unless it exited 0.
pub fn assert_success(out: &Output, what: &str) {
    assert!(out.status.success(), "{what} failed ({}):\n{}", out.status, output_text(out));
}

/// Panics with the peer's output if it exited 0.
pub fn assert_failure(out: &Output, what: &str) {
    assert!(!out.status.success(), "{what} should have failed:\n{}", output_text(out));
}

/// `(verb, code)` pairs as owned strings, to compare with [`summary`].
pub fn want(list: &[(&str, u64)]) -> Vec<(String, u64)> {
    list.iter().map(|(v, c)| ((*v).to_owned(), *c)).collect()
}

/// Reads the child's stdout on a thread until a line starts with `prefix`;
/// returns the rest of that line. The thread keeps draining stdout after.
pub fn await_ready_line(child: &mut Child, prefix: &'static str, what: &str, stderr: &Path) -> String {
    let out = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix(prefix).filter(|_| !sent) {
                let _ = tx.send(rest.to_owned());
                sent = true;
            }
        }
    });
    match rx.recv_timeout(PATIENCE) {
        Ok(rest) => rest,
        Err(e) => panic!("{what} did not print `{prefix}…` ({e}); stderr:\n{}", read_text(stderr)),
    }
}

/// Spawns an smtptap command (`cmd` has its arguments and environment) with
/// stderr into `stderr`, and waits for its `listening on ADDR` line.
pub fn spawn_listening(cmd: &mut Command, what: &str, stderr: &Path) -> (ChildGuard, SocketAddr) {
    let cmd = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(File::create(stderr).expect("stderr file"));
    let mut child = ChildGuard::spawn(cmd, "smtptap");
    let addr = await_ready_line(&mut child.child, "listening on ", what, stderr);
    (child, addr.parse().expect("address after `listening on`"))
}

/// Spawns a tests/peers Python script (`cmd`, named `script`) with stdin
/// piped (closed when the guard kills it; the scripts also stop on EOF),
/// stdout piped and stderr into `stderr`; waits for its `ready PORT` line
/// and returns the guard and 127.0.0.1:PORT.
pub fn spawn_ready_peer(cmd: &mut Command, script: &str, stderr: &Path) -> (ChildGuard, SocketAddr) {
    let mut child = ChildGuard::spawn(
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(File::create(stderr).unwrap()),
        "python3",
    );
    let port = await_ready_line(&mut child.child, "ready ", script, stderr);
    let port: u16 = port.trim().parse().expect("port after `ready`");
    (child, SocketAddr::from(([127, 0, 0, 1], port)))
}

/// Waits until exactly `n` messages `msg-0.eml`… are stored in `dir` (by a
/// tests/peers script logging to `stderr`); returns them in order.
pub fn wait_messages(dir: &Path, n: usize, stderr: &Path) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + PATIENCE;
    while n > 0 && !dir.join(format!("msg-{}.eml", n - 1)).exists() {
        assert!(Instant::now() < deadline, "aiosmtpd stored fewer than {n} messages; stderr:\n{}", read_text(stderr));
        thread::sleep(Duration::from_millis(10));
    }
    assert!(!dir.join(format!("msg-{n}.eml")).exists(), "aiosmtpd stored more than {n} messages");
    (0..n).map(|i| std::fs::read(dir.join(format!("msg-{i}.eml"))).unwrap()).collect()
}

/// A self-signed certificate for `localhost` and 127.0.0.1 made by openssl,
/// as `(NAME.pem, NAME-key.pem)` in `dir`, marked `CA:FALSE`.
pub fn self_signed(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    self_signed_with(dir, name, "basicConstraints=critical,CA:FALSE")
}

/// As [`self_signed`], with the given basicConstraints extension (`openssl
/// req -x509` makes `CA:TRUE` by default, as many users' certificates are).
pub fn self_signed_with(dir: &Path, name: &str, constraints: &str) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}-key.pem"));
    let out = run_peer(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-addext",
            constraints,
            "-days",
            "2",
            "-keyout",
            path_str(&key),
            "-out",
            path_str(&cert),
        ],
        None,
    );
    assert_success(&out, "openssl req");
    (cert, key)
}

/// Postfix smtp-sink as the upstream: accepts and discards.
pub struct SmtpSink {
    _child: ChildGuard,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl SmtpSink {
    /// Runs `smtp-sink ARGS ADDR 100` on a free loopback port, ready once it
    /// greets `220` with a line containing `marker`.
    pub fn start(args: &[&str], marker: &str) -> SmtpSink {
        // smtp-sink wants a port number: take a free one and release it. Some
        // other socket may grab it before smtp-sink binds; then try another.
        for _ in 0..5 {
            if let Some(sink) = Self::try_start(dead_address(), args, marker) {
                return sink;
            }
        }
        panic!("smtp-sink found no free port in 5 attempts");
    }

    /// Starts smtp-sink on `addr` and waits for its greeting; `None` when the
    /// port was taken meanwhile.
    fn try_start(addr: SocketAddr, args: &[&str], marker: &str) -> Option<SmtpSink> {
        let dir = tempfile::tempdir().expect("temp dir");
        let stderr = dir.path().join("stderr");
        let mut child = ChildGuard::spawn(
            Command::new("/usr/sbin/smtp-sink")
                .args(args)
                .arg(addr.to_string())
                .arg("100")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(File::create(&stderr).unwrap()),
            "smtp-sink (Postfix)",
        );
        // Ready once it greets; bounded, in case it never does.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.child.try_wait().unwrap() {
                let err = read_text(&stderr);
                if err.contains("Address already in use") {
                    return None;
                }
                panic!("smtp-sink exited ({status}); stderr:\n{err}");
            }
            if let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut greeting = String::new();
                let _ = BufReader::new(&stream).read_line(&mut greeting);
                if !greeting.contains(marker) {
                    // Something else holds the port; smtp-sink will fail to bind.
                    continue;
                }
                assert!(greeting.starts_with("220 "), "smtp-sink greeted {greeting:?}");
                let _ = stream.write_all(b"QUIT\r\n");
                return Some(SmtpSink { _child: child, addr, _dir: dir });
            }
            assert!(Instant::now() < deadline, "smtp-sink did not greet on {addr}; stderr:\n{}", read_text(&stderr));
            thread::sleep(Duration::from_millis(20));
        }
    }
}

// ---------------------------------------------------------------------------
// Fault injection: waiting, a scripted fake upstream, client-side reads,
// recordings and the proxy's resources.
// ---------------------------------------------------------------------------

/// Polls `done` until it holds, failing the test after [`PATIENCE`].
pub fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

/// How a fake upstream connection ended, seen from the fake upstream.
#[derive(Debug, Clone, PartialEq)]
pub enum PeerEnd {
    /// The proxy closed cleanly (read returned 0).
    Eof,
    /// Reading failed (e.g. the proxy reset the connection).
    Error(ErrorKind),
    /// The script finished first and closed the connection itself.
    Hangup,
}

/// What one connection to a [`FakeUpstream`] received, visible while it runs.
#[derive(Default)]
pub struct PeerLog {
    pub received: Mutex<Vec<u8>>,
    pub end: Mutex<Option<PeerEnd>>,
}

impl PeerLog {
    pub fn received(&self) -> Vec<u8> {
        self.received.lock().unwrap().clone()
    }

    /// Waits until exactly `want` has arrived (so far).
    pub fn wait_received(&self, want: &[u8]) {
        wait_for("the upstream to receive the relayed bytes", || self.received.lock().unwrap().len() >= want.len());
        assert_eq!(self.received(), want, "upstream must receive exactly what the client sent");
    }

    pub fn wait_end(&self) -> PeerEnd {
        wait_for("the upstream connection to end", || self.end.lock().unwrap().is_some());
        self.end.lock().unwrap().clone().unwrap()
    }
}

/// The fake upstream's side of one connection, driven by a test's script.
pub struct Peer {
    pub stream: TcpStream,
    pub log: Arc<PeerLog>,
    /// Received and logged, not yet consumed by the script.
    pub pending: Vec<u8>,
}

impl Peer {
    pub fn send(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes);
    }

    /// Reads once more; false at EOF or on an error (recorded as the end).
    pub fn fill(&mut self) -> bool {
        let mut buf = [0u8; 16384];
        match self.stream.read(&mut buf) {
            Ok(0) => {
                self.log.end.lock().unwrap().get_or_insert(PeerEnd::Eof);
                false
            }
            Ok(n) => {
                self.log.received.lock().unwrap().extend_from_slice(&buf[..n]);
                self.pending.extend_from_slice(&buf[..n]);
                true
            }
            Err(e) => {
                self.log.end.lock().unwrap().get_or_insert(PeerEnd::Error(e.kind()));
                false
            }
        }
    }

    /// Consumes input up to and including `marker`; `None` if the connection ended first.
    pub fn until(&mut self, marker: &[u8]) -> Option<Vec<u8>> {
        let mut from = 0; // where a marker could start that was not looked for yet
        loop {
            if let Some(at) = memchr::memmem::find(&self.pending[from..], marker) {
                return Some(self.pending.drain(..from + at + marker.len()).collect());
            }
            from = self.pending.len().saturating_sub(marker.len() - 1);
            if !self.fill() {
                return None;
            }
        }
    }

    /// The next line, LF included.
    pub fn line(&mut self) -> Option<Vec<u8>> {
        self.until(b"\n")
    }

    /// Consumes exactly `n` bytes of input.
    pub fn take(&mut self, n: usize) -> Option<Vec<u8>> {
        while self.pending.len() < n {
            if !self.fill() {
                return None;
            }
        }
        Some(self.pending.drain(..n).collect())
    }

    /// Waits until input is available without reading it: returning then
    /// closes with unread data, which makes the kernel send a reset.
    pub fn wait_unread(&mut self) {
        let mut byte = [0u8];
        let _ = self.stream.peek(&mut byte);
    }

    /// Reads until the proxy closes.
    pub fn drain(&mut self) {
        while self.fill() {}
    }
}

/// A scripted upstream on 127.0.0.1:0: every connection runs `script` on
/// its own thread; when the script returns the connection is closed (a FIN,
/// as long as the script consumed everything the proxy sent).
pub struct FakeUpstream {
    pub addr: SocketAddr,
    pub conns: Arc<Mutex<Vec<Arc<PeerLog>>>>,
    pub stop: Arc<AtomicBool>,
}

impl FakeUpstream {
    pub fn start(script: impl Fn(&mut Peer) + Send + Sync + 'static) -> FakeUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let conns: Arc<Mutex<Vec<Arc<PeerLog>>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let script = Arc::new(script);
        let (list, halt) = (conns.clone(), stop.clone());
        thread::spawn(move || {
            for stream in listener.incoming() {
                if halt.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { return };
                stream.set_read_timeout(Some(PATIENCE)).unwrap();
                let log = Arc::new(PeerLog::default());
                list.lock().unwrap().push(log.clone());
                let script = script.clone();
                thread::spawn(move || {
                    let mut peer = Peer { stream, log: log.clone(), pending: Vec::new() };
                    script(&mut peer);
                    log.end.lock().unwrap().get_or_insert(PeerEnd::Hangup);
                });
            }
        });
        FakeUpstream { addr, conns, stop }
    }

    /// A small SMTP server: `custom` may answer a command line itself.
    pub fn smtp(custom: fn(&[u8]) -> Option<&'static [u8]>) -> FakeUpstream {
        FakeUpstream::start(move |peer| {
            peer.send(b"220 fake.test ESMTP\r\n");
            while let Some(line) = peer.line() {
                if let Some(reply) = custom(&line) {
                    peer.send(reply);
                    continue;
                }
                let verb = line.get(..4).unwrap_or_default().to_ascii_uppercase();
                match &verb[..] {
                    b"EHLO" => peer.send(b"250-fake.test\r\n250 PIPELINING\r\n"),
                    b"DATA" => {
                        peer.send(b"354 go ahead\r\n");
                        if peer.until(b"\r\n.\r\n").is_none() {
                            return;
                        }
                        peer.send(b"250 2.0.0 queued\r\n");
                    }
                    b"QUIT" => return peer.send(b"221 2.0.0 bye\r\n"),
                    _ => peer.send(b"250 2.0.0 ok\r\n"),
                }
            }
        })
    }

    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// The `i`th connection (from 0), once it has been accepted.
    pub fn conn(&self, i: usize) -> Arc<PeerLog> {
        wait_for("the proxy to connect upstream", || self.conns.lock().unwrap().len() > i);
        self.conns.lock().unwrap()[i].clone()
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr); // wakes the accept loop so it sees `stop`
    }
}

/// Reads until the proxy closes the connection cleanly; fails on an error
/// (a reset) or after [`PATIENCE`]. Returns everything received.
pub fn read_until_eof(client: &mut RawClient) -> Vec<u8> {
    let mut buf = [0u8; 16384];
    loop {
        match client.stream.read(&mut buf) {
            Ok(0) => return client.received.clone(),
            Ok(n) => client.received.extend_from_slice(&buf[..n]),
            Err(e) => panic!("expected a clean close, got {e} after {:?}", String::from_utf8_lossy(&client.received)),
        }
    }
}

/// Sends `bytes` one every 300 ms (a third of the 1 s idle timeout) until the
/// proxy closes (what it says is kept in `received`); true if it did within
/// 40 bytes.
pub fn trickle(client: &mut RawClient, bytes: &[u8]) -> bool {
    client.stream.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
    for byte in bytes.iter().cycle().take(40) {
        // Time itself is under test here.
        thread::sleep(Duration::from_millis(300));
        if client.stream.write_all(&[*byte]).is_err() {
            return true;
        }
        let mut buf = [0u8; 512];
        match client.stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(n) => client.received.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    false
}

/// The bytes the client received after the first `skip`, as text.
pub fn text_after(received: &[u8], skip: usize) -> String {
    String::from_utf8_lossy(&received[skip..]).into_owned()
}

pub fn end_of(session: &[Value]) -> &Value {
    let end = session.last().expect("records");
    assert_eq!(end["type"], "end", "recording must end with an end record: {end}");
    end
}

pub fn notes(session: &[Value]) -> Vec<String> {
    session.iter().filter(|r| r["type"] == "note").map(|r| r["text"].as_str().unwrap().to_owned()).collect()
}

pub fn b64(text: &Value) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(text.as_str().expect("base64 string")).expect("base64")
}

pub fn recording_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("record dir")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    files
}

/// The end of a long text, for failure messages.
pub fn tail(text: &str) -> &str {
    let from = text.char_indices().rev().nth(300).map_or(0, |(i, _)| i);
    &text[from..]
}

pub fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn proxy_alive(proxy: &mut Proxy) -> bool {
    proxy.child.try_wait().expect("wait").is_none()
}

/// A client session through the proxy to the end: EHLO, NOOP, QUIT.
pub fn served_normally(addr: SocketAddr) {
    let mut client = RawClient::connect(addr);
    client.read_replies(1);
    client.send(b"EHLO again.test\r\nNOOP\r\nQUIT\r\n");
    let got = read_until_eof(&mut client);
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("220 ") && text.contains("\r\n221 "), "not served normally: {text:?}");
}

/// The proxy's open file descriptors and resident memory.
pub fn fds_and_rss_kib(pid: u32) -> (usize, u64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
    (fds, rss.split_whitespace().nth(1).unwrap().parse().unwrap())
}

pub fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Closes `stream` with a reset (RST) instead of a clean FIN: zero linger.
pub fn reset(stream: TcpStream) {
    let socket = tokio::net::TcpSocket::from_std_stream(stream);
    socket.set_zero_linger().expect("SO_LINGER");
}

/// Every form a secret could take on disk or in a log: clear, hex, and the
/// base64 characters that depend only on it at each of the three alignments.
pub fn secret_forms(secret: &str) -> Vec<String> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut forms = vec![secret.to_owned(), secret.bytes().map(|b| format!("{b:02x}")).collect()];
    for pad in 0..3 {
        let encoded = b64.encode([vec![0u8; pad], secret.as_bytes().to_vec()].concat());
        let start = (pad * 4).div_ceil(3) + 1;
        let end = encoded.trim_end_matches('=').len().saturating_sub(2);
        forms.push(encoded[start..end].to_owned());
    }
    forms
}

/// Waits until the recording's last line is its `end` record, reading only the tail.
pub fn wait_for_end_line(path: &Path) {
    wait_for("the recording's end line", || {
        let Ok(mut file) = std::fs::File::open(path) else { return false };
        let len = file.metadata().unwrap().len();
        file.seek(SeekFrom::Start(len.saturating_sub(4096))).unwrap();
        let mut tail = Vec::new();
        file.read_to_end(&mut tail).unwrap();
        let last = tail.strip_suffix(b"\n").and_then(|t| t.rsplit(|&b| b == b'\n').next());
        last.is_some_and(|l| l.starts_with(br#"{"type":"end""#))
    });
}
