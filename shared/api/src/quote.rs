//! Quoting a caller's input inside an error message, cut to [`MAX_ECHO_BYTES`].
//!
//! Errors name the bad value so an operator can find it, but a caller can send a 1 MB name:
//! echoed whole, it would make a `grpc-message` header that stock clients refuse (and a log
//! line nobody reads). Every message that repeats caller input does it through [`quote`].

use std::fmt;

/// The most bytes of caller input an error message repeats.
pub const MAX_ECHO_BYTES: usize = 128;

/// `input` as a quoted string (Rust `{:?}` escaping), cut after [`MAX_ECHO_BYTES`] bytes of
/// it (at a character boundary) with the full length said: `"aaaa…" (1048576 bytes)`.
pub fn quote(input: &str) -> Quoted<'_> {
    Quoted(input)
}

/// See [`quote`].
#[derive(Clone, Copy)]
pub struct Quoted<'a>(&'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let input = self.0;
        if input.len() <= MAX_ECHO_BYTES {
            return write!(f, "{input:?}");
        }
        let mut end = MAX_ECHO_BYTES;
        while !input.is_char_boundary(end) {
            end -= 1;
        }
        let head = format!("{:?}", &input[..end]);
        // `head` ends with the closing quote: the ellipsis goes inside it.
        write!(f, "{}…\" ({} bytes)", &head[..head.len() - 1], input.len())
    }
}

impl fmt::Debug for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_input_is_quoted_whole() {
        assert_eq!(quote("web").to_string(), "\"web\"");
        assert_eq!(quote("a\"b").to_string(), "\"a\\\"b\"");
    }

    #[test]
    fn long_input_is_cut_and_its_length_said() {
        let long = "x".repeat(1 << 20);
        let quoted = quote(&long).to_string();
        assert_eq!(
            quoted,
            format!("\"{}…\" (1048576 bytes)", "x".repeat(MAX_ECHO_BYTES))
        );
    }

    #[test]
    fn cut_falls_on_a_character_boundary() {
        // 'é' is two bytes: byte 128 is in the middle of the 64th one.
        let long = format!("a{}", "é".repeat(200));
        let quoted = quote(&long).to_string();
        assert!(quoted.starts_with("\"a"), "{quoted}");
        assert!(
            quoted.ends_with(&format!("…\" ({} bytes)", long.len())),
            "{quoted}"
        );
        let inner = quoted.trim_start_matches('"').split('…').next().unwrap();
        assert!(inner.len() <= MAX_ECHO_BYTES, "{inner}");
    }
}
