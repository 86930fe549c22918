//! Helpers for the mechanism tests, tests of the session as a whole, and the
//! leak tests: no secret reaches a record or a `Debug` output in any form.

use super::*;
use base64::engine::general_purpose::STANDARD;
use proptest::prelude::*;

pub(super) fn key() -> FingerprintKey {
    FingerprintKey::from_bytes([0x5a; 32])
}

pub(super) fn b64(data: &[u8]) -> Vec<u8> {
    STANDARD.encode(data).into_bytes()
}

pub(super) fn b64s(data: &[u8]) -> String {
    STANDARD.encode(data)
}

pub(super) fn start(mechanism: &str, initial_response: Option<&[u8]>) -> (SaslSession, Recorded) {
    start_with(mechanism, initial_response, Redaction::Secrets)
}

pub(super) fn start_with(
    mechanism: &str,
    initial_response: Option<&[u8]>,
    redaction: Redaction,
) -> (SaslSession, Recorded) {
    SaslSession::start(mechanism, initial_response, redaction, &key())
}

#[test]
fn from_command_line_keeps_verb_and_mechanism_as_typed() {
    let (s, r) = SaslSession::from_command_line(b"auth Plain AGpvZQBodW50ZXIy", Redaction::Secrets, &key()).unwrap();
    assert_eq!(s.mechanism(), "PLAIN");
    assert_eq!(r.line, "auth Plain <redacted>");
    assert_eq!(r.auth.unwrap().authcid.as_deref(), Some("joe"));

    let (_, r) = SaslSession::from_command_line(b"AUTH  LOGIN  ", Redaction::Secrets, &key()).unwrap();
    assert_eq!((r.line.as_str(), r.auth), ("AUTH  LOGIN  ", None));

    let (_, r) = SaslSession::from_command_line(b"AUTH PLAIN =", Redaction::Secrets, &key()).unwrap();
    assert_eq!(r.line, "AUTH PLAIN =");

    let (_, r) =
        SaslSession::from_command_line(b"AUTH PLAIN AGpvZQBodW50ZXIy extra", Redaction::Secrets, &key()).unwrap();
    assert_eq!(r.line, "AUTH PLAIN <redacted>");
    assert!(r.auth.unwrap().undecodable, "more than one word after the mechanism");

    let (s, r) = SaslSession::from_command_line(b"AUTH", Redaction::Secrets, &key()).unwrap();
    assert_eq!((s.mechanism(), r.line.as_str()), ("", "AUTH"));

    let line = b"AUTH PLAIN AGpvZQBodW50ZXIy";
    let (_, r) = SaslSession::from_command_line(line, Redaction::None, &key()).unwrap();
    assert_eq!(r.line.as_bytes(), line);

    assert!(SaslSession::from_command_line(b"AUTHX PLAIN", Redaction::Secrets, &key()).is_none());
    assert!(SaslSession::from_command_line(b"MAIL FROM:<a@b>", Redaction::Secrets, &key()).is_none());
    assert!(SaslSession::from_command_line(b"", Redaction::Secrets, &key()).is_none());
}

#[test]
fn unknown_mechanisms_are_redacted_whole() {
    let (mut s, r) = start("DIGEST-MD5", None);
    assert_eq!((r.line.as_str(), r.auth), ("AUTH DIGEST-MD5", None));
    // The first challenge cannot depend on the password.
    assert_eq!(s.challenge(&b64(b"realm=\"example.com\",nonce=\"OA6MG9tEQGm2hh\"")), None);
    let r = s.response(&b64(b"username=\"joe\",response=d388dad90d4bbd760a152321f2143af7"));
    assert_eq!(r.line, "<redacted>");
    let a = r.auth.unwrap();
    assert_eq!(a.mechanism, "DIGEST-MD5");
    assert!(a.undecodable && a.user.is_none());
    assert!(a.secret.unwrap().is_redacted());
    assert_eq!(a.problem.as_deref(), Some("mechanism not decoded"));
    // Later ones may (rspauth).
    assert_eq!(s.challenge(&b64(b"rspauth=ea40f60335c427b5527b84dbabcdfffd")).as_deref(), Some(REDACTED));
    let r = s.response(b"");
    assert_eq!((r.line.as_str(), r.auth), ("", None));

    let (_, r) = start("NTLM", Some(b"TlRMTVNTUAABAAAAB4IIAAAAAAAAAAAAAAAAAAAAAAA="));
    assert_eq!(r.line, "AUTH NTLM <redacted>");
    assert!(r.auth.unwrap().undecodable);

    let (mut s, _) = start_with("GSSAPI", Some(b"YIIB"), Redaction::None);
    assert_eq!(s.challenge(b"oYGg"), None, "nothing is replaced with --redact none");
}

#[test]
fn cancel_at_every_point() {
    for mechanism in ["PLAIN", "LOGIN", "CRAM-MD5", "XOAUTH2", "OAUTHBEARER", "SCRAM-SHA-256", "X-UNKNOWN"] {
        let (mut s, _) = start(mechanism, None);
        let _ = s.challenge(b"");
        let r = s.response(b"*");
        assert_eq!(r.line, "*");
        let a = r.auth.unwrap();
        assert!(a.cancelled, "{mechanism}");
        assert_eq!(a.mechanism, mechanism);
        assert!(a.secret.is_none() && a.user.is_none() && !a.undecodable);
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(json, format!(r#"{{"mechanism":"{mechanism}","cancelled":true}}"#));
    }
    // With white space around it (kept as sent), after the exchange was complete.
    let (mut s, _) = start("PLAIN", Some(&b64(b"\0joe\0pw")));
    let r = s.response(b" * ");
    assert_eq!(r.line, " * ");
    assert!(r.auth.unwrap().cancelled);
}

#[test]
fn client_data_after_cancel_is_redacted() {
    let (mut s, _) = start("LOGIN", None);
    let _ = s.response(b"*");
    let r = s.response(&b64(b"joe"));
    assert_eq!(r.line, "<redacted>");
    let a = r.auth.unwrap();
    assert!(a.undecodable && a.user.is_none());
}

#[test]
fn redaction_flag_values() {
    assert_eq!(Redaction::default(), Redaction::Secrets);
    for (r, s) in [(Redaction::Secrets, "secrets"), (Redaction::Identities, "identities"), (Redaction::None, "none")] {
        assert_eq!(r.to_string(), s);
        assert_eq!(serde_json::to_string(&r).unwrap(), format!("\"{s}\""));
        assert_eq!(<Redaction as clap::ValueEnum>::from_str(s, false), Ok(r));
    }
}

#[test]
fn absent_fields_are_not_serialized_and_unknown_ones_are_ignored() {
    let a = AuthRecord::new("LOGIN");
    assert_eq!(serde_json::to_string(&a).unwrap(), r#"{"mechanism":"LOGIN"}"#);
    let back: AuthRecord = serde_json::from_str(r#"{"mechanism":"X","new":1,"undecodable":true}"#).unwrap();
    assert!(back.undecodable);
}

#[test]
fn debug_never_shows_a_secret() {
    let secret = SecretText("hunter2".into());
    assert_eq!(format!("{secret:?}"), REDACTED);
    assert_eq!(format!("{:?}", SecretText(String::new())), "\"\"");
    let (mut s, r) = start_with("LOGIN", Some(&b64(b"joe")), Redaction::None);
    let _ = s.challenge(b"UGFzc3dvcmQ6");
    let p = s.response(&b64(b"hunter2"));
    let shown = format!("{r:?} {p:?} {p:#?} {s:?} {:?}", p.auth);
    assert!(!shown.contains("hunter2") && !shown.contains(&b64s(b"hunter2")), "{shown}");
    assert!(shown.contains("joe"), "identities are not secret: {shown}");
    // With redaction on, Debug shows the recorded line.
    let (_, r) = start("PLAIN", None);
    assert!(format!("{r:?}").contains("AUTH PLAIN"));
}

// Leak tests.

/// One step of an exchange.
enum Step<'a> {
    Server(&'a [u8]),
    Client(&'a [u8]),
}

/// Runs an exchange and returns everything that could reach a recording or
/// a log: each recorded line, each `auth` as JSON, each 334 text as it would
/// be recorded, and the `Debug` of every value, the session included.
fn transcript(mechanism: &str, initial: Option<&[u8]>, steps: &[Step<'_>], redaction: Redaction) -> Vec<String> {
    let mut out = Vec::new();
    let record = |r: &Recorded, out: &mut Vec<String>| {
        out.push(serde_json::to_string(&r.line).unwrap());
        out.push(serde_json::to_string(&r.auth).unwrap());
        out.push(format!("{r:?}"));
        out.push(format!("{r:#?}"));
    };
    let (mut session, r) = SaslSession::start(mechanism, initial, redaction, &key());
    record(&r, &mut out);
    for step in steps {
        match step {
            Step::Server(text) => {
                let shown = session.challenge(text).unwrap_or_else(|| String::from_utf8_lossy(text).into_owned());
                out.push(serde_json::to_string(&shown).unwrap());
            }
            Step::Client(line) => {
                let r = session.response(line);
                record(&r, &mut out);
            }
        }
        out.push(format!("{session:?}"));
    }
    out
}

/// The forms a secret could leak in: as is (and JSON-escaped), as hex, and
/// as base64 at each of the three alignments it could have inside a larger
/// base64 blob (only the characters that depend on the secret alone).
fn leak_forms(secret: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(secret).into_owned();
    let escaped = serde_json::to_string(&text).unwrap();
    let mut forms = vec![text.clone(), escaped[1..escaped.len() - 1].to_owned()];
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    forms.push(hex.to_ascii_uppercase());
    forms.push(hex);
    for offset in 0..3 {
        let mut shifted = vec![0u8; offset];
        shifted.extend_from_slice(secret);
        let encoded = STANDARD.encode(&shifted);
        let (first, end) = ((8 * offset).div_ceil(6), 8 * (offset + secret.len()) / 6);
        if end > first + 3 {
            forms.push(encoded[first..end].to_owned());
        }
    }
    forms
}

/// Asserts that none of `secrets` (nor the `blobs` as sent) occurs in `out`.
fn assert_no_leak(out: &[String], secrets: &[&[u8]], blobs: &[&[u8]]) {
    let everything = out.join("\n");
    let mut forms: Vec<String> = secrets.iter().flat_map(|s| leak_forms(s)).collect();
    forms.extend(blobs.iter().map(|b| String::from_utf8_lossy(b).into_owned()));
    for form in forms {
        assert!(!everything.contains(&form), "{form:?} leaked into:\n{everything}");
    }
}

const PASSWORD: &[u8] = b"Sw0rdf1sh!\"\\ 42";
const TOKEN: &[u8] = b"ya29.a0AfH6SMBx-secret-token_9";

#[test]
fn leak_forms_cover_every_alignment() {
    let forms = leak_forms(b"hunter2");
    for prefix in ["", "a", "ab", "abc"] {
        let blob = b64s(format!("{prefix}hunter2{prefix}").as_bytes());
        assert!(forms.iter().any(|f| blob.contains(f)), "{prefix:?}");
    }
}

#[test]
fn no_mechanism_leaks_its_secret() {
    use Step::{Client, Server};
    let plain = b64(&[b"\0joe@example.com\0".as_slice(), PASSWORD].concat());
    let login_user = b64(b"joe@example.com");
    let login_pass = b64(PASSWORD);
    let digest = b"3dbc88f0624776a737b39093f6eb6427";
    let cram = b64(&[b"joe ".as_slice(), digest].concat());
    let xoauth2 = b64(&[b"user=joe@example.com\x01auth=Bearer ".as_slice(), TOKEN, b"\x01\x01"].concat());
    let oauthbearer =
        b64(&[b"n,a=joe@example.com,\x01host=mx\x01port=587\x01auth=Bearer ".as_slice(), TOKEN, b"\x01\x01"].concat());
    let error = b64(br#"{"status":"401","schemes":"bearer"}"#);
    let proof = b"dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    let signature = b"6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";
    let scram_first = b64(b"n,,n=joe,r=rOprNGfwEbeRWgbNEkqO");
    let scram_server_first = b64(b"r=rOprNGfwEbeRWgbNEkqO%hvY,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096");
    let scram_final = b64(&[b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvY,p=".as_slice(), proof].concat());
    let scram_server_final = b64(&[b"v=".as_slice(), signature].concat());
    let digest_md5 = b64(b"username=\"joe\",response=d388dad90d4bbd760a152321f2143af7,qop=auth");
    let rspauth = b64(b"rspauth=ea40f60335c427b5527b84dbabcdfffd");

    type Case<'a> = (&'a str, Option<&'a [u8]>, Vec<Step<'a>>, Vec<&'a [u8]>, Vec<&'a [u8]>);
    let cases: Vec<Case<'_>> = vec![
        ("PLAIN", Some(&plain), vec![], vec![PASSWORD], vec![&plain]),
        ("PLAIN", None, vec![Server(b""), Client(&plain)], vec![PASSWORD], vec![&plain]),
        // A password in clear where base64 was due, and a second try.
        ("PLAIN", Some(PASSWORD), vec![Client(&plain)], vec![PASSWORD], vec![&plain]),
        (
            "LOGIN",
            None,
            vec![Server(b"VXNlcm5hbWU6"), Client(&login_user), Server(b"UGFzc3dvcmQ6"), Client(&login_pass)],
            vec![PASSWORD],
            vec![&login_pass],
        ),
        ("LOGIN", Some(&login_user), vec![Server(b"UGFzc3dvcmQ6"), Client(&login_pass)], vec![PASSWORD], vec![]),
        // The server asks for the user name twice; the client sends the password.
        ("LOGIN", Some(&login_user), vec![Server(b"VXNlcm5hbWU6"), Client(&login_pass)], vec![PASSWORD], vec![]),
        ("LOGIN", None, vec![Server(b""), Client(&login_user), Server(b""), Client(PASSWORD)], vec![PASSWORD], vec![]),
        (
            "CRAM-MD5",
            None,
            vec![Server(b"PDE4OTYuNjk3MTcwOTUyQHBvc3RvZmZpY2UucmVzdG9uLm1jaS5uZXQ+"), Client(&cram)],
            vec![digest],
            vec![&cram],
        ),
        ("XOAUTH2", Some(&xoauth2), vec![], vec![TOKEN], vec![&xoauth2]),
        ("XOAUTH2", None, vec![Server(b""), Client(&xoauth2), Server(&error), Client(b"")], vec![TOKEN], vec![]),
        ("OAUTHBEARER", Some(&oauthbearer), vec![Server(&error), Client(b"AQ==")], vec![TOKEN], vec![&oauthbearer]),
        (
            "SCRAM-SHA-256",
            Some(&scram_first),
            vec![Server(&scram_server_first), Client(&scram_final), Server(&scram_server_final), Client(b"")],
            vec![proof, signature],
            vec![&scram_final, &scram_server_final],
        ),
        (
            "DIGEST-MD5",
            None,
            vec![Server(b"cmVhbG09IngiIg=="), Client(&digest_md5), Server(&rspauth), Client(b"")],
            vec![b"d388dad90d4bbd760a152321f2143af7", b"ea40f60335c427b5527b84dbabcdfffd"],
            vec![&digest_md5, &rspauth],
        ),
    ];
    for (mechanism, initial, steps, secrets, blobs) in cases {
        for redaction in [Redaction::Secrets, Redaction::Identities] {
            let out = transcript(mechanism, initial, &steps, redaction);
            assert_no_leak(&out, &secrets, &blobs);
        }
        // The test would notice: with --redact none, the secret is there.
        let out = transcript(mechanism, initial, &steps, Redaction::None).join("\n");
        assert!(
            leak_forms(secrets[0]).iter().any(|f| out.contains(f)),
            "{mechanism}: the leak check finds nothing even unredacted"
        );
    }
}

#[test]
fn identities_mode_hides_identities_too() {
    let plain = b64(b"boss\0joe@example.com\0pw");
    let out = transcript("PLAIN", Some(&plain), &[], Redaction::Identities);
    assert_no_leak(&out, &[b"joe@example.com", b"boss"], &[&plain]);
    let out = transcript(
        "LOGIN",
        Some(&b64(b"joe@example.com")),
        &[Step::Server(b"UGFzc3dvcmQ6"), Step::Client(&b64(b"pw"))],
        Redaction::Identities,
    );
    // Debug of the session shows recorded identities only, so fingerprints.
    assert_no_leak(&out, &[b"joe@example.com"], &[]);
}

proptest! {
    #[test]
    fn random_credentials_never_leak(user in "[ -~]{0,24}", password in "[ -~]{6,32}", split in any::<bool>()) {
        prop_assume!(!user.contains(&password));
        let (user, password) = (user.as_bytes(), password.as_bytes());
        for form in leak_forms(password) {
            prop_assume!(!String::from_utf8_lossy(user).contains(&form));
        }
        // PLAIN: as the initial response or after an empty 334.
        let plain = b64(&[b"\0", user, b"\0", password].concat());
        let out = if split {
            transcript("PLAIN", None, &[Step::Server(b""), Step::Client(&plain)], Redaction::Secrets)
        } else {
            transcript("PLAIN", Some(&plain), &[], Redaction::Secrets)
        };
        assert_no_leak(&out, &[password], &[&plain]);
        // LOGIN: with the user name as initial response or prompted.
        let (user_b64, password_b64) = (b64(user), b64(password));
        let out = if split {
            transcript("LOGIN", Some(&user_b64), &[Step::Server(b"UGFzc3dvcmQ6"), Step::Client(&password_b64)], Redaction::Secrets)
        } else {
            let steps = [Step::Server(b"VXNlcm5hbWU6"), Step::Client(&user_b64), Step::Server(b"UGFzc3dvcmQ6"), Step::Client(&password_b64)];
            transcript("LOGIN", None, &steps, Redaction::Secrets)
        };
        assert_no_leak(&out, &[password], &[&password_b64]);
    }
}

proptest! {
    /// Whatever the peers send, nothing panics, and with redaction on no
    /// client line is recorded as sent unless it is empty or `*`.
    #[test]
    fn arbitrary_input_never_panics(
        mechanism in prop::sample::select(vec!["PLAIN", "LOGIN", "CRAM-MD5", "XOAUTH2", "OAUTHBEARER", "SCRAM-SHA-1", "X"]),
        initial in prop::option::of(prop::collection::vec(any::<u8>(), 0..40)),
        steps in prop::collection::vec((any::<bool>(), any::<bool>(), prop::collection::vec(any::<u8>(), 0..40)), 0..6),
        redaction in prop::sample::select(vec![Redaction::Secrets, Redaction::Identities, Redaction::None]),
    ) {
        // Half the data base64-encoded, so that the decoders get past base64.
        let encode = |raw: bool, data: &[u8]| if raw { data.to_vec() } else { b64(data) };
        let initial = initial.map(|i| encode(false, &i));
        let (mut session, _) = SaslSession::start(mechanism, initial.as_deref(), redaction, &key());
        for (server, raw, data) in steps {
            let data = encode(raw, &data);
            if server {
                let _ = session.challenge(&data);
            } else {
                let r = session.response(&data);
                let _ = serde_json::to_string(&r.auth).unwrap();
                let sent = data.trim_ascii();
                if redaction != Redaction::None && !sent.is_empty() && sent != b"*" {
                    // Only the content-free answer to an OAuth error may be kept.
                    let kept_dummy = mechanism.contains("OAUTH") && oauth::is_dummy_response(sent);
                    prop_assert!(r.line == REDACTED || kept_dummy, "{:?}", r.line);
                }
            }
        }
    }
}
