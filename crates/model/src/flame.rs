//! Flame-graph trees and top-function tables, built from weighted stacks.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::profile::Profile;

/// A node of a flame graph. `value` includes the children; `self_value` does not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlameNode {
    pub name: String,
    pub value: f64,
    pub self_value: f64,
    pub children: Vec<FlameNode>,
}

impl FlameNode {
    /// Builds the tree from root-first name paths and their weighted values. Children are
    /// sorted by name so the picture is stable from one query to the next.
    pub fn from_paths<'a, I>(paths: I) -> FlameNode
    where
        I: IntoIterator<Item = (Vec<&'a str>, f64)>,
    {
        let mut root = Builder::default();
        for (path, v) in paths {
            if v == 0.0 {
                continue;
            }
            let mut node = &mut root;
            node.value += v;
            for name in path {
                let i = match node.index.get(name) {
                    Some(&i) => i,
                    None => {
                        node.children.push((name.to_string(), Builder::default()));
                        node.index.insert(name.to_string(), node.children.len() - 1);
                        node.children.len() - 1
                    }
                };
                node = &mut node.children[i].1;
                node.value += v;
            }
            node.self_value += v;
        }
        root.finish("all".to_string())
    }

    /// Depth-first search for a node by name; used by tests and the CLI.
    pub fn find(&self, name: &str) -> Option<&FlameNode> {
        if self.name == name {
            return Some(self);
        }
        self.children.iter().find_map(|c| c.find(name))
    }
}

#[derive(Default)]
struct Builder {
    value: f64,
    self_value: f64,
    children: Vec<(String, Builder)>,
    index: HashMap<String, usize>,
}

impl Builder {
    fn finish(self, name: String) -> FlameNode {
        let mut children: Vec<FlameNode> = self
            .children
            .into_iter()
            .map(|(n, b)| b.finish(n))
            .collect();
        children.sort_by(|a, b| a.name.cmp(&b.name));
        FlameNode {
            name,
            value: self.value,
            self_value: self.self_value,
            children,
        }
    }
}

/// One row of the top-functions table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopEntry {
    pub function: String,
    pub self_value: f64,
    pub total_value: f64,
    pub self_percent: f64,
    pub total_percent: f64,
}

/// Self is the leaf's share; total counts a function once per stack however often it recurses.
pub fn top_functions<'a, I>(stacks: I) -> Vec<TopEntry>
where
    I: IntoIterator<Item = (Vec<&'a str>, f64)>,
{
    let mut self_v: HashMap<&str, f64> = HashMap::new();
    let mut total_v: HashMap<&str, f64> = HashMap::new();
    let mut grand = 0.0;
    for (leaf_first, v) in stacks {
        grand += v;
        if let Some(leaf) = leaf_first.first() {
            *self_v.entry(leaf).or_default() += v;
        }
        let mut seen: Vec<&str> = Vec::with_capacity(leaf_first.len());
        for name in leaf_first {
            if !seen.contains(&name) {
                seen.push(name);
                *total_v.entry(name).or_default() += v;
            }
        }
    }
    let pct = |v: f64| if grand > 0.0 { 100.0 * v / grand } else { 0.0 };
    let mut out: Vec<TopEntry> = total_v
        .into_iter()
        .map(|(name, total)| {
            let s = self_v.get(name).copied().unwrap_or(0.0);
            TopEntry {
                function: name.to_string(),
                self_value: s,
                total_value: total,
                self_percent: pct(s),
                total_percent: pct(total),
            }
        })
        .collect();
    out.sort_by(|a, b| {
        b.self_value
            .total_cmp(&a.self_value)
            .then(b.total_value.total_cmp(&a.total_value))
            .then(a.function.cmp(&b.function))
    });
    out
}

impl Profile {
    /// Display names per sample, leaf first.
    pub fn named_stacks(&self) -> Vec<(Vec<String>, f64)> {
        self.samples
            .iter()
            .map(|s| {
                (
                    s.stack.iter().map(|f| f.display_name()).collect(),
                    s.weighted(),
                )
            })
            .collect()
    }

    pub fn flame_tree(&self) -> FlameNode {
        let named = self.named_stacks();
        FlameNode::from_paths(
            named
                .iter()
                .map(|(n, v)| (n.iter().rev().map(String::as_str).collect(), *v)),
        )
    }

    pub fn top_functions(&self) -> Vec<TopEntry> {
        let named = self.named_stacks();
        top_functions(
            named
                .iter()
                .map(|(n, v)| (n.iter().map(String::as_str).collect(), *v)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_sums_and_merges() {
        let t = FlameNode::from_paths(vec![
            (vec!["main", "mid", "hot"], 3.0),
            (vec!["main", "mid", "cold"], 1.0),
            (vec!["main", "mid", "hot"], 2.0),
            (vec!["main"], 1.0),
        ]);
        assert_eq!(t.value, 7.0);
        let main = t.find("main").expect("main");
        assert_eq!(main.value, 7.0);
        assert_eq!(main.self_value, 1.0);
        let mid = t.find("mid").expect("mid");
        assert_eq!(mid.children.len(), 2);
        assert_eq!(t.find("hot").expect("hot").value, 5.0);
        assert_eq!(t.find("cold").expect("cold").value, 1.0);
    }

    #[test]
    fn top_counts_recursion_once() {
        let top = top_functions(vec![
            (vec!["f", "f", "main"], 2.0),
            (vec!["g", "main"], 2.0),
        ]);
        let f = top.iter().find(|e| e.function == "f").expect("f");
        assert_eq!(f.total_value, 2.0);
        assert_eq!(f.self_percent, 50.0);
        let main = top.iter().find(|e| e.function == "main").expect("main");
        assert_eq!(main.total_percent, 100.0);
        assert_eq!(main.self_value, 0.0);
    }
}
