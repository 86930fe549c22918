//! One run of one script against the target: send each group, read and
//! compare its replies, upgrade to TLS where the script says, and stop where
//! going on would send something other than what was recorded.

use super::client::{Client, ClientError, TlsTarget};
use super::compare::{self, MatchMode};
use super::report::{Difference, Outcome, Tally};
use super::script::{Expected, RecordedStartTls, Script};
use super::stats::Latencies;
use crate::record::format::ReplyRecord;
use crate::smtp::reply::Reply;
use std::time::{Duration, Instant};

/// Where and how a script is replayed.
pub struct Run<'a> {
    /// The recording's number in the output (`session N`).
    pub number: usize,
    pub script: &'a Script,
    pub target: &'a str,
    /// TLS towards the target, when the script needs it.
    pub tls: Option<&'a TlsTarget>,
    pub mode: MatchMode,
    pub timeout: Duration,
    /// Print each difference as it is found.
    pub live: bool,
}

/// Replays one session. `buffer` is the receive buffer, reused across runs.
pub async fn replay(run: &Run<'_>, latencies: &mut Latencies, buffer: &mut Vec<u8>) -> Outcome {
    let started = Instant::now();
    let mut s = Session { run, tally: Tally { exchanges: run.script.expected_count(), ..Tally::default() } };
    let mut messages = 0;
    let implicit = run.script.implicit_tls.then_some(run.tls).flatten();
    match Client::connect(run.target, run.timeout, implicit, std::mem::take(buffer)).await {
        Ok(mut client) => {
            latencies.record("connect", started.elapsed());
            messages = s.converse(&mut client, latencies).await;
            *buffer = client.close().await;
        }
        Err(e) => {
            // Nothing was compared: every expected reply counts as an error.
            if run.live {
                super::out(&format!("session {} error: {e}", run.number));
            }
            s.tally.errors = s.tally.exchanges;
            s.tally.error = Some(e);
        }
    }
    s.tally.ms = started.elapsed().as_secs_f64() * 1000.0;
    Outcome { tally: s.tally, messages }
}

struct Session<'a> {
    run: &'a Run<'a>,
    tally: Tally,
}

impl Session<'_> {
    /// Everything after connecting; returns the messages the target accepted.
    async fn converse(&mut self, client: &mut Client, latencies: &mut Latencies) -> usize {
        let script = self.run.script;
        let all = || script.groups.iter().flat_map(|g| &g.expects);
        if let Some(greeting) = &script.greeting {
            let since = Instant::now();
            let got = client.read_reply().await;
            latencies.record(&greeting.verb, since.elapsed());
            if let Err(e) = self.check(greeting, &got) {
                self.abort(all(), &e);
                return 0;
            }
        }
        if let Some(ehlo) = &script.own_starttls
            && let Err(e) = self.own_starttls(client, ehlo).await
        {
            self.abort(all(), &e);
            return 0;
        }
        let mut messages = 0;
        // The last reply received: whether DATA was accepted, CRAM-MD5's challenge.
        let mut last: Option<Reply> = None;
        let code = |last: &Option<Reply>| last.as_ref().map_or(0, |r| r.code);
        for (i, group) in script.groups.iter().enumerate() {
            let rest = || script.groups[i..].iter().flat_map(|g| &g.expects);
            let after = || script.groups[i + 1..].iter().flat_map(|g| &g.expects);
            if group.after_data && code(&last) != 354 {
                let why = format!("nothing: message not sent, DATA was answered {}", code(&last));
                self.abort(rest(), &why);
                break;
            }
            let computed;
            let bytes = match &group.cram_md5 {
                None => &group.bytes,
                Some(cram) => match last.as_ref().filter(|r| r.code == 334).and_then(|r| r.lines.first()) {
                    Some(challenge) => match cram.respond(challenge) {
                        Some(response) => {
                            computed = [response.as_bytes(), b"\r\n"].concat();
                            &computed
                        }
                        None => {
                            self.abort(rest(), "nothing: the target's CRAM-MD5 challenge is not base64");
                            break;
                        }
                    },
                    None => {
                        // AUTH was refused (and reported): no challenge to answer.
                        let why = format!("nothing: no CRAM-MD5 challenge to answer (AUTH got {})", code(&last));
                        self.skip(&group.expects, &why);
                        continue;
                    }
                },
            };
            if let Err(e) = client.send(bytes).await {
                self.abort(rest(), &e.to_string());
                break;
            }
            let sent = Instant::now();
            let mut failed = None;
            for (j, expected) in group.expects.iter().enumerate() {
                if expected.reply.is_none() {
                    continue; // the recording ended before this reply
                }
                let got = client.read_reply().await;
                latencies.record(&expected.verb, sent.elapsed());
                if let Err(e) = self.check(expected, &got) {
                    failed = Some((j, e));
                    break;
                }
                last = got.ok();
                messages += usize::from(expected.completes_message && code(&last) / 100 == 2);
            }
            if let Some((j, e)) = failed {
                self.abort(group.expects[j + 1..].iter().chain(after()), &e);
                break;
            }
            if let Some(recorded) = group.starttls {
                let why = match (recorded, code(&last)) {
                    (RecordedStartTls::Upgraded, 220) => client.start_tls(self.tls()).await.err(),
                    (RecordedStartTls::Upgraded, c) => Some(format!(
                        "nothing: STARTTLS was answered {c}; what followed was recorded inside TLS and is not sent in plaintext"
                    )),
                    (RecordedStartTls::Refused, 220) => Some(
                        "nothing: the target accepted STARTTLS, which the recorded server refused; what followed was recorded in plaintext".into(),
                    ),
                    (RecordedStartTls::Refused, _) => None,
                };
                if let Some(why) = why {
                    self.abort(after(), &why);
                    break;
                }
            }
            // DATA accepted although the recording has no content next: the
            // server now reads everything as message data, so stop here.
            let next_is_content = script.groups.get(i + 1).is_some_and(|g| g.after_data);
            if code(&last) == 354 && !next_is_content && i + 1 < script.groups.len() {
                self.abort(after(), "nothing: DATA was accepted (354) but the recording sends no message content");
                break;
            }
        }
        messages
    }

    /// The TLS target; the script only upgrades when one was set up.
    fn tls(&self) -> &TlsTarget {
        self.run.tls.expect("TLS is set up for every script that uses it")
    }

    /// `--tls starttls` on a recording that never upgraded: the replay's own
    /// EHLO and STARTTLS, not compared.
    async fn own_starttls(&self, client: &mut Client, ehlo: &[u8]) -> Result<(), String> {
        for (line, want) in [(ehlo, 250), (&b"STARTTLS\r\n"[..], 220)] {
            client.send(line).await.map_err(|e| e.to_string())?;
            let reply = client.read_reply().await.map_err(|e| e.to_string())?;
            if reply.code != want {
                let sent = String::from_utf8_lossy(line.trim_ascii_end()).into_owned();
                let text = reply.lines.first().map(|l| String::from_utf8_lossy(l).into_owned()).unwrap_or_default();
                return Err(format!(
                    "nothing: --tls starttls, but the target answered {sent} with {} {text}",
                    reply.code
                ));
            }
        }
        client.start_tls(self.tls()).await
    }

    /// Compares one reply; an error (no reply) is returned for the caller to stop.
    fn check(&mut self, expected: &Expected, got: &Result<Reply, ClientError>) -> Result<(), String> {
        let Some(want) = &expected.reply else { return Ok(()) };
        let mode = self.run.mode;
        match got {
            Ok(reply) if compare::matches(mode, want, reply) => {
                self.tally.matched += 1;
                Ok(())
            }
            Ok(reply) => {
                let line = compare::diff_line(
                    self.run.number,
                    expected.seq,
                    &expected.label,
                    &compare::show_expected(mode, want, Some(reply)),
                    &compare::show_got(mode, want, reply),
                );
                self.tally.differed += 1;
                self.emit(expected, want, Some(reply.into()), None, line);
                Ok(())
            }
            Err(e) => {
                let why = e.to_string();
                self.no_reply(expected, &why);
                Err(why)
            }
        }
    }

    /// An exchange that got no reply: counted as an error.
    fn no_reply(&mut self, expected: &Expected, why: &str) {
        let Some(want) = &expected.reply else { return };
        let line = compare::diff_line(
            self.run.number,
            expected.seq,
            &expected.label,
            &compare::show_expected(self.run.mode, want, None),
            why,
        );
        self.tally.errors += 1;
        if self.tally.error.is_none() {
            self.tally.error = Some(why.to_owned());
        }
        self.emit(expected, want, None, Some(why.to_owned()), line);
    }

    /// Exchanges not replayed, the session going on: each is reported.
    fn skip(&mut self, expects: &[Expected], why: &str) {
        for expected in expects {
            self.no_reply(expected, why);
        }
    }

    /// The rest of the session cannot be replayed: the first is reported, the
    /// others only counted.
    fn abort<'e>(&mut self, rest: impl Iterator<Item = &'e Expected>, why: &str) {
        let mut rest = rest.filter(|e| e.reply.is_some());
        if let Some(first) = rest.next() {
            self.no_reply(first, why);
        } else if self.tally.error.is_none() {
            self.tally.error = Some(why.to_owned());
        }
        self.tally.errors += rest.count();
    }

    fn emit(
        &mut self,
        expected: &Expected,
        want: &ReplyRecord,
        got: Option<ReplyRecord>,
        problem: Option<String>,
        line: String,
    ) {
        if self.run.live {
            super::out(&line);
        }
        self.tally.differences.push(Difference {
            seq: expected.seq,
            command: expected.label.clone(),
            expected: want.clone(),
            got,
            problem,
            line,
            count: 1,
        });
    }
}
