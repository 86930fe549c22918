//! SASL authentication (RFC 4954) as smtptap records it: the exchange is
//! followed from `AUTH` across `334` continuations, decoded, and turned into
//! redacted records. Sans-IO: bytes in, [`Recorded`] out; the session
//! observer feeds it and puts the results into the recording.
//!
//! Use: on `AUTH`, [`SaslSession::from_command_line`] (or
//! [`SaslSession::start`]); on each `334`, [`SaslSession::challenge`], whose
//! result replaces the reply text when it is `Some`; on each client
//! continuation line, [`SaslSession::response`]. The session ends with the
//! server's final reply (anything but `334`); there is nothing to call then.
//!
//! What is kept, by [`Redaction`] level:
//! - `Secrets` (default): passwords, bearer tokens, CRAM-MD5 digests and
//!   SCRAM proofs are replaced by `<redacted>`, and so is every line that
//!   carries them: the `AUTH` line becomes `AUTH <mechanism> <redacted>` and
//!   continuation lines `<redacted>`, so no base64 of a SASL blob is kept.
//!   Identities (authzid, authcid, user) are decoded and kept in
//!   [`AuthRecord`]. Lines that cannot carry anything (empty, `*`, `=`, the
//!   OAUTHBEARER `AQ==` after an error) are kept as sent.
//! - `Identities`: as `Secrets`, and identities are replaced by
//!   [`FingerprintKey::identity_fingerprint`] (`hmac:…`; empty ones stay
//!   empty).
//! - `None`: everything is kept: the real lines and the secret in `secret`.
//!
//! `fingerprint` is the HMAC of the secret (password or bearer token), so
//! equal secrets can be compared across sessions. CRAM-MD5 digests and SCRAM
//! proofs get no fingerprint: they change with every challenge, so their
//! HMAC would compare nothing. Client data that cannot be decoded is redacted
//! whole (`undecodable: true`, with `problem` saying why), and its
//! fingerprint is the HMAC of the data as sent: a password sent in clear
//! instead of base64 gets the same fingerprint as when it is sent properly.
//!
//! Server data derived from the password is redacted too: the SCRAM
//! server signature (`v=`) and, for mechanisms not decoded, every challenge
//! after the client's first data (e.g. DIGEST-MD5's `rspauth`), since with
//! the public parts of the exchange either allows a dictionary attack.
//!
//! No type here shows a secret in `Debug`, and there is no `Display`.
//!
//! Left to the caller: with `--redact none`, [`Recorded::line`] is the real
//! line as lossy UTF-8 (record the exact bytes if they matter); and the final
//! reply (`235`, `535`, …) is not seen here, so data a server might put in it
//! is not redacted (RFC 4954 has the server send such data in a `334`).

mod cram;
mod fingerprint;
mod login;
mod oauth;
mod plain;
mod scram;

pub use cram::{cram_md5_hmac, split_cram_md5_response};
pub use fingerprint::{FINGERPRINT_KEY_FILE, FingerprintKey};

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::fmt;

/// What stands in for anything hidden.
pub const REDACTED: &str = "<redacted>";

/// What is hidden in recordings (`--redact`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Redaction {
    /// Secrets hidden, identities kept.
    #[default]
    Secrets,
    /// Secrets hidden, identities replaced by fingerprints.
    Identities,
    /// Everything kept, secrets included.
    None,
}

impl Redaction {
    /// The flag's value: `secrets`, `identities` or `none`.
    pub fn as_str(self) -> &'static str {
        match self {
            Redaction::Secrets => "secrets",
            Redaction::Identities => "identities",
            Redaction::None => "none",
        }
    }
}

impl fmt::Display for Redaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `secret` field: `<redacted>`, `""` when the secret was empty, or,
/// with [`Redaction::None`], the secret itself. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretText(String);

impl SecretText {
    /// The text as recorded (possibly the real secret, with `--redact none`).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether it is the `<redacted>` marker.
    pub fn is_redacted(&self) -> bool {
        self.0 == REDACTED
    }
}

impl fmt::Debug for SecretText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() { f.write_str("\"\"") } else { f.write_str(REDACTED) }
    }
}

/// Decoded AUTH data, the `auth` object of a recorded command, e.g.
/// `{"mechanism":"PLAIN","authzid":"","authcid":"user@example.com","secret":"<redacted>","fingerprint":"hmac:7f3a…"}`.
/// It sits on the exchange where the data became known (see SPEC.md); data
/// known earlier (the LOGIN or SCRAM user, a server error) is repeated on
/// later records of the same exchange. Absent fields are not serialized.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AuthRecord {
    /// The mechanism, upper-cased.
    pub mechanism: String,
    /// PLAIN's authorization identity (`""` when none), SCRAM's `a=`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authzid: Option<String>,
    /// PLAIN's authentication identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authcid: Option<String>,
    /// The user of LOGIN, CRAM-MD5, XOAUTH2, OAUTHBEARER (`a=`) and SCRAM (`n=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The secret: `<redacted>` unless `--redact none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretText>,
    /// `hmac:<hex>` of the secret (see the module docs for when it is absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// SCRAM's client nonce (`r=` of the client-first message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    /// The CRAM-MD5 challenge, decoded (not secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub challenge: Option<String>,
    /// The error the server sent in a `334` (XOAUTH2/OAUTHBEARER: the decoded
    /// JSON; SCRAM: the `e=` value as a string).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_error: Option<serde_json::Value>,
    /// The client cancelled with `*`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub cancelled: bool,
    /// The client data could not be decoded and was redacted whole.
    #[serde(default, skip_serializing_if = "is_false")]
    pub undecodable: bool,
    /// Why the data was undecodable or looks wrong (never contains client data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl AuthRecord {
    fn new(mechanism: &str) -> AuthRecord {
        AuthRecord { mechanism: mechanism.to_owned(), ..AuthRecord::default() }
    }
}

/// What to record for one client line of the exchange. `Debug` hides the
/// line when it is the real line (`--redact none`).
#[derive(Clone, PartialEq)]
pub struct Recorded {
    /// The line as it may be recorded: `AUTH PLAIN <redacted>`, `<redacted>`,
    /// `*`, or the real line (lossy UTF-8) with `--redact none`.
    pub line: String,
    /// Decoded data that became known with this line.
    pub auth: Option<AuthRecord>,
    /// `line` is the real line and may hold a secret.
    real: bool,
}

impl fmt::Debug for Recorded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let line: &dyn fmt::Debug = if self.real { &format_args!("{REDACTED}") } else { &self.line };
        f.debug_struct("Recorded").field("line", line).field("auth", &self.auth).finish()
    }
}

/// Follows one SASL exchange (RFC 4954) from the AUTH command to its final reply.
#[derive(Debug)]
pub struct SaslSession {
    /// Upper-cased mechanism name.
    mechanism: String,
    state: State,
    ctx: Ctx,
    /// Client data items seen so far, the initial response included.
    responses: usize,
    /// The last `334` text (still base64) since the last client data.
    challenge: Option<Vec<u8>>,
    /// The exchange is complete as far as the mechanism goes; more client
    /// data is unexpected.
    finished: bool,
    /// The identity known so far (as recorded), repeated on later records.
    user: Option<String>,
    /// A server error from a `334`, put on the next record.
    server_error: Option<serde_json::Value>,
}

#[derive(Debug)]
enum State {
    Plain,
    Login(login::Login),
    CramMd5 { challenge: Option<String> },
    OAuth(oauth::Flavour),
    Scram,
    Unknown,
}

/// How a client line may be shown when redacting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Show {
    Redacted,
    /// The line cannot carry anything secret.
    AsSent,
}

impl SaslSession {
    /// `AUTH <mechanism> [initial-response]` was sent. Returns what to record
    /// for that command line (as `AUTH <mechanism> <redacted>`, the mechanism
    /// as the client typed it) and any [`AuthRecord`] known now.
    pub fn start(
        mechanism: &str,
        initial_response: Option<&[u8]>,
        redaction: Redaction,
        key: &FingerprintKey,
    ) -> (SaslSession, Recorded) {
        let real = match initial_response {
            Some(ir) => format!("AUTH {mechanism} {}", String::from_utf8_lossy(ir)),
            None => format!("AUTH {mechanism}"),
        };
        Self::begin("AUTH", mechanism, initial_response, real.as_bytes(), redaction, key)
    }

    /// Like [`start`](Self::start), from the whole command line (without
    /// CRLF), keeping the verb and mechanism as typed. `None` when the line
    /// is not an `AUTH` command. Everything after the mechanism is the
    /// initial response (more than one word is undecodable).
    pub fn from_command_line(
        line: &[u8],
        redaction: Redaction,
        key: &FingerprintKey,
    ) -> Option<(SaslSession, Recorded)> {
        let line_trimmed = line.trim_ascii();
        let (verb, rest) = split_word(line_trimmed);
        if !verb.eq_ignore_ascii_case(b"AUTH") {
            return None;
        }
        let (mechanism, rest) = split_word(rest);
        let initial_response = (!rest.is_empty()).then_some(rest);
        let verb = String::from_utf8_lossy(verb);
        let mechanism = String::from_utf8_lossy(mechanism);
        Some(Self::begin(&verb, &mechanism, initial_response, line, redaction, key))
    }

    fn begin(
        verb: &str,
        typed_mechanism: &str,
        initial_response: Option<&[u8]>,
        real_line: &[u8],
        redaction: Redaction,
        key: &FingerprintKey,
    ) -> (SaslSession, Recorded) {
        let mechanism = typed_mechanism.to_ascii_uppercase();
        let state = match mechanism.as_str() {
            "PLAIN" => State::Plain,
            "LOGIN" => State::Login(login::Login::default()),
            "CRAM-MD5" => State::CramMd5 { challenge: None },
            "XOAUTH2" => State::OAuth(oauth::Flavour::XOAuth2),
            "OAUTHBEARER" => State::OAuth(oauth::Flavour::OAuthBearer),
            m if m.starts_with("SCRAM-") => State::Scram,
            _ => State::Unknown,
        };
        let mut session = SaslSession {
            mechanism,
            state,
            ctx: Ctx { redaction, key: key.clone() },
            responses: 0,
            challenge: None,
            finished: false,
            user: None,
            server_error: None,
        };
        let (auth, show) = match initial_response.map(<[u8]>::trim_ascii) {
            None => (None, Show::AsSent),
            // `=` is the empty initial response.
            Some(b"=") => session.data(b"", true),
            Some(ir) => session.data(ir, true),
        };
        let recorded = if redaction == Redaction::None {
            Recorded { line: lossy(real_line), auth, real: true }
        } else if show == Show::AsSent {
            Recorded { line: lossy(real_line), auth, real: false }
        } else {
            Recorded { line: format!("{verb} {typed_mechanism} {REDACTED}"), auth, real: false }
        };
        (session, recorded)
    }

    /// The mechanism, upper-cased.
    pub fn mechanism(&self) -> &str {
        &self.mechanism
    }

    /// The server sent `334 <text>` (the challenge, base64 or empty). Returns
    /// `Some(replacement)` when the text must not be recorded as sent (it is
    /// derived from the password: SCRAM's `v=` server signature, or any
    /// later challenge of a mechanism not decoded); the observer then records
    /// the replacement as the reply line's text.
    #[must_use = "a Some result replaces the 334 text in the recording"]
    pub fn challenge(&mut self, text: &[u8]) -> Option<String> {
        let text = text.trim_ascii();
        self.challenge = Some(text.to_vec());
        let hide = match &mut self.state {
            State::Plain | State::Login(_) => false,
            State::CramMd5 { challenge } => {
                if self.responses == 0 {
                    *challenge = Some(decode_b64(text).map_or_else(|| lossy(text), |d| lossy(&d)));
                }
                false
            }
            State::OAuth(_) => {
                // Before the token: the empty 334 asking for it. After: the error.
                if self.responses > 0 && !text.is_empty() {
                    self.server_error = Some(oauth::server_error(text));
                }
                false
            }
            State::Scram => match scram::server_message(text) {
                scram::Server::Error(e) => {
                    self.server_error = Some(serde_json::Value::String(e));
                    false
                }
                scram::Server::Signature => true,
                scram::Server::Other => false,
                scram::Server::Undecodable => self.responses >= 2,
            },
            State::Unknown => self.responses > 0 && !text.is_empty(),
        };
        (hide && self.ctx.redaction != Redaction::None).then(|| REDACTED.to_owned())
    }

    /// The client sent a continuation line (without CRLF). Returns what to
    /// record for it.
    pub fn response(&mut self, line: &[u8]) -> Recorded {
        let data = line.trim_ascii();
        let (auth, show) = if data == b"*" {
            self.finished = true;
            let auth = AuthRecord { cancelled: true, ..AuthRecord::new(&self.mechanism) };
            (Some(self.with_context(auth)), Show::AsSent)
        } else {
            self.data(data, false)
        };
        self.ctx.line(line, show, auth)
    }

    /// One item of client data: the initial response or a continuation.
    fn data(&mut self, data: &[u8], initial: bool) -> (Option<AuthRecord>, Show) {
        let index = self.responses;
        self.responses += 1;
        let challenge = self.challenge.take();
        let mut show = if data.is_empty() { Show::AsSent } else { Show::Redacted };
        let auth = if self.finished {
            Some(self.undecodable(data, "client data after the exchange was complete"))
        } else {
            match &mut self.state {
                State::Plain => {
                    self.finished = true;
                    Some(plain::decode(&self.ctx, &self.mechanism, data))
                }
                State::Login(login) => {
                    let step = login.next(initial, challenge.as_deref());
                    Some(match login::decode(&self.ctx, &self.mechanism, step, data) {
                        login::Decoded::User(auth) => {
                            self.user = auth.user.clone();
                            auth
                        }
                        login::Decoded::Password(auth) => {
                            self.finished = true;
                            auth
                        }
                        login::Decoded::Other(problem) => self.undecodable(data, problem),
                    })
                }
                State::CramMd5 { challenge } => {
                    let challenge = challenge.clone();
                    self.finished = true;
                    Some(if initial {
                        self.undecodable(data, "CRAM-MD5 takes no initial response")
                    } else {
                        cram::decode(&self.ctx, &self.mechanism, data, challenge)
                    })
                }
                State::OAuth(flavour) => {
                    let flavour = *flavour;
                    if index == 0 {
                        let auth = oauth::decode(&self.ctx, &self.mechanism, flavour, data);
                        self.user = auth.user.clone();
                        Some(auth)
                    } else if self.server_error.is_some() && oauth::is_dummy_response(data) {
                        // The client's required answer to the error; the final reply follows.
                        self.finished = true;
                        show = Show::AsSent;
                        Some(AuthRecord::new(&self.mechanism))
                    } else {
                        self.finished = true;
                        Some(self.undecodable(data, "expected only the answer to a server error"))
                    }
                }
                State::Scram => match index {
                    0 => {
                        let auth = scram::decode_client_first(&self.ctx, &self.mechanism, data);
                        self.user = auth.user.clone();
                        Some(auth)
                    }
                    1 => Some(scram::decode_client_final(&self.ctx, &self.mechanism, data)),
                    _ => {
                        self.finished = true;
                        if data.is_empty() {
                            // The answer to the server signature or error.
                            self.server_error.is_some().then(|| AuthRecord::new(&self.mechanism))
                        } else {
                            Some(self.undecodable(data, "SCRAM has no client data after the final message"))
                        }
                    }
                },
                State::Unknown if data.is_empty() => None,
                State::Unknown => Some(self.undecodable(data, "mechanism not decoded")),
            }
        };
        (auth.map(|a| self.with_context(a)), show)
    }

    /// Adds what the exchange already knows: the user, a pending server error.
    fn with_context(&mut self, mut auth: AuthRecord) -> AuthRecord {
        if auth.user.is_none() && auth.authcid.is_none() {
            auth.user = self.user.clone();
        }
        if let Some(e) = self.server_error.take() {
            auth.server_error = Some(e);
        }
        auth
    }

    fn undecodable(&self, data: &[u8], problem: &str) -> AuthRecord {
        self.ctx.undecodable(&self.mechanism, data, problem)
    }
}

/// The problem to note when an identity is not UTF-8 (it is recorded with
/// replacement characters).
fn utf8_problem(identities: &[&[u8]]) -> Option<String> {
    identities
        .iter()
        .any(|id| std::str::from_utf8(id).is_err())
        .then(|| "an identity is not UTF-8; invalid bytes are shown as U+FFFD".to_owned())
}

/// RFC 5801 GS2 header, `cbflag,[a=authzid],`, at the start of SCRAM's and
/// OAUTHBEARER's first message.
struct Gs2<'a> {
    /// The decoded authzid, if any.
    authzid: Option<Cow<'a, [u8]>>,
    /// What follows the header.
    rest: &'a [u8],
}

fn split_gs2_header(s: &[u8]) -> Option<Gs2<'_>> {
    let mut fields = s.splitn(3, |&b| b == b',');
    let (flag, authz, rest) = (fields.next()?, fields.next()?, fields.next()?);
    if !(flag == b"n" || flag == b"y" || flag.starts_with(b"p=")) {
        return None;
    }
    let authzid = if authz.is_empty() { None } else { Some(decode_saslname(authz.strip_prefix(b"a=")?)?) };
    Some(Gs2 { authzid, rest })
}

/// The redaction level and key, shaping what is recorded.
#[derive(Debug)]
struct Ctx {
    redaction: Redaction,
    key: FingerprintKey,
}

impl Ctx {
    /// An identity as recorded: the text (lossy UTF-8), or its fingerprint
    /// with `--redact identities` (empty stays empty).
    fn identity(&self, raw: &[u8]) -> String {
        if self.redaction == Redaction::Identities && !raw.is_empty() {
            self.key.identity_fingerprint(raw)
        } else {
            lossy(raw)
        }
    }

    /// A secret as recorded: `<redacted>`, `""` when empty, or the secret
    /// with `--redact none`.
    fn secret(&self, raw: &[u8]) -> SecretText {
        if self.redaction == Redaction::None || raw.is_empty() {
            SecretText(lossy(raw))
        } else {
            SecretText(REDACTED.to_owned())
        }
    }

    fn fingerprint(&self, raw: &[u8]) -> Option<String> {
        Some(self.key.fingerprint(raw))
    }

    /// Client data redacted whole.
    fn undecodable(&self, mechanism: &str, data: &[u8], problem: &str) -> AuthRecord {
        AuthRecord {
            secret: Some(self.secret(data)),
            fingerprint: self.fingerprint(data),
            undecodable: true,
            problem: Some(problem.to_owned()),
            ..AuthRecord::new(mechanism)
        }
    }

    /// The record of a continuation line.
    fn line(&self, line: &[u8], show: Show, auth: Option<AuthRecord>) -> Recorded {
        if self.redaction == Redaction::None {
            Recorded { line: lossy(line), auth, real: true }
        } else if show == Show::AsSent {
            Recorded { line: lossy(line), auth, real: false }
        } else {
            Recorded { line: REDACTED.to_owned(), auth, real: false }
        }
    }
}

/// Base64 as SASL uses it (RFC 4648), leniently: padding optional, stray
/// trailing bits ignored. `None` when it is not base64.
fn decode_b64(data: &[u8]) -> Option<Vec<u8>> {
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    );
    LENIENT.decode(data).ok()
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The first word (up to a space or tab) and the rest, leading white space removed.
fn split_word(s: &[u8]) -> (&[u8], &[u8]) {
    let s = s.trim_ascii_start();
    match s.iter().position(|&b| b == b' ' || b == b'\t') {
        Some(i) => (&s[..i], s[i..].trim_ascii_start()),
        None => (s, &[]),
    }
}

/// `Cow` of a SASL name with `=2C` and `=3D` decoded (RFC 5802, RFC 7628).
fn decode_saslname(name: &[u8]) -> Option<Cow<'_, [u8]>> {
    if !name.contains(&b'=') {
        return Some(Cow::Borrowed(name));
    }
    let mut out = Vec::with_capacity(name.len());
    let mut rest = name;
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'=' {
            match tail.get(..2)? {
                b"2C" | b"2c" => out.push(b','),
                b"3D" | b"3d" => out.push(b'='),
                _ => return None,
            }
            rest = &tail[2..];
        } else {
            out.push(b);
            rest = tail;
        }
    }
    Some(Cow::Owned(out))
}

#[cfg(test)]
mod tests;
