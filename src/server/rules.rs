//! Which envelopes and sizes the test server refuses: sans-IO checks over
//! the arguments of `MAIL` and `RCPT`, each answering with the reply to send.

/// `550` for a recipient at a refused domain.
pub const RELAYING_DENIED: &str = "550 5.7.1 Relaying denied";
/// `550` for a refused envelope sender.
pub const SENDER_REJECTED: &str = "550 5.7.1 Sender rejected";
/// `552` for a message, declared or received, over the size limit.
pub const TOO_BIG: &str = "552 5.3.4 Message size exceeds fixed limit";

/// Envelope senders and recipient domains to refuse; the default refuses none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    /// Recipients at these domains get [`RELAYING_DENIED`] (compared case-insensitively).
    pub reject_rcpt_domains: Vec<String>,
    /// These senders get [`SENDER_REJECTED`] (compared case-insensitively).
    pub reject_senders: Vec<String>,
}

impl Rules {
    /// The refusal for `MAIL <arg>` (`arg` is `FROM:<path> [params]`), if any:
    /// a `SIZE=` over `max_size`, or a refused sender.
    pub fn sender(&self, arg: &[u8], max_size: u64) -> Option<&'static str> {
        let (path, params) = split_path(arg, b"FROM:");
        if declared_size(params).is_some_and(|size| size > max_size) {
            return Some(TOO_BIG);
        }
        let refused = self.reject_senders.iter().any(|s| s.as_bytes().eq_ignore_ascii_case(path));
        refused.then_some(SENDER_REJECTED)
    }

    /// The refusal for `RCPT <arg>` (`arg` is `TO:<path> [params]`), if any.
    pub fn recipient(&self, arg: &[u8]) -> Option<&'static str> {
        let (path, _) = split_path(arg, b"TO:");
        let domain = path.rsplit(|&b| b == b'@').next().filter(|_| path.contains(&b'@'))?;
        let refused = self.reject_rcpt_domains.iter().any(|d| d.as_bytes().eq_ignore_ascii_case(domain));
        refused.then_some(RELAYING_DENIED)
    }
}

/// Splits `FROM:<path> params` into the address (without angle brackets)
/// and the parameters. Lenient: the prefix and the brackets are optional.
fn split_path<'a>(arg: &'a [u8], prefix: &[u8]) -> (&'a [u8], &'a [u8]) {
    let arg = arg.trim_ascii();
    let arg = match arg.get(..prefix.len()) {
        Some(p) if p.eq_ignore_ascii_case(prefix) => arg[prefix.len()..].trim_ascii_start(),
        _ => arg,
    };
    let (path, params) = match arg.strip_prefix(b"<") {
        Some(rest) => match rest.iter().position(|&b| b == b'>') {
            Some(end) => (&rest[..end], &rest[end + 1..]),
            None => (rest, &[][..]),
        },
        None => match arg.iter().position(|&b| b == b' ') {
            Some(end) => (&arg[..end], &arg[end..]),
            None => (arg, &[][..]),
        },
    };
    // A source route (`@a,@b:user@c`, RFC 5321 §4.1.2) is not part of the address.
    let path = match path.iter().position(|&b| b == b':') {
        Some(colon) if path.starts_with(b"@") => &path[colon + 1..],
        _ => path,
    };
    (path, params)
}

/// The value of a `SIZE=` parameter (RFC 1870), if there is a valid one.
fn declared_size(params: &[u8]) -> Option<u64> {
    params.split(u8::is_ascii_whitespace).find_map(|p| {
        let value = p.get(..5).filter(|k| k.eq_ignore_ascii_case(b"SIZE=")).and(p.get(5..))?;
        std::str::from_utf8(value).ok()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        Rules { reject_rcpt_domains: vec!["Denied.test".into()], reject_senders: vec!["spam@x.test".into()] }
    }

    #[test]
    fn recipient_domains_are_refused_case_insensitively() {
        let r = rules();
        assert_eq!(r.recipient(b"TO:<bob@denied.TEST>"), Some(RELAYING_DENIED));
        assert_eq!(r.recipient(b"to: <@relay.test:bob@denied.test> NOTIFY=NEVER"), Some(RELAYING_DENIED));
        assert_eq!(r.recipient(b"TO:bob@denied.test"), Some(RELAYING_DENIED));
        assert_eq!(r.recipient(b"TO:<bob@sub.denied.test>"), None, "only the domain itself");
        assert_eq!(r.recipient(b"TO:<bob@ok.test>"), None);
        assert_eq!(r.recipient(b"TO:<postmaster>"), None);
    }

    #[test]
    fn senders_are_refused_by_address() {
        let r = rules();
        assert_eq!(r.sender(b"FROM:<SPAM@x.test> BODY=8BITMIME", u64::MAX), Some(SENDER_REJECTED));
        assert_eq!(r.sender(b"FROM:<ham@x.test>", u64::MAX), None);
        assert_eq!(r.sender(b"FROM:<>", u64::MAX), None);
    }

    #[test]
    fn declared_size_over_the_limit_is_refused() {
        let r = Rules::default();
        assert_eq!(r.sender(b"FROM:<a@x> SIZE=1001", 1000), Some(TOO_BIG));
        assert_eq!(r.sender(b"FROM:<a@x> BODY=8BITMIME size=1000", 1000), None);
        assert_eq!(r.sender(b"FROM:<a@x> SIZE=lots", 1000), None, "an unparsable SIZE is not a size");
        assert_eq!(r.sender(b"FROM:<a@x>", 0), None);
    }

    #[test]
    fn the_default_refuses_nothing() {
        let r = Rules::default();
        assert_eq!(r.recipient(b"TO:<a@anything.test>"), None);
        assert_eq!(r.sender(b"FROM:<a@anything.test>", u64::MAX), None);
    }
}
