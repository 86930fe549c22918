//! Sans-IO: the report as JUnit XML (`--junit`), so CI servers show each
//! replayed recording as a test case: `<failure>` with the differing lines,
//! `<error>` when it could not run.

use super::report::{Report, SessionResult};
use std::fmt::Write as _;

/// The whole document.
pub fn junit(report: &Report) -> String {
    let failures = report.results.iter().filter(|r| r.failed_runs == 0 && failed(r)).count();
    let errors = report.results.iter().filter(|r| r.failed_runs > 0).count();
    let time: f64 = report.results.iter().map(|r| r.tally.ms).sum::<f64>() / 1000.0;
    let mut xml = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        xml,
        "<testsuite name=\"smtptap replay {}\" tests=\"{}\" failures=\"{failures}\" errors=\"{errors}\" time=\"{time:.3}\">",
        escape(&report.target),
        report.results.len(),
    );
    for result in &report.results {
        testcase(&mut xml, result);
    }
    xml.push_str("</testsuite>\n");
    xml
}

fn failed(r: &SessionResult) -> bool {
    r.tally.differed + r.tally.errors > 0
}

fn testcase(xml: &mut String, r: &SessionResult) {
    let name = r.path.file_name().map_or_else(|| r.path.display().to_string(), |n| n.to_string_lossy().into_owned());
    let _ = write!(
        xml,
        "  <testcase name=\"{}\" classname=\"smtptap.replay\" time=\"{:.3}\"",
        escape(&name),
        r.tally.ms / 1000.0
    );
    let lines: String = r.tally.differences.iter().map(|d| format!("{}\n", d.line)).collect();
    let body = if r.failed_runs > 0 {
        let message = r.tally.error.as_deref().unwrap_or("could not run");
        Some(format!("    <error message=\"{}\">{}</error>\n", escape(message), escape(&lines)))
    } else if failed(r) {
        let message = format!("{} replies differed, {} got none", r.tally.differed, r.tally.errors);
        Some(format!("    <failure message=\"{}\">{}</failure>\n", escape(&message), escape(&lines)))
    } else {
        None
    };
    let out: String = r.notes.iter().map(|n| format!("{n}\n")).collect();
    if body.is_none() && out.is_empty() {
        xml.push_str("/>\n");
        return;
    }
    xml.push_str(">\n");
    xml.push_str(&body.unwrap_or_default());
    if !out.is_empty() {
        let _ = writeln!(xml, "    <system-out>{}</system-out>", escape(&out));
    }
    xml.push_str("  </testcase>\n");
}

/// Text for XML content and attribute values: markup characters escaped,
/// characters XML 1.0 cannot hold at all replaced by U+FFFD.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::report::{Difference, Tally};

    #[test]
    fn markup_and_control_characters_are_escaped() {
        assert_eq!(escape("a<b>&\"c\"'d'"), "a&lt;b&gt;&amp;&quot;c&quot;&apos;d&apos;");
        assert_eq!(escape("tab\tnl\nbell\u{7}nul\0"), "tab\tnl\nbell\u{fffd}nul\u{fffd}");
        assert_eq!(escape("caf\u{e9} \u{1f600}"), "caf\u{e9} \u{1f600}");
    }

    fn result(session: usize, name: &str, tally: Tally, failed_runs: usize) -> SessionResult {
        SessionResult { session, path: format!("/r/{name}").into(), runs: 1, failed_runs, notes: Vec::new(), tally }
    }

    #[test]
    fn one_testcase_per_recording() {
        let line = "session 2 #5 RCPT TO:<x@y>  expected 250 2.1.5  got 550 5.7.1 <x@y> & co".to_owned();
        let difference = Difference::unanswered(5, "RCPT TO:<x@y>", &line);
        let mut ok = result(1, "a.jsonl", Tally { exchanges: 3, matched: 3, ms: 12.0, ..Tally::default() }, 0);
        ok.notes.push("placeholder <body>".into());
        let differed =
            Tally { exchanges: 3, matched: 2, differed: 1, differences: vec![difference], ..Tally::default() };
        let refused =
            Tally { exchanges: 3, errors: 3, error: Some("cannot connect to \"x\"".into()), ..Tally::default() };
        let report = Report {
            target: "mx.test:25".into(),
            results: vec![ok, result(2, "b.jsonl", differed, 0), result(3, "c.jsonl", refused, 1)],
            ..Report::default()
        };
        let xml = junit(&report);
        assert_eq!(
            xml,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
<testsuite name=\"smtptap replay mx.test:25\" tests=\"3\" failures=\"1\" errors=\"1\" time=\"0.012\">\n  \
<testcase name=\"a.jsonl\" classname=\"smtptap.replay\" time=\"0.012\">\n    \
<system-out>placeholder &lt;body&gt;\n</system-out>\n  </testcase>\n  \
<testcase name=\"b.jsonl\" classname=\"smtptap.replay\" time=\"0.000\">\n    \
<failure message=\"1 replies differed, 0 got none\">session 2 #5 RCPT TO:&lt;x@y&gt;  expected 250 2.1.5  got 550 5.7.1 &lt;x@y&gt; &amp; co\n</failure>\n  </testcase>\n  \
<testcase name=\"c.jsonl\" classname=\"smtptap.replay\" time=\"0.000\">\n    \
<error message=\"cannot connect to &quot;x&quot;\"></error>\n  </testcase>\n\
</testsuite>\n"
        );
    }
}
