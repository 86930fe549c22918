//! Hot paths of the observer: reply and command parsing, DATA end-of-data
//! scanning (against a plain memchr pass, its physical limit), the whole
//! observer over a pipelined session, JSON record writing, and what
//! recording a 100 KiB body costs at the least (its SHA-256 and its JSON
//! string), against which the relay's per-message budget is measured.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use smtptap::auth::{FingerprintKey, Redaction};
use smtptap::record::format::{Exchange, NoteKind, Record, ReplyRecord};
use smtptap::record::json_text;
use smtptap::smtp::command::Command;
use smtptap::smtp::data::{DotDecoder, dot_stuff};
use smtptap::smtp::message::MessageDigest;
use smtptap::smtp::reply::ReplyParser;
use smtptap::smtp::session::{Clock, Observer, ObserverConfig, Output, StartTlsPolicy};
use std::hint::black_box;

fn replies(c: &mut Criterion) {
    let mut input = Vec::new();
    for _ in 0..1000 {
        input.extend_from_slice(b"250-mail.example.com\r\n250-PIPELINING\r\n250-SIZE 26214400\r\n250 8BITMIME\r\n");
        input.extend_from_slice(b"250 2.1.0 Ok\r\n");
    }
    let mut g = c.benchmark_group("reply");
    g.throughput(Throughput::Bytes(input.len() as u64));
    g.bench_function("parse", |b| {
        b.iter(|| {
            let mut p = ReplyParser::default();
            let mut rest = &input[..];
            let mut n = 0;
            while !rest.is_empty() {
                let (used, r) = p.feed(rest);
                rest = &rest[used..];
                n += usize::from(r.is_some());
            }
            black_box(n)
        })
    });
    g.finish();
}

fn commands(c: &mut Criterion) {
    let lines: [&[u8]; 4] =
        [b"MAIL FROM:<a@example.com> SIZE=1000", b"RCPT TO:<b@example.org>", b"BDAT 65536 LAST", b"DATA"];
    let mut g = c.benchmark_group("command");
    g.throughput(Throughput::Elements(lines.len() as u64));
    g.bench_function("parse", |b| b.iter(|| lines.map(|l| black_box(Command::parse(black_box(l))))));
    g.finish();
}

fn data(c: &mut Criterion) {
    let line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod t\r\n";
    let content: Vec<u8> = line.iter().copied().cycle().take(1 << 20).collect();
    let mut wire = Vec::new();
    dot_stuff(&content, &mut wire);
    let mut g = c.benchmark_group("data");
    g.throughput(Throughput::Bytes(wire.len() as u64));
    g.bench_function("dot_decoder", |b| {
        b.iter(|| {
            let mut d = DotDecoder::default();
            let mut total = 0;
            for chunk in wire.chunks(16 * 1024) {
                d.decode(chunk, &mut |c| total += c.len());
            }
            black_box(total)
        })
    });
    g.bench_function("memchr_cr_baseline", |b| b.iter(|| black_box(memchr::memchr_iter(b'\r', &wire).count())));
    g.finish();
}

struct Discard;
impl Output for Discard {
    fn exchange(&mut self, e: Exchange) {
        black_box(e);
    }
    fn message_start(&mut self) {}
    fn content(&mut self, chunk: &[u8]) {
        black_box(chunk);
    }
    fn note(&mut self, _: String, _: NoteKind, _: String, _: Option<&[u8]>) {}
}

fn observer(c: &mut Criterion) {
    let client: &[u8] = b"EHLO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n";
    let server: &[u8] = b"250-mx\r\n250 PIPELINING\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n";
    let body: Vec<u8> =
        b"Subject: s\r\n\r\n".iter().chain(b"x".repeat(1000).iter()).chain(b"\r\n.\r\n").copied().collect();
    let mut g = c.benchmark_group("observer");
    g.throughput(Throughput::Elements(1));
    g.bench_function("session_1k_message", |b| {
        b.iter(|| {
            let clock = Clock::now();
            let now = clock.started;
            let config = ObserverConfig {
                policy: StartTlsPolicy::Mirror,
                redaction: Redaction::Secrets,
                key: FingerprintKey::from_bytes([1; 32]),
            };
            let mut o = Observer::new(clock, config);
            let mut out = Discard;
            o.server_bytes(now, b"220 mx\r\n", &mut out);
            o.client_bytes(now, client, &mut out);
            o.server_bytes(now, server, &mut out);
            o.client_bytes(now, &body, &mut out);
            o.server_bytes(now, b"250 2.0.0 queued\r\n", &mut out);
            o.client_bytes(now, b"QUIT\r\n", &mut out);
            o.server_bytes(now, b"221 bye\r\n", &mut out);
            black_box(o.counts())
        })
    });
    g.finish();
}

fn records(c: &mut Criterion) {
    let exchange = Exchange {
        seq: 3,
        t: "2026-11-28T19:36:24.123456Z".into(),
        tls: false,
        pipelined: Some(true),
        command: Some(smtptap::record::format::CommandRecord {
            verb: Some("RCPT".into()),
            line: "RCPT TO:<b@example.org>".into(),
            line_base64: None,
            length: None,
            incomplete: false,
            auth: None,
        }),
        message: None,
        reply: Some(ReplyRecord {
            code: 250,
            enhanced: Some("2.1.5".into()),
            lines: vec!["2.1.5 Ok".into()],
            lines_base64: None,
            omitted_lines: 0,
            truncated: false,
        }),
        ms: Some(0.123),
        origin: None,
        answered_by: None,
    };
    let record = Record::Exchange(exchange);
    let mut g = c.benchmark_group("record");
    g.throughput(Throughput::Elements(1));
    g.bench_function("exchange_to_json", |b| {
        let mut line = Vec::with_capacity(512);
        b.iter(|| {
            line.clear();
            serde_json::to_writer(&mut line, black_box(&record)).unwrap();
            black_box(line.len())
        })
    });
    g.finish();
}

/// The work every recorded body needs however it is written: its digest
/// (the record's `sha256`), and escaping it into the record's JSON string.
fn bodies(c: &mut Criterion) {
    let line = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod t\r\n";
    let header = "From: a@x.test\r\nTo: b@y.test\r\nSubject: s\r\n\r\n";
    let body: String = header.chars().chain(line.chars().cycle()).take(100 * 1024).collect();
    let mut g = c.benchmark_group("body_100k");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("sha256_digest", |b| {
        b.iter(|| {
            let mut digest = MessageDigest::default();
            for chunk in body.as_bytes().chunks(16 * 1024) {
                digest.update(chunk);
            }
            black_box(digest.finish(true))
        })
    });
    g.bench_function("json_string_serde", |b| {
        let mut out = Vec::with_capacity(body.len() * 2);
        b.iter(|| {
            out.clear();
            serde_json::to_writer(&mut out, black_box(body.as_str())).unwrap();
            black_box(out.len())
        })
    });
    // What the recorder uses: the same output, from bytes already known to be UTF-8.
    g.bench_function("json_string", |b| {
        let mut out = Vec::with_capacity(body.len() * 2);
        b.iter(|| {
            out.clear();
            json_text::write_escaped(black_box(body.as_bytes()), &mut out).unwrap();
            black_box(out.len())
        })
    });
    g.finish();
}

criterion_group!(benches, replies, commands, data, observer, records, bodies);
criterion_main!(benches);
