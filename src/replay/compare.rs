//! Sans-IO: whether a reply agrees with the recorded one under `--match`, and
//! the output line for one that does not (SPEC.md):
//! `session 3 #5 RCPT TO:<x@y>  expected 250 2.1.5  got 550 5.7.1 Relaying denied`.

use crate::record::format::ReplyRecord;
use crate::smtp::reply::Reply;

/// What must agree between the recorded reply and the one received.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MatchMode {
    /// The three-digit code.
    Code,
    /// The code and the enhanced status code (RFC 3463). A reply without an
    /// enhanced code only matches another without one.
    #[default]
    Enhanced,
    /// The code and every line of text, byte for byte.
    Text,
}

/// Whether `got` agrees with `expected` under `mode`.
pub fn matches(mode: MatchMode, expected: &ReplyRecord, got: &Reply) -> bool {
    if expected.code != got.code {
        return false;
    }
    match mode {
        MatchMode::Code => true,
        MatchMode::Enhanced => expected.enhanced == got.enhanced(),
        MatchMode::Text => first_differing_line(expected, got).is_none(),
    }
}

/// The recorded lines as bytes (exact when the recording kept them in base64).
fn expected_lines(expected: &ReplyRecord) -> Vec<Vec<u8>> {
    expected.exact_lines().unwrap_or_else(|_| expected.lines.iter().map(|l| l.clone().into_bytes()).collect())
}

/// The index of the first line that differs, `None` when all agree.
fn first_differing_line(expected: &ReplyRecord, got: &Reply) -> Option<usize> {
    let want = expected_lines(expected);
    let n = want.len().max(got.lines.len());
    (0..n).find(|&i| want.get(i) != got.lines.get(i))
}

/// How the recorded reply is shown: as much as `mode` compares.
pub fn show_expected(mode: MatchMode, expected: &ReplyRecord, got: Option<&Reply>) -> String {
    match mode {
        MatchMode::Code => expected.code.to_string(),
        MatchMode::Enhanced => match &expected.enhanced {
            Some(enhanced) => format!("{} {enhanced}", expected.code),
            // Say why `221` differs from `221 2.0.0 Bye`.
            None if got.is_some_and(|g| g.code == expected.code && g.enhanced().is_some()) => {
                format!("{} (no enhanced status)", expected.code)
            }
            None => expected.code.to_string(),
        },
        MatchMode::Text => {
            let line = got.and_then(|g| first_differing_line(expected, g)).unwrap_or(0);
            with_line(expected.code, expected_lines(expected).get(line).map(Vec::as_slice))
        }
    }
}

/// How the received reply is shown: its code and the line that matters
/// (the first, or in `text` mode the first that differs).
pub fn show_got(mode: MatchMode, expected: &ReplyRecord, got: &Reply) -> String {
    let line = match mode {
        MatchMode::Text => first_differing_line(expected, got).unwrap_or(0),
        _ => 0,
    };
    with_line(got.code, got.lines.get(line).map(Vec::as_slice))
}

fn with_line(code: u16, line: Option<&[u8]>) -> String {
    match line {
        Some(l) if !l.is_empty() => format!("{code} {}", String::from_utf8_lossy(l)),
        _ => code.to_string(),
    }
}

/// The output line for an exchange that differed; `got` is the received
/// reply's description (see [`show_got`]) or what happened instead.
pub fn diff_line(session: usize, seq: u64, label: &str, expected: &str, got: &str) -> String {
    format!("session {session} #{seq} {label}  expected {expected}  got {got}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD as B64;

    fn record(code: u16, enhanced: Option<&str>, lines: &[&str]) -> ReplyRecord {
        ReplyRecord {
            code,
            enhanced: enhanced.map(str::to_owned),
            lines: lines.iter().map(|l| (*l).to_owned()).collect(),
            lines_base64: None,
            omitted_lines: 0,
            truncated: false,
        }
    }

    fn reply(code: u16, lines: &[&str]) -> Reply {
        Reply { code, lines: lines.iter().map(|l| l.as_bytes().to_vec()).collect(), ..Reply::default() }
    }

    #[test]
    fn code_mode_compares_only_the_code() {
        let want = record(250, Some("2.1.5"), &["2.1.5 Ok"]);
        assert!(matches(MatchMode::Code, &want, &reply(250, &["OK"])));
        assert!(matches(MatchMode::Code, &want, &reply(250, &["2.1.0 other"])));
        assert!(!matches(MatchMode::Code, &want, &reply(251, &["2.1.5 Ok"])));
    }

    #[test]
    fn enhanced_mode_compares_code_and_enhanced_status() {
        let want = record(250, Some("2.1.5"), &["2.1.5 Ok"]);
        assert!(matches(MatchMode::Enhanced, &want, &reply(250, &["2.1.5 Recipient fine"])));
        assert!(!matches(MatchMode::Enhanced, &want, &reply(250, &["2.1.0 Ok"])));
        assert!(!matches(MatchMode::Enhanced, &want, &reply(550, &["2.1.5 Ok"])));
    }

    #[test]
    fn enhanced_null_matches_only_null() {
        let plain = record(250, None, &["OK"]);
        assert!(matches(MatchMode::Enhanced, &plain, &reply(250, &["Fine"])));
        // An enhanced code appearing or disappearing is a difference.
        assert!(!matches(MatchMode::Enhanced, &plain, &reply(250, &["2.0.0 Fine"])));
        let enhanced = record(250, Some("2.0.0"), &["2.0.0 Ok"]);
        assert!(!matches(MatchMode::Enhanced, &enhanced, &reply(250, &["Ok"])));
        // A status whose class disagrees with the code is no enhanced code.
        assert!(matches(MatchMode::Enhanced, &plain, &reply(250, &["5.0.0 odd"])));
    }

    #[test]
    fn text_mode_compares_every_line() {
        let want = record(250, None, &["mx.test", "PIPELINING", "8BITMIME"]);
        assert!(matches(MatchMode::Text, &want, &reply(250, &["mx.test", "PIPELINING", "8BITMIME"])));
        let fewer = reply(250, &["mx.test", "PIPELINING"]);
        assert!(!matches(MatchMode::Text, &want, &fewer));
        let other = reply(250, &["mx.test", "CHUNKING", "8BITMIME"]);
        assert!(!matches(MatchMode::Text, &want, &other));
        assert_eq!(show_expected(MatchMode::Text, &want, Some(&other)), "250 PIPELINING");
        assert_eq!(show_got(MatchMode::Text, &want, &other), "250 CHUNKING");
        assert_eq!(show_expected(MatchMode::Text, &want, Some(&fewer)), "250 8BITMIME");
        assert_eq!(show_got(MatchMode::Text, &want, &fewer), "250");
    }

    #[test]
    fn text_mode_uses_exact_bytes_when_recorded() {
        let mut want = record(250, None, &["caf\u{fffd}"]);
        want.lines_base64 = Some(vec![B64.encode(b"caf\xe9")]);
        let got = Reply { code: 250, lines: vec![b"caf\xe9".to_vec()], ..Reply::default() };
        assert!(matches(MatchMode::Text, &want, &got));
    }

    #[test]
    fn the_line_is_formatted_as_in_the_spec() {
        let want = record(250, Some("2.1.5"), &["2.1.5 Ok"]);
        let got = reply(550, &["5.7.1 Relaying denied"]);
        let line = diff_line(
            3,
            5,
            "RCPT TO:<x@y>",
            &show_expected(MatchMode::Enhanced, &want, Some(&got)),
            &show_got(MatchMode::Enhanced, &want, &got),
        );
        assert_eq!(line, "session 3 #5 RCPT TO:<x@y>  expected 250 2.1.5  got 550 5.7.1 Relaying denied");
        assert_eq!(show_expected(MatchMode::Code, &want, Some(&got)), "250");
        assert_eq!(show_expected(MatchMode::Enhanced, &record(250, None, &["OK"]), None), "250");
        let plain = record(221, None, &["Bye"]);
        let got = reply(221, &["2.0.0 Bye"]);
        assert_eq!(show_expected(MatchMode::Enhanced, &plain, Some(&got)), "221 (no enhanced status)");
        assert_eq!(show_got(MatchMode::Enhanced, &plain, &got), "221 2.0.0 Bye");
    }
}
