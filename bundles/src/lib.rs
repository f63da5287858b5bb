//! berth-bundles: the OCI image spec, turned into runtime bundles.
#![forbid(unsafe_code)]

pub mod apply;
pub mod digest;
pub mod fuzz;
pub mod image;
pub mod layer;
pub mod small_file;
pub mod sparse;
pub mod spec;
pub mod tar_guard;
pub mod unpack;

pub use image::{Image, ImageRef, Platform};

use std::borrow::Cow;

/// `text` with its control characters escaped (`\n`, `\u{1b}`): for text
/// from an image or an operator that goes into a one-line message or onto
/// a terminal, where a newline forges a line and an escape sequence talks
/// to the terminal.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// An I/O error whose message is [`printable`], of the same kind.
pub fn printable_io(e: std::io::Error) -> std::io::Error {
    let text = e.to_string();
    match printable(&text) {
        Cow::Borrowed(_) => e,
        Cow::Owned(text) => std::io::Error::new(e.kind(), text),
    }
}
pub use layer::{Cancel, DiffIdCheck, Execution, LayerOptions};
pub use spec::Overrides;
pub use unpack::{UnpackOptions, unpack_bundle};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert!(matches!(printable("PATH=/bin:é"), Cow::Borrowed(_)));
        assert_eq!(
            printable("a\nlayer sha256:fake\u{1b}]0;title\u{7}\tb"),
            "a\\nlayer sha256:fake\\u{1b}]0;title\\u{7}\\tb"
        );
        let e = printable_io(std::io::Error::other("bad name x\ny"));
        assert_eq!(e.to_string(), "bad name x\\ny");
        assert_eq!(e.kind(), std::io::ErrorKind::Other);
    }
}
