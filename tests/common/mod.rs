//! Test harness: runs the real `smtptap` binary on 127.0.0.1:0, a capturing
//! upstream, and readers for recordings. Every child and temp dir is cleaned
//! up on drop; readiness is awaited, never slept for.
#![allow(dead_code)] // each test binary uses a different part of the harness

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
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
        let deadline = Instant::now() + PATIENCE;
        loop {
            let sessions = read_dir_sessions(&self.record_dir());
            let ended = sessions.iter().filter(|s| s.last().is_some_and(|r| r["type"] == "end")).count();
            if ended >= n {
                assert_eq!(sessions.len(), n, "more recordings than expected");
                return sessions;
            }
            assert!(Instant::now() < deadline, "only {ended} of {n} sessions ended; stderr:\n{}", self.stderr());
            thread::sleep(Duration::from_millis(20));
        }
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

/// All recordings in `dir`, each as its parsed lines, ordered by session start.
pub fn read_dir_sessions(dir: &Path) -> Vec<Vec<Value>> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> = entries
        .map_while(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    let mut sessions: Vec<Vec<Value>> = files.iter().map(|f| read_records(f)).collect();
    sessions.sort_by(|a, b| a[0]["started"].as_str().cmp(&b[0]["started"].as_str()));
    sessions
}

/// Parses every complete line of a recording; panics on a line that is not JSON.
pub fn read_records(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("read recording");
    text.lines()
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
