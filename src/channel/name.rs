//! A concrete channel name such as `logs:ws1:wf1`.

use std::fmt;
use std::sync::Arc;

use super::{is_valid_segment, is_valid_type, quote, MAX_NAME_BYTES, MAX_PARTS};
use crate::error::GatewayError;

/// A syntactically valid concrete channel name (no wildcards). Cheap to clone.
///
/// Whether its type is configured is checked by [`super::ChannelTypes::parse_name`].
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(Arc<str>);

impl ChannelName {
    /// Parses a name against the grammar only (not the configured types).
    ///
    /// # Errors
    /// [`GatewayError::InvalidChannel`] naming what is wrong.
    pub fn parse_syntax(raw: &str) -> Result<Self, GatewayError> {
        let invalid = |why: &str| GatewayError::InvalidChannel(format!("{}: {why}", quote(raw)));
        if raw.is_empty() {
            return Err(invalid("empty name"));
        }
        if raw.len() > MAX_NAME_BYTES {
            return Err(invalid(&format!("longer than {MAX_NAME_BYTES} bytes")));
        }
        let mut parts = 0;
        for (i, part) in raw.split(':').enumerate() {
            parts += 1;
            if parts > MAX_PARTS {
                return Err(invalid(&format!("more than {MAX_PARTS} parts")));
            }
            if part.contains('*') {
                return Err(invalid(
                    "wildcards are not allowed in a concrete channel name",
                ));
            }
            if i == 0 {
                if !is_valid_type(part) {
                    return Err(invalid("type must match [a-z][a-z0-9_-]{0,31}"));
                }
            } else if !is_valid_segment(part) {
                return Err(invalid(
                    "each segment must match [A-Za-z0-9_.@-]{1,128} (empty segments are not allowed)",
                ));
            }
        }
        Ok(Self(Arc::from(raw)))
    }

    /// The whole name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The channel type (first part).
    pub fn kind(&self) -> &str {
        self.0.split(':').next().unwrap_or_default()
    }

    /// The parts after the type.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split(':').skip(1)
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChannelName({})", &self.0)
    }
}

impl serde::Serialize for ChannelName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_names() {
        for ok in [
            "logs:ws1:wf1",
            "alerts:user@example.com",
            "a",
            "metrics:ws-1_x.y",
        ] {
            assert!(ChannelName::parse_syntax(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_invalid_names() {
        let long = format!("logs:{}", "a".repeat(300));
        for bad in [
            "",
            "Logs:ws1",
            "logs::ws1",
            "logs:ws1:",
            ":ws1",
            "logs:ws\n1",
            "logs:ws\r1",
            "logs:*",
            "logs:**",
            "logs:a b",
            "a:b:c:d:e:f:g:h:i",
            long.as_str(),
        ] {
            assert!(ChannelName::parse_syntax(bad).is_err(), "{bad:?}");
        }
    }
}
