//! Property tests of every parser and renderer at the gateway's edges: channel names and
//! patterns, `{sub}` substitution, SSE frames, cursors, and JWT claims. Each property runs a few
//! hundred cases in well under a second or two.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::sync::Arc;

use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use serde_json::{json, Value};
use sse_gateway::auth::JwtVerifier;
use sse_gateway::broker::{MemoryLog, RedisLog};
use sse_gateway::channel::{ChannelName, ChannelPattern};
use sse_gateway::error::GatewayError;
use sse_gateway::event::{
    compact_json, now_ms, parse_event_name, render_control, render_frame, NewEvent, Position,
    DEFAULT_MAX_JSON_DEPTH,
};
use sse_gateway::hub::Hub;
use sse_gateway::metrics::Metrics;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Channel names and patterns
// ---------------------------------------------------------------------------------------------

/// The name grammar, written out independently of the parser: `type(:segment)*`, type
/// `[a-z][a-z0-9_-]{0,31}`, segment `[A-Za-z0-9_.@-]{1,128}`, at most 8 parts and 256 bytes.
fn is_name(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    let ty = parts[0].as_bytes();
    s.len() <= 256
        && parts.len() <= 8
        && !ty.is_empty()
        && ty.len() <= 32
        && ty[0].is_ascii_lowercase()
        && ty
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-".contains(b))
        && parts[1..].iter().all(|seg| is_segment(seg))
}

fn is_segment(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.@-".contains(&b))
}

fn type_part() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9_-]{0,31}"
}

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        9 => "[A-Za-z0-9_.@-]{1,12}",
        1 => "[A-Za-z0-9_.@-]{100,128}",
    ]
}

/// Valid names (by construction).
fn name() -> impl Strategy<Value = String> {
    (type_part(), vec(segment(), 0..8))
        .prop_map(|(t, segs)| std::iter::once(t).chain(segs).collect::<Vec<_>>().join(":"))
        .prop_filter("at most 256 bytes", |s| s.len() <= 256)
}

/// Strings near the grammar: its characters, wildcards, placeholders, separators and the
/// characters that must never get into a frame.
fn near_name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9_.@:*{}\\- \r\n\t\u{0}é]{0,40}",
        vec(
            prop_oneof![
                Just("logs".to_owned()),
                Just("*".to_owned()),
                Just("**".to_owned()),
                Just("{sub}".to_owned()),
                Just("".to_owned()),
                Just("a{sub}".to_owned()),
                segment(),
            ],
            0..10
        )
        .prop_map(|p| p.join(":")),
        any::<String>(),
    ]
}

/// Valid patterns (by construction): names whose parts may be `*`, a final `**`, or hold `{sub}`.
fn pattern() -> impl Strategy<Value = String> {
    let first = prop_oneof![
        3 => type_part(),
        1 => Just("*".to_owned()),
    ];
    let part = prop_oneof![
        3 => segment(),
        1 => Just("*".to_owned()),
        1 => Just("{sub}".to_owned()),
        1 => ("[a-z]{0,3}", "[a-z]{0,3}").prop_map(|(a, b)| format!("{a}{{sub}}{b}")),
    ];
    (first, vec(part, 0..7), any::<bool>())
        .prop_map(|(first, rest, rest_wild)| {
            let mut parts = vec![first];
            parts.extend(rest);
            if rest_wild && parts.len() < 8 {
                parts.push("**".to_owned());
            }
            parts.join(":")
        })
        .prop_filter("at most 256 bytes", |s| s.len() <= 256)
}

/// A small alphabet, so that patterns and names often match.
fn small_name() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec!["a", "b"]),
        vec(
            prop::sample::select(vec!["x", "y", "al", "alice", "bob"]),
            0..4,
        ),
    )
        .prop_map(|(t, segs)| std::iter::once(t).chain(segs).collect::<Vec<_>>().join(":"))
}

fn small_pattern() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec!["a", "b", "*", "{sub}"]),
        vec(
            prop::sample::select(vec!["x", "y", "*", "{sub}", "al{sub}", "alice"]),
            0..4,
        ),
        any::<bool>(),
    )
        .prop_map(|(t, parts, rest)| {
            let mut out = std::iter::once(t)
                .chain(parts)
                .collect::<Vec<_>>()
                .join(":");
            if rest {
                out.push_str(":**");
            }
            out
        })
}

/// `sub` values that must grant nothing by themselves, and a few valid ones.
fn hostile_subs() -> Vec<String> {
    vec![
        "*".to_owned(),
        "**".to_owned(),
        ":".to_owned(),
        "{sub}".to_owned(),
        "{sub}{sub}".to_owned(),
        "\n".to_owned(),
        "x\r".to_owned(),
        "x\n:y".to_owned(),
        String::new(),
        "a:b".to_owned(),
        "x*".to_owned(),
        "a b".to_owned(),
        "é".to_owned(),
        "a".repeat(129),
        "a".repeat(1000),
        "alice".to_owned(),
        "ice".to_owned(),
        "x".to_owned(),
        "a".repeat(128),
    ]
}

fn sub_value() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(hostile_subs()),
        any::<String>(),
        segment()
    ]
}

/// The matching rule written out: `*` is one part, a final `**` one or more, a literal equals
/// the part, `{sub}` is replaced by a `sub` that is a valid segment (and never in the type).
fn reference_match(pattern: &str, name: &str, sub: Option<&str>) -> bool {
    let pat: Vec<&str> = pattern.split(':').collect();
    let parts: Vec<&str> = name.split(':').collect();
    for (i, p) in pat.iter().enumerate() {
        if *p == "**" {
            return parts.len() > i;
        }
        let Some(actual) = parts.get(i) else {
            return false;
        };
        let ok = match *p {
            "*" => true,
            lit if lit.contains("{sub}") => {
                i > 0 && sub.is_some_and(|s| is_segment(s) && lit.replace("{sub}", s) == *actual)
            }
            lit => lit == *actual,
        };
        if !ok {
            return false;
        }
    }
    parts.len() == pat.len()
}

proptest! {
    #![proptest_config(config(500))]

    #[test]
    fn valid_names_parse_and_display_as_written(raw in name()) {
        let name = ChannelName::parse_syntax(&raw).unwrap();
        prop_assert_eq!(name.to_string(), raw.clone());
        prop_assert_eq!(name.as_str(), raw.as_str());
        let mut parts = raw.split(':');
        prop_assert_eq!(name.kind(), parts.next().unwrap());
        prop_assert_eq!(name.segments().collect::<Vec<_>>(), parts.collect::<Vec<_>>());
    }

    #[test]
    fn any_string_is_a_name_exactly_when_the_grammar_says_so(raw in near_name()) {
        match ChannelName::parse_syntax(&raw) {
            Ok(name) => {
                prop_assert!(is_name(&raw), "accepted {:?}", raw);
                prop_assert_eq!(name.to_string(), raw);
            }
            Err(e) => {
                prop_assert!(!is_name(&raw), "refused {:?}: {}", raw, e);
                prop_assert!(matches!(e, GatewayError::InvalidChannel(_)));
                // The message quotes the input bounded, never raw: no CR/LF reaches a log line.
                prop_assert!(!e.to_string().contains(['\r', '\n']), "{}", e);
            }
        }
    }

    #[test]
    fn valid_patterns_parse_and_display_as_written(raw in pattern()) {
        let p = ChannelPattern::parse(&raw).unwrap();
        prop_assert_eq!(p.to_string(), raw.clone());
        prop_assert_eq!(ChannelPattern::parse(&p.to_string()).unwrap(), p);
    }

    #[test]
    fn any_string_parses_as_a_pattern_or_not_without_panic(raw in near_name()) {
        if let Ok(p) = ChannelPattern::parse(&raw) {
            prop_assert_eq!(p.as_str(), raw.as_str());
            // A pattern is a name whose parts may be wildcards or hold {sub}.
            let probe = raw
                .split(':')
                .enumerate()
                .map(|(i, part)| match part {
                    "*" | "**" if i == 0 => "t".to_owned(),
                    "*" | "**" => "s".to_owned(),
                    lit => lit.replace("{sub}", "x"),
                })
                .collect::<Vec<_>>()
                .join(":");
            prop_assert!(is_name(&probe) || probe.len() > 256, "{:?}", raw);
        }
    }

}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn a_pattern_matches_exactly_the_names_of_its_grammar(
        pat in small_pattern(),
        names in vec(small_name(), 1..16),
        sub in sub_value(),
    ) {
        let p = ChannelPattern::parse(&pat).unwrap();
        for raw in &names {
            let name = ChannelName::parse_syntax(raw).unwrap();
            let all = hostile_subs();
            let subs = std::iter::once(None)
                .chain(all.iter().map(|s| Some(s.as_str())))
                .chain([Some(sub.as_str())]);
            for sub in subs {
                prop_assert_eq!(
                    p.matches(&name, sub),
                    reference_match(&pat, raw, sub),
                    "{} vs {} (sub {:?})", pat, raw, sub
                );
            }
        }
    }

    #[test]
    fn sub_substitution_never_widens_the_grant(
        pat in prop_oneof![small_pattern(), pattern()],
        names in vec(prop_oneof![small_name(), name()], 1..8),
        sub in sub_value(),
    ) {
        for sub in hostile_subs().into_iter().chain([sub]) {
            sub_grants_no_more_than_written(&pat, &names, &sub)?;
        }
    }
}

/// What `pat` grants with `sub` is granted by `pat` with `sub` written in; a `sub` that is not a
/// segment grants only what `pat` grants without one.
fn sub_grants_no_more_than_written(
    pat: &str,
    names: &[String],
    sub: &str,
) -> Result<(), TestCaseError> {
    let p = ChannelPattern::parse(pat).unwrap();
    // (A pattern ending in `**` may be a byte longer than the names it matches.)
    let written = pat.replace("{sub}", sub);
    let textual = ChannelPattern::parse(&written).ok();
    for raw in names {
        let name = ChannelName::parse_syntax(raw).unwrap();
        if !p.matches(&name, Some(sub)) {
            continue;
        }
        if !is_segment(sub) {
            prop_assert!(
                !pat.contains("{sub}"),
                "{} granted {} to sub {:?}",
                pat,
                raw,
                sub
            );
            prop_assert!(p.matches(&name, None));
        }
        prop_assert!(
            textual.as_ref().is_some_and(|t| t.matches(&name, None)) || written.len() > 256,
            "{} with sub {:?} granted {}",
            pat,
            sub,
            raw
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// SSE frames
// ---------------------------------------------------------------------------------------------

/// One message as an `EventSource` sees it: the fields of a block of lines ended by a blank line.
#[derive(Debug, Default)]
struct Block {
    id: Vec<String>,
    event: Vec<String>,
    data: Vec<String>,
    retry: Vec<String>,
    other: Vec<String>,
}

/// Parses a stream as the HTML standard's SSE parser does (lines end at CRLF, LF or CR; a
/// blank line ends a block). Returns the blocks and whatever follows the last blank line.
fn parse_sse(text: &str) -> (Vec<Block>, String) {
    let mut blocks = Vec::new();
    let mut current = Block::default();
    let mut started = false;
    let mut rest = text;
    while let Some(end) = rest.find(['\r', '\n']) {
        let line = &rest[..end];
        let skip = if rest[end..].starts_with("\r\n") {
            2
        } else {
            1
        };
        rest = &rest[end + skip..];
        if line.is_empty() {
            if started {
                blocks.push(std::mem::take(&mut current));
                started = false;
            }
            continue;
        }
        started = true;
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        let list = match field {
            "id" => &mut current.id,
            "event" => &mut current.event,
            "data" => &mut current.data,
            "retry" => &mut current.retry,
            _ => &mut current.other,
        };
        list.push(value.to_owned());
    }
    (blocks, rest.to_owned())
}

/// Arbitrary JSON values (finite numbers; strings with any characters, CR, LF and NUL included).
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        any::<String>().prop_map(Value::String),
        "[\r\n\"\\\\:{}\u{2028}\u{0}a]{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            btree_map(any::<String>(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// JSON text of a value as a publisher might send it: compact, pretty, or pretty with CRLF.
fn json_text() -> impl Strategy<Value = (Value, String)> {
    (json_value(), 0..3u8).prop_map(|(v, style)| {
        let text = match style {
            0 => v.to_string(),
            1 => serde_json::to_string_pretty(&v).unwrap(),
            _ => serde_json::to_string_pretty(&v)
                .unwrap()
                .replace('\n', "\r\n"),
        };
        (v, text)
    })
}

fn event_name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9_.-]{0,64}",
        "[A-Za-z0-9_.\\- :\r\n]{0,70}",
        any::<String>()
    ]
}

/// Checks that `frame` is exactly one data message carrying this event, its payload equal in
/// value to the JSON text published (compared as parsed by the same parser, which rounds some
/// floats: the gateway keeps the digits as written).
fn assert_one_event_message(
    frame: &[u8],
    cursor: &str,
    channel: &str,
    event: &str,
    ts: u64,
    published: &str,
) -> Result<(), TestCaseError> {
    let payload: Value = serde_json::from_str(published).unwrap();
    let text = std::str::from_utf8(frame).unwrap();
    let (blocks, rest) = parse_sse(text);
    prop_assert!(
        rest.is_empty(),
        "the frame ends with a blank line: {:?}",
        text
    );
    prop_assert!(text.ends_with("\n\n"), "{:?}", text);
    prop_assert_eq!(blocks.len(), 1, "one message: {:?}", text);
    let b = &blocks[0];
    prop_assert_eq!(&b.id, &vec![cursor.to_owned()]);
    prop_assert!(
        b.event.is_empty() && b.retry.is_empty() && b.other.is_empty(),
        "{:?}",
        b
    );
    prop_assert_eq!(b.data.len(), 1, "one data line: {:?}", text);
    let env: Value = serde_json::from_str(&b.data[0]).unwrap();
    let want = json!({
        "channel": channel, "event": event, "id": cursor, "ts": ts, "payload": payload,
    });
    prop_assert_eq!(env, want);
    Ok(())
}

proptest! {
    #![proptest_config(config(300))]

    #[test]
    fn no_payload_event_channel_or_cursor_can_inject_a_line(
        (_, text) in json_text(),
        event in event_name(),
        channel in name(),
        major in any::<u64>(),
        minor in any::<u64>(),
        ts in any::<u64>(),
    ) {
        let Ok(event) = parse_event_name(&event) else {
            return Ok(());
        };
        let payload = match compact_json(&text, DEFAULT_MAX_JSON_DEPTH) {
            Ok(p) => p,
            Err(e) => {
                // Only nesting deeper than the limit is refused, and it says so.
                prop_assert!(e.to_string().contains("levels deep"), "{}: {:?}", e, text);
                return Ok(());
            }
        };
        let channel = ChannelName::parse_syntax(&channel).unwrap();
        let cursor = RedisLog::cursor(Position { major, minor });
        let frame = render_frame(&cursor, &channel, &event, ts, &payload);
        assert_one_event_message(&frame, &cursor, channel.as_str(), &event, ts, &text)?;
    }

}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn events_of_the_memory_log_are_framed_whole(
        events in vec((json_text(), "[A-Za-z0-9_.-]{1,64}", name()), 1..6),
    ) {
        let hub = Arc::new(Hub::new(Arc::new(Metrics::new())));
        let log = MemoryLog::new(&Default::default(), hub);
        let mut news = Vec::new();
        let mut want = Vec::new();
        for ((_, text), event, channel) in events {
            let Ok(payload) = compact_json(&text, DEFAULT_MAX_JSON_DEPTH) else {
                continue;
            };
            let channel = ChannelName::parse_syntax(&channel).unwrap();
            want.push((channel.clone(), event.clone(), text));
            news.push(NewEvent { channel, event, payload, idempotency_key: None, audience: None });
        }
        let outcomes = log.append("p", news);
        let channels: HashSet<ChannelName> = want.iter().map(|w| w.0.clone()).collect();
        let read = log.read_after(Position::default(), &channels, 100);
        prop_assert_eq!(read.events.len(), want.len());
        for ((ev, outcome), (channel, event, text)) in read.events.iter().zip(&outcomes).zip(&want) {
            prop_assert_eq!(&ev.cursor, &outcome.cursor);
            assert_one_event_message(&ev.frame, &ev.cursor, channel.as_str(), event, ev.ts, text)?;
        }
    }

}

proptest! {
    #![proptest_config(config(300))]

    #[test]
    fn control_events_are_one_message(
        name in prop::sample::select(vec!["ready", "gap", "subscriptions", "expired"]),
        data in json_value(),
    ) {
        let frame = render_control(name, &data);
        let text = std::str::from_utf8(&frame).unwrap();
        let (blocks, rest) = parse_sse(text);
        prop_assert!(rest.is_empty(), "{:?}", text);
        prop_assert_eq!(blocks.len(), 1, "{:?}", text);
        let b = &blocks[0];
        prop_assert_eq!(&b.event, &vec![name.to_owned()]);
        prop_assert!(b.id.is_empty() && b.other.is_empty(), "{:?}", b);
        prop_assert_eq!(b.data.len(), 1);
        let sent: Value = serde_json::from_str(&serde_json::to_string(&data).unwrap()).unwrap();
        prop_assert_eq!(serde_json::from_str::<Value>(&b.data[0]).unwrap(), sent);
    }
}

// ---------------------------------------------------------------------------------------------
// Cursors
// ---------------------------------------------------------------------------------------------

fn cursor_like() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9]{0,25}-[0-9]{0,25}",
        "[0-9+\\-a-fm ]{0,30}",
        "m[0-9a-f]{8}-[0-9+\\-]{0,22}",
        any::<String>(),
    ]
}

proptest! {
    #![proptest_config(config(1000))]

    #[test]
    fn redis_cursors_parse_or_not_without_panic(raw in cursor_like()) {
        if let Some(pos) = RedisLog::parse_cursor(&raw) {
            let (ms, seq) = raw.split_once('-').unwrap();
            prop_assert!(ms.bytes().chain(seq.bytes()).all(|b| b.is_ascii_digit()), "{:?}", raw);
            prop_assert_eq!(RedisLog::parse_cursor(&RedisLog::cursor(pos)), Some(pos));
        }
    }

    #[test]
    fn redis_cursors_round_trip_and_sort_as_strings(
        a in (0..10_000_000_000_000u64, 0..1_000_000u64),
        b in (0..10_000_000_000_000u64, 0..1_000_000u64),
        big in (any::<u64>(), any::<u64>()),
    ) {
        let pa = Position { major: a.0, minor: a.1 };
        let pb = Position { major: b.0, minor: b.1 };
        let big = Position { major: big.0, minor: big.1 };
        for p in [pa, pb, big] {
            prop_assert_eq!(RedisLog::parse_cursor(&RedisLog::cursor(p)), Some(p));
        }
        prop_assert_eq!(RedisLog::cursor(pa).cmp(&RedisLog::cursor(pb)), pa.cmp(&pb));
    }

    #[test]
    fn memory_cursors_parse_or_not_without_panic(tail in cursor_like(), n in 0..5usize) {
        let hub = Arc::new(Hub::new(Arc::new(Metrics::new())));
        let log = MemoryLog::new(&Default::default(), hub);
        let channel = ChannelName::parse_syntax("logs:a").unwrap();
        let news = (0..n)
            .map(|_| NewEvent {
                channel: channel.clone(),
                event: "message".into(),
                payload: "1".into(),
                idempotency_key: None,
                audience: None,
            })
            .collect();
        let cursors: Vec<String> = log.append("p", news).into_iter().map(|o| o.cursor).collect();
        let head = log.head_cursor();
        prop_assert_eq!(log.parse_cursor(&head), Some(Position { major: 0, minor: n as u64 }));
        for (i, c) in cursors.iter().enumerate() {
            prop_assert_eq!(log.parse_cursor(c), Some(Position { major: 0, minor: i as u64 + 1 }));
        }
        prop_assert!(cursors.windows(2).all(|w| w[0] < w[1]), "{:?}", cursors);
        // Arbitrary strings, and this log's epoch followed by anything.
        let epoch = head.split_once('-').unwrap().0;
        for raw in [tail.clone(), format!("{epoch}-{tail}"), format!("{epoch}{tail}")] {
            let _ = log.parse_cursor(&raw);
            let _ = RedisLog::parse_cursor(&raw);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// JWT claims
// ---------------------------------------------------------------------------------------------

const SECRET: &str = "props-secret";
const LEEWAY: u64 = 30;

/// Every message `verify` may answer a token of the right key and algorithm with.
const CLAIM_ERRORS: &[&str] = &[
    "token has no exp claim",
    "token exp claim must be a non-negative number of seconds",
    "token exp claim must be a number (seconds since the epoch)",
    "token expired",
    "token has no sub claim",
    "token has an empty sub claim",
    "token sub claim must be a string",
    "token channels claim must be an array of strings",
    "token roles claim must be an array of strings",
    "token nbf claim is not a number",
    "token not yet valid (nbf)",
];

fn verifier() -> JwtVerifier {
    JwtVerifier::from_config(&sse_gateway::config::JwtSettings::hs256(SECRET)).unwrap()
}

fn sign(claims: &Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap()
}

fn now_secs() -> u64 {
    now_ms() / 1000
}

/// A claim: absent, well typed, or any JSON at all.
fn claim(well_typed: BoxedStrategy<Value>) -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        1 => Just(None),
        3 => well_typed.prop_map(Some),
        2 => json_value().prop_map(Some),
    ]
}

fn strings(max: usize) -> BoxedStrategy<Value> {
    prop_oneof![
        9 => vec(prop_oneof![pattern(), ".{0,12}"], 0..8),
        1 => vec(Just("logs:**".to_owned()), max..=max),
    ]
    .prop_map(|v| json!(v))
    .boxed()
}

fn claims() -> impl Strategy<Value = Value> {
    let now = i64::try_from(now_secs()).unwrap();
    let leeway = i64::try_from(LEEWAY).unwrap();
    (
        claim("[a-z@.]{0,10}".prop_map(Value::String).boxed()),
        claim(
            // Long expired, expired within the leeway (still honoured), live.
            prop_oneof![
                now - 1000..now - 10,
                now - leeway + 5..now - 5,
                now + 10..now + 100_000
            ]
            .prop_map(Value::from)
            .boxed(),
        ),
        claim(
            prop_oneof![now - 1000..now, now + 60..now + 1000]
                .prop_map(Value::from)
                .boxed(),
        ),
        claim(strings(3000)),
        claim(strings(100)),
        btree_map("[a-z]{1,6}", json_value(), 0..4),
    )
        .prop_map(|(sub, exp, nbf, channels, roles, extra)| {
            let mut map: serde_json::Map<String, Value> = extra.into_iter().collect();
            for (k, v) in [
                ("sub", sub),
                ("exp", exp),
                ("nbf", nbf),
                ("channels", channels),
                ("roles", roles),
            ] {
                match v {
                    Some(v) => map.insert(k.to_owned(), v),
                    None => map.remove(k),
                };
            }
            Value::Object(map)
        })
}

/// The `exp` claim in whole seconds, as `verify` reads it; `None` when it is not a non-negative number.
fn exp_secs(claims: &Value) -> Option<u64> {
    let exp = claims.get("exp")?;
    exp.as_u64()
        .or_else(|| exp.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
}

/// What is wrong with a claim set, as `verify` words it; `None` when the time is too close to a
/// boundary to say.
fn problems(claims: &Value) -> Option<Vec<&'static str>> {
    let now = now_secs();
    let get = |k: &str| claims.get(k).filter(|v| !v.is_null());
    let mut out = Vec::new();
    match get("exp") {
        None => out.push("token has no exp claim"),
        Some(Value::Number(_)) => match exp_secs(claims) {
            None => out.push("token exp claim must be a non-negative number of seconds"),
            Some(s) if s.abs_diff(now) < 5 || s.saturating_add(LEEWAY).abs_diff(now) < 5 => {
                return None
            }
            Some(s) if s.saturating_add(LEEWAY) <= now => out.push("token expired"),
            Some(_) => {}
        },
        Some(_) => out.push("token exp claim must be a number (seconds since the epoch)"),
    }
    match get("sub") {
        None => out.push("token has no sub claim"),
        Some(Value::String(s)) if s.is_empty() => out.push("token has an empty sub claim"),
        Some(Value::String(_)) => {}
        Some(_) => out.push("token sub claim must be a string"),
    }
    for (k, msg) in [
        (
            "channels",
            "token channels claim must be an array of strings",
        ),
        ("roles", "token roles claim must be an array of strings"),
    ] {
        if let Some(v) = get(k) {
            if !v.as_array().is_some_and(|a| a.iter().all(Value::is_string)) {
                out.push(msg);
            }
        }
    }
    // The library reads `nbf` itself: `null` is not a number to it.
    if claims.get("nbf").is_some_and(Value::is_null) {
        out.push("token nbf claim is not a number");
    }
    if let Some(nbf) = get("nbf") {
        let secs = nbf.as_u64().or_else(|| {
            nbf.as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0 && *f < u64::MAX as f64)
                .map(|f| f.round() as u64)
        });
        match secs {
            None => out.push("token nbf claim is not a number"),
            Some(s) if s.abs_diff(now + LEEWAY) < 5 => return None,
            Some(s) if s > now + LEEWAY => out.push("token not yet valid (nbf)"),
            Some(_) => {}
        }
    }
    Some(out)
}

proptest! {
    #![proptest_config(config(200))]

    #[test]
    fn any_claims_get_a_specific_answer(claims in claims()) {
        let Some(problems) = problems(&claims) else {
            return Ok(());
        };
        match verifier().verify(&sign(&claims, SECRET.as_bytes())) {
            Ok(user) => {
                prop_assert!(problems.is_empty(), "accepted {} despite {:?}", claims, problems);
                prop_assert_eq!(Some(user.sub.as_str()), claims["sub"].as_str());
                let n = claims.get("channels").and_then(Value::as_array).map_or(0, Vec::len);
                prop_assert!(user.patterns.len() <= n);
                // Honoured until its exp, or until the leeway ends for one past its exp.
                if let Some(exp) = exp_secs(&claims) {
                    let end = if exp > now_secs() { exp } else { exp.saturating_add(LEEWAY) };
                    prop_assert_eq!(user.exp, end, "for {}", claims);
                }
            }
            Err(GatewayError::Unauthenticated(msg)) => {
                prop_assert!(CLAIM_ERRORS.contains(&msg.as_str()), "unexpected {:?} for {}", msg, claims);
                prop_assert!(problems.contains(&msg.as_str()), "{:?} for {} (problems {:?})", msg, claims, problems);
            }
            Err(other) => prop_assert!(false, "{:?}", other),
        }
    }

    #[test]
    fn claims_that_are_not_an_object_are_said_to_be(payload in json_value()) {
        prop_assume!(!payload.is_object());
        let err = verifier().verify(&sign(&payload, SECRET.as_bytes())).unwrap_err();
        prop_assert_eq!(err.to_string(), "malformed token: its claims are not a JSON object");
    }

    #[test]
    fn a_token_signed_with_another_key_never_verifies(
        claims in prop_oneof![claims(), json_value()],
        secret in vec(any::<u8>(), 1..64),
    ) {
        prop_assume!(secret != SECRET.as_bytes());
        let err = verifier().verify(&sign(&claims, &secret)).unwrap_err();
        prop_assert_eq!(err.to_string(), "invalid token signature");
    }

    #[test]
    fn any_string_as_a_token_is_refused_without_panic(token in prop_oneof![
        any::<String>(),
        "[A-Za-z0-9_\\-.=]{0,200}",
        (".{0,40}", ".{0,40}").prop_map(|(h, c)| {
            use base64::Engine;
            let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
            format!("{}.{}.{}", b64(&h), b64(&c), b64("sig"))
        }),
    ]) {
        let err = verifier().verify(&token).unwrap_err();
        prop_assert!(matches!(err, GatewayError::Unauthenticated(_)));
    }
}
