//! What servers' refusals mean, in plain words, and what to change.
//!
//! [`explain`] reads a negative reply (code, enhanced status, text, and the
//! command it answered) and names the problem with advice for a person who
//! is not an SMTP expert. Pure: a table of what real servers (Postfix, Exim,
//! Gmail, Microsoft 365) send.

/// The kinds of refusal the rules tell apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `454 4.7.0 TLS not available`: the reply to STARTTLS.
    StartTlsRefused,
    /// `530 5.7.0 Must issue a STARTTLS command first`, `538 5.7.11`.
    StartTlsRequired,
    /// `534 5.7.9 Application-specific password required`.
    AppPasswordRequired,
    /// `535 5.7.139 … SmtpClientAuthentication is disabled`.
    AuthDisabled,
    /// `535 5.7.8 Authentication credentials invalid`.
    AuthFailed,
    /// `504 5.5.4 Unrecognized authentication type`.
    AuthMechanismUnsupported,
    /// `530 5.7.0 Authentication required`, `5.7.57`.
    AuthRequired,
    /// `554 5.7.1 <x@y>: Relay access denied`.
    RelayDenied,
    /// `552 5.3.4 Message size exceeds fixed limit`, `5.2.3`.
    SizeExceeded,
    /// `555 5.5.4 Unsupported option`.
    BadParameter,
    /// `550 5.5.2 … bare <LF>`.
    BareLf,
    /// `553 5.7.1 Sender address rejected: not owned by user`, `5.1.7`, `5.1.8`.
    SenderRejected,
    /// `550 5.1.1 User unknown`.
    RecipientUnknown,
    /// `552 5.2.2 Mailbox full`.
    MailboxFull,
    /// `452 4.5.3 Too many recipients`.
    TooManyRecipients,
    /// `554 5.7.1 Client host rejected`, block lists.
    Blocked,
    /// `550 5.7.1` for content or policy (spam, DMARC).
    PolicyRejected,
    /// `451 4.7.1` greylisting, `450`, `451`, `452`.
    Temporary,
    /// `421`: the server is closing the connection.
    Closing,
    /// `500`, `501`: the server did not understand.
    Syntax,
    /// `502`: not implemented.
    NotImplemented,
    /// `503`: bad sequence of commands.
    BadSequence,
    /// Any other refusal.
    Other,
}

/// A refusal explained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    pub kind: Kind,
    /// What the server meant.
    pub meaning: &'static str,
    /// What to change, for a person setting up a mail client.
    pub advice: &'static str,
}

/// Explains a `4xx`/`5xx` reply to `verb`: the upper-cased command, `AUTH`
/// for any line of an AUTH dialog, `MESSAGE` for the end of message
/// content, `None` for the greeting.
/// Returns `None` for replies that are not refusals.
pub fn explain(code: u16, enhanced: Option<&str>, text: &str, verb: Option<&str>) -> Option<Explanation> {
    if code < 400 {
        return None;
    }
    let enhanced = enhanced.unwrap_or("");
    let lower = text.to_ascii_lowercase();
    let has = |words: &[&str]| words.iter().any(|w| lower.contains(w));
    let status = |prefix: &str| enhanced == prefix || enhanced.starts_with(&format!("{prefix}."));
    let auth = verb == Some("AUTH");
    let (kind, meaning, advice) = if verb == Some("STARTTLS") {
        (
            Kind::StartTlsRefused,
            "the server would not start TLS, so the session can only go on unencrypted",
            "A client set to require encryption stops here, which is right; if the server should offer TLS, ask its administrator (or check that the client talks to the right server and port).",
        )
    } else if has(&["starttls", "tls required", "encryption required", "must issue a starttls"])
        || status("5.7.11")
        || code == 538
    {
        (
            Kind::StartTlsRequired,
            "the server wants the connection encrypted first",
            "Turn on encryption for the outgoing server: Thunderbird: Connection security 'STARTTLS' (port 587) or 'SSL/TLS' (port 465); Outlook: 'Use the following type of encrypted connection: STARTTLS'.",
        )
    } else if status("5.7.9") || has(&["application-specific password", "app password"]) {
        (
            Kind::AppPasswordRequired,
            "the account needs an app password (or OAuth2) instead of the normal password",
            "Create an app password in the mail provider's account security settings and use it as the password, or choose OAuth2 as the authentication method (Thunderbird: Authentication method 'OAuth2').",
        )
    } else if status("5.7.139") || has(&["smtpclientauthentication is disabled", "smtp auth is disabled"]) {
        (
            Kind::AuthDisabled,
            "password login over SMTP (SMTP AUTH) is switched off for this account",
            "Ask the mail administrator to enable authenticated SMTP for the mailbox (Microsoft 365: 'Authenticated SMTP' in the user's mail settings), or use OAuth2.",
        )
    } else if auth
        && (status("5.5.4")
            || code == 504
            || has(&["unrecognized authentication", "unsupported authentication", "mechanism not"]))
    {
        (
            Kind::AuthMechanismUnsupported,
            "the server does not support the authentication method the client chose",
            "Pick a method the server offers: Thunderbird: Authentication method 'Normal password' (PLAIN/LOGIN) rather than 'Encrypted password' (CRAM-MD5).",
        )
    } else if (auth && code >= 500 && code != 503)
        || code == 535
        || status("5.7.8")
        || has(&["authentication failed", "credentials invalid"])
    {
        (
            Kind::AuthFailed,
            "the server rejected the user name or password",
            "Check the user name and password of the outgoing (SMTP) server: most providers want the full email address as user name, and an app password when two-factor login is on.",
        )
    } else if status("5.7.57")
        || has(&["authentication required", "must authenticate", "not authenticated", "authentication is required"])
        || (code == 530 && status("5.7.0"))
    {
        (
            Kind::AuthRequired,
            "the server only takes mail from logged-in users",
            "Turn on authentication for the outgoing server: Thunderbird: Authentication method 'Normal password' with the account's user name; Outlook: 'My outgoing server (SMTP) requires authentication'.",
        )
    } else if has(&["relay"]) || (verb == Some("RCPT") && status("5.7.1") && !has(&["spam", "policy", "blocked"])) {
        (
            Kind::RelayDenied,
            "the server will not pass mail on to other domains for this client",
            "Log in before sending (Thunderbird: outgoing server Authentication method 'Normal password', port 587 with STARTTLS), and send through your own provider's server rather than the recipient's.",
        )
    } else if has(&["bare <lf>", "bare lf", "bare linefeed", "bare newline", "bare <cr>", "bare cr"]) {
        (
            Kind::BareLf,
            "the message has lines ending in a lone LF (or CR) instead of CRLF",
            "The sending program must end every line with CRLF; if it is your own code, convert line endings before sending (e.g. Python's email.policy.SMTP).",
        )
    } else if has(&["too many recipients"]) || status("4.5.3") || status("5.5.3") {
        (
            Kind::TooManyRecipients,
            "there are more recipients than the server takes in one message",
            "Send to fewer recipients per message, or split the list into several messages.",
        )
    } else if status("5.3.4")
        || status("5.2.3")
        || (code == 552 && verb != Some("RCPT"))
        || (code >= 500 && has(&["too large", "too big", "size exceeds", "exceeds size", "message size"]))
    {
        (
            Kind::SizeExceeded,
            "the message is bigger than the server accepts",
            "Send smaller attachments (or a link to a file-sharing service instead); the server's SIZE limit is in its EHLO reply.",
        )
    } else if status("5.5.4") || code == 555 {
        (
            Kind::BadParameter,
            "the server did not accept a parameter of the command (such as SIZE=, BODY=8BITMIME or SMTPUTF8)",
            "Use only the extensions the server offers in its EHLO reply; a client that sends them anyway needs an update or a plainer setting (e.g. no UTF-8 addresses).",
        )
    } else if status("5.2.2") || has(&["mailbox full", "quota", "over quota", "insufficient storage"]) {
        (
            Kind::MailboxFull,
            "the recipient's mailbox is full",
            "Nothing to change in the client: the recipient must make room, or try again later.",
        )
    } else if status("5.1.1")
        || status("5.1.10")
        || has(&["user unknown", "no such user", "does not exist", "unknown user", "recipient not found"])
    {
        (
            Kind::RecipientUnknown,
            "the recipient address does not exist",
            "Check the recipient's address for typos; nothing in the client settings causes this.",
        )
    } else if (verb == Some("MAIL") && (code == 553 || status("5.7.1") || status("5.1.0")))
        || status("5.1.7")
        || status("5.1.8")
        || has(&["sender address rejected", "not owned by", "sender rejected", "send as"])
    {
        (
            Kind::SenderRejected,
            "the server does not let this account send with this sender address",
            "Set the From address of the identity in the client to the account's own address (Thunderbird: Account Settings → Email Address), or ask the provider to allow sending as the other address.",
        )
    } else if has(&["greylist", "graylist", "try again later"]) && code < 500 {
        (
            Kind::Temporary,
            "greylisting: the server turns away first attempts from new senders for a few minutes",
            "Nothing to change: a proper client retries after a few minutes and the mail goes through.",
        )
    } else if has(&["blocked", "blacklist", "blocklist", "spamhaus", "client host rejected"])
        || (verb.is_none() && code == 554)
    {
        (
            Kind::Blocked,
            "the server refuses this client's network address (a block list or a firewall rule)",
            "Send through your own provider's submission server (port 587, with login) instead of directly to the recipient's server, or ask your provider to delist the address.",
        )
    } else if status("5.7") || status("5.7.1") || has(&["spam", "policy", "dmarc", "spf", "dkim"]) {
        (
            Kind::PolicyRejected,
            "the server refused the message by policy (spam filter, SPF/DKIM/DMARC, or content rules)",
            "Send through the provider that owns the From domain, with login, so SPF/DKIM/DMARC pass; the server's text says which rule applied.",
        )
    } else if code == 421 {
        (
            Kind::Closing,
            "the server is closing the connection (overloaded, shutting down, or the client was too slow)",
            "Usually temporary: the client should retry later; if it keeps happening, check for a firewall or a too-short timeout.",
        )
    } else if code < 500 {
        (
            Kind::Temporary,
            "a temporary refusal (greylisting, a busy server, or a limit reached)",
            "Nothing to change now: a proper client retries later and the mail goes through; if it never does, read the server's text.",
        )
    } else if code == 503 {
        (
            Kind::BadSequence,
            "commands came in an order the server does not accept (e.g. RCPT before MAIL, or AUTH twice)",
            "Usually a client bug or a half-finished earlier step; check the step before this one in the transcript.",
        )
    } else if code == 502 {
        (
            Kind::NotImplemented,
            "the server does not support this command",
            "Use only what the server offers in its EHLO reply; choose a plainer setting in the client.",
        )
    } else if code == 500 || code == 501 {
        (
            Kind::Syntax,
            "the server did not understand the command or its arguments",
            "Check the address or command for typos and stray characters; a client that sends this needs a fix.",
        )
    } else {
        (Kind::Other, "the server refused", "Read the server's text above; it usually names the reason.")
    };
    Some(Explanation { kind, meaning, advice })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(code: u16, enhanced: &str, text: &str, verb: Option<&str>) -> Option<Kind> {
        let e = (!enhanced.is_empty()).then_some(enhanced);
        explain(code, e, text, verb).map(|x| x.kind)
    }

    #[test]
    fn positive_replies_need_no_explaining() {
        assert_eq!(kind(250, "2.0.0", "Ok", Some("MAIL")), None);
        assert_eq!(kind(334, "", "VXNlcm5hbWU6", Some("AUTH")), None);
    }

    #[test]
    fn common_refusals_are_told_apart() {
        let cases = [
            (530, "5.7.0", "5.7.0 Must issue a STARTTLS command first", Some("MAIL"), Kind::StartTlsRequired),
            (454, "4.7.0", "4.7.0 TLS not available due to local problem", Some("STARTTLS"), Kind::StartTlsRefused),
            (
                538,
                "5.7.11",
                "5.7.11 Encryption required for requested authentication mechanism",
                Some("AUTH"),
                Kind::StartTlsRequired,
            ),
            (
                535,
                "5.7.8",
                "5.7.8 Error: authentication failed: authentication failure",
                Some("AUTH"),
                Kind::AuthFailed,
            ),
            (535, "5.7.3", "5.7.3 Authentication unsuccessful", Some("AUTH"), Kind::AuthFailed),
            (534, "5.7.9", "5.7.9 Application-specific password required.", Some("AUTH"), Kind::AppPasswordRequired),
            (
                535,
                "5.7.139",
                "5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant.",
                Some("AUTH"),
                Kind::AuthDisabled,
            ),
            (504, "5.5.4", "5.5.4 Unrecognized authentication type", Some("AUTH"), Kind::AuthMechanismUnsupported),
            (530, "5.7.0", "5.7.0 Authentication Required.", Some("MAIL"), Kind::AuthRequired),
            (530, "5.7.57", "5.7.57 Client not authenticated to send mail.", Some("MAIL"), Kind::AuthRequired),
            (554, "5.7.1", "5.7.1 <b@y.test>: Relay access denied", Some("RCPT"), Kind::RelayDenied),
            (550, "5.7.1", "5.7.1 Relaying denied", Some("RCPT"), Kind::RelayDenied),
            (
                550,
                "5.7.54",
                "5.7.54 SMTP; Unable to relay recipient in non-accepted domain",
                Some("RCPT"),
                Kind::RelayDenied,
            ),
            (552, "5.3.4", "5.3.4 Message size exceeds fixed limit", Some("MESSAGE"), Kind::SizeExceeded),
            (552, "5.2.3", "5.2.3 Message length exceeds administrative limit", Some("MESSAGE"), Kind::SizeExceeded),
            (552, "", "Message size exceeds fixed maximum message size", Some("MAIL"), Kind::SizeExceeded),
            (555, "5.5.4", "5.5.4 Unsupported option: SMTPUTF8", Some("MAIL"), Kind::BadParameter),
            (501, "5.5.4", "5.5.4 Syntax: MAIL FROM:<address>", Some("MAIL"), Kind::BadParameter),
            (550, "5.5.2", "5.5.2 Error: bare <LF> received", Some("MESSAGE"), Kind::BareLf),
            (554, "5.7.1", "5.7.1 Message rejected as spam", Some("MESSAGE"), Kind::PolicyRejected),
            (454, "4.7.0", "4.7.0 Temporary authentication failure", Some("AUTH"), Kind::Temporary),
            (
                553,
                "5.7.1",
                "5.7.1 <x@z.test>: Sender address rejected: not owned by user a@x.test",
                Some("MAIL"),
                Kind::SenderRejected,
            ),
            (
                550,
                "5.1.1",
                "5.1.1 <nobody@y.test>: Recipient address rejected: User unknown",
                Some("RCPT"),
                Kind::RecipientUnknown,
            ),
            (552, "5.2.2", "5.2.2 Mailbox full", Some("RCPT"), Kind::MailboxFull),
            (452, "4.5.3", "4.5.3 Error: too many recipients", Some("RCPT"), Kind::TooManyRecipients),
            (
                554,
                "5.7.1",
                "5.7.1 Service unavailable; Client host [1.2.3.4] blocked using zen.spamhaus.org",
                Some("RCPT"),
                Kind::Blocked,
            ),
            (554, "", "mx.example ESMTP not accepting messages", None, Kind::Blocked),
            (
                550,
                "5.7.26",
                "5.7.26 Unauthenticated email from x.test is not accepted due to domain's DMARC policy",
                Some("MESSAGE"),
                Kind::PolicyRejected,
            ),
            (450, "4.7.1", "4.7.1 <b@y.test>: Recipient address rejected: Greylisted", Some("RCPT"), Kind::Temporary),
            (421, "4.3.2", "4.3.2 Service shutting down", Some("MAIL"), Kind::Closing),
            (503, "5.5.1", "5.5.1 Error: need MAIL command", Some("RCPT"), Kind::BadSequence),
            (502, "5.5.1", "5.5.1 Error: command not implemented", Some("XFOO"), Kind::NotImplemented),
            (500, "5.5.2", "5.5.2 Error: command not recognized", Some("XFOO"), Kind::Syntax),
            (599, "", "something odd", Some("NOOP"), Kind::Other),
        ];
        for (code, enhanced, text, verb, want) in cases {
            assert_eq!(kind(code, enhanced, text, verb), Some(want), "{code} {text}");
        }
    }

    #[test]
    fn every_explanation_gives_advice() {
        let e = explain(535, Some("5.7.8"), "bad", Some("AUTH")).unwrap();
        assert!(e.advice.contains("user name and password"));
        assert!(!e.meaning.is_empty());
    }
}
