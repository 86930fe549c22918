//! CRAM-MD5 (RFC 2195): the server's challenge (kept, it is not secret), then
//! the client's `user SP hex-digest`, of which the user is kept and the
//! digest redacted. The digest gets no fingerprint: it is a keyed hash of the
//! challenge, different every time, and with the challenge it would allow a
//! dictionary attack on the password.

use super::{AuthRecord, Ctx, decode_b64, utf8_problem};
use hmac::{Hmac, KeyInit};
use md5::Md5;

/// `HMAC-MD5(password, challenge)`: what a client sends (hex) and a server checks.
pub fn cram_md5_hmac(password: &[u8], challenge: &[u8]) -> Hmac<Md5> {
    use hmac::Mac;
    let mut mac = <Hmac<Md5> as KeyInit>::new_from_slice(password).expect("HMAC takes any key");
    mac.update(challenge);
    mac
}

/// A decoded response split into the user and the digest, at the last space
/// (a user name may contain spaces; the digest cannot).
pub fn split_cram_md5_response(blob: &[u8]) -> Option<(&[u8], &[u8])> {
    let space = blob.iter().rposition(|&b| b == b' ')?;
    Some((&blob[..space], &blob[space + 1..]))
}

/// Decodes the client's response to `challenge` (decoded already).
pub(super) fn decode(ctx: &Ctx, mechanism: &str, data: &[u8], challenge: Option<String>) -> AuthRecord {
    let undecodable =
        |problem| AuthRecord { challenge: challenge.clone(), ..ctx.undecodable(mechanism, data, problem) };
    let Some(blob) = decode_b64(data) else {
        return undecodable("not base64");
    };
    let Some((user, digest)) = split_cram_md5_response(&blob) else {
        return undecodable("expected a user name, a space and the digest");
    };
    let well_formed = digest.len() == 32 && digest.iter().all(u8::is_ascii_hexdigit);
    AuthRecord {
        user: Some(ctx.identity(user)),
        secret: Some(ctx.secret(digest)),
        challenge: challenge.clone(),
        problem: if well_formed { utf8_problem(&[user]) } else { Some("the digest is not 32 hex digits".into()) },
        ..AuthRecord::new(mechanism)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::super::*;

    const CHALLENGE: &str = "<1896.697170952@postoffice.reston.mci.net>";

    /// RFC 2195's example.
    const RESPONSE: &[u8] = b"dGltIGI5MTNhNjAyYzdlZGE3YTQ5NWI0ZTZlNzMzNGQzODkw";
    const DIGEST: &str = "b913a602c7eda7a495b4e6e7334d3890";

    #[test]
    fn rfc_2195_example() {
        let (mut s, r) = start("CRAM-MD5", None);
        assert_eq!((r.line.as_str(), r.auth), ("AUTH CRAM-MD5", None));
        assert_eq!(s.challenge(b"PDE4OTYuNjk3MTcwOTUyQHBvc3RvZmZpY2UucmVzdG9uLm1jaS5uZXQ+"), None);
        let r = s.response(RESPONSE);
        assert_eq!(r.line, "<redacted>");
        let a = r.auth.unwrap();
        assert_eq!(a.mechanism, "CRAM-MD5");
        assert_eq!(a.user.as_deref(), Some("tim"));
        assert_eq!(a.challenge.as_deref(), Some(CHALLENGE));
        assert!(a.secret.unwrap().is_redacted());
        assert_eq!(a.fingerprint, None, "a digest's fingerprint would compare nothing");
        assert!(!a.undecodable && a.problem.is_none());
    }

    #[test]
    fn user_names_with_spaces() {
        let (mut s, _) = start("CRAM-MD5", None);
        let _ = s.challenge(&b64(CHALLENGE.as_bytes()));
        let a = s.response(&b64(format!("Tim Smith {DIGEST}").as_bytes())).auth.unwrap();
        assert_eq!(a.user.as_deref(), Some("Tim Smith"));
    }

    #[test]
    fn malformed() {
        let run = |response: &[u8]| {
            let (mut s, _) = start("CRAM-MD5", None);
            let _ = s.challenge(&b64(CHALLENGE.as_bytes()));
            let r = s.response(response);
            assert_eq!(r.line, "<redacted>");
            r.auth.unwrap()
        };
        // Not base64.
        let a = run(b"tim b913a602c7eda7a495b4e6e7334d3890");
        assert!(a.undecodable && a.user.is_none());
        assert_eq!(a.challenge.as_deref(), Some(CHALLENGE));
        // No space: could be anything, a password included.
        let a = run(&b64(b"hunter2"));
        assert!(a.undecodable && a.user.is_none());
        assert!(a.secret.unwrap().is_redacted());
        // Not a digest: kept apart from the user and redacted all the same.
        let a = run(&b64(b"tim hunter2"));
        assert_eq!(a.user.as_deref(), Some("tim"));
        assert_eq!(a.problem.as_deref(), Some("the digest is not 32 hex digits"));
        // Non-UTF-8 user.
        let mut blob = b"t\xffm ".to_vec();
        blob.extend_from_slice(DIGEST.as_bytes());
        let a = run(&b64(&blob));
        assert_eq!(a.user.as_deref(), Some("t\u{fffd}m"));
        assert!(a.problem.unwrap().contains("UTF-8"));
        // Empty.
        let (mut s, _) = start("CRAM-MD5", None);
        let _ = s.challenge(&b64(CHALLENGE.as_bytes()));
        let r = s.response(b"");
        assert_eq!(r.line, "");
        assert!(r.auth.unwrap().undecodable);
    }

    #[test]
    fn bad_challenge_is_kept_as_sent() {
        let (mut s, _) = start("CRAM-MD5", None);
        let _ = s.challenge(b"<not base64>");
        let a = s.response(RESPONSE).auth.unwrap();
        assert_eq!(a.challenge.as_deref(), Some("<not base64>"));
    }

    #[test]
    fn an_initial_response_is_redacted_whole() {
        let (_, r) = start("CRAM-MD5", Some(RESPONSE));
        assert_eq!(r.line, "AUTH CRAM-MD5 <redacted>");
        assert!(r.auth.unwrap().undecodable);
    }

    #[test]
    fn redaction_levels() {
        let (mut s, _) = start_with("CRAM-MD5", None, Redaction::Identities);
        let _ = s.challenge(&b64(CHALLENGE.as_bytes()));
        let a = s.response(RESPONSE).auth.unwrap();
        assert_eq!(a.user, Some(key().identity_fingerprint(b"tim")));
        assert_eq!(a.challenge.as_deref(), Some(CHALLENGE));

        let (mut s, _) = start_with("CRAM-MD5", None, Redaction::None);
        let _ = s.challenge(&b64(CHALLENGE.as_bytes()));
        let r = s.response(RESPONSE);
        assert_eq!(r.line.as_bytes(), RESPONSE);
        let a = r.auth.unwrap();
        assert_eq!(a.user.as_deref(), Some("tim"));
        assert_eq!(a.secret.unwrap().as_str(), DIGEST);
    }
}
