//! Channels: concrete names, patterns with `*`, `**` and `{sub}`, and the configured channel types.
//!
//! Every raw channel string is parsed here, once, at the edge; the rest of the gateway handles
//! [`ChannelName`] and [`ChannelPattern`] values only.

mod name;
mod pattern;
mod types;

pub use name::ChannelName;
pub use pattern::ChannelPattern;
pub use types::{ChannelType, ChannelTypes};

/// At most this many parts (type plus segments) in a name.
pub const MAX_PARTS: usize = 8;
/// At most this many bytes in a name.
pub const MAX_NAME_BYTES: usize = 256;

/// Whether `s` is a valid channel type: `[a-z][a-z0-9_-]{0,31}`.
pub fn is_valid_type(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 32
        && bytes[0].is_ascii_lowercase()
        && bytes[1..]
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_' || *b == b'-')
}

/// Whether `s` is a valid segment: `[A-Za-z0-9_.@-]{1,128}`.
pub fn is_valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'@' | b'-'))
}

/// A printable, bounded rendering of untrusted input for error messages.
pub(crate) fn quote(s: &str) -> String {
    let shown: String = s.chars().take(80).collect();
    let mut out = format!("{shown:?}");
    if s.chars().count() > 80 {
        out.push_str("...");
    }
    out
}
