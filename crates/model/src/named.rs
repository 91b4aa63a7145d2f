//! Stacks as interned name ids: the fast path from a store query to a flame tree or top table,
//! with no per-frame allocation.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::flame::{FlameNode, TopEntry};
use crate::profile::ValueType;

/// Weighted stacks whose frames are indices into `names` (leaf first).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NamedStacks {
    pub value_type: Option<ValueType>,
    pub names: Vec<String>,
    pub stacks: Vec<(Vec<u32>, f64)>,
}

#[derive(Default)]
struct Node {
    value: f64,
    self_value: f64,
    children: Vec<(u32, Node)>,
    index: HashMap<u32, usize>,
}

impl Node {
    fn finish(self, name: String, names: &[String]) -> FlameNode {
        let mut children: Vec<FlameNode> = self
            .children
            .into_iter()
            .map(|(id, n)| n.finish(names[id as usize].clone(), names))
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

impl NamedStacks {
    pub fn total(&self) -> f64 {
        self.stacks.iter().map(|s| s.1).sum()
    }

    /// The flame tree, root first. Frames with the same name at the same place merge, exactly
    /// as [`crate::Profile::flame_tree`] merges them.
    pub fn flame_tree(&self) -> FlameNode {
        let mut root = Node::default();
        for (ids, v) in &self.stacks {
            if *v == 0.0 {
                continue;
            }
            let mut node = &mut root;
            node.value += v;
            for &id in ids.iter().rev() {
                let i = match node.index.get(&id) {
                    Some(&i) => i,
                    None => {
                        node.children.push((id, Node::default()));
                        node.index.insert(id, node.children.len() - 1);
                        node.children.len() - 1
                    }
                };
                node = &mut node.children[i].1;
                node.value += v;
            }
            node.self_value += v;
        }
        root.finish("all".to_string(), &self.names)
    }

    /// The top-functions table, as [`crate::flame::top_functions`] computes it.
    pub fn top_functions(&self) -> Vec<TopEntry> {
        let mut self_v = vec![0.0; self.names.len()];
        let mut total_v = vec![0.0; self.names.len()];
        let mut seen = vec![usize::MAX; self.names.len()];
        let mut grand = 0.0;
        for (n, (ids, v)) in self.stacks.iter().enumerate() {
            grand += v;
            if let Some(&leaf) = ids.first() {
                self_v[leaf as usize] += v;
            }
            for &id in ids {
                if seen[id as usize] != n {
                    seen[id as usize] = n;
                    total_v[id as usize] += v;
                }
            }
        }
        let pct = |v: f64| if grand > 0.0 { 100.0 * v / grand } else { 0.0 };
        let mut out: Vec<TopEntry> = (0..self.names.len())
            .filter(|&i| total_v[i] > 0.0)
            .map(|i| TopEntry {
                function: self.names[i].clone(),
                self_value: self_v[i],
                total_value: total_v[i],
                self_percent: pct(self_v[i]),
                total_percent: pct(total_v[i]),
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flame;

    #[test]
    fn agrees_with_the_string_path() {
        let names: Vec<String> = ["main", "mid", "hot", "cold"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let ns = NamedStacks {
            value_type: None,
            names: names.clone(),
            stacks: vec![(vec![2, 1, 0], 3.0), (vec![3, 1, 0], 1.0), (vec![0], 1.0)],
        };
        let by_name = |ids: &Vec<u32>| {
            ids.iter()
                .map(|&i| names[i as usize].as_str())
                .collect::<Vec<_>>()
        };
        let expected_tree = FlameNode::from_paths(
            ns.stacks
                .iter()
                .map(|(ids, v)| (by_name(ids).into_iter().rev().collect(), *v)),
        );
        assert_eq!(ns.flame_tree(), expected_tree);
        let expected_top =
            flame::top_functions(ns.stacks.iter().map(|(ids, v)| (by_name(ids), *v)));
        assert_eq!(ns.top_functions(), expected_top);
    }
}
