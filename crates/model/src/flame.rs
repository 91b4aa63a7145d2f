//! Flame-graph trees and top-function tables, built from weighted stacks.

use serde::{Deserialize, Serialize};

use crate::named::NamedStacks;
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
        NamedStacks::intern(paths.into_iter().map(|(mut p, v)| {
            p.reverse();
            (p, v)
        }))
        .flame_tree()
    }

    /// Depth-first search for a node by name; used by tests and the CLI.
    pub fn find(&self, name: &str) -> Option<&FlameNode> {
        if self.name == name {
            return Some(self);
        }
        self.children.iter().find_map(|c| c.find(name))
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
/// Stacks are leaf first.
pub fn top_functions<'a, I>(stacks: I) -> Vec<TopEntry>
where
    I: IntoIterator<Item = (Vec<&'a str>, f64)>,
{
    NamedStacks::intern(stacks).top_functions()
}

impl Profile {
    /// Display names per sample of the primary value type, leaf first.
    pub fn named_stacks(&self) -> Vec<(Vec<String>, f64)> {
        self.samples
            .iter()
            .filter(|s| s.value_index == 0)
            .map(|s| {
                (
                    s.stack.iter().map(|f| f.display_name()).collect(),
                    s.weighted(),
                )
            })
            .collect()
    }

    /// The samples as interned names, the form every view is computed from.
    pub fn interned(&self) -> NamedStacks {
        let named = self.named_stacks();
        let mut ns = NamedStacks::intern(
            named
                .iter()
                .map(|(n, v)| (n.iter().map(String::as_str).collect(), *v)),
        );
        ns.value_type = Some(self.value_type.clone());
        ns
    }

    pub fn flame_tree(&self) -> FlameNode {
        self.interned().flame_tree()
    }

    pub fn top_functions(&self) -> Vec<TopEntry> {
        self.interned().top_functions()
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
