//! The rules of `smtptap check`: each a pure function from a prepared
//! session ([`Facts`]) to the findings it makes, with the exchange each
//! points at and advice for a person who is not an SMTP expert.

use super::advice::{self, Kind};
use super::facts::{self, Facts, Hello, Step};
use super::{Finding, Severity};
use crate::record::format::{EndReason, MessageRecord, NoteKind, Record, ReplyRecord, TlsSide};
use crate::show::{body_bytes, fmt_size};

pub type Rule = fn(&Facts<'_>) -> Vec<Finding>;

/// Every rule, in the order their findings are listed for the same exchange.
pub const RULES: &[Rule] = &[
    early_talker,
    helo_instead_of_ehlo,
    pipelining_not_offered,
    starttls_not_used,
    plaintext_after_starttls_refused,
    starttls_injection,
    tls_failed,
    auth_before_tls,
    auth_failed,
    refusals,
    size_exceeded,
    from_mismatch,
    missing_headers,
    line_endings,
    long_lines,
    eight_bit_without_8bitmime,
    bodies_not_recorded,
    upstream_unreachable,
    incomplete_recording,
];

/// The advice for anything sent without encryption.
const ENCRYPT: &str = "Thunderbird: Connection security is 'None' — set STARTTLS (port 587) or SSL/TLS (port 465); Outlook: set the encrypted connection type to STARTTLS or SSL/TLS.";

fn finding(rule: &'static str, severity: Severity, seq: Option<u64>, message: String, advice: String) -> Finding {
    Finding { rule, severity, seq, message, advice }
}

/// `554 5.7.1 <b@y>: Relay access denied` (with the enhanced code once).
fn reply_text(r: &ReplyRecord) -> String {
    let text = r.lines.join(" ");
    if text.is_empty() { r.code.to_string() } else { format!("{} {}", r.code, text) }
}

/// The verb [`advice::explain`] expects for a step.
fn explain_verb<'a>(s: &Step<'a>) -> Option<&'a str> {
    if s.auth.is_some() {
        Some("AUTH")
    } else if s.ex.message.is_some() && s.ex.command.is_none() {
        Some("MESSAGE")
    } else {
        s.verb
    }
}

fn explain<'a>(s: &Step<'a>) -> Option<(advice::Explanation, &'a ReplyRecord)> {
    let r = s.ex.reply.as_ref()?;
    let e = advice::explain(r.code, r.enhanced.as_deref(), &r.lines.join(" "), explain_verb(s))?;
    Some((e, r))
}

/// What a step sent, for messages: the command line, or "the message".
fn what(s: &Step<'_>) -> String {
    match (&s.ex.command, &s.ex.message) {
        (Some(c), _) if c.verb.is_some() => format!("`{}`", c.line),
        (Some(_), _) => "the AUTH data".into(),
        (None, Some(_)) => "the message".into(),
        (None, None) => "the connection".into(),
    }
}

fn identity(who: Option<&str>, authzid: Option<&str>) -> String {
    match (who, authzid) {
        (Some(w), Some(z)) if z != w => format!(" as {w} (acting for {z})"),
        (Some(w), _) => format!(" as {w}"),
        (None, _) => String::new(),
    }
}

/// The complete messages with their step index.
fn messages<'f, 'a>(f: &'f Facts<'a>) -> impl Iterator<Item = (usize, &'f Step<'a>, &'a MessageRecord)> {
    f.steps.iter().enumerate().filter_map(|(i, s)| s.ex.message.as_ref().filter(|m| m.complete).map(|m| (i, s, m)))
}

// ---------------------------------------------------------------------------
// Greeting and extensions
// ---------------------------------------------------------------------------

/// The client's first command was sent before the server's greeting.
pub fn early_talker(f: &Facts<'_>) -> Vec<Finding> {
    let Some(i) = f.steps.iter().position(|s| s.ex.command.is_some()) else { return vec![] };
    let s = &f.steps[i];
    if s.ex.pipelined != Some(true) || !f.steps[..i].iter().any(Step::is_greeting) {
        return vec![];
    }
    vec![finding(
        "early-talker",
        Severity::Warning,
        Some(s.seq()),
        format!("the client sent {} before the server's greeting", what(s)),
        "A client must wait for the server's 220 greeting before it speaks; anti-spam front ends (Postfix postscreen) drop clients that talk first. If this is your own program or script, read the greeting before sending EHLO.".into(),
    )]
}

/// `HELO` instead of `EHLO`: no extensions, so no STARTTLS and no AUTH.
pub fn helo_instead_of_ehlo(f: &Facts<'_>) -> Vec<Finding> {
    let Some(i) = f.steps.iter().position(|s| s.is("HELO")) else { return vec![] };
    let s = &f.steps[i];
    let fallback = f.steps[..i].iter().any(|e| e.is("EHLO") && e.code().is_some_and(|c| c >= 500));
    let (severity, message) = if fallback {
        (Severity::Info, format!("the client fell back to {} after the server refused EHLO", what(s)))
    } else {
        (Severity::Warning, format!("the client greeted with {} instead of EHLO", what(s)))
    };
    vec![finding(
        "helo-not-ehlo",
        severity,
        Some(s.seq()),
        message,
        "After HELO the server offers no extensions — no STARTTLS, no AUTH, no 8BITMIME, no SIZE — so the client can neither encrypt nor log in. Use a client or setting that sends EHLO (Python smtplib: call ehlo() or let sendmail() do it, not helo()).".into(),
    )]
}

/// Commands sent without waiting for replies, where that is not allowed:
/// the server did not offer PIPELINING, or they followed a command that
/// must end a batch (EHLO, STARTTLS, AUTH) before its reply.
pub fn pipelining_not_offered(f: &Facts<'_>) -> Vec<Finding> {
    let first_command = f.steps.iter().position(|s| s.ex.command.is_some());
    let mut bad = Vec::new();
    for (i, s) in f.steps.iter().enumerate() {
        if s.ex.pipelined != Some(true) || Some(i) == first_command {
            continue;
        }
        let previous = f.steps[..i].iter().rev().find(|p| p.ex.command.is_some() || p.ex.message.is_some());
        let after = previous.and_then(|p| match p.verb {
            Some(v @ ("EHLO" | "HELO" | "STARTTLS" | "AUTH")) => Some(v),
            None if p.auth.is_some() => Some("AUTH"),
            _ => None,
        });
        let offered = f.caps_of(s).is_some_and(|c| c.pipelining);
        if after.is_some() || !offered {
            bad.push((s, after));
        }
    }
    let Some(&(first, after)) = bad.first() else { return vec![] };
    let count = if bad.len() == 1 { "a command".to_owned() } else { format!("{} commands", bad.len()) };
    let message = match after {
        Some(verb) => {
            format!("the client sent {count} without waiting for the reply to {verb}, starting with {}", what(first))
        }
        None => format!(
            "the client sent {count} without waiting for replies (pipelining), starting with {}, but the server did not offer PIPELINING",
            what(first)
        ),
    };
    vec![finding(
        "pipelining-not-offered",
        Severity::Warning,
        Some(first.seq()),
        message,
        "A server that did not offer PIPELINING (and any server, right after EHLO, STARTTLS or AUTH) may lose or misread commands sent ahead of its reply; the client must wait for each reply — if this is your program, turn pipelining off or wait for the reply.".into(),
    )]
}

// ---------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------

/// STARTTLS was offered to the client, which stayed in plaintext.
pub fn starttls_not_used(f: &Facts<'_>) -> Vec<Finding> {
    let Some(ehlo) = f.starttls_offered_to_client() else { return vec![] };
    if f.steps.iter().any(|s| s.is("STARTTLS") || s.ex.tls) {
        return vec![];
    }
    let sent = f.steps.iter().any(|s| matches!(s.verb, Some("AUTH" | "MAIL")));
    let (severity, what) = if sent {
        (Severity::Warning, "everything, passwords and messages included, crossed the network unencrypted")
    } else {
        (Severity::Info, "the session stayed unencrypted")
    };
    vec![finding(
        "starttls-not-used",
        severity,
        Some(ehlo.seq()),
        format!("the server offered STARTTLS but the client never used it: {what}"),
        ENCRYPT.into(),
    )]
}

/// STARTTLS refused (or answered with anything but 220), and the client
/// went on to log in or send mail in plaintext.
pub fn plaintext_after_starttls_refused(f: &Facts<'_>) -> Vec<Finding> {
    let Some(i) = f.steps.iter().position(|s| s.is("STARTTLS") && s.code().is_some_and(|c| c != 220)) else {
        return vec![];
    };
    let refused = &f.steps[i];
    let carried_on = f.steps[i + 1..].iter().find(|s| {
        !s.ex.tls
            && (matches!(s.verb, Some("AUTH" | "MAIL" | "RCPT" | "DATA" | "BDAT"))
                || s.auth.is_some()
                || s.ex.message.is_some())
    });
    let Some(s) = carried_on else { return vec![] };
    let reply = refused.ex.reply.as_ref().map(reply_text).unwrap_or_default();
    vec![finding(
        "plaintext-after-starttls-refused",
        Severity::Error,
        Some(s.seq()),
        format!("STARTTLS was refused ({reply}) and the client carried on without encryption with {}", what(s)),
        "Make the client insist on encryption so that it stops instead (Thunderbird: Connection security 'STARTTLS'; Outlook: encrypted connection 'STARTTLS'): a client that falls back to plaintext can be downgraded by anyone on the network.".into(),
    )]
}

/// Plaintext the client sent after STARTTLS and before the handshake
/// (smtptap discards it and notes it): the CVE-2011-0411 pattern.
pub fn starttls_injection(f: &Facts<'_>) -> Vec<Finding> {
    let mut seq = None;
    for r in &f.rec.records {
        match r {
            Record::Exchange(e) => seq = Some(e.seq),
            Record::Note(n) if n.kind == Some(NoteKind::ClientAfterStarttls) => {
                return vec![finding(
                    "starttls-injection",
                    Severity::Warning,
                    seq,
                    format!("{} (smtptap did not relay it)", n.text.split(';').next().unwrap_or(&n.text)),
                    "A client must wait for the 220 to STARTTLS and start TLS before sending anything else; this is the pattern of the STARTTLS command-injection flaw (CVE-2011-0411). Update or replace the client.".into(),
                )];
            }
            _ => {}
        }
    }
    vec![]
}

/// A failed TLS handshake on either side.
pub fn tls_failed(f: &Facts<'_>) -> Vec<Finding> {
    let mut seq = None;
    let mut out = Vec::new();
    for r in &f.rec.records {
        match r {
            Record::Exchange(e) => seq = Some(e.seq),
            Record::Tls(t) => {
                let Some(error) = &t.error else { continue };
                let error = error
                    .strip_prefix("TLS handshake with the client failed: ")
                    .or_else(|| error.strip_prefix("TLS handshake with the upstream failed: "))
                    .unwrap_or(error);
                let (message, advice) = match t.side {
                    TlsSide::Client => (
                        format!("the TLS handshake with the client failed: {error}"),
                        "Most often the client does not trust smtptap's certificate: import smtptap's CA into the client (`smtptap ca show` prints the steps; Thunderbird: Settings → Privacy & Security → Manage Certificates → Authorities → Import certs/ca.pem), or accept the certificate exception it offers.",
                    ),
                    TlsSide::Upstream => (
                        format!("the TLS handshake with the upstream server failed: {error}"),
                        "Check the upstream's name and port and that its certificate is valid for that name; for a test server with its own certificate, pass --upstream-ca FILE (or --insecure-upstream).",
                    ),
                };
                out.push(finding("tls-failed", Severity::Error, seq, message, advice.into()));
            }
            _ => {}
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Authentication
// ---------------------------------------------------------------------------

/// AUTH sent in plaintext.
pub fn auth_before_tls(f: &Facts<'_>) -> Vec<Finding> {
    f.auth
        .iter()
        .filter(|d| !d.tls)
        .map(|d| {
            let who = identity(d.identity.as_deref(), d.authzid.as_deref());
            finding(
                "auth-before-tls",
                Severity::Error,
                Some(f.steps[d.first].seq()),
                format!(
                    "the client logged in (AUTH {}{who}) before starting TLS: the credentials crossed the network unencrypted",
                    d.mechanism
                ),
                format!("{ENCRYPT} Then change the password: it may have been seen."),
            )
        })
        .collect()
}

/// An AUTH dialog that ended in a refusal, with the identity it used.
pub fn auth_failed(f: &Facts<'_>) -> Vec<Finding> {
    let mut out = Vec::new();
    for d in &f.auth {
        let Some(reply) = f.auth_outcome(d) else { continue };
        if reply.code < 400 {
            continue;
        }
        let last = &f.steps[d.last];
        if d.cancelled {
            out.push(finding(
                "auth-failed",
                Severity::Info,
                Some(last.seq()),
                format!("the client cancelled AUTH {}", d.mechanism),
                "Usually the client giving up on a method it could not complete; if no later AUTH succeeds, check the authentication method setting.".into(),
            ));
            continue;
        }
        let who = match (&d.identity, &d.authzid) {
            (Some(w), Some(z)) if z != w => format!("for {w} (acting for {z})"),
            (Some(w), _) => format!("for {w}"),
            (None, _) => "(no user name was decoded)".into(),
        };
        let explained = advice::explain(reply.code, reply.enhanced.as_deref(), &reply.lines.join(" "), Some("AUTH"));
        let mut advice = explained.as_ref().map_or("Check the user name and password.", |e| e.advice).to_owned();
        if let Some(caps) = f.caps_of(&f.steps[d.first]) {
            if caps.auth.is_empty() {
                advice = format!(
                    "The server did not offer AUTH here at all{}. {advice}",
                    if d.tls { "" } else { " — many offer it only after STARTTLS" }
                );
            } else if !caps.auth.contains(&d.mechanism) {
                advice = format!("The server offered AUTH {}, not {}. {advice}", caps.auth.join(" "), d.mechanism);
            }
        }
        let severity = if reply.code < 500 { Severity::Warning } else { Severity::Error };
        out.push(finding(
            "auth-failed",
            severity,
            Some(last.seq()),
            format!("authentication failed {who} (AUTH {}): {}", d.mechanism, reply_text(reply)),
            advice,
        ));
    }
    out
}

// ---------------------------------------------------------------------------
// Refusals
// ---------------------------------------------------------------------------

/// Every other refusal, explained: relaying denied, STARTTLS or
/// authentication required, unknown recipients, policy… Repeats of the
/// same refusal are counted on the first.
pub fn refusals(f: &Facts<'_>) -> Vec<Finding> {
    let authenticated = f.auth.iter().any(|d| f.auth_outcome(d).is_some_and(|r| r.code == 235));
    let mut out: Vec<(Finding, (u16, Option<String>), usize)> = Vec::new();
    for s in &f.steps {
        if s.auth.is_some() {
            continue;
        }
        let Some((e, reply)) = explain(s) else { continue };
        let (rule, severity) = match e.kind {
            Kind::SizeExceeded => continue,
            Kind::RelayDenied => ("relay-denied", Severity::Error),
            Kind::AuthRequired => ("auth-required", Severity::Error),
            Kind::StartTlsRequired => ("starttls-required", Severity::Error),
            _ if reply.code >= 500 => ("server-rejected", Severity::Error),
            _ => ("server-rejected", Severity::Warning),
        };
        let key = (reply.code, reply.enhanced.clone());
        if let Some(seen) = out.iter_mut().find(|(f, k, _)| f.rule == rule && *k == key) {
            seen.2 += 1;
            continue;
        }
        let mut advice = e.advice.to_owned();
        if e.kind == Kind::RelayDenied {
            advice = if authenticated {
                "The client did log in, yet the server will not relay for it: check that this is the account's own outgoing server and that the account may send to outside addresses.".into()
            } else {
                format!("The client did not log in. {advice}")
            };
        }
        let refused = match (s.verb, s.ex.message.is_some()) {
            (None, false) => "the server refused the connection".to_owned(),
            _ => format!("{} was refused", what(s)),
        };
        let message = format!("{refused}: {} — {}", reply_text(reply), e.meaning);
        out.push((finding(rule, severity, Some(s.seq()), message, advice), key, 1));
    }
    out.into_iter()
        .map(|(mut f, _, n)| {
            if n > 1 {
                f.message.push_str(&format!(" ({n} times)"));
            }
            f
        })
        .collect()
}

/// The message refused as too large, or larger than the SIZE the server
/// advertised.
pub fn size_exceeded(f: &Facts<'_>) -> Vec<Finding> {
    let mut out = Vec::new();
    for (i, s) in f.steps.iter().enumerate() {
        let refused = explain(s).filter(|(e, _)| e.kind == Kind::SizeExceeded);
        let limit = f.caps_of(s).and_then(|c| c.size).filter(|&n| n > 0);
        let size = s.ex.message.as_ref().map(|m| m.size).or_else(|| {
            // MAIL FROM:<…> SIZE=n declares the size up front.
            s.is("MAIL")
                .then(|| facts::mail_params(s.line()))
                .and_then(|p| p.into_iter().find(|(k, _)| k == "SIZE").and_then(|(_, v)| v?.parse().ok()))
        });
        let sizes = match (size, limit) {
            (Some(size), Some(limit)) => format!(" (message {}, server limit {})", fmt_size(size), fmt_size(limit)),
            (Some(size), None) => format!(" (message {})", fmt_size(size)),
            _ => String::new(),
        };
        if let Some((e, reply)) = refused {
            out.push(finding(
                "size-exceeded",
                Severity::Error,
                Some(s.seq()),
                format!("{} was refused as too large: {}{sizes}", what(s), reply_text(reply)),
                e.advice.into(),
            ));
        } else if let (Some(size), Some(limit), true) = (size, limit, s.ex.message.is_some()) {
            let accepted = s.code().is_some_and(|c| c < 400);
            if size > limit && accepted {
                out.push(finding(
                    "size-exceeded",
                    Severity::Warning,
                    Some(s.seq()),
                    format!(
                        "the message ({}) is larger than the SIZE limit the server advertised ({}); it was accepted this time",
                        fmt_size(size),
                        fmt_size(limit)
                    ),
                    "Keep messages under the server's SIZE limit (send smaller attachments, or a link to a file-sharing service instead): servers may refuse larger ones at any time.".into(),
                ));
            }
        }
        let _ = i;
    }
    out
}

// ---------------------------------------------------------------------------
// The message
// ---------------------------------------------------------------------------

/// The header `From:` is not the envelope sender (`MAIL FROM`).
pub fn from_mismatch(f: &Facts<'_>) -> Vec<Finding> {
    let mut out = Vec::new();
    for (i, s, m) in messages(f) {
        let Some(header) = m.headers.get("from") else { continue };
        let Some(mail) = f.mail_for(i) else { continue };
        let Some(envelope) = facts::mail_from_address(mail.line()) else { continue };
        if envelope.is_empty() {
            continue; // a bounce: MAIL FROM:<> never matches anything
        }
        let addresses = facts::header_addresses(header);
        if addresses.is_empty() || addresses.iter().any(|a| facts::same_address(a, &envelope)) {
            continue;
        }
        let other_domain =
            addresses.iter().all(|a| !facts::domain_of(a).eq_ignore_ascii_case(facts::domain_of(&envelope)));
        let domain_note = if other_domain { ", at another domain" } else { "" };
        out.push(finding(
            "from-mismatch",
            Severity::Warning,
            Some(s.seq()),
            format!("the header From: ({header}) differs from the envelope sender MAIL FROM:<{envelope}>{domain_note}"),
            "Recipients see the header From:, and servers check it against the account that sends (\"sender address rejected\", DMARC). Unless this is deliberate (a mailing list, a forwarder), set the identity's email address to the account's own (Thunderbird: Account Settings → Email Address): a mismatch is what forged mail looks like.".into(),
        ));
    }
    out
}

/// Whether the message's header section has the field `name` (lower-case),
/// from the recorded main headers or, when kept, the content itself.
fn has_header(m: &MessageRecord, name: &str) -> bool {
    if m.headers.contains_key(name) {
        return true;
    }
    let Some(bytes) = m.body.as_ref().and_then(body_bytes) else { return false };
    for line in bytes.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if line.len() > name.len()
            && line[..name.len()].eq_ignore_ascii_case(name.as_bytes())
            && line[name.len()] == b':'
        {
            return true;
        }
    }
    false
}

/// `Date:` or `Message-ID:` (or `From:`) missing from a message.
pub fn missing_headers(f: &Facts<'_>) -> Vec<Finding> {
    let mut out = Vec::new();
    for (_, s, m) in messages(f) {
        if !has_header(m, "from") {
            out.push(finding(
                "missing-from",
                Severity::Error,
                Some(s.seq()),
                "the message has no From: header".into(),
                "Every message needs a From: header (RFC 5322); many servers refuse mail without one. Mail programs add it; if this is your own program, set From: to the sending account's address.".into(),
            ));
        }
        if !has_header(m, "date") {
            out.push(finding(
                "missing-date",
                Severity::Warning,
                Some(s.seq()),
                "the message has no Date: header".into(),
                "Every message needs a Date: header (RFC 5322); without it some servers refuse the message or score it as spam. Mail programs add it; if this is your own program, set it (Python: email.utils.formatdate(localtime=True)).".into(),
            ));
        }
        if !has_header(m, "message-id") {
            out.push(finding(
                "missing-message-id",
                Severity::Warning,
                Some(s.seq()),
                "the message has no Message-ID: header".into(),
                "Gmail and others refuse or spam-folder messages without a Message-ID:, and replies cannot thread. Mail programs add one; if this is your own program, add it (Python: email.utils.make_msgid()).".into(),
            ));
        }
    }
    out
}

/// 1-based line number of the byte at `at`.
fn line_number(bytes: &[u8], at: usize) -> usize {
    bytes[..at].iter().filter(|&&b| b == b'\n').count() + 1
}

/// Lines ending in a bare LF or containing a bare CR.
pub fn line_endings(f: &Facts<'_>) -> Vec<Finding> {
    let mut out = Vec::new();
    for (_, s, m) in messages(f) {
        let Some(bytes) = m.body.as_ref().and_then(body_bytes) else { continue };
        let bare_lf: Vec<usize> =
            (0..bytes.len()).filter(|&i| bytes[i] == b'\n' && (i == 0 || bytes[i - 1] != b'\r')).collect();
        let bare_cr: Vec<usize> =
            (0..bytes.len()).filter(|&i| bytes[i] == b'\r' && bytes.get(i + 1) != Some(&b'\n')).collect();
        for (rule, what, found) in [("bare-lf", "LF", bare_lf), ("bare-cr", "CR", bare_cr)] {
            let Some(&first) = found.first() else { continue };
            let count = if found.len() == 1 { "a bare".to_owned() } else { format!("{} bare", found.len()) };
            out.push(finding(
                rule,
                Severity::Warning,
                Some(s.seq()),
                format!(
                    "the message has {count} {what} (first on line {}) where SMTP requires CRLF line endings",
                    line_number(&bytes, first)
                ),
                "Since the SMTP smuggling fixes (2023-24) many servers refuse bare LF or CR (Postfix: \"bare <LF> received\"), and others mangle the message. The sending program must end every line with CRLF; if it is your own code, convert line endings before sending.".into(),
            ));
        }
    }
    out
}

/// Lines longer than RFC 5322's 998 octets.
pub fn long_lines(f: &Facts<'_>) -> Vec<Finding> {
    const LIMIT: usize = 998;
    let mut out = Vec::new();
    for (_, s, m) in messages(f) {
        let Some(bytes) = m.body.as_ref().and_then(body_bytes) else { continue };
        let mut long = 0;
        let mut longest = 0;
        let mut first = None;
        for (n, line) in bytes.split(|&b| b == b'\n').enumerate() {
            let len = line.strip_suffix(b"\r").unwrap_or(line).len();
            if len > LIMIT {
                long += 1;
                longest = longest.max(len);
                first.get_or_insert(n + 1);
            }
        }
        let Some(first) = first else { continue };
        let count = if long == 1 { "a line".to_owned() } else { format!("{long} lines") };
        out.push(finding(
            "long-line",
            Severity::Warning,
            Some(s.seq()),
            format!("the message has {count} over 998 octets (first on line {first}, longest {longest} octets)"),
            "Lines may be at most 998 octets (RFC 5322); servers may break or refuse longer ones. The client should encode such content (quoted-printable or base64) — mail programs do; if this is your own program, let its email library encode the body.".into(),
        ));
    }
    out
}

/// 8-bit content sent to a server that did not offer 8BITMIME, or without
/// declaring it.
pub fn eight_bit_without_8bitmime(f: &Facts<'_>) -> Vec<Finding> {
    let mut out = Vec::new();
    for (i, s, m) in messages(f) {
        let eight_bit = match m.body.as_ref().and_then(body_bytes) {
            Some(bytes) => bytes.iter().any(|&b| b >= 0x80),
            None => m.headers.values().any(|v| !v.is_ascii()),
        };
        if !eight_bit {
            continue;
        }
        let caps = f.caps_of(s);
        let offered = caps.is_some_and(|c| c.eightbitmime || c.smtputf8);
        let declared = f.mail_for(i).is_some_and(|mail| {
            facts::mail_params(mail.line()).iter().any(|(k, v)| {
                k == "SMTPUTF8"
                    || (k == "BODY"
                        && v.as_deref().is_some_and(|v| {
                            v.eq_ignore_ascii_case("8BITMIME") || v.eq_ignore_ascii_case("BINARYMIME")
                        }))
            })
        });
        if !offered {
            let greeting = if s.hello == Hello::Helo { " (after HELO a server offers no extensions)" } else { "" };
            out.push(finding(
                "8bit-without-8bitmime",
                Severity::Warning,
                Some(s.seq()),
                format!("the message contains 8-bit data but the server did not offer 8BITMIME{greeting}"),
                "A server without 8BITMIME may corrupt or refuse 8-bit text. The client should encode non-ASCII content (quoted-printable or base64): mail programs do when 8BITMIME is missing; if this is your own program, set a Content-Transfer-Encoding.".into(),
            ));
        } else if !declared {
            out.push(finding(
                "8bit-without-8bitmime",
                Severity::Info,
                Some(s.seq()),
                "the message contains 8-bit data but MAIL FROM did not declare BODY=8BITMIME".into(),
                "The server offered 8BITMIME, so this usually works, but the client should say BODY=8BITMIME on MAIL FROM (or encode the content); if this is your own program, add the parameter.".into(),
            ));
        }
    }
    out
}

/// `--no-bodies`: the checks that need the content were skipped.
pub fn bodies_not_recorded(f: &Facts<'_>) -> Vec<Finding> {
    let Some((_, s, _)) = messages(f).find(|(_, _, m)| m.body.is_none()) else { return vec![] };
    vec![finding(
        "bodies-not-recorded",
        Severity::Info,
        Some(s.seq()),
        "the recording has no message bodies (--no-bodies): bare LF/CR, long lines and 8-bit data were not checked"
            .into(),
        "Record without --no-bodies to have the message content checked too.".into(),
    )]
}

// ---------------------------------------------------------------------------
// The session
// ---------------------------------------------------------------------------

pub fn upstream_unreachable(f: &Facts<'_>) -> Vec<Finding> {
    let Some(end) = f.rec.end() else { return vec![] };
    if end.reason != EndReason::UpstreamUnreachable {
        return vec![];
    }
    let why = end.error.as_deref().map(|e| format!(": {e}")).unwrap_or_default();
    vec![finding(
        "upstream-unreachable",
        Severity::Error,
        f.steps.last().map(Step::seq),
        format!("smtptap could not reach the upstream server {}{why}", f.rec.session.upstream),
        "Check the --upstream host and port (submission is usually 587, or 465 for SSL/TLS), DNS, and any firewall between smtptap and the server.".into(),
    )]
}

/// The recording stops without an `end` (killed proxy, or still running).
pub fn incomplete_recording(f: &Facts<'_>) -> Vec<Finding> {
    if f.rec.end().is_some() && !f.rec.truncated {
        return vec![];
    }
    let cut = if f.rec.truncated { ", and its last line is cut short" } else { "" };
    vec![finding(
        "recording-incomplete",
        Severity::Info,
        f.steps.last().map(Step::seq),
        format!("the recording stops without an end (the proxy was stopped, or the session is still going){cut}"),
        "The findings cover what was recorded; check the recording again once the session has ended.".into(),
    )]
}
