//! Channel patterns: names whose segments may be `*` (one segment) or a final `**` (one or more),
//! and may contain `{sub}` (the subscriber's JWT subject).

use std::fmt;

use super::{is_valid_segment, is_valid_type, quote, ChannelName, MAX_NAME_BYTES, MAX_PARTS};
use crate::error::GatewayError;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    /// A literal, possibly holding `{sub}` placeholders.
    Literal { text: String, has_sub: bool },
    /// `*`: exactly one part.
    One,
    /// `**`: one or more parts; only last.
    Rest,
}

/// A parsed channel pattern, as used by publisher permissions, JWT claims and subscribe rules.
#[derive(Clone, PartialEq, Eq)]
pub struct ChannelPattern {
    raw: String,
    parts: Vec<Part>,
}

const SUB: &str = "{sub}";

impl ChannelPattern {
    /// Parses a pattern.
    ///
    /// # Errors
    /// [`GatewayError::InvalidChannel`] naming what is wrong.
    pub fn parse(raw: &str) -> Result<Self, GatewayError> {
        let invalid =
            |why: &str| GatewayError::InvalidChannel(format!("pattern {}: {why}", quote(raw)));
        if raw.is_empty() {
            return Err(invalid("empty pattern"));
        }
        if raw.len() > MAX_NAME_BYTES {
            return Err(invalid(&format!("longer than {MAX_NAME_BYTES} bytes")));
        }
        let split: Vec<&str> = raw.split(':').collect();
        if split.len() > MAX_PARTS {
            return Err(invalid(&format!("more than {MAX_PARTS} parts")));
        }
        let mut parts = Vec::with_capacity(split.len());
        for (i, part) in split.iter().enumerate() {
            let last = i + 1 == split.len();
            let parsed = match *part {
                "*" => Part::One,
                "**" if last => Part::Rest,
                "**" => return Err(invalid("`**` may only be the last part")),
                literal => {
                    let has_sub = literal.contains(SUB);
                    let probe = literal.replace(SUB, "x");
                    let ok = if i == 0 {
                        is_valid_type(&probe)
                    } else {
                        is_valid_segment(&probe)
                    };
                    if !ok {
                        return Err(invalid(if i == 0 {
                            "type must match [a-z][a-z0-9_-]{0,31}, `*` or `**`"
                        } else {
                            "segments must match [A-Za-z0-9_.@-]{1,128}, `*`, `**` or contain {sub}"
                        }));
                    }
                    Part::Literal {
                        text: literal.to_owned(),
                        has_sub,
                    }
                }
            };
            parts.push(parsed);
        }
        Ok(Self {
            raw: raw.to_owned(),
            parts,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// The literal channel type this pattern is restricted to, if any.
    pub fn literal_type(&self) -> Option<&str> {
        match self.parts.first() {
            Some(Part::Literal {
                text,
                has_sub: false,
            }) => Some(text),
            _ => None,
        }
    }

    /// Whether the pattern matches `name` for a subscriber with subject `sub`.
    ///
    /// A pattern with `{sub}` grants nothing when `sub` is absent or not a valid segment.
    pub fn matches(&self, name: &ChannelName, sub: Option<&str>) -> bool {
        let mut names = name.as_str().split(':');
        for (i, part) in self.parts.iter().enumerate() {
            match part {
                Part::Rest => return names.next().is_some(),
                Part::One => {
                    if names.next().is_none() {
                        return false;
                    }
                }
                Part::Literal { text, has_sub } => {
                    let Some(actual) = names.next() else {
                        return false;
                    };
                    if *has_sub {
                        let Some(sub) = sub.filter(|s| is_valid_segment(s)) else {
                            return false;
                        };
                        if i == 0 || text.replace(SUB, sub) != actual {
                            return false;
                        }
                    } else if text != actual {
                        return false;
                    }
                }
            }
        }
        names.next().is_none()
    }
}

impl fmt::Display for ChannelPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl fmt::Debug for ChannelPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChannelPattern({})", self.raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> ChannelName {
        ChannelName::parse_syntax(s).unwrap()
    }

    #[test]
    fn star_matches_exactly_one_segment() {
        let p = ChannelPattern::parse("metrics:*").unwrap();
        assert!(p.matches(&name("metrics:ws1"), None));
        assert!(!p.matches(&name("metrics"), None));
        assert!(!p.matches(&name("metrics:ws1:x"), None));
        assert!(!p.matches(&name("logs:ws1"), None));
    }

    #[test]
    fn double_star_matches_one_or_more() {
        let p = ChannelPattern::parse("logs:**").unwrap();
        assert!(p.matches(&name("logs:ws1"), None));
        assert!(p.matches(&name("logs:ws1:wf1"), None));
        assert!(!p.matches(&name("logs"), None));
        let all = ChannelPattern::parse("**").unwrap();
        assert!(all.matches(&name("alerts:bob"), None));
    }

    #[test]
    fn sub_is_substituted_and_must_be_valid() {
        let p = ChannelPattern::parse("alerts:{sub}").unwrap();
        assert!(p.matches(&name("alerts:alice"), Some("alice")));
        assert!(!p.matches(&name("alerts:bob"), Some("alice")));
        assert!(!p.matches(&name("alerts:a"), Some("a:b")));
        assert!(!p.matches(&name("alerts:alice"), None));
    }

    #[test]
    fn rejects_bad_patterns() {
        for bad in ["", "logs:**:x", "logs::x", "Logs:*", "logs:a b", "logs:\n"] {
            assert!(ChannelPattern::parse(bad).is_err(), "{bad:?}");
        }
    }
}
