//! The topic exchange: dotted routing keys matched against binding patterns, where `*`
//! stands for exactly one word and `#` for zero or more.
//!
//! Bindings sit in a trie over their patterns' words, as in RabbitMQ: each node has a
//! child per literal word, one for `*` and one for `#`, and holds the bindings whose
//! pattern ends there. Routing walks the trie along the key, so it costs about the
//! key's depth (times the wildcards met on the way), not the number of bindings.

use std::collections::{HashMap, HashSet};

use amqp_codec::amq_protocol::types::FieldTable;

use super::{Binding, DestinationKind, Routed, Router};
use crate::message::Message;

/// One step of a binding pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Edge<'a> {
    /// A word that must appear as is.
    Word(&'a str),
    /// `*`: exactly one word.
    Star,
    /// `#`: zero or more words.
    Hash,
}

/// The steps of a pattern; the empty pattern has none (as the empty key has no words).
/// Runs of `#` collapse into one, which matches the same keys and keeps a pattern such
/// as `#.#.#` from being walked once per way of sharing words among its `#`s.
fn edges(pattern: &str) -> Vec<Edge<'_>> {
    let mut out = Vec::new();
    if pattern.is_empty() {
        return out;
    }
    for word in pattern.split('.') {
        let edge = match word {
            "*" => Edge::Star,
            "#" => Edge::Hash,
            word => Edge::Word(word),
        };
        if edge == Edge::Hash && out.last() == Some(&Edge::Hash) {
            continue;
        }
        out.push(edge);
    }
    out
}

/// The first word of a non-empty rest of a key, and what follows it (`None` when it was
/// the last word). A key's words are what lies between its dots, so `a..b` has an empty
/// middle word.
fn split_first(key: &str) -> (&str, Option<&str>) {
    match key.split_once('.') {
        Some((word, tail)) => (word, Some(tail)),
        None => (key, None),
    }
}

/// A trie node: the patterns that share a prefix of steps.
#[derive(Debug, Default)]
struct Node {
    /// Children by literal word.
    words: HashMap<Box<str>, Node>,
    /// The `*` child.
    star: Option<Box<Node>>,
    /// The `#` child.
    hash: Option<Box<Node>>,
    /// Bindings whose pattern ends here.
    bindings: Vec<Binding>,
    /// `#` steps from the root to here. Below two or more, one key can reach this node
    /// with the same words left in several ways (the `#`s sharing words differently),
    /// so such visits are remembered to walk and deliver each state once.
    hashes: u8,
}

impl Node {
    fn new(hashes: u8) -> Self {
        Self {
            hashes,
            ..Self::default()
        }
    }

    fn has_children(&self) -> bool {
        !self.words.is_empty() || self.star.is_some() || self.hash.is_some()
    }

    /// Holds nothing, so its parent can drop it.
    fn is_empty(&self) -> bool {
        self.bindings.is_empty() && !self.has_children()
    }

    /// The child along `edge`, made if missing.
    fn child_or_insert(&mut self, edge: Edge<'_>) -> &mut Node {
        let hashes = self
            .hashes
            .saturating_add(u8::from(matches!(edge, Edge::Hash)));
        match edge {
            Edge::Word(word) => self
                .words
                .entry(word.into())
                .or_insert_with(|| Node::new(hashes)),
            Edge::Star => self.star.get_or_insert_with(|| Box::new(Node::new(hashes))),
            Edge::Hash => self.hash.get_or_insert_with(|| Box::new(Node::new(hashes))),
        }
    }

    /// Removes the bindings `matches` picks from the node at the end of `path`, and the
    /// nodes left empty on the way; returns how many went.
    fn unbind(&mut self, path: &[Edge<'_>], matches: &impl Fn(&Binding) -> bool) -> usize {
        let Some((edge, rest)) = path.split_first() else {
            let before = self.bindings.len();
            self.bindings.retain(|b| !matches(b));
            return before - self.bindings.len();
        };
        match edge {
            Edge::Word(word) => {
                let Some(child) = self.words.get_mut(*word) else {
                    return 0;
                };
                let removed = child.unbind(rest, matches);
                if child.is_empty() {
                    self.words.remove(*word);
                }
                removed
            }
            Edge::Star => Self::unbind_boxed(&mut self.star, rest, matches),
            Edge::Hash => Self::unbind_boxed(&mut self.hash, rest, matches),
        }
    }

    fn unbind_boxed(
        slot: &mut Option<Box<Node>>,
        path: &[Edge<'_>],
        matches: &impl Fn(&Binding) -> bool,
    ) -> usize {
        let Some(child) = slot else {
            return 0;
        };
        let removed = child.unbind(path, matches);
        if child.is_empty() {
            *slot = None;
        }
        removed
    }

    /// Removes every binding `matches` picks anywhere below, pruning emptied nodes;
    /// returns how many went.
    fn retain_all(&mut self, matches: &impl Fn(&Binding) -> bool) -> usize {
        let before = self.bindings.len();
        self.bindings.retain(|b| !matches(b));
        let mut removed = before - self.bindings.len();
        self.words.retain(|_, child| {
            removed += child.retain_all(matches);
            !child.is_empty()
        });
        for slot in [&mut self.star, &mut self.hash] {
            if let Some(child) = slot {
                removed += child.retain_all(matches);
                if child.is_empty() {
                    *slot = None;
                }
            }
        }
        removed
    }

    /// Delivers the bindings of every pattern below this node that matches `rest`, the
    /// words of the key not yet consumed (`None` when none are left).
    fn walk(&self, rest: Option<&str>, seen: &mut Seen, out: &mut Routed) {
        if self.hashes >= 2 && !seen.first_visit(self, rest) {
            return;
        }
        let Some(key) = rest else {
            for binding in &self.bindings {
                binding.deliver_to(out);
            }
            // A trailing `#` takes no words.
            if let Some(hash) = &self.hash {
                hash.walk(None, seen, out);
            }
            return;
        };
        let (word, tail) = split_first(key);
        if !self.words.is_empty()
            && let Some(child) = self.words.get(word)
        {
            child.walk(tail, seen, out);
        }
        if let Some(star) = &self.star {
            star.walk(tail, seen, out);
        }
        if let Some(hash) = &self.hash {
            hash.walk_after_hash(key, seen, out);
        }
    }

    /// Walks on from this `#` node with `#` having taken each possible number of the
    /// words in `key`, from none to all of them.
    fn walk_after_hash(&self, key: &str, seen: &mut Seen, out: &mut Routed) {
        if self.has_children() {
            let mut rest = key;
            loop {
                self.walk(Some(rest), seen, out);
                match rest.split_once('.') {
                    Some((_, tail)) => rest = tail,
                    None => break,
                }
            }
        }
        self.walk(None, seen, out);
    }
}

/// The (node, words left) states a walk has been through, for nodes below two or more
/// `#`s. Typical walks record a few states, which stay on the stack; the set only
/// allocates for keys and patterns that produce many.
struct Seen {
    inline: [(usize, usize); Seen::INLINE],
    len: usize,
    spill: Option<HashSet<(usize, usize)>>,
}

impl Seen {
    const INLINE: usize = 16;

    fn new() -> Self {
        Self {
            inline: [(0, 0); Self::INLINE],
            len: 0,
            spill: None,
        }
    }

    /// Records the state; false if it was recorded before. The words left are named by
    /// their length (plus one, so that no words left differs from one empty word): all
    /// are suffixes of the same key.
    fn first_visit(&mut self, node: &Node, rest: Option<&str>) -> bool {
        let state = (
            std::ptr::from_ref(node) as usize,
            rest.map_or(0, |r| r.len() + 1),
        );
        if self.inline[..self.len].contains(&state) {
            return false;
        }
        if self.len < Self::INLINE {
            self.inline[self.len] = state;
            self.len += 1;
            return true;
        }
        self.spill.get_or_insert_with(HashSet::new).insert(state)
    }
}

/// The topic exchange's bindings, in a trie over their patterns' words.
#[derive(Debug, Default)]
pub struct TopicRouter {
    root: Node,
    count: usize,
}

impl Router for TopicRouter {
    fn bind(&mut self, binding: Binding) -> bool {
        let mut node = &mut self.root;
        for edge in edges(&binding.routing_key) {
            node = node.child_or_insert(edge);
        }
        if node.bindings.iter().any(|b| {
            b.is(
                binding.destination.kind(),
                binding.destination.name(),
                &binding.routing_key,
                &binding.arguments,
            )
        }) {
            return false;
        }
        node.bindings.push(binding);
        self.count += 1;
        true
    }

    fn unbind(
        &mut self,
        kind: DestinationKind,
        name: &str,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> bool {
        let removed = self.root.unbind(&edges(routing_key), &|b: &Binding| {
            b.is(kind, name, routing_key, arguments)
        });
        self.count -= removed;
        removed > 0
    }

    fn remove_destination(&mut self, kind: DestinationKind, name: &str) {
        self.count -= self.root.retain_all(&|b: &Binding| b.targets(kind, name));
    }

    fn route(&self, message: &Message, out: &mut Routed) {
        if self.count == 0 {
            return;
        }
        // The empty key has no words (as in RabbitMQ), so only patterns of none or `#`s
        // match it.
        let key: &str = message.routing_key();
        let rest = (!key.is_empty()).then_some(key);
        self.root.walk(rest, &mut Seen::new(), out);
    }

    fn len(&self) -> usize {
        self.count
    }

    fn bindings(&self) -> Vec<Binding> {
        let mut out = Vec::with_capacity(self.count);
        let mut nodes = vec![&self.root];
        while let Some(node) = nodes.pop() {
            out.extend(node.bindings.iter().cloned());
            nodes.extend(node.words.values());
            nodes.extend(node.star.as_deref());
            nodes.extend(node.hash.as_deref());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use proptest::prelude::*;

    use super::super::test_support::*;
    use super::*;
    use crate::exchange::Destination;
    use crate::queue::Queue;

    /// The plain recursive matcher the trie must agree with: `pattern` and `key` as
    /// word lists (the empty string has none).
    fn reference(pattern: &[&str], key: &[&str]) -> bool {
        match pattern.split_first() {
            None => key.is_empty(),
            Some((&"#", rest)) => (0..=key.len()).any(|taken| reference(rest, &key[taken..])),
            Some((&"*", rest)) => !key.is_empty() && reference(rest, &key[1..]),
            Some((word, rest)) => key.first() == Some(word) && reference(rest, &key[1..]),
        }
    }

    fn words(s: &str) -> Vec<&str> {
        if s.is_empty() {
            Vec::new()
        } else {
            s.split('.').collect()
        }
    }

    fn reference_matches(pattern: &str, key: &str) -> bool {
        reference(&words(pattern), &words(key))
    }

    /// Routes `key` through `router`, returning the destination names in order, with
    /// duplicates (so that a binding delivered twice shows).
    fn route(router: &TopicRouter, key: &str) -> Vec<String> {
        let mut out = Routed::default();
        router.route(&message(key, Bytes::from_static(&[0, 0])), &mut out);
        let mut got: Vec<String> = out.queues.iter().map(|q| q.name().to_string()).collect();
        got.extend(out.exchanges.iter().map(|e| e.to_string()));
        got.sort();
        got
    }

    /// Whether `pattern`, bound alone, routes `key`; asserts it is delivered at most once.
    fn m(pattern: &str, key: &str) -> bool {
        let mut router = TopicRouter::default();
        assert!(router.bind(binding(&queue("q"), pattern, FieldTable::default())));
        let got = route(&router, key);
        assert!(got.len() <= 1, "{pattern:?} delivered {got:?} for {key:?}");
        got.len() == 1
    }

    #[test]
    fn star_is_one_word_and_hash_any_number() {
        assert!(m("a.*.c", "a.b.c"));
        assert!(!m("a.*.c", "a.c"));
        assert!(!m("a.*", "a.b.c"));
        assert!(m("a.#", "a"));
        assert!(m("a.#", "a.b.c"));
        assert!(m("#", ""));
        assert!(m("#", "x.y"));
        assert!(m("#.c", "c"));
        assert!(m("a.#.c", "a.c"));
        assert!(m("a.#.c", "a.b.b.c"));
        assert!(!m("a.#.c", "a.b.d"));
        assert!(m("*.#", "x"));
        assert!(!m("*", ""));
        assert!(m("", ""));
        assert!(m("a.b", "a.b"));
        assert!(!m("a.b", "a.bb"));
        assert!(m("#.#", "a.b"));
    }

    #[test]
    fn consecutive_hashes_match_like_one() {
        for key in ["", "a", "a.b", "a.b.c", "x.a.y"] {
            assert!(m("#.#", key), "#.# vs {key:?}");
            assert!(m("#.#.#", key), "#.#.# vs {key:?}");
        }
        assert!(m("a.#.#.b", "a.b"));
        assert!(m("a.#.#.b", "a.x.y.b"));
        assert!(!m("a.#.#.b", "a.x.y"));
    }

    #[test]
    fn hash_between_words() {
        assert!(m("a.#.b", "a.b"));
        assert!(m("a.#.b", "a.x.b"));
        assert!(m("a.#.b", "a.b.b"));
        assert!(!m("a.#.b", "a"));
        assert!(!m("a.#.b", "b"));
        assert!(!m("a.#.b", "a.b.c"));
    }

    #[test]
    fn word_between_hashes_matches_it_anywhere_once() {
        assert!(m("#.a.#", "a"));
        assert!(m("#.a.#", "x.a.y"));
        assert!(m("#.a.#", "a.b.c"));
        assert!(m("#.a.#", "a.a.a"));
        assert!(!m("#.a.#", ""));
        assert!(!m("#.a.#", "x.y"));
        assert!(!m("#.a.#", "aa"));
        assert!(m("#.a.#.a.#", "a.x.a"));
        assert!(m("#.a.#.a.#", "a.a.a.a"));
        assert!(!m("#.a.#.a.#", "x.a.y"));
    }

    #[test]
    fn empty_words_and_empty_keys() {
        assert!(m("", ""));
        assert!(!m("", "a"));
        assert!(!m("a", ""));
        assert!(!m("*", ""));
        // `.` is two empty words.
        assert!(m("*.*", "."));
        assert!(m(".", "."));
        assert!(!m("*", "."));
        assert!(m("#", "."));
        assert!(m("a.", "a."));
        assert!(!m("a", "a."));
        assert!(m("a.*", "a."));
        assert!(m("a..b", "a..b"));
        assert!(m("a.*.b", "a..b"));
        assert!(m("a.#.b", "a..b"));
    }

    #[test]
    fn wildcards_inside_words_are_literal() {
        assert!(m("a*", "a*"));
        assert!(!m("a*", "ab"));
        assert!(m("a#.b", "a#.b"));
        assert!(!m("a#.b", "a.x.b"));
    }

    /// Many `#`s over a long key: each walk state is visited once, so this stays
    /// polynomial (a naive backtracking matcher would take ~C(128, 6) steps).
    #[test]
    fn many_hashes_over_a_long_key_stay_fast() {
        let mut router = TopicRouter::default();
        let q = queue("q");
        let pattern = "#.a.#.a.#.a.#.a.#.a.#.a.#";
        assert!(router.bind(binding(&q, pattern, FieldTable::default())));
        assert!(router.bind(binding(&q, "#.a.#.b", FieldTable::default())));
        let key = vec!["a"; 127].join(".");
        assert_eq!(route(&router, &key), ["q"]);
        let miss = format!("{key}.c");
        assert_eq!(route(&router, &miss), ["q"]);
    }

    #[test]
    fn each_binding_delivers_once_and_queues_dedup() {
        let mut router = TopicRouter::default();
        let q = queue("q");
        let other = queue("other");
        for pattern in [
            "#", "#.#", "a.#", "#.b", "a.*", "*.b", "a.b", "#.a.#", "#.b.#",
        ] {
            assert!(router.bind(binding(&q, pattern, FieldTable::default())));
        }
        assert!(router.bind(binding(&other, "#.#.a.#.#", FieldTable::default())));
        let got = route(&router, "a.b");
        assert_eq!(got.iter().filter(|n| *n == "q").count(), 9);
        assert_eq!(got.iter().filter(|n| *n == "other").count(), 1);
        let mut out = Routed::default();
        router.route(&message("a.b", Bytes::from_static(&[0, 0])), &mut out);
        out.dedup_queues();
        assert_eq!(names(&out.queues), ["other", "q"]);
    }

    #[test]
    fn bind_unbind_and_remove_destination_prune_the_trie() {
        let mut router = TopicRouter::default();
        let q = queue("q");
        let other = queue("other");
        let none = FieldTable::default();
        assert!(router.bind(binding(&q, "a.*.c", none.clone())));
        assert!(!router.bind(binding(&q, "a.*.c", none.clone())));
        assert!(router.bind(binding(&other, "a.*.c", none.clone())));
        assert!(router.bind(binding(&q, "a.#", none.clone())));
        assert!(router.bind(binding(&q, "a.#.#", none.clone())));
        assert!(router.bind(binding(&q, "", none.clone())));
        assert_eq!(router.len(), 5);
        assert_eq!(route(&router, "a.b.c"), ["other", "q", "q", "q"]);
        assert_eq!(route(&router, ""), ["q"]);

        // `a.#` and `a.#.#` share a node but are distinct bindings.
        assert!(router.unbind(DestinationKind::Queue, "q", "a.#.#", &none));
        assert!(!router.unbind(DestinationKind::Queue, "q", "a.#.#", &none));
        assert!(!router.unbind(DestinationKind::Queue, "q", "a.*.d", &none));
        assert!(!router.unbind(DestinationKind::Exchange, "q", "a.#", &none));
        assert_eq!(router.len(), 4);
        assert_eq!(route(&router, "a.b.c"), ["other", "q", "q"]);

        router.remove_destination(DestinationKind::Queue, "q");
        assert_eq!(router.len(), 1);
        assert_eq!(route(&router, "a.b.c"), ["other"]);
        assert_eq!(route(&router, ""), Vec::<String>::new());
        assert!(router.root.hash.is_none() && router.root.bindings.is_empty());
        let a = &router.root.words["a"];
        assert!(a.hash.is_none() && a.words.is_empty());

        assert!(router.unbind(DestinationKind::Queue, "other", "a.*.c", &none));
        assert!(router.is_empty());
        assert!(router.root.is_empty(), "{:?}", router.root);
    }

    #[test]
    fn exchange_destinations_route_by_name() {
        let mut router = TopicRouter::default();
        assert!(router.bind(Binding {
            destination: Destination::Exchange("next".into()),
            routing_key: "logs.#".into(),
            arguments: FieldTable::default(),
        }));
        assert_eq!(route(&router, "logs.app.error"), ["next"]);
        router.remove_destination(DestinationKind::Exchange, "next");
        assert!(router.is_empty());
    }

    fn word() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec!["a", "b", "c", ""])
    }

    fn pattern_word() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec!["a", "b", "c", "", "*", "#", "#", "*"])
    }

    fn dotted(words: Vec<&str>) -> String {
        words.join(".")
    }

    proptest! {
        /// Many bindings in one trie route exactly the destinations whose pattern the
        /// reference matcher accepts, each once; unbinding half leaves the rest intact.
        #[test]
        fn trie_agrees_with_reference(
            patterns in prop::collection::vec(
                prop::collection::vec(pattern_word(), 0..6).prop_map(dotted), 1..24),
            keys in prop::collection::vec(
                prop::collection::vec(word(), 0..7).prop_map(dotted), 1..16),
        ) {
            let mut router = TopicRouter::default();
            let mut bound: Vec<(String, Arc<Queue>)> = Vec::new();
            for (i, pattern) in patterns.iter().enumerate() {
                let q = queue(&format!("q{i}"));
                prop_assert!(router.bind(binding(&q, pattern, FieldTable::default())));
                bound.push((pattern.clone(), q));
            }
            let check = |router: &TopicRouter, bound: &[(String, Arc<Queue>)]| {
                for key in &keys {
                    let mut want: Vec<String> = bound
                        .iter()
                        .filter(|(p, _)| reference_matches(p, key))
                        .map(|(_, q)| q.name().to_string())
                        .collect();
                    want.sort();
                    let got = route(router, key);
                    if got != want {
                        return Err(format!("key {key:?}: got {got:?}, want {want:?}"));
                    }
                }
                Ok(())
            };
            prop_assert_eq!(check(&router, &bound), Ok(()));
            let (gone, kept): (Vec<_>, Vec<_>) =
                bound.into_iter().enumerate().partition(|(i, _)| i % 2 == 0);
            for (_, (pattern, q)) in &gone {
                prop_assert!(router.unbind(
                    DestinationKind::Queue,
                    q.name(),
                    pattern,
                    &FieldTable::default()
                ));
            }
            let kept: Vec<_> = kept.into_iter().map(|(_, b)| b).collect();
            prop_assert_eq!(router.len(), kept.len());
            prop_assert_eq!(check(&router, &kept), Ok(()));
            for (_, q) in &kept {
                router.remove_destination(DestinationKind::Queue, q.name());
            }
            prop_assert!(router.root.is_empty());
        }
    }
}
