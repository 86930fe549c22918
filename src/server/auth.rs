//! AUTH for the test server (RFC 4954) against configured accounts: PLAIN
//! (RFC 4616), LOGIN and CRAM-MD5 (RFC 2195). Sans-IO: [`Exchange::start`]
//! takes the `AUTH` arguments and each [`Exchange::respond`] a continuation
//! line; each returns the next [`Step`].

use crate::auth::{cram_md5_hmac, split_cram_md5_response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::Mac;
use std::fmt;
use std::str::FromStr;

/// The mechanisms offered when there are accounts, as advertised in EHLO.
pub const MECHANISMS: &str = "PLAIN LOGIN CRAM-MD5";

/// A user name and password the server accepts (`--user NAME:PASSWORD`).
/// `Debug` hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Account {
    pub user: String,
    pub password: String,
}

impl fmt::Debug for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Account").field("user", &self.user).finish_non_exhaustive()
    }
}

impl FromStr for Account {
    type Err = String;

    /// `NAME:PASSWORD`, split at the first colon (the password may hold colons).
    fn from_str(s: &str) -> Result<Account, String> {
        match s.split_once(':') {
            Some((user, password)) if !user.is_empty() => {
                Ok(Account { user: user.to_owned(), password: password.to_owned() })
            }
            _ => Err("expected NAME:PASSWORD, e.g. alice@example.test:secret".to_owned()),
        }
    }
}

/// How an exchange ended, and the reply it calls for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The credentials matched this account's user.
    Authenticated(String),
    /// Unknown user or wrong password.
    Rejected,
    /// The client sent `*`.
    Cancelled,
    /// Not base64, or not what the mechanism expects.
    Malformed,
    /// `AUTH` without a mechanism, or with more than an initial response.
    Syntax,
    /// A mechanism this server does not offer.
    Unsupported,
}

impl Outcome {
    pub fn reply(&self) -> &'static str {
        match self {
            Outcome::Authenticated(_) => "235 2.7.0 Authentication successful",
            Outcome::Rejected => "535 5.7.8 Authentication credentials invalid",
            Outcome::Cancelled => "501 5.7.0 Authentication cancelled",
            Outcome::Malformed => "501 5.5.2 Cannot decode the response",
            Outcome::Syntax => "501 5.5.4 Syntax: AUTH mechanism [initial-response]",
            Outcome::Unsupported => "504 5.5.4 Unrecognized authentication type",
        }
    }
}

/// What to send next.
#[derive(Debug)]
pub enum Step {
    /// Send this `334` line; the client's next line goes to [`Exchange::respond`].
    Continue(Exchange, String),
    /// The exchange is over: send [`Outcome::reply`].
    Done(Outcome),
}

/// An AUTH exchange waiting for the client's next line.
#[derive(Debug)]
pub struct Exchange(State);

#[derive(Debug)]
enum State {
    Plain,
    LoginUser,
    LoginPassword { user: Vec<u8> },
    CramMd5 { challenge: String },
}

impl Exchange {
    /// `AUTH <arg>` (the text after the verb): mechanism and optional initial
    /// response, `=` standing for an empty one. `hostname` goes into the
    /// CRAM-MD5 challenge.
    pub fn start(arg: &[u8], accounts: &[Account], hostname: &str) -> Step {
        let mut words = arg.split(u8::is_ascii_whitespace).filter(|w| !w.is_empty());
        let (Some(mechanism), initial, None) = (words.next(), words.next(), words.next()) else {
            return Step::Done(Outcome::Syntax);
        };
        let initial = match initial {
            None => None,
            Some(b"=") => Some(Vec::new()),
            Some(data) => match decode(data) {
                Some(data) => Some(data),
                None => return Step::Done(Outcome::Malformed),
            },
        };
        let mechanism = mechanism.to_ascii_uppercase();
        match (mechanism.as_slice(), initial) {
            (b"PLAIN", None) => Step::Continue(Exchange(State::Plain), "334 ".to_owned()),
            (b"PLAIN", Some(data)) => Step::Done(plain(&data, accounts)),
            (b"LOGIN", None) => Step::Continue(Exchange(State::LoginUser), ASK_USER.to_owned()),
            (b"LOGIN", Some(user)) => ask_password(user),
            (b"CRAM-MD5", None) => {
                let challenge = cram_challenge(hostname);
                let line = format!("334 {}", BASE64.encode(&challenge));
                Step::Continue(Exchange(State::CramMd5 { challenge }), line)
            }
            (b"CRAM-MD5", Some(_)) => Step::Done(Outcome::Malformed),
            _ => Step::Done(Outcome::Unsupported),
        }
    }

    /// The client's continuation line (without CRLF).
    pub fn respond(self, line: &[u8], accounts: &[Account]) -> Step {
        let line = line.trim_ascii();
        if line == b"*" {
            return Step::Done(Outcome::Cancelled);
        }
        let Some(data) = decode(line) else {
            return Step::Done(Outcome::Malformed);
        };
        match self.0 {
            State::Plain => Step::Done(plain(&data, accounts)),
            State::LoginUser => ask_password(data),
            State::LoginPassword { user } => Step::Done(login(&user, &data, accounts)),
            State::CramMd5 { challenge } => Step::Done(cram_md5(&challenge, &data, accounts)),
        }
    }
}

/// LOGIN's prompt for the user name, `Username:` in base64.
const ASK_USER: &str = "334 VXNlcm5hbWU6";

/// LOGIN's prompt for the password, `Password:` in base64, once `user` is known.
fn ask_password(user: Vec<u8>) -> Step {
    Step::Continue(Exchange(State::LoginPassword { user }), "334 UGFzc3dvcmQ6".to_owned())
}

fn decode(data: &[u8]) -> Option<Vec<u8>> {
    BASE64.decode(data).ok()
}

fn account<'a>(accounts: &'a [Account], user: &[u8]) -> Option<&'a Account> {
    accounts.iter().find(|a| a.user.as_bytes() == user)
}

fn login(user: &[u8], password: &[u8], accounts: &[Account]) -> Outcome {
    match account(accounts, user) {
        Some(a) if a.password.as_bytes() == password => Outcome::Authenticated(a.user.clone()),
        _ => Outcome::Rejected,
    }
}

/// `authzid NUL authcid NUL password`; an authzid other than the authcid is refused.
fn plain(message: &[u8], accounts: &[Account]) -> Outcome {
    let fields: Vec<&[u8]> = message.split(|&b| b == 0).collect();
    let [authzid, authcid, password] = fields[..] else {
        return Outcome::Malformed;
    };
    if !authzid.is_empty() && authzid != authcid {
        return Outcome::Rejected;
    }
    login(authcid, password, accounts)
}

/// `user SP hex(HMAC-MD5(password, challenge))`.
fn cram_md5(challenge: &str, response: &[u8], accounts: &[Account]) -> Outcome {
    let Some((user, digest)) = split_cram_md5_response(response) else {
        return Outcome::Malformed;
    };
    let Some(digest) = hex(digest) else {
        return Outcome::Malformed;
    };
    let Some(account) = account(accounts, user) else {
        return Outcome::Rejected;
    };
    match cram_md5_hmac(account.password.as_bytes(), challenge.as_bytes()).verify_slice(&digest) {
        Ok(()) => Outcome::Authenticated(account.user.clone()),
        Err(_) => Outcome::Rejected,
    }
}

/// A fresh challenge in RFC 2195's form, `<random.time@hostname>`.
fn cram_challenge(hostname: &str) -> String {
    let mut random = [0u8; 8];
    // Without randomness the time alone still makes the challenge differ per second.
    let _ = getrandom::fill(&mut random);
    let time = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
    format!("<{}.{time}@{hostname}>", u64::from_be_bytes(random))
}

fn hex(digits: &[u8]) -> Option<Vec<u8>> {
    if digits.len() % 2 != 0 {
        return None;
    }
    let nibble = |d: u8| (d as char).to_digit(16).map(|v| v as u8);
    digits.chunks(2).map(|pair| Some(nibble(pair[0])? << 4 | nibble(pair[1])?)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::credentials::{CramMd5, Secret};

    fn accounts() -> Vec<Account> {
        vec!["alice@x.test:s3cr:et".parse().unwrap(), "tim:tanstaaftanstaaf".parse().unwrap()]
    }

    fn b64(data: &[u8]) -> Vec<u8> {
        BASE64.encode(data).into_bytes()
    }

    /// Runs an exchange: `AUTH arg`, then each line; returns the 334 lines and the outcome.
    fn run(arg: &[u8], lines: &[&[u8]]) -> (Vec<String>, Outcome) {
        let mut prompts = Vec::new();
        let mut step = Exchange::start(arg, &accounts(), "sink.test");
        for line in lines {
            match step {
                Step::Continue(exchange, prompt) => {
                    prompts.push(prompt);
                    step = exchange.respond(line, &accounts());
                }
                Step::Done(outcome) => panic!("ended early: {outcome:?}"),
            }
        }
        match step {
            Step::Done(outcome) => (prompts, outcome),
            Step::Continue(_, prompt) => panic!("still asking: {prompt}"),
        }
    }

    fn with_ir(mechanism: &str, data: &[u8]) -> Vec<u8> {
        [mechanism.as_bytes(), b" ", &b64(data)].concat()
    }

    #[test]
    fn plain_with_and_without_initial_response() {
        let ok = Outcome::Authenticated("alice@x.test".into());
        assert_eq!(run(&with_ir("PLAIN", b"\0alice@x.test\0s3cr:et"), &[]).1, ok);
        assert_eq!(run(&with_ir("plain", b"alice@x.test\0alice@x.test\0s3cr:et"), &[]).1, ok);
        let (prompts, outcome) = run(b"PLAIN", &[&b64(b"\0alice@x.test\0s3cr:et")]);
        assert_eq!((prompts, outcome), (vec!["334 ".to_owned()], ok));
        assert_eq!(run(&with_ir("PLAIN", b"\0alice@x.test\0wrong"), &[]).1, Outcome::Rejected);
        assert_eq!(run(&with_ir("PLAIN", b"tim\0alice@x.test\0s3cr:et"), &[]).1, Outcome::Rejected);
        assert_eq!(run(&with_ir("PLAIN", b"alice@x.test\0s3cr:et"), &[]).1, Outcome::Malformed);
        assert_eq!(run(b"PLAIN =", &[]).1, Outcome::Malformed, "`=` is an empty message");
    }

    #[test]
    fn login_prompts_for_user_and_password() {
        let (prompts, outcome) = run(b"LOGIN", &[&b64(b"tim"), &b64(b"tanstaaftanstaaf")]);
        assert_eq!(prompts, ["334 VXNlcm5hbWU6", "334 UGFzc3dvcmQ6"]);
        assert_eq!(outcome, Outcome::Authenticated("tim".into()));
        let (prompts, outcome) = run(&with_ir("LOGIN", b"tim"), &[&b64(b"nope")]);
        assert_eq!((prompts.len(), outcome), (1, Outcome::Rejected));
        assert_eq!(run(b"LOGIN", &[b"="]).1, Outcome::Malformed, "`=` only stands in initially");
    }

    #[test]
    fn cram_md5_verifies_the_digest_of_the_challenge() {
        let Step::Continue(exchange, prompt) = Exchange::start(b"CRAM-MD5", &accounts(), "sink.test") else {
            panic!("CRAM-MD5 must challenge");
        };
        let challenge = prompt.strip_prefix("334 ").unwrap();
        let decoded = BASE64.decode(challenge).unwrap();
        assert!(decoded.starts_with(b"<") && decoded.ends_with(b"@sink.test>"), "RFC 2195 form");
        // smtptap replay's client side answers it.
        let client = CramMd5 { user: "tim".into(), password: Secret("tanstaaftanstaaf".into()) };
        let response = client.respond(challenge.as_bytes()).unwrap();
        let Step::Done(outcome) = exchange.respond(response.as_bytes(), &accounts()) else {
            panic!("one response ends CRAM-MD5");
        };
        assert_eq!(outcome, Outcome::Authenticated("tim".into()));
        let zeros = b64(format!("tim {}", "0".repeat(32)).as_bytes());
        assert_eq!(run(b"CRAM-MD5", &[&zeros]).1, Outcome::Rejected);
        assert_eq!(run(b"CRAM-MD5", &[&b64(b"tim nothex")]).1, Outcome::Malformed);
        assert_eq!(run(&with_ir("CRAM-MD5", b"tim"), &[]).1, Outcome::Malformed, "no initial response");
    }

    #[test]
    fn rfc_2195_digest() {
        // The RFC's challenge, password and digest.
        let challenge = "<1896.697170952@postoffice.reston.mci.net>";
        let response = b"tim b913a602c7eda7a495b4e6e7334d3890";
        assert_eq!(cram_md5(challenge, response, &accounts()), Outcome::Authenticated("tim".into()));
    }

    #[test]
    fn cancel_bad_base64_and_syntax() {
        assert_eq!(run(b"LOGIN", &[b"*"]).1, Outcome::Cancelled);
        assert_eq!(run(b"PLAIN", &[b"not base64!"]).1, Outcome::Malformed);
        assert_eq!(run(b"PLAIN !!!", &[]).1, Outcome::Malformed);
        assert_eq!(run(b"", &[]).1, Outcome::Syntax);
        assert_eq!(run(b"PLAIN a b", &[]).1, Outcome::Syntax);
        assert_eq!(run(b"DIGEST-MD5", &[]).1, Outcome::Unsupported);
        assert_eq!(Outcome::Cancelled.reply(), "501 5.7.0 Authentication cancelled");
        assert!(Outcome::Malformed.reply().starts_with("501 5.5.2 "));
    }

    #[test]
    fn accounts_parse_at_the_first_colon() {
        let a: Account = "bob:pa:ss".parse().unwrap();
        assert_eq!((a.user.as_str(), a.password.as_str()), ("bob", "pa:ss"));
        assert!(":pw".parse::<Account>().is_err());
        assert!("nocolon".parse::<Account>().is_err());
        assert!(!format!("{a:?}").contains("pa:ss"), "Debug hides the password");
    }
}
