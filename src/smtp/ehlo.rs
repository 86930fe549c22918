//! EHLO replies (RFC 5321 §4.1.1.1): the one place the proxy edits what it
//! relays, to offer or withdraw STARTTLS (RFC 3207) according to the TLS mode
//! towards the client.

/// Rewrites the wire bytes of a complete EHLO reply so that it offers
/// STARTTLS exactly when `offer` is true. `None` when nothing needs to change
/// (or the reply is not a 250, which has no extensions to edit).
pub fn with_starttls(reply: &[u8], offer: bool) -> Option<Vec<u8>> {
    let lines: Vec<&[u8]> = reply.split_inclusive(|&b| b == b'\n').collect();
    if lines.is_empty() || !lines.iter().all(|l| l.starts_with(b"250")) {
        return None;
    }
    let is_starttls = |l: &[u8]| line_text(l).eq_ignore_ascii_case(b"STARTTLS");
    // The first line is the server's name, never an extension.
    let offered = lines.iter().skip(1).any(|l| is_starttls(l));
    if offered == offer {
        return None;
    }
    let mut kept: Vec<Vec<u8>> = lines
        .iter()
        .enumerate()
        .filter(|(i, l)| *i == 0 || !is_starttls(l))
        .map(|(_, l)| line_text(l).to_vec())
        .collect();
    if offer {
        kept.push(b"STARTTLS".to_vec());
    }
    let mut out = Vec::with_capacity(reply.len() + 16);
    for (i, text) in kept.iter().enumerate() {
        out.extend_from_slice(if i + 1 == kept.len() { b"250 " } else { b"250-" });
        out.extend_from_slice(text);
        out.extend_from_slice(b"\r\n");
    }
    Some(out)
}

/// The text of a reply line after `250-`/`250 `, without its line ending.
fn line_text(line: &[u8]) -> &[u8] {
    let text = line.get(4..).unwrap_or_default();
    let text = text.strip_suffix(b"\n").unwrap_or(text);
    text.strip_suffix(b"\r").unwrap_or(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edit(reply: &str, offer: bool) -> Option<String> {
        with_starttls(reply.as_bytes(), offer).map(|v| String::from_utf8(v).unwrap())
    }

    #[test]
    fn removes_starttls_anywhere() {
        assert_eq!(edit("250-mx\r\n250-STARTTLS\r\n250 SIZE 10\r\n", false).unwrap(), "250-mx\r\n250 SIZE 10\r\n");
        assert_eq!(edit("250-mx\r\n250-SIZE 10\r\n250 starttls\r\n", false).unwrap(), "250-mx\r\n250 SIZE 10\r\n");
        assert_eq!(edit("250-mx\r\n250 STARTTLS\r\n", false).unwrap(), "250 mx\r\n");
    }

    #[test]
    fn adds_starttls_last() {
        assert_eq!(edit("250 mx\r\n", true).unwrap(), "250-mx\r\n250 STARTTLS\r\n");
        assert_eq!(edit("250-mx\r\n250 PIPELINING\r\n", true).unwrap(), "250-mx\r\n250-PIPELINING\r\n250 STARTTLS\r\n");
    }

    #[test]
    fn leaves_alone_what_already_fits() {
        assert_eq!(edit("250-mx\r\n250 STARTTLS\r\n", true), None);
        assert_eq!(edit("250-mx\r\n250 PIPELINING\r\n", false), None);
        assert_eq!(edit("550 5.7.1 go away\r\n", true), None);
        assert_eq!(
            edit("250 STARTTLS\r\n", true).unwrap(),
            "250-STARTTLS\r\n250 STARTTLS\r\n",
            "the name is no extension"
        );
    }
}
