//! Events: a validated publish request, and an accepted event whose SSE frame is rendered once.

use bytes::Bytes;
use serde::Serialize;

use crate::channel::ChannelName;
use crate::error::GatewayError;

/// Where an event sits in its log; orders events of one log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Position {
    /// Milliseconds (Redis) or 0 (memory).
    pub major: u64,
    /// Sequence within `major`.
    pub minor: u64,
}

/// Per-event targeting: reaches only these users or holders of these roles.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Audience {
    /// User ids (`sub`); empty = no restriction by user.
    #[serde(default)]
    pub user_ids: Vec<String>,
    /// Roles; empty = no restriction by role.
    #[serde(default)]
    pub roles: Vec<String>,
}

impl Audience {
    /// Whether a subscriber with `sub` and `roles` is in the audience.
    pub fn admits(&self, sub: &str, roles: &[String]) -> bool {
        let by_user = self.user_ids.iter().any(|u| u == sub);
        let by_role = self.roles.iter().any(|r| roles.contains(r));
        match (self.user_ids.is_empty(), self.roles.is_empty()) {
            (true, true) => true,
            (false, true) => by_user,
            (true, false) => by_role,
            (false, false) => by_user || by_role,
        }
    }
}

/// A publish request that passed validation, ready to append to the log.
#[derive(Clone, Debug)]
pub struct NewEvent {
    /// Target channel.
    pub channel: ChannelName,
    /// Event type (`message` by default).
    pub event: String,
    /// The payload as compact JSON (no raw CR/LF anywhere).
    pub payload: String,
    /// Optional idempotency key.
    pub idempotency_key: Option<String>,
    /// Optional targeting.
    pub audience: Option<Audience>,
}

/// An event accepted into the log. Shared by every subscriber through an `Arc`.
#[derive(Debug)]
pub struct Event {
    /// Position in the log.
    pub position: Position,
    /// The cursor string (SSE `id:`).
    pub cursor: String,
    /// The channel it was published to.
    pub channel: ChannelName,
    /// Who may receive it, when the publisher restricted it.
    pub audience: Option<Audience>,
    /// Accept time, ms since the Unix epoch.
    pub ts: u64,
    /// The complete SSE frame: `id: …\ndata: {…}\n\n`.
    pub frame: Bytes,
    /// When this node accepted (or read) it, for the publish-to-write latency metric.
    pub accepted_at: std::time::Instant,
    /// The frame sent as a channel's latest value ([`Event::snapshot_frame`]), rendered on first
    /// use and then shared by every stream that gets it.
    snapshot: std::sync::OnceLock<Bytes>,
}

impl Event {
    /// Builds an accepted event, rendering its SSE frame once.
    pub fn new(position: Position, cursor: String, new: &NewEvent, ts: u64) -> Self {
        let frame = render_frame(&cursor, &new.channel, &new.event, ts, &new.payload);
        Self {
            position,
            cursor,
            channel: new.channel.clone(),
            audience: new.audience.clone(),
            ts,
            frame,
            accepted_at: std::time::Instant::now(),
            snapshot: std::sync::OnceLock::new(),
        }
    }

    /// The event as its channel's latest value: a data message with no `id:` line (so the
    /// client's cursor stays where it is) whose envelope also says `"snapshot":true`.
    pub fn snapshot_frame(&self) -> &Bytes {
        self.snapshot.get_or_init(|| {
            // `frame` is `id: <cursor>\ndata: {<envelope>}\n\n`, rendered by `render_frame`.
            let head = format!("id: {}\ndata: {{", self.cursor);
            let rest = self.frame.get(head.len()..).unwrap_or_default();
            let mut out = Vec::with_capacity(rest.len() + 24);
            out.extend_from_slice(b"data: {\"snapshot\":true,");
            out.extend_from_slice(rest);
            Bytes::from(out)
        })
    }

    /// Whether a subscriber may receive this event under its audience.
    pub fn admits(&self, sub: &str, roles: &[String]) -> bool {
        self.audience.as_ref().is_none_or(|a| a.admits(sub, roles))
    }
}

/// Renders the SSE data message for an event. `payload` must be compact JSON.
pub fn render_frame(
    cursor: &str,
    channel: &ChannelName,
    event: &str,
    ts: u64,
    payload: &str,
) -> Bytes {
    // Channel, event and cursor are restricted to characters that need no JSON escaping.
    let mut out =
        String::with_capacity(payload.len() + cursor.len() * 2 + channel.as_str().len() + 80);
    out.push_str("id: ");
    out.push_str(cursor);
    out.push_str("\ndata: {\"channel\":\"");
    out.push_str(channel.as_str());
    out.push_str("\",\"event\":\"");
    out.push_str(event);
    out.push_str("\",\"id\":\"");
    out.push_str(cursor);
    out.push_str("\",\"ts\":");
    out.push_str(&ts.to_string());
    out.push_str(",\"payload\":");
    out.push_str(payload);
    out.push_str("}\n\n");
    Bytes::from(out)
}

/// Renders a control event (`ready`, `gap`, `expired`, `subscriptions`).
pub fn render_control(name: &str, data: &impl Serialize) -> Bytes {
    let json = serde_json::to_string(data).unwrap_or_else(|_| "{}".to_owned());
    Bytes::from(format!("event: {name}\ndata: {json}\n\n"))
}

/// Checks an event type name: `[A-Za-z0-9_.-]{1,64}`; empty means `message`.
///
/// # Errors
/// [`GatewayError::InvalidArgument`] naming the rule.
pub fn parse_event_name(raw: &str) -> Result<String, GatewayError> {
    if raw.is_empty() {
        return Ok("message".to_owned());
    }
    if raw.len() <= 64
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        Ok(raw.to_owned())
    } else {
        Err(GatewayError::InvalidArgument(format!(
            "invalid event name {}: must match [A-Za-z0-9_.-]{{1,64}}",
            crate::channel::quote(raw)
        )))
    }
}

/// How deeply arrays and objects may nest in published data by default. Common JSON parsers
/// recurse per level (Python's `json`, browsers' `JSON.parse` have limits), so a payload nested
/// thousands of levels deep would be fanned out to clients that cannot read it.
pub const DEFAULT_MAX_JSON_DEPTH: usize = 64;

/// Validates JSON text and returns it without insignificant whitespace, keeping numbers and
/// strings exactly as written (so large numbers keep their precision). Arrays and objects may
/// nest at most `max_depth` levels (a scalar is level 0, `[1]` is level 1).
///
/// # Errors
/// [`GatewayError::InvalidData`] with the parser's message; [`GatewayError::InvalidArgument`]
/// naming the limit when the data nests deeper than `max_depth`.
pub fn compact_json(data: &str, max_depth: usize) -> Result<String, GatewayError> {
    if data.trim().is_empty() {
        return Err(GatewayError::InvalidData("data is empty".to_owned()));
    }
    // `IgnoredAny` skips nested values with an explicit stack, not recursion, so this cannot
    // overflow the thread's stack however deep the input nests; the depth is bounded below.
    serde_json::from_str::<serde::de::IgnoredAny>(data)
        .map_err(|e| GatewayError::InvalidData(e.to_string()))?;
    // Valid JSON can hold whitespace only between tokens or inside strings (where CR/LF are
    // always escaped), so dropping whitespace outside strings is enough. Brackets outside
    // strings are exactly the nesting of arrays and objects.
    let mut out = String::with_capacity(data.len());
    let (mut in_string, mut escaped, mut depth) = (false, false, 0usize);
    for c in data.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '[' | '{' => {
                depth += 1;
                if depth > max_depth {
                    return Err(GatewayError::InvalidArgument(format!(
                        "data nests arrays and objects more than {max_depth} levels deep \
                         (the limit is {max_depth})"
                    )));
                }
            }
            ']' | '}' => depth = depth.saturating_sub(1),
            ' ' | '\t' | '\n' | '\r' => continue,
            _ => {}
        }
        out.push(c);
    }
    Ok(out)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compacts_without_touching_strings() {
        let pretty = "{\n  \"a\": \"x\\n\\ny z\",\r\n  \"n\": 12345678901234567890123\n}";
        let out = compact_json(pretty, DEFAULT_MAX_JSON_DEPTH).unwrap();
        assert_eq!(out, "{\"a\":\"x\\n\\ny z\",\"n\":12345678901234567890123}");
        assert!(!out.contains('\n'));
    }

    #[test]
    fn rejects_non_json() {
        for bad in ["", "  ", "{", "not json", "{\"a\":1}x", "'a'"] {
            assert!(
                compact_json(bad, DEFAULT_MAX_JSON_DEPTH).is_err(),
                "{bad:?}"
            );
        }
        for ok in ["1", "\"s\"", "null", "[1,2]", "{}"] {
            assert!(compact_json(ok, DEFAULT_MAX_JSON_DEPTH).is_ok(), "{ok:?}");
        }
    }

    #[test]
    fn nesting_depth_is_bounded_without_recursion() {
        let nested = |d: usize| format!("{}0{}", "[".repeat(d), "]".repeat(d));
        assert!(compact_json(&nested(3), 3).is_ok());
        assert!(compact_json("{\"a\":[{\"b\":1}]}", 3).is_ok());
        assert!(compact_json("{\"a\":[{\"b\":[]}]}", 3).is_err());
        // Siblings do not add up; brackets inside strings do not count.
        assert!(compact_json("[[1],[2],{\"a\":3}]", 2).is_ok());
        assert!(compact_json("[\"[[[[\\\"{{{{\"]", 1).is_ok());
        assert_eq!(compact_json("1", 0).unwrap(), "1");
        assert!(compact_json("[]", 0).is_err());
        // Over serde_json's recursion limit (128) and far beyond: refused, no stack overflow.
        for d in [65, 100, 129, 30_000, 1_000_000] {
            let err = compact_json(&nested(d), DEFAULT_MAX_JSON_DEPTH).unwrap_err();
            assert!(
                matches!(err, GatewayError::InvalidArgument(_)),
                "{d}: {err}"
            );
            assert!(err.to_string().contains("64 levels deep"), "{err}");
        }
        // Unbalanced deep input is not JSON, and says so.
        assert!(matches!(
            compact_json(&"[".repeat(100_000), DEFAULT_MAX_JSON_DEPTH),
            Err(GatewayError::InvalidData(_))
        ));
    }

    #[test]
    fn a_snapshot_frame_has_no_id_line_and_says_snapshot() {
        let new = NewEvent {
            channel: ChannelName::parse_syntax("dashboards:d1").unwrap(),
            event: "tick".into(),
            payload: "{\"v\":1}".into(),
            idempotency_key: None,
            audience: None,
        };
        let ev = Event::new(Position::default(), "c-7".into(), &new, 5);
        let frame = std::str::from_utf8(ev.snapshot_frame()).unwrap();
        assert_eq!(
            frame,
            "data: {\"snapshot\":true,\"channel\":\"dashboards:d1\",\"event\":\"tick\",\
             \"id\":\"c-7\",\"ts\":5,\"payload\":{\"v\":1}}\n\n"
        );
        // Rendered once, then shared.
        assert_eq!(ev.snapshot_frame().as_ptr(), ev.snapshot_frame().as_ptr());
    }

    #[test]
    fn audience_rules() {
        let roles = vec!["ops".to_string()];
        let users = Audience {
            user_ids: vec!["a".into()],
            roles: vec![],
        };
        assert!(users.admits("a", &[]));
        assert!(!users.admits("b", &roles));
        let by_role = Audience {
            user_ids: vec![],
            roles: vec!["ops".into()],
        };
        assert!(by_role.admits("b", &roles));
        assert!(!by_role.admits("b", &[]));
        assert!(Audience::default().admits("x", &[]));
    }

    #[test]
    fn event_names() {
        assert_eq!(parse_event_name("").unwrap(), "message");
        assert!(parse_event_name("log.v1-x_y").is_ok());
        assert!(parse_event_name("bad name").is_err());
        assert!(parse_event_name("a\nb").is_err());
        assert!(parse_event_name(&"a".repeat(65)).is_err());
    }
}
