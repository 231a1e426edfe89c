//! Configured channel types (`logs:{workspace_id}:{workflow_id?}` and so on): which types exist and
//! how many segments each takes.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{is_valid_type, quote, ChannelName, ChannelPattern};
use crate::error::GatewayError;

/// One configured channel type.
#[derive(Clone, Debug)]
pub struct ChannelType {
    /// The type name (first part of every channel of this type).
    pub name: String,
    /// The template as configured, for messages and docs.
    pub template: String,
    /// Fewest segments after the type.
    pub min_segments: usize,
    /// Most segments after the type.
    pub max_segments: usize,
    /// Patterns every authenticated user may read.
    pub subscribe: Vec<ChannelPattern>,
    /// Keep the latest event of each channel of this type for this long (`snapshot = true`).
    pub snapshot_ttl: Option<Duration>,
}

impl ChannelType {
    /// Builds a type from its template, e.g. `logs:{workspace_id}:{workflow_id?}`.
    ///
    /// # Errors
    /// A message naming what is wrong with the template.
    pub fn from_template(name: &str, template: &str, subscribe: &[String]) -> Result<Self, String> {
        if !is_valid_type(name) {
            return Err(format!(
                "channel type {name:?} must match [a-z][a-z0-9_-]{{0,31}}"
            ));
        }
        let mut parts = template.split(':');
        if parts.next() != Some(name) {
            return Err(format!(
                "template {template:?} must start with the type name {name:?}"
            ));
        }
        let (mut min, mut max) = (0, 0);
        for part in parts {
            let inner = part
                .strip_prefix('{')
                .and_then(|p| p.strip_suffix('}'))
                .ok_or_else(|| {
                    format!("template {template:?}: part {part:?} must be {{name}} or {{name?}}")
                })?;
            if let Some(_optional) = inner.strip_suffix('?') {
                max += 1;
            } else {
                if max > min {
                    return Err(format!(
                        "template {template:?}: a required part follows an optional one"
                    ));
                }
                min += 1;
                max += 1;
            }
        }
        if max + 1 > super::MAX_PARTS {
            return Err(format!("template {template:?} has more than 8 parts"));
        }
        let subscribe = subscribe
            .iter()
            .map(|p| ChannelPattern::parse(p).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            name: name.to_owned(),
            template: template.to_owned(),
            min_segments: min,
            max_segments: max,
            subscribe,
            snapshot_ttl: None,
        })
    }

    /// Keeps the latest event of each channel of this type for `ttl` (`None`: none kept).
    #[must_use]
    pub fn with_snapshot(mut self, ttl: Option<Duration>) -> Self {
        self.snapshot_ttl = ttl;
        self
    }
}

/// The set of configured channel types.
#[derive(Clone, Debug)]
pub struct ChannelTypes {
    types: BTreeMap<String, ChannelType>,
}

impl ChannelTypes {
    /// Builds the set from configured types.
    pub fn new(types: impl IntoIterator<Item = ChannelType>) -> Self {
        Self {
            types: types.into_iter().map(|t| (t.name.clone(), t)).collect(),
        }
    }

    /// How long the latest event of `name` is kept, when its type keeps one.
    pub fn snapshot_ttl(&self, name: &ChannelName) -> Option<Duration> {
        self.types.get(name.kind()).and_then(|t| t.snapshot_ttl)
    }

    /// Whether any configured type keeps latest events.
    pub fn any_snapshot(&self) -> bool {
        self.types.values().any(|t| t.snapshot_ttl.is_some())
    }

    /// The types that keep their channels' latest event by default (shown current on subscribe).
    pub const DEFAULT_SNAPSHOT: [&'static str; 2] = ["dashboards", "workflow"];

    /// The default types, from the product's first users.
    pub fn defaults() -> Vec<(String, String, Vec<String>)> {
        [
            ("logs", "logs:{workspace_id}:{workflow_id?}", vec![]),
            ("metrics", "metrics:{workspace_id}", vec![]),
            (
                "alerts",
                "alerts:{user_id}",
                vec!["alerts:{sub}".to_owned()],
            ),
            ("dashboards", "dashboards:{dashboard_id}", vec![]),
            ("workflow", "workflow:{workspace_id}:{workflow_id}", vec![]),
        ]
        .into_iter()
        .map(|(n, t, s)| (n.to_owned(), t.to_owned(), s))
        .collect()
    }

    /// Parses a concrete channel name and checks it against its configured type.
    ///
    /// # Errors
    /// [`GatewayError::InvalidChannel`] naming what is wrong.
    pub fn parse_name(&self, raw: &str) -> Result<ChannelName, GatewayError> {
        let name = ChannelName::parse_syntax(raw)?;
        let kind = name.kind();
        let Some(t) = self.types.get(kind) else {
            return Err(GatewayError::InvalidChannel(format!(
                "{}: unknown channel type {kind:?} (known: {})",
                quote(raw),
                self.types.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        };
        let n = name.segments().count();
        if n < t.min_segments || n > t.max_segments {
            return Err(GatewayError::InvalidChannel(format!(
                "{}: type {kind:?} takes {} segment(s) ({}), got {n}",
                quote(raw),
                if t.min_segments == t.max_segments {
                    t.min_segments.to_string()
                } else {
                    format!("{} to {}", t.min_segments, t.max_segments)
                },
                t.template
            )));
        }
        Ok(name)
    }

    /// Whether a config subscribe rule lets user `sub` read `name`.
    pub fn rule_allows(&self, name: &ChannelName, sub: &str) -> bool {
        self.types
            .values()
            .flat_map(|t| t.subscribe.iter())
            .any(|p| p.matches(name, Some(sub)))
    }

    /// All configured types.
    pub fn iter(&self) -> impl Iterator<Item = &ChannelType> {
        self.types.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> ChannelTypes {
        ChannelTypes::new(
            ChannelTypes::defaults()
                .iter()
                .map(|(n, t, s)| ChannelType::from_template(n, t, s).unwrap()),
        )
    }

    #[test]
    fn checks_segment_counts() {
        let types = defaults();
        assert!(types.parse_name("logs:ws1").is_ok());
        assert!(types.parse_name("logs:ws1:wf1").is_ok());
        assert!(types.parse_name("logs").is_err());
        assert!(types.parse_name("logs:a:b:c").is_err());
        assert!(types.parse_name("workflow:ws1").is_err());
        assert!(types.parse_name("nope:x").is_err());
    }

    #[test]
    fn default_rule_grants_own_alerts() {
        let types = defaults();
        let mine = types.parse_name("alerts:alice").unwrap();
        assert!(types.rule_allows(&mine, "alice"));
        assert!(!types.rule_allows(&mine, "bob"));
    }
}
