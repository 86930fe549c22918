//! XOAUTH2 (Google's) and OAUTHBEARER (RFC 7628): a bearer token with the
//! user it is for. The user is kept, the token redacted and fingerprinted.
//! On failure the server sends a `334` with a base64 JSON error, decoded into
//! `server_error`, and the client answers with an empty line (XOAUTH2) or
//! `AQ==` (a lone ^A, OAUTHBEARER), which carries nothing and is kept.
//!
//! XOAUTH2: `user=<user>^Aauth=Bearer <token>^A^A`.
//! OAUTHBEARER: `n,a=<user>,^Ahost=<host>^Aport=<port>^Aauth=Bearer <token>^A^A`.

use super::{AuthRecord, Ctx, Gs2, decode_b64, lossy, split_gs2_header, utf8_problem};

const SEP: u8 = 0x01;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flavour {
    XOAuth2,
    OAuthBearer,
}

/// Decodes the client's message carrying the token. Anything not in the
/// expected form (a field without `=`, no or two `auth` fields, a bad GS2
/// header) is redacted whole.
pub(super) fn decode(ctx: &Ctx, mechanism: &str, flavour: Flavour, data: &[u8]) -> AuthRecord {
    let undecodable = |problem| ctx.undecodable(mechanism, data, problem);
    let Some(blob) = decode_b64(data) else {
        return undecodable("not base64");
    };
    let (mut user, fields) = match flavour {
        Flavour::XOAuth2 => (None, &blob[..]),
        Flavour::OAuthBearer => match split_gs2_header(&blob) {
            Some(Gs2 { authzid, rest }) if rest.first() == Some(&SEP) => (authzid, &rest[1..]),
            _ => return undecodable("expected a GS2 header (n,a=user,) and ^A"),
        },
    };
    let mut auth = None;
    for field in fields.split(|&b| b == SEP).filter(|f| !f.is_empty()) {
        let Some(eq) = field.iter().position(|&b| b == b'=') else {
            return undecodable("a field without '='");
        };
        let (name, value) = (&field[..eq], &field[eq + 1..]);
        match name {
            b"auth" if auth.is_some() => return undecodable("two auth= fields"),
            b"auth" => auth = Some(value),
            b"user" if flavour == Flavour::XOAuth2 => user = Some(value.into()),
            _ => {}
        }
    }
    let Some(auth) = auth else {
        return undecodable("no auth= field");
    };
    let (token, problem) = match auth.iter().position(|&b| b == b' ') {
        Some(i) if auth[..i].eq_ignore_ascii_case(b"Bearer") => (&auth[i + 1..], None),
        _ => (auth, Some("auth= is not 'Bearer <token>'; all of it is redacted".to_owned())),
    };
    let problem = problem.or_else(|| utf8_problem(&[user.as_deref().unwrap_or_default()]));
    AuthRecord {
        user: user.map(|u| ctx.identity(&u)),
        secret: Some(ctx.secret(token)),
        fingerprint: ctx.fingerprint(token),
        problem,
        ..AuthRecord::new(mechanism)
    }
}

/// The server's error from a `334`: base64 of a JSON object, decoded; text
/// when it is not JSON.
pub(super) fn server_error(text: &[u8]) -> serde_json::Value {
    match decode_b64(text) {
        Some(json) => serde_json::from_slice(&json).unwrap_or_else(|_| serde_json::Value::String(lossy(&json))),
        None => serde_json::Value::String(lossy(text)),
    }
}

/// Whether a client line is the content-free answer to a server error: empty
/// or a lone ^A (either flavour accepts what the other one sends).
pub(super) fn is_dummy_response(data: &[u8]) -> bool {
    data.is_empty() || matches!(decode_b64(data).as_deref(), Some([]) | Some([SEP]))
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::super::*;

    const TOKEN: &str = "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg";
    const GOOGLE_ERROR: &str = r#"{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}"#;

    fn xoauth2(user: &str, token: &str) -> Vec<u8> {
        b64(format!("user={user}\x01auth=Bearer {token}\x01\x01").as_bytes())
    }

    fn oauthbearer(user: &str, token: &str) -> Vec<u8> {
        b64(format!("n,a={user},\x01host=smtp.example.com\x01port=587\x01auth=Bearer {token}\x01\x01").as_bytes())
    }

    #[test]
    fn xoauth2_success() {
        let (_, r) = start("XOAUTH2", Some(&xoauth2("joe@example.com", TOKEN)));
        assert_eq!(r.line, "AUTH XOAUTH2 <redacted>");
        let a = r.auth.unwrap();
        assert_eq!((a.mechanism.as_str(), a.user.as_deref()), ("XOAUTH2", Some("joe@example.com")));
        assert!(a.secret.unwrap().is_redacted());
        assert_eq!(a.fingerprint, Some(key().fingerprint(TOKEN.as_bytes())));
        assert!(a.problem.is_none() && !a.undecodable);
    }

    #[test]
    fn xoauth2_error_after_an_empty_334() {
        let (mut s, r) = start("XOAUTH2", None);
        assert_eq!(r.line, "AUTH XOAUTH2");
        assert_eq!(s.challenge(b""), None);
        let r = s.response(&xoauth2("joe@example.com", TOKEN));
        assert_eq!(r.line, "<redacted>");
        assert!(r.auth.unwrap().server_error.is_none());
        assert_eq!(s.challenge(&b64(GOOGLE_ERROR.as_bytes())), None, "the error is not secret");
        let r = s.response(b"");
        assert_eq!(r.line, "");
        let a = r.auth.unwrap();
        assert_eq!(a.user.as_deref(), Some("joe@example.com"));
        assert!(a.secret.is_none());
        let error = a.server_error.unwrap();
        assert_eq!(error["status"], "401");
        assert_eq!(error["scope"], "https://mail.google.com/");
    }

    #[test]
    fn oauthbearer_success_and_error() {
        let (mut s, r) = start("OAUTHBEARER", Some(&oauthbearer("joe=2Cjr@example.com", TOKEN)));
        assert_eq!(r.line, "AUTH OAUTHBEARER <redacted>");
        let a = r.auth.unwrap();
        assert_eq!(a.user.as_deref(), Some("joe,jr@example.com"));
        assert_eq!(a.fingerprint, Some(key().fingerprint(TOKEN.as_bytes())));
        let _ = s.challenge(&b64(br#"{"status":"invalid_token"}"#));
        let r = s.response(b"AQ==");
        assert_eq!(r.line, "AQ==", "the ^A answer carries nothing");
        let a = r.auth.unwrap();
        assert_eq!(a.server_error.unwrap()["status"], "invalid_token");
        assert_eq!(a.user.as_deref(), Some("joe,jr@example.com"));
    }

    #[test]
    fn oauthbearer_without_authzid() {
        let blob = b64(format!("n,,\x01auth=Bearer {TOKEN}\x01\x01").as_bytes());
        let (_, r) = start("OAUTHBEARER", Some(&blob));
        let a = r.auth.unwrap();
        assert!(a.user.is_none() && !a.undecodable);
        assert_eq!(a.fingerprint, Some(key().fingerprint(TOKEN.as_bytes())));
    }

    #[test]
    fn malformed() {
        let cases: [(&str, &[u8], &str); 9] = [
            ("XOAUTH2", b"user=joe auth=Bearer x", "not base64"),
            ("XOAUTH2", &b64(b"user=joe\x01Bearer tok\x01\x01"), "without '='"),
            ("XOAUTH2", &b64(b"user=joe\x01\x01"), "no auth="),
            ("XOAUTH2", &b64(b"auth=Bearer a\x01auth=Bearer b\x01\x01"), "two auth="),
            ("XOAUTH2", &b64(b""), "no auth="),
            ("OAUTHBEARER", &b64(b"user=joe\x01auth=Bearer tok\x01\x01"), "GS2"),
            ("OAUTHBEARER", &b64(b"n,a=joe,auth=Bearer tok\x01\x01"), "GS2"),
            ("OAUTHBEARER", &b64(b"n,a=jo=ZZe,\x01auth=Bearer tok\x01\x01"), "GS2"),
            ("OAUTHBEARER", &b64(b"x,,\x01auth=Bearer tok\x01\x01"), "GS2"),
        ];
        for (mechanism, data, problem) in cases {
            let (_, r) = start(mechanism, Some(data));
            let a = r.auth.unwrap();
            assert!(a.undecodable, "{data:?}");
            assert!(a.problem.as_deref().unwrap().contains(problem), "{data:?}: {:?}", a.problem);
            assert!(a.user.is_none());
            assert!(a.secret.unwrap().is_redacted() || data.is_empty());
        }
        // Not a bearer token: all of auth= is the secret.
        let (_, r) = start("XOAUTH2", Some(&b64(b"user=joe\x01auth=tok3n\x01\x01")));
        let a = r.auth.unwrap();
        assert_eq!(a.user.as_deref(), Some("joe"));
        assert_eq!(a.fingerprint, Some(key().fingerprint(b"tok3n")));
        assert!(a.problem.is_some());
        // Non-UTF-8 user.
        let (_, r) = start("XOAUTH2", Some(&b64(b"user=j\xffe\x01auth=Bearer tok\x01\x01")));
        let a = r.auth.unwrap();
        assert_eq!(a.user.as_deref(), Some("j\u{fffd}e"));
        assert!(a.problem.unwrap().contains("UTF-8"));
    }

    #[test]
    fn server_error_that_is_not_json() {
        let (mut s, _) = start("XOAUTH2", Some(&xoauth2("joe", TOKEN)));
        let _ = s.challenge(&b64(b"try again"));
        let a = s.response(b"").auth.unwrap();
        assert_eq!(a.server_error, Some(serde_json::Value::String("try again".into())));
        let (mut s, _) = start("XOAUTH2", Some(&xoauth2("joe", TOKEN)));
        let _ = s.challenge(b"%%%");
        let a = s.response(b"").auth.unwrap();
        assert_eq!(a.server_error, Some(serde_json::Value::String("%%%".into())));
    }

    #[test]
    fn anything_but_the_empty_answer_after_an_error_is_redacted() {
        let (mut s, _) = start("XOAUTH2", Some(&xoauth2("joe", TOKEN)));
        let _ = s.challenge(&b64(GOOGLE_ERROR.as_bytes()));
        let r = s.response(&xoauth2("joe", TOKEN));
        assert_eq!(r.line, "<redacted>");
        let a = r.auth.unwrap();
        assert!(a.undecodable);
        assert!(a.server_error.is_some());
        // And a second response without an error in between, too.
        let (mut s, _) = start("XOAUTH2", Some(&xoauth2("joe", TOKEN)));
        let r = s.response(b"");
        assert!(r.auth.unwrap().undecodable);
    }

    #[test]
    fn cancel_after_an_error_keeps_the_error() {
        let (mut s, _) = start("OAUTHBEARER", Some(&oauthbearer("joe", TOKEN)));
        let _ = s.challenge(&b64(GOOGLE_ERROR.as_bytes()));
        let a = s.response(b"*").auth.unwrap();
        assert!(a.cancelled);
        assert!(a.server_error.is_some());
    }

    #[test]
    fn redaction_levels() {
        let (_, r) = start_with("XOAUTH2", Some(&xoauth2("joe", TOKEN)), Redaction::Identities);
        let a = r.auth.unwrap();
        assert_eq!(a.user, Some(key().identity_fingerprint(b"joe")));
        assert!(a.secret.unwrap().is_redacted());

        let blob = oauthbearer("joe", TOKEN);
        let (_, r) = start_with("OAUTHBEARER", Some(&blob), Redaction::None);
        assert_eq!(r.line.as_bytes(), [b"AUTH OAUTHBEARER ".as_slice(), &blob].concat());
        let a = r.auth.unwrap();
        assert_eq!(a.user.as_deref(), Some("joe"));
        assert_eq!(a.secret.unwrap().as_str(), TOKEN);
    }
}
