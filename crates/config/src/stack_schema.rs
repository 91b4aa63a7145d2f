//! Stack Schema rules: `[[stack_schema]]` and `[[services.NAME.stack_schema]]` checked and
//! compiled into [`baton_model::StackSchema`], each problem at its `file:line:col`.

use baton_model::{SchemaAction, SchemaRule, StackSchema};
use regex::Regex;
use serde::Serializer;
use toml::Spanned;

use crate::schema::SchemaDoc;
use crate::validate::{label_key, Ctx};

/// One rule, or `None` with its problems reported.
pub(crate) fn rule(
    cx: &mut Ctx<'_>,
    doc: &Spanned<SchemaDoc>,
    service: Option<&String>,
) -> Option<SchemaRule> {
    let d = doc.get_ref();
    let actions = [&d.tag, &d.frame_tag, &d.drop, &d.collapse]
        .iter()
        .filter(|a| a.is_some())
        .count();
    if actions != 1 {
        cx.at(
            doc.span(),
            "a stack_schema rule has exactly one of `tag`, `frame_tag` (each with `match`), \
             `drop` or `collapse`",
        );
        return None;
    }
    let compile = |cx: &mut Ctx<'_>, p: &Spanned<String>| match Regex::new(p.get_ref()) {
        Ok(r) => Some(r),
        Err(e) => {
            let first = e.to_string();
            let why = first.lines().last().unwrap_or("invalid").trim();
            cx.at(
                p.span(),
                format!("regular expression {:?}: {why}", p.get_ref()),
            );
            None
        }
    };
    let tag = |cx: &mut Ctx<'_>, t: &Spanned<String>| -> Option<(String, String)> {
        let Some((k, v)) = t.get_ref().split_once('=') else {
            cx.at(
                t.span(),
                format!("{:?}: write a tag as key=value", t.get_ref()),
            );
            return None;
        };
        let (k, v) = (k.trim(), v.trim());
        if let Err(e) = label_key(k) {
            cx.at(t.span(), e);
            return None;
        }
        if v.is_empty() || v.contains(';') {
            cx.at(
                t.span(),
                format!("tag {k}: the value must be non-empty, without `;`"),
            );
            return None;
        }
        Some((k.to_string(), v.to_string()))
    };
    let (pattern, action) = if let Some(p) = &d.drop {
        (compile(cx, p)?, SchemaAction::Drop)
    } else if let Some(p) = &d.collapse {
        (compile(cx, p)?, SchemaAction::Collapse)
    } else {
        let Some(p) = &d.pattern else {
            cx.at(
                doc.span(),
                "`tag` and `frame_tag` need `match`, the frames they look for",
            );
            return None;
        };
        let pattern = compile(cx, p);
        let action = if let Some(t) = &d.tag {
            tag(cx, t).map(|(key, value)| SchemaAction::TagStack { key, value })
        } else {
            let t = d.frame_tag.as_ref()?;
            tag(cx, t).map(|(key, value)| SchemaAction::TagFrame { key, value })
        };
        (pattern?, action?)
    };
    if d.pattern.is_some() && matches!(action, SchemaAction::Drop | SchemaAction::Collapse) {
        cx.at(
            doc.span(),
            "`drop` and `collapse` are the pattern themselves: leave out `match`",
        );
        return None;
    }
    Some(SchemaRule {
        pattern,
        action,
        service: service.cloned(),
    })
}

/// The rules as `baton config show` prints them: one description each.
pub(crate) fn serialize<S: Serializer>(s: &StackSchema, out: S) -> Result<S::Ok, S::Error> {
    out.collect_seq(s.rules.iter().map(|r| r.describe()))
}
