//! PLAIN (RFC 4616): `authzid NUL authcid NUL passwd`, base64, as the initial
//! response or after an empty `334`.

use super::{AuthRecord, Ctx, decode_b64, utf8_problem};

/// Decodes PLAIN's only client message. Anything but exactly three fields is
/// redacted whole, and so is a non-empty authzid with an empty password (a
/// client that left out the authzid and added a trailing NUL would otherwise
/// have its password shown as the authcid).
pub(super) fn decode(ctx: &Ctx, mechanism: &str, data: &[u8]) -> AuthRecord {
    let Some(blob) = decode_b64(data) else {
        return ctx.undecodable(mechanism, data, "not base64");
    };
    let fields: Vec<&[u8]> = blob.split(|&b| b == 0).collect();
    let [authzid, authcid, passwd] = fields[..] else {
        let problem = match fields.len() {
            1 if blob.is_empty() => "empty; expected authzid NUL authcid NUL password".to_owned(),
            n => format!("{} NUL separators; expected authzid NUL authcid NUL password", n - 1),
        };
        return ctx.undecodable(mechanism, data, &problem);
    };
    if !authzid.is_empty() && passwd.is_empty() {
        return ctx.undecodable(mechanism, data, "authzid set and password empty: the fields may be out of place");
    }
    AuthRecord {
        authzid: Some(ctx.identity(authzid)),
        authcid: Some(ctx.identity(authcid)),
        secret: Some(ctx.secret(passwd)),
        fingerprint: ctx.fingerprint(passwd),
        problem: utf8_problem(&[authzid, authcid]),
        ..AuthRecord::new(mechanism)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::super::*;

    #[test]
    fn initial_response() {
        let (_, r) = start("PLAIN", Some(&b64(b"\0joe@example.com\0hunter2")));
        assert_eq!(r.line, "AUTH PLAIN <redacted>");
        let a = r.auth.unwrap();
        assert_eq!(a.mechanism, "PLAIN");
        assert_eq!(a.authzid.as_deref(), Some(""));
        assert_eq!(a.authcid.as_deref(), Some("joe@example.com"));
        assert!(a.secret.unwrap().is_redacted());
        assert_eq!(a.fingerprint, Some(key().fingerprint(b"hunter2")));
        assert!(!a.undecodable && a.problem.is_none());
    }

    #[test]
    fn record_matches_the_spec_example() {
        let (_, r) = start("PLAIN", Some(&b64(b"\0moonpoint@example.com\0pw")));
        let json = serde_json::to_string(&r.auth.unwrap()).unwrap();
        let fp = key().fingerprint(b"pw");
        assert_eq!(
            json,
            format!(
                r#"{{"mechanism":"PLAIN","authzid":"","authcid":"moonpoint@example.com","secret":"<redacted>","fingerprint":"{fp}"}}"#
            )
        );
        let back: AuthRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back.authcid.as_deref(), Some("moonpoint@example.com"));
        assert!(back.secret.unwrap().is_redacted());
    }

    #[test]
    fn after_an_empty_334_with_the_mechanism_as_typed() {
        let (mut s, r) = start("plain", None);
        assert_eq!(r.line, "AUTH plain");
        assert!(r.auth.is_none());
        assert_eq!(s.challenge(b""), None);
        let r = s.response(&b64(b"admin\0joe\0hunter2"));
        assert_eq!(r.line, "<redacted>");
        let a = r.auth.unwrap();
        assert_eq!(a.mechanism, "PLAIN");
        assert_eq!((a.authzid.as_deref(), a.authcid.as_deref()), (Some("admin"), Some("joe")));
    }

    #[test]
    fn equals_sign_is_the_empty_initial_response() {
        let (_, r) = start("PLAIN", Some(b"="));
        assert_eq!(r.line, "AUTH PLAIN =");
        let a = r.auth.unwrap();
        assert!(a.undecodable);
        assert_eq!(a.secret.unwrap().as_str(), "");
    }

    #[test]
    fn empty_password_is_shown_empty() {
        let (_, r) = start("PLAIN", Some(&b64(b"\0joe\0")));
        let a = r.auth.unwrap();
        assert_eq!(a.authcid.as_deref(), Some("joe"));
        assert_eq!(a.secret.unwrap().as_str(), "");
    }

    #[test]
    fn malformed_is_redacted_whole() {
        let cases: [(&[u8], &str); 7] = [
            (b"not base64!", "not base64"),
            (b"am9lOmh1bnRlcjI=", "0 NUL separators"),     // joe:hunter2
            (b"am9lAGh1bnRlcjI=", "1 NUL separators"),     // joe\0hunter2
            (b"AGpvZQBodW50ZXIyAHg=", "3 NUL separators"), // \0joe\0hunter2\0x
            (b"am9lAGh1bnRlcjIA", "the fields may be out of place"), // joe\0hunter2\0
            (b"am9l AGh1", "not base64"),
            (b"*", "not base64"), // no cancel as an initial response
        ];
        for (data, problem) in cases {
            let (_, r) = start("PLAIN", Some(data));
            assert_eq!(r.line, "AUTH PLAIN <redacted>");
            let a = r.auth.unwrap();
            assert!(a.undecodable, "{data:?}");
            assert!(a.problem.as_deref().unwrap().contains(problem), "{data:?}: {:?}", a.problem);
            assert_eq!((a.authzid, a.authcid, a.user), (None, None, None));
            assert!(a.secret.unwrap().is_redacted());
            assert_eq!(a.fingerprint, Some(key().fingerprint(data)));
        }
    }

    #[test]
    fn unpadded_base64_is_accepted() {
        let (_, r) = start("PLAIN", Some(b"AGpvZQBodW50ZXIy")); // \0joe\0hunter2, no padding needed
        assert_eq!(r.auth.unwrap().authcid.as_deref(), Some("joe"));
        let (_, r) = start("PLAIN", Some(b"AGpvZQBodW50ZXIzNA")); // \0joe\0hunter34, padding left out
        assert_eq!(r.auth.unwrap().fingerprint, Some(key().fingerprint(b"hunter34")));
    }

    #[test]
    fn non_utf8_identity_is_decoded_lossily_and_flagged() {
        let (_, r) = start("PLAIN", Some(&b64(b"\0j\xffe\0hunter2")));
        let a = r.auth.unwrap();
        assert_eq!(a.authcid.as_deref(), Some("j\u{fffd}e"));
        assert!(a.problem.unwrap().contains("UTF-8"));
        assert!(!a.undecodable);
        assert!(a.secret.unwrap().is_redacted());
    }

    #[test]
    fn a_second_response_is_redacted_whole() {
        let (mut s, _) = start("PLAIN", Some(&b64(b"\0joe\0hunter2")));
        let _ = s.challenge(b"");
        let r = s.response(&b64(b"\0joe\0hunter2"));
        assert_eq!(r.line, "<redacted>");
        assert!(r.auth.unwrap().undecodable);
    }

    #[test]
    fn redaction_levels() {
        let blob = b64s(b"admin\0joe\0hunter2");
        let (_, r) = start_with("PLAIN", Some(blob.as_bytes()), Redaction::Identities);
        assert_eq!(r.line, "AUTH PLAIN <redacted>");
        let a = r.auth.unwrap();
        assert_eq!(a.authzid, Some(key().identity_fingerprint(b"admin")));
        assert_eq!(a.authcid, Some(key().identity_fingerprint(b"joe")));
        assert!(a.secret.unwrap().is_redacted());
        assert_eq!(a.fingerprint, Some(key().fingerprint(b"hunter2")));

        let (_, r) = start_with("PLAIN", Some(blob.as_bytes()), Redaction::None);
        assert_eq!(r.line, format!("AUTH PLAIN {blob}"));
        let a = r.auth.clone().unwrap();
        assert_eq!((a.authzid.as_deref(), a.authcid.as_deref()), (Some("admin"), Some("joe")));
        assert_eq!(a.secret.as_ref().unwrap().as_str(), "hunter2");
        assert_eq!(a.fingerprint, Some(key().fingerprint(b"hunter2")));
        // Even then, Debug shows neither the secret nor the real line.
        let debug = format!("{r:?}");
        assert!(!debug.contains("hunter2") && !debug.contains(&blob), "{debug}");

        let (_, r) = start_with("PLAIN", Some(&b64(b"\0\0pw")), Redaction::Identities);
        assert_eq!(r.auth.unwrap().authcid.as_deref(), Some(""), "empty identities stay empty");
    }
}
