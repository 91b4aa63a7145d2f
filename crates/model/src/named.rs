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

/// A flame tree in pre-order: node `i` has name `names[name[i]]`, depth `depth[i]` and total
/// `values[i]`; a node's children follow it, before its next sibling.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FlatTree {
    pub names: Vec<String>,
    pub name: Vec<u32>,
    pub depth: Vec<u16>,
    pub values: Vec<f64>,
}

impl FlatTree {
    /// Without the nodes (and their subtrees) under `min_share` of the root's value; a node's
    /// value still counts what was left out below it. `0` keeps everything.
    pub fn pruned(self, min_share: f64) -> FlatTree {
        let total = self.values.first().copied().unwrap_or(0.0);
        if min_share <= 0.0 || total <= 0.0 {
            return self;
        }
        let floor = total * min_share;
        let mut out = FlatTree {
            names: self.names,
            ..FlatTree::default()
        };
        let mut i = 0;
        let n = self.name.len();
        while i < n {
            if self.values[i] < floor {
                let d = self.depth[i];
                i += 1;
                while i < n && self.depth[i] > d {
                    i += 1;
                }
                continue;
            }
            out.name.push(self.name[i]);
            out.depth.push(self.depth[i]);
            out.values.push(self.values[i]);
            i += 1;
        }
        out
    }
}

/// What [`NamedStacks::pruned_flat_tree`] walks with.
struct Pruning<'a> {
    stacks: &'a [(Vec<u32>, f64)],
    rank: &'a [u32],
    order: &'a [u32],
    floor: f64,
}

impl Pruning<'_> {
    /// Emits the children at `level` (0: the root's) of the node whose stacks are `members`, in
    /// name order, each followed by its own subtree. `slot` maps a name rank to its group here;
    /// it is all `u32::MAX` on entry and on return.
    fn emit(&self, level: usize, members: &[u32], out: &mut FlatTree, slot: &mut [u32]) {
        let mut groups: Vec<(u32, f64, Vec<u32>)> = Vec::new();
        for &m in members {
            let (ids, v) = &self.stacks[m as usize];
            if let Some(&id) = ids.len().checked_sub(level + 1).and_then(|j| ids.get(j)) {
                let r = self.rank[id as usize];
                let g = match slot[r as usize] {
                    u32::MAX => {
                        slot[r as usize] = groups.len() as u32;
                        groups.push((r, 0.0, Vec::new()));
                        groups.len() - 1
                    }
                    g => g as usize,
                };
                groups[g].1 += v;
                groups[g].2.push(m);
            }
        }
        for g in &groups {
            slot[g.0 as usize] = u32::MAX;
        }
        groups.retain(|g| g.1 >= self.floor);
        groups.sort_unstable_by_key(|g| g.0);
        for (r, sum, ms) in groups {
            out.name.push(self.order[r as usize] + 1);
            out.depth
                .push((level + 1).min(usize::from(u16::MAX)) as u16);
            out.values.push(sum);
            self.emit(level + 1, &ms, out, slot);
        }
    }
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
    /// Interns leaf-first name stacks.
    pub fn intern<'a, I>(stacks: I) -> NamedStacks
    where
        I: IntoIterator<Item = (Vec<&'a str>, f64)>,
    {
        let mut out = NamedStacks::default();
        let mut index: HashMap<&'a str, u32> = HashMap::new();
        for (names, v) in stacks {
            let ids = names
                .into_iter()
                .map(|n| {
                    *index.entry(n).or_insert_with(|| {
                        out.names.push(n.to_string());
                        (out.names.len() - 1) as u32
                    })
                })
                .collect();
            out.stacks.push((ids, v));
        }
        out
    }

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

    /// The flame tree in pre-order as parallel arrays, the compact shape the UI draws from.
    /// `names[0]` is the root, `all`; children are in name order. The stacks, root first with
    /// names as their rank in name order, are sorted; then one pass emits the pre-order, each
    /// stack opening nodes below what it shares with the one before (no hashing: this is the
    /// hot path of the UI's first frame).
    pub fn flat_tree(&self) -> FlatTree {
        let (order, rank) = self.name_order();
        let mut paths: Vec<(Vec<u32>, f64)> = self
            .stacks
            .iter()
            .filter(|(_, v)| *v != 0.0)
            .map(|(ids, v)| (ids.iter().rev().map(|&i| rank[i as usize]).collect(), *v))
            .collect();
        paths.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let frames: usize = paths.iter().map(|p| p.0.len()).sum();
        let mut out = FlatTree {
            names: std::iter::once("all".to_string())
                .chain(self.names.iter().cloned())
                .collect(),
            name: Vec::with_capacity(frames / 2 + 1),
            depth: Vec::with_capacity(frames / 2 + 1),
            values: Vec::with_capacity(frames / 2 + 1),
        };
        out.name.push(0);
        out.depth.push(0);
        out.values.push(0.0);
        // The out index of the node at each depth (below the root) of the previous stack.
        let mut open: Vec<usize> = Vec::new();
        let mut prev: &[u32] = &[];
        for (path, v) in &paths {
            out.values[0] += v;
            let common = prev.iter().zip(path).take_while(|(a, b)| a == b).count();
            open.truncate(common);
            for &i in &open {
                out.values[i] += v;
            }
            for (lvl, &r) in path[common..].iter().enumerate() {
                open.push(out.name.len());
                out.name.push(order[r as usize] + 1);
                out.depth
                    .push((common + lvl + 1).min(usize::from(u16::MAX)) as u16);
                out.values.push(*v);
            }
            prev = path;
        }
        out
    }

    /// The same as `flat_tree().pruned(min_share)`, without building the nodes that pruning
    /// would leave out: stacks are grouped by their frame at each level from the root, and only
    /// groups of at least `min_share` of the total go a level deeper. The UI's first frame asks
    /// for this; on 100,000 stacks that diverge early it touches a small part of the frames.
    pub fn pruned_flat_tree(&self, min_share: f64) -> FlatTree {
        let live: Vec<u32> = (0..self.stacks.len() as u32)
            .filter(|&i| self.stacks[i as usize].1 != 0.0)
            .collect();
        let total: f64 = live.iter().map(|&i| self.stacks[i as usize].1).sum();
        if min_share <= 0.0 || total <= 0.0 {
            return self.flat_tree();
        }
        let (order, rank) = self.name_order();
        let mut out = FlatTree {
            names: std::iter::once("all".to_string())
                .chain(self.names.iter().cloned())
                .collect(),
            name: vec![0],
            depth: vec![0],
            values: vec![total],
        };
        let ctx = Pruning {
            stacks: &self.stacks,
            rank: &rank,
            order: &order,
            floor: total * min_share,
        };
        let mut slot = vec![u32::MAX; self.names.len()];
        ctx.emit(0, &live, &mut out, &mut slot);
        out
    }

    /// Name ids in name order, and each id's rank in that order: children are emitted by rank.
    fn name_order(&self) -> (Vec<u32>, Vec<u32>) {
        let k = self.names.len();
        let mut order: Vec<u32> = (0..k as u32).collect();
        order.sort_by(|a, b| self.names[*a as usize].cmp(&self.names[*b as usize]));
        let mut rank = vec![0u32; k];
        for (r, &i) in order.iter().enumerate() {
            rank[i as usize] = r as u32;
        }
        (order, rank)
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

    #[test]
    fn interning_merges_equal_names() {
        let ns = NamedStacks::intern(vec![
            (vec!["hot", "mid", "main"], 3.0),
            (vec!["cold", "mid", "main"], 1.0),
        ]);
        assert_eq!(ns.names, ["hot", "mid", "main", "cold"]);
        assert_eq!(ns.stacks[1].0, vec![3, 1, 2]);
        let tree = ns.flame_tree();
        assert_eq!(tree.value, 4.0);
        assert_eq!(tree.find("mid").expect("mid").children.len(), 2);
        let top = ns.top_functions();
        assert_eq!(top[0].function, "hot");
        assert_eq!(top[0].self_percent, 75.0);
    }

    #[test]
    fn pruning_while_building_equals_pruning_after() {
        // Stacks that share prefixes at every level, with whole-number weights so both ways
        // of summing are exact; some shares fall under each floor, some just over.
        let mut seed = 7u64;
        let mut next = move |m: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % m
        };
        let names = ["a", "b", "c", "d", "e", "f", "g", "h"];
        let mut stacks = Vec::new();
        for _ in 0..3000 {
            let depth = 1 + next(9) as usize;
            let frames: Vec<&str> = (0..depth).map(|_| names[next(8) as usize]).collect();
            stacks.push((frames, next(50) as f64));
        }
        let ns = NamedStacks::intern(stacks);
        for share in [0.0, 1e-5, 1e-4, 1e-3, 0.01, 0.05, 0.2, 1.0] {
            assert_eq!(
                ns.pruned_flat_tree(share),
                ns.flat_tree().pruned(share),
                "min_share {share}"
            );
        }
        assert!(ns.pruned_flat_tree(0.01).name.len() < ns.flat_tree().name.len());
    }

    #[test]
    fn the_flat_tree_is_the_flame_tree_in_pre_order() {
        let ns = NamedStacks::intern(vec![
            (vec!["hot", "mid", "main"], 3.0),
            (vec!["cold", "mid", "main"], 1.0),
            (vec!["main"], 0.5),
        ]);
        let f = ns.flat_tree();
        let path: Vec<(&str, u16, f64)> = (0..f.name.len())
            .map(|i| {
                (
                    f.names[f.name[i] as usize].as_str(),
                    f.depth[i],
                    f.values[i],
                )
            })
            .collect();
        assert_eq!(
            path,
            [
                ("all", 0, 4.5),
                ("main", 1, 4.5),
                ("mid", 2, 4.0),
                ("cold", 3, 1.0),
                ("hot", 3, 3.0)
            ]
        );
        let p = f.pruned(0.25);
        let kept: Vec<&str> = p
            .name
            .iter()
            .map(|&n| p.names[n as usize].as_str())
            .collect();
        assert_eq!(
            kept,
            ["all", "main", "mid", "hot"],
            "cold is 1/4.5 of the total"
        );
    }
}
