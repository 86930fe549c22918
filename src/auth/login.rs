//! LOGIN (draft-murchison-sasl-login): the server prompts `Username:` and
//! `Password:` (base64, `334 VXNlcm5hbWU6` and `334 UGFzc3dvcmQ6`) and the
//! client answers each in its own line; the user name may also come as the
//! initial response.

use super::{AuthRecord, Ctx, decode_b64, utf8_problem};

/// Where a LOGIN exchange is.
#[derive(Debug, Default)]
pub(super) struct Login {
    have_user: bool,
    have_password: bool,
}

/// What the next client line is taken to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    User,
    Password,
    Unexpected(&'static str),
}

/// A decoded LOGIN line.
pub(super) enum Decoded {
    /// The user name, as `user`.
    User(AuthRecord),
    /// The password, as `secret` and `fingerprint`.
    Password(AuthRecord),
    /// Redact whole, for this reason.
    Other(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Prompt {
    User,
    Password,
    Unknown,
}

impl Login {
    /// What the next line is, from the prompt that preceded it (`challenge`,
    /// still base64) and what came before. The prompt decides when it is
    /// recognised, otherwise the order does; but a line is only ever taken
    /// for the user name when no user name came yet. A server that asks for
    /// the user name twice (say, ignoring an initial response) may get the
    /// password from a client that counts steps, so that line is redacted.
    pub(super) fn next(&mut self, initial: bool, challenge: Option<&[u8]>) -> Step {
        let prompt = if initial { Prompt::User } else { prompt(challenge) };
        if !self.have_user && prompt != Prompt::Password {
            self.have_user = true;
            Step::User
        } else if self.have_user && prompt == Prompt::User {
            Step::Unexpected("the server asked for the user name again; redacted in case this is the password")
        } else if !self.have_password {
            self.have_password = true;
            Step::Password
        } else {
            Step::Unexpected("LOGIN has no client data after the password")
        }
    }
}

fn prompt(challenge: Option<&[u8]>) -> Prompt {
    let Some(text) = challenge.and_then(decode_b64) else { return Prompt::Unknown };
    let text = String::from_utf8_lossy(&text).to_ascii_lowercase();
    if text.contains("pass") {
        Prompt::Password
    } else if text.contains("user") || text.contains("name") {
        Prompt::User
    } else {
        Prompt::Unknown
    }
}

pub(super) fn decode(ctx: &Ctx, mechanism: &str, step: Step, data: &[u8]) -> Decoded {
    match step {
        Step::User => match decode_b64(data) {
            Some(user) => Decoded::User(AuthRecord {
                user: Some(ctx.identity(&user)),
                problem: utf8_problem(&[&user]),
                ..AuthRecord::new(mechanism)
            }),
            None => Decoded::Other("the user name is not base64"),
        },
        Step::Password => match decode_b64(data) {
            Some(password) => Decoded::Password(AuthRecord {
                secret: Some(ctx.secret(&password)),
                fingerprint: ctx.fingerprint(&password),
                ..AuthRecord::new(mechanism)
            }),
            None => Decoded::Other("the password is not base64"),
        },
        Step::Unexpected(problem) => Decoded::Other(problem),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::super::*;

    const USER_PROMPT: &[u8] = b"VXNlcm5hbWU6";
    const PASS_PROMPT: &[u8] = b"UGFzc3dvcmQ6";

    #[test]
    fn prompts_then_user_then_password() {
        let (mut s, r) = start("LOGIN", None);
        assert_eq!((r.line.as_str(), r.auth), ("AUTH LOGIN", None));
        assert_eq!(s.challenge(USER_PROMPT), None);
        let r = s.response(&b64(b"joe@example.com"));
        assert_eq!(r.line, "<redacted>");
        let a = r.auth.unwrap();
        assert_eq!((a.mechanism.as_str(), a.user.as_deref()), ("LOGIN", Some("joe@example.com")));
        assert!(a.secret.is_none() && a.fingerprint.is_none());
        assert_eq!(s.challenge(PASS_PROMPT), None);
        let r = s.response(&b64(b"hunter2"));
        assert_eq!(r.line, "<redacted>");
        let a = r.auth.unwrap();
        assert_eq!(a.user.as_deref(), Some("joe@example.com"), "the user is repeated with the password");
        assert!(a.secret.unwrap().is_redacted());
        assert_eq!(a.fingerprint, Some(key().fingerprint(b"hunter2")));
        assert!(!a.undecodable);
    }

    #[test]
    fn initial_response_is_the_user_name() {
        let (mut s, r) = start("login", Some(&b64(b"joe")));
        assert_eq!(r.line, "AUTH login <redacted>");
        assert_eq!(r.auth.unwrap().user.as_deref(), Some("joe"));
        let _ = s.challenge(PASS_PROMPT);
        let a = s.response(&b64(b"hunter2")).auth.unwrap();
        assert_eq!(a.fingerprint, Some(key().fingerprint(b"hunter2")));
        assert_eq!(a.user.as_deref(), Some("joe"));
    }

    #[test]
    fn unknown_prompts_go_by_order() {
        let (mut s, _) = start("LOGIN", None);
        let _ = s.challenge(&b64(b"Who are you?"));
        assert_eq!(s.response(&b64(b"joe")).auth.unwrap().user.as_deref(), Some("joe"));
        let _ = s.challenge(b"not base64!");
        let a = s.response(&b64(b"hunter2")).auth.unwrap();
        assert!(a.secret.unwrap().is_redacted());
        // A third line is not taken for anything.
        let _ = s.challenge(b"");
        let r = s.response(&b64(b"extra"));
        assert_eq!(r.line, "<redacted>");
        assert!(r.auth.unwrap().undecodable);
    }

    #[test]
    fn password_prompt_first_is_followed() {
        let (mut s, _) = start("LOGIN", None);
        let _ = s.challenge(PASS_PROMPT);
        let a = s.response(&b64(b"hunter2")).auth.unwrap();
        assert!(a.user.is_none());
        assert_eq!(a.fingerprint, Some(key().fingerprint(b"hunter2")));
    }

    #[test]
    fn second_user_prompt_is_redacted_as_a_possible_password() {
        // The server ignored the initial response; the client may now send the password.
        let (mut s, _) = start("LOGIN", Some(&b64(b"joe")));
        let _ = s.challenge(USER_PROMPT);
        let r = s.response(&b64(b"hunter2"));
        assert_eq!(r.line, "<redacted>");
        let a = r.auth.unwrap();
        assert!(a.undecodable);
        assert_eq!(a.user.as_deref(), Some("joe"));
        assert!(a.secret.unwrap().is_redacted());
    }

    #[test]
    fn malformed() {
        // Not base64 user name: redacted whole.
        let (mut s, _) = start("LOGIN", None);
        let _ = s.challenge(USER_PROMPT);
        let a = s.response(b"joe@example.com").auth.unwrap();
        assert!(a.undecodable && a.user.is_none());
        assert!(a.secret.unwrap().is_redacted());
        // A password in clear gets the fingerprint it would have had in base64.
        let _ = s.challenge(PASS_PROMPT);
        let r = s.response(b"hunter2!");
        assert_eq!(r.line, "<redacted>");
        let a = r.auth.unwrap();
        assert!(a.undecodable);
        assert_eq!(a.fingerprint, Some(key().fingerprint(b"hunter2!")));

        // Non-UTF-8 user name.
        let (_, r) = start("LOGIN", Some(&b64(b"j\xc3")));
        let a = r.auth.unwrap();
        assert_eq!(a.user.as_deref(), Some("j\u{fffd}"));
        assert!(a.problem.is_some());

        // Empty user name and password.
        let (mut s, _) = start("LOGIN", None);
        let _ = s.challenge(USER_PROMPT);
        let r = s.response(b"");
        assert_eq!((r.line.as_str(), r.auth.unwrap().user.as_deref()), ("", Some("")));
        let _ = s.challenge(PASS_PROMPT);
        let r = s.response(b"");
        assert_eq!(r.line, "");
        assert_eq!(r.auth.unwrap().secret.unwrap().as_str(), "");
    }

    #[test]
    fn cancel_after_the_user_name() {
        let (mut s, _) = start("LOGIN", Some(&b64(b"joe")));
        let _ = s.challenge(PASS_PROMPT);
        let r = s.response(b"*");
        assert_eq!(r.line, "*");
        let a = r.auth.unwrap();
        assert!(a.cancelled);
        assert_eq!(a.user.as_deref(), Some("joe"));
        assert!(a.secret.is_none());
    }

    #[test]
    fn redaction_levels() {
        let (mut s, r) = start_with("LOGIN", Some(&b64(b"joe")), Redaction::Identities);
        assert_eq!(r.line, "AUTH LOGIN <redacted>");
        assert_eq!(r.auth.unwrap().user, Some(key().identity_fingerprint(b"joe")));
        let _ = s.challenge(PASS_PROMPT);
        let a = s.response(&b64(b"hunter2")).auth.unwrap();
        assert_eq!(a.user, Some(key().identity_fingerprint(b"joe")));
        assert!(a.secret.unwrap().is_redacted());

        let (mut s, r) = start_with("LOGIN", Some(&b64(b"joe")), Redaction::None);
        assert_eq!(r.line, format!("AUTH LOGIN {}", b64s(b"joe")));
        let _ = s.challenge(PASS_PROMPT);
        let r = s.response(&b64(b"hunter2"));
        assert_eq!(r.line, b64s(b"hunter2"));
        assert_eq!(r.auth.unwrap().secret.unwrap().as_str(), "hunter2");
    }
}
