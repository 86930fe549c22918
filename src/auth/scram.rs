//! SCRAM-SHA-1, SCRAM-SHA-256 and their -PLUS variants (RFC 5802, RFC 7677):
//! client-first `n,,n=<user>,r=<nonce>` (user and nonce kept), server-first
//! `r=..,s=<salt>,i=<iterations>` (not secret), client-final
//! `c=..,r=..,p=<proof>` (proof redacted), server-final `v=<signature>`
//! (redacted: it is derived from the password, and with the salt and nonces
//! it would allow a dictionary attack) or `e=<error>` (kept).
//! The proof gets no fingerprint: it differs with every nonce.

use super::{AuthRecord, Ctx, Gs2, decode_b64, decode_saslname, lossy, split_gs2_header, utf8_problem};

/// A server message, by what it means for the recording.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Server {
    /// `e=`: the error, not secret.
    Error(String),
    /// `v=`: the server signature, to be redacted.
    Signature,
    /// Anything else readable (the server-first message, an empty challenge).
    Other,
    /// Not base64.
    Undecodable,
}

pub(super) fn server_message(text: &[u8]) -> Server {
    let Some(message) = decode_b64(text) else { return Server::Undecodable };
    if let Some(error) = message.strip_prefix(b"e=") {
        Server::Error(lossy(error.split(|&b| b == b',').next().unwrap_or_default()))
    } else if message.starts_with(b"v=") {
        Server::Signature
    } else {
        Server::Other
    }
}

/// The values of a SCRAM message's `x=value` attributes, by name.
fn attribute(message: &[u8], name: u8) -> Option<&[u8]> {
    message.split(|&b| b == b',').find_map(|a| match a {
        [n, b'=', value @ ..] if *n == name => Some(value),
        _ => None,
    })
}

/// Decodes client-first: GS2 header, then `[m=..,]n=<user>,r=<nonce>[,..]`.
pub(super) fn decode_client_first(ctx: &Ctx, mechanism: &str, data: &[u8]) -> AuthRecord {
    let undecodable = |problem| ctx.undecodable(mechanism, data, problem);
    let Some(message) = decode_b64(data) else {
        return undecodable("not base64");
    };
    let Some(Gs2 { authzid, rest: bare }) = split_gs2_header(&message) else {
        return undecodable("expected a GS2 header (n,,)");
    };
    let (Some(user), Some(nonce)) = (attribute(bare, b'n'), attribute(bare, b'r')) else {
        return undecodable("expected n=<user>,r=<nonce>");
    };
    let Some(user) = decode_saslname(user) else {
        return undecodable("the user name has a bad '=' escape");
    };
    AuthRecord {
        authzid: authzid.as_deref().map(|a| ctx.identity(a)),
        user: Some(ctx.identity(&user)),
        nonce: Some(lossy(nonce)),
        problem: utf8_problem(&[authzid.as_deref().unwrap_or_default(), &user]),
        ..AuthRecord::new(mechanism)
    }
}

/// Decodes client-final: only the proof (`p=`) is of interest, as the secret.
pub(super) fn decode_client_final(ctx: &Ctx, mechanism: &str, data: &[u8]) -> AuthRecord {
    let Some(message) = decode_b64(data) else {
        return ctx.undecodable(mechanism, data, "not base64");
    };
    let Some(proof) = attribute(&message, b'p') else {
        return ctx.undecodable(mechanism, data, "no proof (p=)");
    };
    AuthRecord { secret: Some(ctx.secret(proof)), ..AuthRecord::new(mechanism) }
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::super::*;

    // RFC 7677's SCRAM-SHA-256 example (user "user", password "pencil").
    const CLIENT_FIRST: &[u8] = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const SERVER_FIRST: &[u8] =
        b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const CLIENT_FINAL: &[u8] =
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const PROOF: &str = "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const SERVER_FINAL: &[u8] = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    #[test]
    fn rfc_7677_exchange() {
        let (mut s, r) = start("SCRAM-SHA-256", Some(&b64(CLIENT_FIRST)));
        assert_eq!(r.line, "AUTH SCRAM-SHA-256 <redacted>");
        let a = r.auth.unwrap();
        assert_eq!(a.mechanism, "SCRAM-SHA-256");
        assert_eq!((a.user.as_deref(), a.nonce.as_deref()), (Some("user"), Some("rOprNGfwEbeRWgbNEkqO")));
        assert!(a.authzid.is_none() && a.secret.is_none() && a.fingerprint.is_none());
        assert_eq!(s.challenge(&b64(SERVER_FIRST)), None, "salt and iteration count are not secret");
        let r = s.response(&b64(CLIENT_FINAL));
        assert_eq!(r.line, "<redacted>");
        let a = r.auth.unwrap();
        assert_eq!(a.user.as_deref(), Some("user"));
        assert!(a.secret.unwrap().is_redacted());
        assert_eq!(a.fingerprint, None, "a proof's fingerprint would compare nothing");
        assert_eq!(s.challenge(&b64(SERVER_FINAL)).as_deref(), Some(REDACTED));
        let r = s.response(b"");
        assert_eq!((r.line.as_str(), r.auth), ("", None));
    }

    #[test]
    fn after_an_empty_334_with_authzid_and_channel_binding() {
        let (mut s, r) = start("scram-sha-1-plus", None);
        assert_eq!(r.line, "AUTH scram-sha-1-plus");
        let _ = s.challenge(b"");
        let r = s.response(&b64(b"p=tls-exporter,a=admin,n=jo=3De=2C,r=abc,ext=1"));
        let a = r.auth.unwrap();
        assert_eq!(a.mechanism, "SCRAM-SHA-1-PLUS");
        assert_eq!(a.authzid.as_deref(), Some("admin"));
        assert_eq!(a.user.as_deref(), Some("jo=e,"));
        assert_eq!(a.nonce.as_deref(), Some("abc"));
    }

    #[test]
    fn server_error_is_kept() {
        let (mut s, _) = start("SCRAM-SHA-1", Some(&b64(CLIENT_FIRST)));
        let _ = s.challenge(&b64(SERVER_FIRST));
        let _ = s.response(&b64(CLIENT_FINAL));
        assert_eq!(s.challenge(&b64(b"e=invalid-proof")), None);
        let r = s.response(b"");
        let a = r.auth.unwrap();
        assert_eq!(a.server_error, Some(serde_json::Value::String("invalid-proof".into())));
        assert_eq!(a.user.as_deref(), Some("user"));
    }

    #[test]
    fn malformed() {
        for (data, problem) in [
            (b"n,,n=user,r=abc".to_vec(), "not base64"),
            (b64(b"n=user,r=abc"), "GS2"),
            (b64(b"n,,r=abc"), "expected n=<user>,r=<nonce>"),
            (b64(b"n,,n=user"), "expected n=<user>,r=<nonce>"),
            (b64(b"n,,n=us=ZZer,r=abc"), "escape"),
            (b64(b""), "GS2"),
        ] {
            let (_, r) = start("SCRAM-SHA-256", Some(&data));
            let a = r.auth.unwrap();
            assert!(a.undecodable, "{data:?}");
            assert!(a.problem.as_deref().unwrap().contains(problem), "{data:?}: {:?}", a.problem);
            assert!(a.user.is_none());
        }
        let (mut s, _) = start("SCRAM-SHA-256", Some(&b64(CLIENT_FIRST)));
        let _ = s.challenge(&b64(SERVER_FIRST));
        let r = s.response(&b64(b"c=biws,r=abc"));
        assert_eq!(r.line, "<redacted>");
        let a = r.auth.unwrap();
        assert!(a.undecodable && a.problem.unwrap().contains("no proof"));
        // Non-UTF-8 user name.
        let (_, r) = start("SCRAM-SHA-256", Some(&b64(b"n,,n=\xfe,r=abc")));
        let a = r.auth.unwrap();
        assert_eq!(a.user.as_deref(), Some("\u{fffd}"));
        assert!(a.problem.is_some());
        // Data after the final message.
        let (mut s, _) = start("SCRAM-SHA-256", Some(&b64(CLIENT_FIRST)));
        let _ = s.response(&b64(CLIENT_FINAL));
        let r = s.response(&b64(b"more"));
        assert!(r.auth.unwrap().undecodable);
    }

    #[test]
    fn undecodable_server_final_is_redacted() {
        let (mut s, _) = start("SCRAM-SHA-256", Some(&b64(CLIENT_FIRST)));
        assert_eq!(s.challenge(b"%%%"), None, "before the proof, nothing to protect");
        let _ = s.response(&b64(CLIENT_FINAL));
        assert_eq!(s.challenge(b"%%%").as_deref(), Some(REDACTED));
    }

    #[test]
    fn redaction_levels() {
        let (mut s, r) = start_with("SCRAM-SHA-256", Some(&b64(b"n,a=boss,n=user,r=abc")), Redaction::Identities);
        let a = r.auth.unwrap();
        assert_eq!(a.user, Some(key().identity_fingerprint(b"user")));
        assert_eq!(a.authzid, Some(key().identity_fingerprint(b"boss")));
        assert_eq!(a.nonce.as_deref(), Some("abc"));
        let _ = s.response(&b64(CLIENT_FINAL));
        assert_eq!(s.challenge(&b64(SERVER_FINAL)).as_deref(), Some(REDACTED));

        let (mut s, _) = start_with("SCRAM-SHA-256", Some(&b64(CLIENT_FIRST)), Redaction::None);
        let r = s.response(&b64(CLIENT_FINAL));
        assert_eq!(r.line.as_bytes(), b64(CLIENT_FINAL));
        assert_eq!(r.auth.unwrap().secret.unwrap().as_str(), PROOF);
        assert_eq!(s.challenge(&b64(SERVER_FINAL)), None);
    }
}
