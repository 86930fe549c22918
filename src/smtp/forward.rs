//! What the relay sends on: normally the very bytes it read (borrowed, no
//! copy); where the proxy intervenes (STARTTLS, EHLO lists) a copy with
//! parts withheld or added.

use std::borrow::Cow;

/// Builds the bytes to relay from one read, front to back.
pub struct Forward<'a> {
    input: &'a [u8],
    /// Bytes of `input` decided so far (passed or withheld).
    done: usize,
    /// `None` while everything decided was passed unchanged: the result is
    /// then the prefix `input[..done]`, borrowed.
    copy: Option<Vec<u8>>,
}

impl<'a> Forward<'a> {
    pub fn new(input: &'a [u8]) -> Forward<'a> {
        Forward { input, done: 0, copy: None }
    }

    /// Relays `input[done..end]`.
    pub fn pass(&mut self, end: usize) {
        if let Some(copy) = &mut self.copy {
            copy.extend_from_slice(&self.input[self.done..end]);
        }
        self.done = end;
    }

    /// Withholds `input[done..end]`.
    pub fn skip(&mut self, end: usize) {
        self.copy_so_far();
        self.done = end;
    }

    /// Relays bytes that are not in the input (here).
    pub fn insert(&mut self, bytes: &[u8]) {
        if !bytes.is_empty() {
            self.copy_so_far().extend_from_slice(bytes);
        }
    }

    /// The bytes to relay; anything not passed is withheld.
    pub fn finish(self) -> Cow<'a, [u8]> {
        match self.copy {
            None => Cow::Borrowed(&self.input[..self.done]),
            Some(copy) => Cow::Owned(copy),
        }
    }

    fn copy_so_far(&mut self) -> &mut Vec<u8> {
        self.copy.get_or_insert_with(|| self.input[..self.done].to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_borrow_and_edits_copy() {
        let input = b"abcdef";
        let mut f = Forward::new(input);
        f.pass(6);
        assert!(matches!(f.finish(), Cow::Borrowed(b"abcdef")));
        let mut f = Forward::new(input);
        f.pass(2);
        f.skip(4);
        f.insert(b"XY");
        f.pass(6);
        assert_eq!(&*f.finish(), b"abXYef");
        let mut f = Forward::new(input);
        f.pass(3);
        assert_eq!(&*f.finish(), b"abc", "what is not passed is withheld");
    }
}
