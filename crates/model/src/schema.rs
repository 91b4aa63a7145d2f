//! Stack Schemas: rules that tag stacks and frames and drop or collapse frames, applied when a
//! query reads stacks, so data stored before a rule changed benefits from it too.
//!
//! A stack is matched on its frames' display names (`function` or `[unknown] module+0x…`):
//! - `tag` gives the stack `key=value` when any frame matches (the first such rule of a key
//!   wins);
//! - `frame_tag` gives it `key=value` of the leaf-most frame that matches a rule of that key
//!   (its self time goes to that frame's tag);
//! - `drop` removes matching frames; `collapse` keeps one frame of each run of matching ones
//!   (the root-most, where the run was entered).
//!
//! Rules are global or belong to a service; a service's rules apply to its samples only. No
//! rule changes a total: stacks keep their values whatever frames they lose.

use regex::Regex;
use serde::{Deserialize, Serialize};

/// A rule as JSON (`baton config check` sends the tree's rules to a server to count what they
/// match): `action` is `tag`, `frame_tag`, `drop` or `collapse`; `key` and `value` are a tag's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleSpec {
    pub pattern: String,
    pub action: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub value: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

/// How much one rule matches: distinct stacks with a matching frame, and their total.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct RuleMatch {
    pub stacks: u64,
    pub total: f64,
}

/// What a rule does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaAction {
    TagStack { key: String, value: String },
    TagFrame { key: String, value: String },
    Drop,
    Collapse,
}

/// One rule: a pattern on frame names and what it does, for a service or for all.
#[derive(Debug, Clone)]
pub struct SchemaRule {
    pub pattern: Regex,
    pub action: SchemaAction,
    /// `None`: every service's samples.
    pub service: Option<String>,
}

impl PartialEq for SchemaRule {
    fn eq(&self, o: &Self) -> bool {
        self.pattern.as_str() == o.pattern.as_str()
            && self.action == o.action
            && self.service == o.service
    }
}
impl Eq for SchemaRule {}

impl SchemaRule {
    /// The rule as JSON.
    pub fn spec(&self) -> RuleSpec {
        let (action, key, value) = match &self.action {
            SchemaAction::TagStack { key, value } => ("tag", key.clone(), value.clone()),
            SchemaAction::TagFrame { key, value } => ("frame_tag", key.clone(), value.clone()),
            SchemaAction::Drop => ("drop", String::new(), String::new()),
            SchemaAction::Collapse => ("collapse", String::new(), String::new()),
        };
        RuleSpec {
            pattern: self.pattern.as_str().to_string(),
            action: action.into(),
            key,
            value,
            service: self.service.clone(),
        }
    }

    /// A rule from JSON, its pattern compiled.
    pub fn from_spec(s: &RuleSpec) -> Result<SchemaRule, String> {
        let pattern = Regex::new(&s.pattern).map_err(|e| format!("{:?}: {e}", s.pattern))?;
        let (key, value) = (s.key.clone(), s.value.clone());
        let action = match s.action.as_str() {
            "tag" => SchemaAction::TagStack { key, value },
            "frame_tag" => SchemaAction::TagFrame { key, value },
            "drop" => SchemaAction::Drop,
            "collapse" => SchemaAction::Collapse,
            other => return Err(format!("unknown action {other:?}")),
        };
        Ok(SchemaRule {
            pattern,
            action,
            service: s.service.clone(),
        })
    }

    /// Whether the rule looks at samples of `service` ('' for none).
    pub fn applies_to(&self, service: &str) -> bool {
        self.service.as_deref().is_none_or(|s| s == service)
    }

    /// A short description, for reports: `tag component=db when ^sqlite3_`.
    pub fn describe(&self) -> String {
        let p = self.pattern.as_str();
        let what = match &self.action {
            SchemaAction::TagStack { key, value } => format!("tag {key}={value} when {p}"),
            SchemaAction::TagFrame { key, value } => format!("frame_tag {key}={value} at {p}"),
            SchemaAction::Drop => format!("drop {p}"),
            SchemaAction::Collapse => format!("collapse {p}"),
        };
        match &self.service {
            Some(s) => format!("[{s}] {what}"),
            None => what,
        }
    }
}

/// A tree's rules, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StackSchema {
    pub rules: Vec<SchemaRule>,
}

/// What the rules make of one stack: its tags, and its frames (indexes into the given names,
/// leaf first) after drops and collapses.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Applied {
    pub tags: Vec<(String, String)>,
    pub keep: Vec<usize>,
}

impl StackSchema {
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether any rule belongs to a service (then stacks must be read per service).
    pub fn has_service_rules(&self) -> bool {
        self.rules.iter().any(|r| r.service.is_some())
    }

    /// Whether `label` is a key some rule tags with.
    pub fn tags_key(&self, label: &str) -> bool {
        self.rules.iter().any(|r| match &r.action {
            SchemaAction::TagStack { key, .. } | SchemaAction::TagFrame { key, .. } => key == label,
            _ => false,
        })
    }

    /// The rules that apply to a sample of `service` ('' for none).
    fn applies(&self, service: &str) -> impl Iterator<Item = &SchemaRule> + '_ {
        let service = service.to_string();
        self.rules
            .iter()
            .filter(move |r| r.service.as_ref().is_none_or(|s| *s == service))
    }

    /// Applies the rules of `service` to a stack of frame names, leaf first.
    pub fn apply(&self, service: &str, names: &[&str]) -> Applied {
        let mut out = Applied::default();
        let mut drop = vec![false; names.len()];
        let mut collapse = vec![false; names.len()];
        let mut frame_tags: Vec<(usize, &str, &str)> = Vec::new();
        for r in self.applies(service) {
            match &r.action {
                SchemaAction::TagStack { key, value } => {
                    if !out.tags.iter().any(|(k, _)| k == key)
                        && names.iter().any(|n| r.pattern.is_match(n))
                    {
                        out.tags.push((key.clone(), value.clone()));
                    }
                }
                SchemaAction::TagFrame { key, value } => {
                    if let Some(i) = names.iter().position(|n| r.pattern.is_match(n)) {
                        frame_tags.push((i, key, value));
                    }
                }
                SchemaAction::Drop => {
                    for (i, n) in names.iter().enumerate() {
                        drop[i] |= r.pattern.is_match(n);
                    }
                }
                SchemaAction::Collapse => {
                    for (i, n) in names.iter().enumerate() {
                        collapse[i] |= r.pattern.is_match(n);
                    }
                }
            }
        }
        // Per key, the leaf-most tagged frame wins (rules in file order break ties).
        frame_tags.sort_by_key(|t| t.0);
        for (_, key, value) in frame_tags {
            if !out.tags.iter().any(|(k, _)| k == key) {
                out.tags.push((key.to_string(), value.to_string()));
            }
        }
        out.tags.sort();
        for i in 0..names.len() {
            if drop[i] {
                continue;
            }
            // Of a run of collapsed frames (leaf first), keep the last: the root-most.
            if collapse[i] && names.get(i + 1).is_some() && collapse[i + 1] && !drop[i + 1] {
                continue;
            }
            out.keep.push(i);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(p: &str, action: SchemaAction, service: Option<&str>) -> SchemaRule {
        SchemaRule {
            pattern: Regex::new(p).unwrap(),
            action,
            service: service.map(String::from),
        }
    }

    fn tag(k: &str, v: &str) -> SchemaAction {
        SchemaAction::TagStack {
            key: k.into(),
            value: v.into(),
        }
    }

    fn frame_tag(k: &str, v: &str) -> SchemaAction {
        SchemaAction::TagFrame {
            key: k.into(),
            value: v.into(),
        }
    }

    #[test]
    fn stacks_are_tagged_and_frames_dropped_and_collapsed() {
        let s = StackSchema {
            rules: vec![
                rule("^sqlite3_", tag("component", "db"), None),
                rule("^SSL_", frame_tag("layer", "tls"), None),
                rule("^handle", frame_tag("layer", "app"), None),
                rule("^std::", SchemaAction::Collapse, None),
                rule("^__libc", SchemaAction::Drop, None),
                rule("^main$", tag("svc", "only-a"), Some("a")),
            ],
        };
        // Leaf first.
        let names = [
            "std::io::write",
            "std::io::buf",
            "SSL_write",
            "handle",
            "sqlite3_step",
            "main",
            "__libc_start_main",
        ];
        let a = s.apply("b", &names);
        assert_eq!(
            a.tags,
            vec![
                ("component".to_string(), "db".to_string()),
                ("layer".to_string(), "tls".to_string())
            ]
        );
        assert_eq!(a.keep, vec![1, 2, 3, 4, 5]);
        let a = s.apply("a", &names);
        assert!(a.tags.contains(&("svc".into(), "only-a".into())));
        // No rule matches: nothing changes.
        assert_eq!(
            s.apply("", &["f", "g"]),
            Applied {
                tags: vec![],
                keep: vec![0, 1]
            }
        );
        assert!(s.tags_key("layer") && s.tags_key("component") && !s.tags_key("pid"));
        assert!(s.has_service_rules());
    }
}
