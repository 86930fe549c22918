//! Sans-IO: credentials put in place of redacted AUTH data (`--auth-user`,
//! `--auth-password-env`), re-encoded for the recorded mechanism.
//!
//! Only lines the recording redacted are rebuilt; a recording made with
//! `--redact none` is replayed as sent. The user is `--auth-user`, else the
//! identity the recording decoded; the password (or bearer token) is the
//! environment variable's value, else the recorded secret when it was not
//! redacted (an empty one). PLAIN, LOGIN, XOAUTH2 and OAUTHBEARER answers are
//! built before connecting; CRAM-MD5's depends on the target's challenge and
//! is computed when it arrives ([`cram_md5`]). SCRAM and unknown mechanisms
//! are refused: their proofs depend on the server's nonce and salt.

use crate::auth::{AuthRecord, cram_md5_hmac};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::Mac;
use std::fmt;

/// What `--auth-user` and `--auth-password-env` gave.
#[derive(Clone, Default)]
pub struct Credentials {
    pub user: Option<String>,
    pub password: Option<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let password = self.password.as_ref().map(|_| crate::auth::REDACTED);
        f.debug_struct("Credentials").field("user", &self.user).field("password", &password).finish()
    }
}

/// The client data to send in place of a redacted one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Base64 text, ready to send.
    Text(Secret),
    /// Computed from the target's challenge.
    CramMd5(CramMd5),
}

/// Text that holds a secret; `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(crate::auth::REDACTED)
    }
}

/// A CRAM-MD5 answer waiting for its challenge (RFC 2195).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CramMd5 {
    pub user: String,
    pub password: Secret,
}

impl CramMd5 {
    /// The response (base64) to the target's `334` text; `None` when the
    /// challenge is not base64.
    pub fn respond(&self, challenge_b64: &[u8]) -> Option<String> {
        let challenge = B64.decode(challenge_b64.trim_ascii()).ok()?;
        let mac = cram_md5_hmac(self.password.0.as_bytes(), &challenge).finalize().into_bytes();
        let digest = crate::hex::lower_hex(&mac);
        Some(B64.encode(format!("{} {digest}", self.user)))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error(
        "AUTH {mechanism} for {user} needs the {what}, which the recording redacted: pass --auth-password-env VAR, VAR naming an environment variable that holds it"
    )]
    MissingPassword { mechanism: String, user: String, what: &'static str },
    #[error("AUTH {mechanism}: the recording holds no user name; pass --auth-user USER")]
    MissingUser { mechanism: String },
    #[error("AUTH {mechanism}: the {what} was recorded as a fingerprint (--redact identities); pass --auth-user USER")]
    Fingerprinted { mechanism: String, what: &'static str },
    #[error(
        "AUTH {mechanism} cannot be replayed with other credentials (replay re-encodes PLAIN, LOGIN, CRAM-MD5, XOAUTH2 and OAUTHBEARER); record it with --redact none to replay it as sent"
    )]
    Unsupported { mechanism: String },
    #[error(
        "AUTH {mechanism}: the client data could not be decoded when recorded, so it cannot be re-encoded; record it with --redact none to replay it as sent"
    )]
    Undecodable { mechanism: String },
}

/// The answer to send in place of the redacted client data described by
/// `auth`. `identities_redacted`: the recording replaced identities by
/// fingerprints, so they cannot be sent.
pub fn answer(auth: &AuthRecord, creds: &Credentials, identities_redacted: bool) -> Result<Answer, CredentialError> {
    let mechanism = auth.mechanism.to_ascii_uppercase();
    if auth.undecodable {
        return Err(CredentialError::Undecodable { mechanism });
    }
    let recorded_user = if mechanism == "PLAIN" { &auth.authcid } else { &auth.user };
    let user = match (&creds.user, recorded_user) {
        (Some(user), _) => user.clone(),
        (None, Some(_)) if identities_redacted => {
            return Err(CredentialError::Fingerprinted { mechanism, what: "user" });
        }
        (None, Some(user)) => user.clone(),
        (None, None) => return Err(CredentialError::MissingUser { mechanism }),
    };
    // LOGIN's first continuation carries only the user.
    if mechanism == "LOGIN" && auth.secret.is_none() {
        return Ok(Answer::Text(Secret(B64.encode(&user))));
    }
    let what = if mechanism.contains("OAUTH") { "token" } else { "password" };
    let password = match (&creds.password, &auth.secret) {
        (Some(password), _) => password.clone(),
        (None, Some(secret)) if !secret.is_redacted() => secret.as_str().to_owned(),
        (None, _) => return Err(CredentialError::MissingPassword { mechanism, user, what }),
    };
    let blob = match mechanism.as_str() {
        "PLAIN" => {
            let authzid = auth.authzid.as_deref().unwrap_or("");
            if identities_redacted && !authzid.is_empty() {
                return Err(CredentialError::Fingerprinted { mechanism, what: "authorization identity" });
            }
            format!("{authzid}\0{user}\0{password}")
        }
        "LOGIN" => password,
        "CRAM-MD5" => return Ok(Answer::CramMd5(CramMd5 { user, password: Secret(password) })),
        "XOAUTH2" => format!("user={user}\x01auth=Bearer {password}\x01\x01"),
        "OAUTHBEARER" => format!("n,a={},\x01auth=Bearer {password}\x01\x01", saslname(&user)),
        _ => return Err(CredentialError::Unsupported { mechanism }),
    };
    Ok(Answer::Text(Secret(B64.encode(blob))))
}

/// RFC 5801's saslname: `,` and `=` escaped.
fn saslname(name: &str) -> String {
    name.replace('=', "=3D").replace(',', "=2C")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{FingerprintKey, Redaction, SaslSession};

    fn creds(user: Option<&str>, password: Option<&str>) -> Credentials {
        Credentials { user: user.map(str::to_owned), password: password.map(str::to_owned) }
    }

    /// What smtptap records for `AUTH <line>` then `continuations`, secrets
    /// redacted: the auth record of each client line that carries one.
    fn recorded(line: &str, challenges: &[&[u8]], continuations: &[&[u8]]) -> Vec<AuthRecord> {
        let key = FingerprintKey::from_bytes([7; 32]);
        let (mut s, first) = SaslSession::from_command_line(line.as_bytes(), Redaction::Secrets, &key).unwrap();
        let mut records: Vec<AuthRecord> = first.auth.into_iter().collect();
        for (challenge, response) in challenges.iter().zip(continuations) {
            let _ = s.challenge(challenge);
            records.extend(s.response(response).auth);
        }
        records
    }

    fn text(answer: Result<Answer, CredentialError>) -> Vec<u8> {
        match answer.unwrap() {
            Answer::Text(t) => B64.decode(t.0).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn plain_is_reencoded_with_the_recorded_or_given_user() {
        let ir = B64.encode("admin\0ann@x.test\0old");
        let auth = &recorded(&format!("AUTH PLAIN {ir}"), &[], &[])[0];
        assert_eq!(text(answer(auth, &creds(None, Some("s3cret")), false)), b"admin\0ann@x.test\0s3cret");
        assert_eq!(text(answer(auth, &creds(Some("bob"), Some("pw")), false)), b"admin\0bob\0pw");
    }

    #[test]
    fn login_sends_the_user_then_the_password() {
        let records = recorded("AUTH LOGIN", &[b"VXNlcm5hbWU6", b"UGFzc3dvcmQ6"], &[b"YW5u", b"b2xk"]);
        assert_eq!(records.len(), 2);
        let c = creds(None, Some("new"));
        assert_eq!(text(answer(&records[0], &c, false)), b"ann");
        assert_eq!(text(answer(&records[1], &c, false)), b"new");
        assert_eq!(text(answer(&records[0], &creds(Some("bob"), Some("x")), false)), b"bob");
    }

    #[test]
    fn oauth_tokens_are_reencoded() {
        let xo = B64.encode("user=ann@x.test\x01auth=Bearer old\x01\x01");
        let auth = &recorded(&format!("AUTH XOAUTH2 {xo}"), &[], &[])[0];
        assert_eq!(text(answer(auth, &creds(None, Some("tok")), false)), b"user=ann@x.test\x01auth=Bearer tok\x01\x01");
        let ob = B64.encode("n,a=a=3Db=2Cc,\x01auth=Bearer old\x01\x01");
        let auth = &recorded(&format!("AUTH OAUTHBEARER {ob}"), &[], &[])[0];
        assert_eq!(text(answer(auth, &creds(None, Some("tok")), false)), b"n,a=a=3Db=2Cc,\x01auth=Bearer tok\x01\x01");
    }

    #[test]
    fn cram_md5_is_recomputed_from_the_new_challenge() {
        let challenge = B64.encode("<1.2@old>");
        let records = recorded("AUTH CRAM-MD5", &[challenge.as_bytes()], &[B64.encode("tim 0123").as_bytes()]);
        let Ok(Answer::CramMd5(cram)) = answer(&records[0], &creds(None, Some("tanstaaftanstaaf")), false) else {
            panic!("not a CRAM-MD5 answer");
        };
        assert_eq!(cram.user, "tim");
        // RFC 2195's example.
        let new = b"PDE4OTYuNjk3MTcwOTUyQHBvc3RvZmZpY2UucmVzdG9uLm1jaS5uZXQ+";
        assert_eq!(cram.respond(new).unwrap(), "dGltIGI5MTNhNjAyYzdlZGE3YTQ5NWI0ZTZlNzMzNGQzODkw");
        assert_eq!(cram.respond(b"not base64!"), None);
    }

    #[test]
    fn what_is_missing_names_the_flag() {
        let auth = &recorded(&format!("AUTH PLAIN {}", B64.encode("\0ann\0pw")), &[], &[])[0];
        let err = answer(auth, &creds(Some("bob"), None), false).unwrap_err();
        assert!(err.to_string().contains("--auth-password-env VAR") && err.to_string().contains("for bob"), "{err}");
        let err = answer(auth, &creds(None, Some("pw")), true).unwrap_err();
        assert!(err.to_string().contains("fingerprint") && err.to_string().contains("--auth-user"), "{err}");
        let xo = &recorded(&format!("AUTH XOAUTH2 {}", B64.encode("user=a\x01auth=Bearer t\x01\x01")), &[], &[])[0];
        assert!(answer(xo, &creds(None, None), false).unwrap_err().to_string().contains("needs the token"));
        let scram = &recorded(&format!("AUTH SCRAM-SHA-256 {}", B64.encode("n,,n=ann,r=abc")), &[], &[])[0];
        let err = answer(scram, &creds(None, Some("pw")), false).unwrap_err();
        assert_eq!(err, CredentialError::Unsupported { mechanism: "SCRAM-SHA-256".into() });
        let junk = &recorded("AUTH PLAIN !!!", &[], &[])[0];
        assert!(matches!(answer(junk, &creds(None, Some("pw")), false), Err(CredentialError::Undecodable { .. })));
    }

    #[test]
    fn debug_never_shows_a_secret() {
        let cram = CramMd5 { user: "u".into(), password: Secret("hunter2".into()) };
        let shown = format!(
            "{:?} {:?} {:?}",
            creds(Some("u"), Some("hunter2")),
            Answer::Text(Secret(B64.encode("hunter2"))),
            Answer::CramMd5(cram)
        );
        assert!(!shown.contains("hunter2") && !shown.contains(&B64.encode("hunter2")), "{shown}");
    }
}
