//! Sans-IO: a stand-in for message content recorded with `--no-bodies`: the
//! recorded headers, a blank line, then filler text in lines of 78 octets,
//! exactly the recorded size (cut there when the headers alone are longer).

use crate::record::format::MessageRecord;

const FILLER: &[u8] = b"[smtptap replay: placeholder, the body was not recorded (--no-bodies)] ";
/// Filler octets per line, CRLF excluded.
const LINE: usize = 76;

/// The placeholder content for `message`: `message.size` octets.
pub fn placeholder(message: &MessageRecord) -> Vec<u8> {
    let size = usize::try_from(message.size).unwrap_or(usize::MAX);
    let mut out = Vec::with_capacity(size);
    for (name, value) in &message.headers {
        out.extend_from_slice(header_name(name).as_bytes());
        out.extend_from_slice(b": ");
        // A recorded value is one line; never let it start another.
        out.extend(value.bytes().map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }));
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if out.len() >= size {
        out.truncate(size);
        return out;
    }
    let mut filler = FILLER.iter().copied().cycle();
    let mut left = size - out.len();
    while left > 0 {
        if left == 1 {
            out.push(b' ');
            break;
        }
        let n = (left - 2).min(LINE);
        out.extend(filler.by_ref().take(n));
        out.extend_from_slice(b"\r\n");
        left -= n + 2;
    }
    out
}

/// `message-id` as `Message-ID`, `x-mailer` as `X-Mailer`.
fn header_name(name: &str) -> String {
    if name.eq_ignore_ascii_case("message-id") {
        return "Message-ID".into();
    }
    let words: Vec<String> = name
        .split('-')
        .map(|w| {
            let mut chars = w.chars();
            chars
                .next()
                .map(|c| c.to_ascii_uppercase().to_string() + &chars.as_str().to_ascii_lowercase())
                .unwrap_or_default()
        })
        .collect();
    words.join("-")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn message(size: u64, headers: &[(&str, &str)]) -> MessageRecord {
        MessageRecord {
            size,
            sha256: String::new(),
            headers: headers.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect::<BTreeMap<_, _>>(),
            body: None,
            complete: true,
        }
    }

    #[test]
    fn headers_then_filler_of_exactly_the_recorded_size() {
        let m = message(400, &[("from", "ann@x.test"), ("message-id", "<1@x>"), ("subject", "hi\r\nBcc: evil")]);
        let content = placeholder(&m);
        assert_eq!(content.len(), 400);
        let text = String::from_utf8(content).unwrap();
        assert!(
            text.starts_with("From: ann@x.test\r\nMessage-ID: <1@x>\r\nSubject: hi  Bcc: evil\r\n\r\n[smtptap"),
            "{text}"
        );
        assert!(text.ends_with("\r\n"));
        assert!(text.split("\r\n").all(|l| l.len() <= 78), "{text}");
        assert!(!text.replace("\r\n", "").contains(['\r', '\n']), "no bare CR or LF: {text:?}");
    }

    #[test]
    fn every_size_is_met() {
        for size in 0..200 {
            assert_eq!(placeholder(&message(size, &[("to", "b@y.test")])).len() as u64, size);
        }
        assert_eq!(placeholder(&message(5, &[("subject", "longer than five")])), b"Subje");
    }

    #[test]
    fn header_names_are_capitalised() {
        assert_eq!(header_name("content-transfer-encoding"), "Content-Transfer-Encoding");
        assert_eq!(header_name("message-id"), "Message-ID");
        assert_eq!(header_name("date"), "Date");
    }
}
