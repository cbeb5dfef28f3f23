//! Rule index by FROM topic filter: a small trie, so a message pays only
//! for the rules whose filters match it.

use std::collections::HashMap;

use smallvec::SmallVec;

#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<str>, Node, foldhash::fast::RandomState>,
    rules: Vec<usize>,
}

/// Filter -> rule indices.
#[derive(Debug, Default)]
pub struct FilterIndex {
    root: Node,
}

impl FilterIndex {
    pub fn insert(&mut self, filter: &str, rule: usize) {
        let mut node = &mut self.root;
        for level in filter.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        if !node.rules.contains(&rule) {
            node.rules.push(rule);
        }
    }

    /// Rule indices whose filter matches `topic`, each once, in rule order.
    pub fn matches(&self, topic: &str, out: &mut SmallVec<[usize; 8]>) {
        if self.root.children.is_empty() {
            return;
        }
        let levels: SmallVec<[&str; 8]> = topic.split('/').collect();
        walk(&self.root, &levels, 0, topic.starts_with('$'), out);
        if out.len() > 1 {
            out.sort_unstable();
            out.dedup();
        }
    }
}

fn walk(node: &Node, levels: &[&str], i: usize, dollar: bool, out: &mut SmallVec<[usize; 8]>) {
    let wild_ok = !(i == 0 && dollar);
    if i == levels.len() {
        out.extend_from_slice(&node.rules);
        if let Some(h) = node.children.get("#") {
            out.extend_from_slice(&h.rules);
        }
        return;
    }
    if let Some(c) = node.children.get(levels[i]) {
        walk(c, levels, i + 1, dollar, out);
    }
    if wild_ok {
        if let Some(c) = node.children.get("+") {
            walk(c, levels, i + 1, dollar, out);
        }
        if let Some(h) = node.children.get("#") {
            out.extend_from_slice(&h.rules);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_by_filter_and_dedups() {
        let mut ix = FilterIndex::default();
        ix.insert("sensor/#", 0);
        ix.insert("sensor/+/temp", 1);
        ix.insert("sensor/a/temp", 1);
        ix.insert("other", 2);
        let mut out = SmallVec::new();
        ix.matches("sensor/a/temp", &mut out);
        assert_eq!(out.as_slice(), &[0, 1]);
        out.clear();
        ix.matches("$SYS/x", &mut out);
        assert!(out.is_empty());
        ix.matches("sensor", &mut out);
        assert_eq!(out.as_slice(), &[0]);
    }
}
