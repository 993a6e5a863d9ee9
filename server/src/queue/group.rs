//! Which member of a partitioned queue's consumer group owns which partition (issue 13,
//! `docs/partitions-design.md` §3).
//!
//! [`assign`] is pure and deterministic: given the partitions, the members and who owns
//! what now, it returns the owners to have and the moves that get there. The group lock
//! calls it on every membership change (join, cancel, close, session expiry, a
//! higher-priority join, manual consumers coming or going) and hands each move to the
//! partition's drain (§4). Being pure, it is tested here on its own: invariants over random
//! membership histories, and a brute-force oracle for the minimum number of moves.
//!
//! The rules, and why:
//! - Only the top priority tier is active (Pulsar's rule), and within it the first
//!   `|E|·K` members by join order: one more would own nothing. The rest are standbys.
//! - Each partition that no manual consumer took has `min(K, active)` distinct owners and
//!   every active member holds `⌊S/A⌋` or `⌈S/A⌉` of the `S` ownerships, so load is even.
//! - Among the balanced assignments, the one with the fewest moves is chosen (sticky,
//!   incremental): a move drains a partition, and a drain stalls its keys. The extra
//!   ownerships go to the members holding the most already, excess is revoked from idle
//!   partitions first (no unacked deliveries, nothing to wait for), and freed partitions go
//!   to the members furthest under their quota.
//! - With one owner per partition that greedy is optimal by construction. With several, a
//!   member may be unable to take a freed partition it already owns; a min-cost-flow pass
//!   then repairs and improves the greedy result until no balanced assignment moves fewer
//!   partitions. Only then may a busy partition be revoked before an idle one.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;

use super::ConsumerId;

/// A group member as assignment sees it: the consumer, the order it joined in (unique,
/// the tie-break that keeps assignment deterministic) and its consumer priority (only the
/// top tier is assigned partitions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// The member's consumer.
    pub consumer: ConsumerId,
    /// Join order, unique within the group: earlier members become active first and win
    /// ties.
    pub seq: u64,
    /// Consumer priority (`x-priority`): only the members at the highest one are active.
    pub priority: i32,
}

/// One partition changing owner: `from` loses it, `to` gains it. `None` on either side
/// means nobody: a partition given to a member that had no owner, or one taken from a
/// member and given to nobody (it became manual, or no member is active). Each move is one
/// drain for the partitioned queue to carry out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reassign {
    /// The partition's index.
    pub partition: u16,
    /// The owner that loses it, if any.
    pub from: Option<ConsumerId>,
    /// The owner that gains it, if any.
    pub to: Option<ConsumerId>,
}

/// What [`assign`] decided: who owns each partition, and the moves from the current owners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// Each partition's owners (index = partition): empty for manual partitions and when no
    /// member is active. Owners that keep a partition come first, in their current order.
    pub owners: Vec<Vec<ConsumerId>>,
    /// The moves from the current owners to [`Assignment::owners`], by partition. For one
    /// owner per partition, exactly one per partition that changes owner.
    pub moves: Vec<Reassign>,
}

/// How many moves [`describe`] spells out before it summarises the rest.
const DESCRIBED_MOVES: usize = 32;

/// Assigns the `n` partitions to the group's members, `k` owners per partition
/// (`x-consumers-per-partition`; 0 is taken as 1), moving as few partitions as a balanced
/// assignment allows.
///
/// `manual` are the partitions taken by consumers with `x-partition` (indexes ≥ `n` are
/// ignored); the group owns none of them. `members` are the group's candidates in any order
/// (a consumer listed twice counts once, with its earliest `seq`). `current` holds each
/// partition's owners now and `unacked` each partition's unacked deliveries, both indexed
/// by partition: a missing entry is read as empty or zero, owners listed twice as once.
/// Unacked counts decide which partitions an over-loaded member gives up: idle ones first,
/// since a busy one must drain before its new owner may start.
pub fn assign(
    n: u16,
    k: u16,
    manual: &BTreeSet<u16>,
    members: &[Candidate],
    current: &[Vec<ConsumerId>],
    unacked: &[u32],
) -> Assignment {
    let current: Vec<Vec<ConsumerId>> = (0..usize::from(n))
        .map(|p| distinct(current.get(p).map_or(&[][..], Vec::as_slice)))
        .collect();
    let parts: Vec<u16> = (0..n).filter(|p| !manual.contains(p)).collect();
    let per_partition = usize::from(k.max(1));
    let active = active_members(members, parts.len().saturating_mul(per_partition));

    let mut owners = vec![Vec::new(); usize::from(n)];
    if !active.is_empty() {
        let busy: Vec<u32> = parts
            .iter()
            .map(|&p| unacked.get(usize::from(p)).copied().unwrap_or(0))
            .collect();
        let index: BTreeMap<ConsumerId, usize> = active
            .iter()
            .enumerate()
            .map(|(i, c)| (c.consumer, i))
            .collect();
        let was: Vec<Vec<usize>> = parts
            .iter()
            .map(|&p| {
                current[usize::from(p)]
                    .iter()
                    .filter_map(|c| index.get(c).copied())
                    .collect()
            })
            .collect();
        let target = balance(active.len(), per_partition, &was, &busy);
        for (&p, holders) in parts.iter().zip(target) {
            owners[usize::from(p)] = holders.into_iter().map(|m| active[m].consumer).collect();
        }
    }
    let moves = diff(&current, &owners);
    Assignment { owners, moves }
}

/// The rebalance log line's `detail`: `p3 c12→c17 p4 -→c17 …`, cut after 32 moves with
/// ` …(+N)` so that a large rebalance stays one readable line.
pub fn describe(moves: &[Reassign]) -> String {
    fn side(out: &mut String, owner: Option<ConsumerId>) {
        match owner {
            // Writing to a String cannot fail.
            Some(c) => {
                let _ = write!(out, "c{c}");
            }
            None => out.push('-'),
        }
    }
    let mut out = String::new();
    for (i, m) in moves.iter().take(DESCRIBED_MOVES).enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let _ = write!(out, "p{} ", m.partition);
        side(&mut out, m.from);
        out.push('→');
        side(&mut out, m.to);
    }
    if moves.len() > DESCRIBED_MOVES {
        let _ = write!(out, " …(+{})", moves.len() - DESCRIBED_MOVES);
    }
    out
}

/// `owners` without repeats, in first-seen order.
fn distinct(owners: &[ConsumerId]) -> Vec<ConsumerId> {
    let mut out: Vec<ConsumerId> = Vec::with_capacity(owners.len());
    for &c in owners {
        if !out.contains(&c) {
            out.push(c);
        }
    }
    out
}

/// The active members in join order: the top priority tier's first `cap` members.
fn active_members(members: &[Candidate], cap: usize) -> Vec<Candidate> {
    let mut sorted = members.to_vec();
    sorted.sort_by_key(|c| (c.seq, c.consumer));
    let mut seen = BTreeSet::new();
    sorted.retain(|c| seen.insert(c.consumer));
    let Some(top) = sorted.iter().map(|c| c.priority).max() else {
        return Vec::new();
    };
    sorted.retain(|c| c.priority == top);
    sorted.truncate(cap);
    sorted
}

/// The balanced assignment with the fewest moves, as the owners (member indexes, in join
/// order) of each assignable partition.
///
/// `a` members (indexes in join order), `per_partition` owners wanted per partition (at
/// most `a` are given), `was[i]` the members that own partition `i` now and `busy[i]` its
/// unacked deliveries.
fn balance(a: usize, per_partition: usize, was: &[Vec<usize>], busy: &[u32]) -> Vec<Vec<usize>> {
    let e = was.len();
    let k = per_partition.min(a);
    // A partition may list more current owners than it may keep only if `K` shrank; the
    // first ones keep it (the flow pass below corrects the choice if it costs moves).
    let mut holders: Vec<Vec<usize>> = was.iter().map(|w| w[..w.len().min(k)].to_vec()).collect();
    let mut held: Vec<Vec<usize>> = vec![Vec::new(); a];
    for (i, hs) in holders.iter().enumerate() {
        for &m in hs {
            held[m].push(i);
        }
    }

    let total = e * k;
    let (q, r) = (total / a, total % a);
    let mut most: Vec<usize> = (0..a).collect();
    most.sort_by_key(|&m| (Reverse(held[m].len()), m));
    let mut quota = vec![q; a];
    for &m in most.iter().take(r) {
        quota[m] = q + 1;
    }

    // Idle partitions first, then the least busy, then the highest index. With K > 1, a
    // partition another member gave up already comes after the rest: the members taking
    // freed partitions may own it already, and can take each partition once.
    let mut revoked = vec![0usize; e];
    for m in 0..a {
        let Some(excess) = held[m].len().checked_sub(quota[m]).filter(|&x| x > 0) else {
            continue;
        };
        let mut mine = std::mem::take(&mut held[m]);
        mine.sort_by_key(|&i| (revoked[i], busy.get(i).copied().unwrap_or(0), Reverse(i)));
        for &i in &mine[..excess] {
            holders[i].retain(|&h| h != m);
            revoked[i] += 1;
        }
        held[m] = mine.split_off(excess);
    }

    // Freed ownerships by partition index, a partition's second free place after every
    // partition's first (and so on), so that a taker meets distinct partitions; a taker
    // skips those it owns already.
    let mut pool: VecDeque<usize> = VecDeque::new();
    for round in 0..k {
        pool.extend((0..e).filter(|&i| holders[i].len() + round < k));
    }
    let mut takers: Vec<usize> = (0..a).filter(|&m| held[m].len() < quota[m]).collect();
    takers.sort_by_key(|&m| (held[m].len(), m));
    for m in takers {
        let mut skipped = Vec::new();
        while held[m].len() < quota[m] {
            let Some(i) = pool.pop_front() else {
                break;
            };
            if holders[i].contains(&m) {
                skipped.push(i);
                continue;
            }
            holders[i].push(m);
            held[m].push(i);
        }
        for i in skipped.into_iter().rev() {
            pool.push_front(i);
        }
    }

    // Every member kept min(holding, quota), the most any balanced assignment keeps with
    // these quotas, and quotas given to the biggest holders keep the most: the result is
    // minimal, unless a freed ownership found no taker (K > 1: every member short of its
    // quota owns the partition already) or a partition had more owners than it may keep.
    let trimmed = was.iter().any(|w| w.len() > k);
    if trimmed || !pool.is_empty() {
        holders = Flow::settle(a, k, q, r, was, &holders);
    }

    // Owners that keep a partition first, in their current order; then the new ones.
    holders
        .into_iter()
        .zip(was)
        .map(|(mut hs, w)| {
            hs.sort_by_key(|m| (w.iter().position(|x| x == m).unwrap_or(usize::MAX), *m));
            hs
        })
        .collect()
}

/// The moves from `current` to `target`: per partition, each owner lost paired with an
/// owner gained, in order; the unpaired rest against `None`.
fn diff(current: &[Vec<ConsumerId>], target: &[Vec<ConsumerId>]) -> Vec<Reassign> {
    let mut moves = Vec::new();
    for (p, (now, then)) in (0u16..).zip(current.iter().zip(target)) {
        let lost: Vec<ConsumerId> = now.iter().filter(|c| !then.contains(c)).copied().collect();
        let gained: Vec<ConsumerId> = then.iter().filter(|c| !now.contains(c)).copied().collect();
        for i in 0..lost.len().max(gained.len()) {
            moves.push(Reassign {
                partition: p,
                from: lost.get(i).copied(),
                to: gained.get(i).copied(),
            });
        }
    }
    moves
}

/// A min-cost flow that turns the greedy's assignment into a balanced one with the fewest
/// moves, when the greedy could not place every ownership (more than one owner per
/// partition) or had to drop owners from a partition listing too many.
///
/// Nodes: the source, one per member, one per partition, the sink. Source → member carries
/// the member's ownerships (`q` at a cost that forces them, one more at no cost when
/// `r > 0`), member → partition one ownership (cost −1 if the member owns the partition
/// now: a kept ownership is a move saved), partition → sink its `k` owners. A flow of `S`
/// is a balanced assignment; the cheapest keeps the most ownerships, so moves the fewest
/// (each partition's moves are `max(owners now, k) − kept`).
///
/// The greedy's result is loaded as a flow, negative cycles are cancelled until there is
/// none (it is then the cheapest of its size) and shortest paths fill what the greedy could
/// not place (which keeps it the cheapest). Edges are scanned in a fixed order, so the
/// result is deterministic, and a cycle or path is only taken when it saves a move or
/// places an ownership, so an already minimal greedy result is kept as it is.
struct Flow {
    /// Each edge's head; edge `i ^ 1` is edge `i`'s reverse.
    head: Vec<usize>,
    /// Each edge's residual capacity.
    cap: Vec<i64>,
    /// Each edge's cost.
    cost: Vec<i64>,
    /// The edges leaving each node.
    out: Vec<Vec<usize>>,
}

impl Flow {
    /// The balanced assignment with the fewest moves, starting from the greedy's `holders`:
    /// `a` members, `k` owners per partition, quota `q` (`r` members get one more), `was`
    /// the current owners.
    fn settle(
        a: usize,
        k: usize,
        q: usize,
        r: usize,
        was: &[Vec<usize>],
        holders: &[Vec<usize>],
    ) -> Vec<Vec<usize>> {
        let e = was.len();
        let nodes = a + e + 2;
        let (source, sink) = (0, nodes - 1);
        // Heavier than any number of moves a cycle or path can save.
        let force = i64::try_from(nodes).unwrap_or(i64::MAX / 4) + 1;
        let mut flow = Flow {
            head: Vec::new(),
            cap: Vec::new(),
            cost: Vec::new(),
            out: vec![Vec::new(); nodes],
        };
        let mut load = vec![0usize; a];
        for hs in holders {
            for &m in hs {
                load[m] += 1;
            }
        }
        for (m, &l) in load.iter().enumerate() {
            flow.edge(source, 1 + m, q, l.min(q), -force);
            if r > 0 {
                flow.edge(source, 1 + m, 1, l.saturating_sub(q), 0);
            }
        }
        let mut ownership = vec![0usize; a * e];
        for m in 0..a {
            for i in 0..e {
                let cost = if was[i].contains(&m) { -1 } else { 0 };
                let used = usize::from(holders[i].contains(&m));
                ownership[m * e + i] = flow.edge(1 + m, 1 + a + i, 1, used, cost);
            }
        }
        for (i, hs) in holders.iter().enumerate() {
            flow.edge(1 + a + i, sink, k, hs.len(), 0);
        }

        while let Some(cycle) = flow.negative_cycle() {
            flow.push(&cycle);
        }
        let mut placed: usize = load.iter().sum();
        while placed < e * k {
            let Some(path) = flow.shortest_path(source, sink) else {
                break; // Cannot happen: a balanced assignment always exists.
            };
            flow.push(&path);
            placed += 1;
        }

        (0..e)
            .map(|i| {
                (0..a)
                    .filter(|&m| flow.cap[ownership[m * e + i]] == 0)
                    .collect()
            })
            .collect()
    }

    /// Adds edge `from → to` of capacity `cap` already carrying `used`; returns its id.
    fn edge(&mut self, from: usize, to: usize, cap: usize, used: usize, cost: i64) -> usize {
        let id = self.head.len();
        let (cap, used) = (cap as i64, used.min(cap) as i64);
        self.head.extend([to, from]);
        self.cap.extend([cap - used, used]);
        self.cost.extend([cost, -cost]);
        self.out[from].push(id);
        self.out[to].push(id ^ 1);
        id
    }

    /// Sends one unit along `edges`.
    fn push(&mut self, edges: &[usize]) {
        for &id in edges {
            self.cap[id] -= 1;
            self.cap[id ^ 1] += 1;
        }
    }

    /// A cycle of negative cost in the residual graph, as its edges, if there is one.
    ///
    /// Bellman–Ford from every node at once; after each pass the parent edges are searched
    /// for a cycle, which is then negative (parents only change on a strict improvement),
    /// and a pass that improves nothing proves there is none.
    fn negative_cycle(&self) -> Option<Vec<usize>> {
        let nodes = self.out.len();
        let mut dist = vec![0i64; nodes];
        let mut parent = vec![usize::MAX; nodes];
        for _ in 0..=nodes {
            if !self.relax(&mut dist, &mut parent) {
                return None;
            }
            if let Some(cycle) = self.parent_cycle(&parent) {
                return Some(cycle);
            }
        }
        None
    }

    /// The cheapest path from `from` to `to` in the residual graph, as its edges; the
    /// residual graph must have no negative cycle.
    fn shortest_path(&self, from: usize, to: usize) -> Option<Vec<usize>> {
        let nodes = self.out.len();
        let mut dist = vec![i64::MAX; nodes];
        let mut parent = vec![usize::MAX; nodes];
        dist[from] = 0;
        for _ in 0..nodes {
            if !self.relax(&mut dist, &mut parent) {
                break;
            }
        }
        if dist[to] == i64::MAX {
            return None;
        }
        let mut path = Vec::new();
        let mut at = to;
        while at != from && path.len() <= nodes {
            let id = parent[at];
            path.push(id);
            at = self.head[id ^ 1];
        }
        path.reverse();
        Some(path)
    }

    /// One Bellman–Ford pass over the residual edges; whether any distance improved.
    fn relax(&self, dist: &mut [i64], parent: &mut [usize]) -> bool {
        let mut improved = false;
        for (u, edges) in self.out.iter().enumerate() {
            if dist[u] == i64::MAX {
                continue;
            }
            for &id in edges {
                let v = self.head[id];
                if self.cap[id] > 0 && dist[u] + self.cost[id] < dist[v] {
                    dist[v] = dist[u] + self.cost[id];
                    parent[v] = id;
                    improved = true;
                }
            }
        }
        improved
    }

    /// A cycle among the parent edges, if any, in path order.
    fn parent_cycle(&self, parent: &[usize]) -> Option<Vec<usize>> {
        let nodes = parent.len();
        let mut walk = vec![usize::MAX; nodes];
        for start in 0..nodes {
            let mut at = start;
            while walk[at] == usize::MAX && parent[at] != usize::MAX {
                walk[at] = start;
                at = self.head[parent[at] ^ 1];
            }
            if walk[at] == start && parent[at] != usize::MAX {
                let mut cycle = vec![parent[at]];
                let mut back = self.head[parent[at] ^ 1];
                while back != at {
                    cycle.push(parent[back]);
                    back = self.head[parent[back] ^ 1];
                }
                cycle.reverse();
                let cost: i64 = cycle.iter().map(|&id| self.cost[id]).sum();
                if cost < 0 {
                    return Some(cycle);
                }
            }
            walk[at] = walk[at].min(start);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    //! Invariants of `docs/partitions-design.md` §3 over random membership histories, a
    //! brute-force oracle for the fewest moves, and the design's named cases.
    //! `PROPTEST_CASES` raises the number of cases of each property.

    use std::collections::BTreeSet;

    use proptest::prelude::*;
    use proptest::sample::Index;

    use super::*;

    /// Cases per property unless `PROPTEST_CASES` says otherwise: the file runs in about a
    /// second in a debug build.
    fn cases(default: u32) -> ProptestConfig {
        let cases = std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(default);
        ProptestConfig::with_cases(cases)
    }

    /// Consumer ids are offset from join order so that mixing the two up shows.
    const ID_OFFSET: u64 = 100;

    fn member(seq: u64, priority: i32) -> Candidate {
        Candidate {
            consumer: ID_OFFSET + seq,
            seq,
            priority,
        }
    }

    /// The active members by the design's rule, written out again independently.
    fn reference_active(n: u16, k: u16, manual: &BTreeSet<u16>, members: &[Candidate]) -> Vec<u64> {
        let e = (0..n).filter(|p| !manual.contains(p)).count();
        let Some(top) = members.iter().map(|c| c.priority).max() else {
            return Vec::new();
        };
        let mut tier: Vec<&Candidate> = members.iter().filter(|c| c.priority == top).collect();
        tier.sort_by_key(|c| c.seq);
        tier.iter()
            .take(e * usize::from(k.max(1)))
            .map(|c| c.consumer)
            .collect()
    }

    /// The fewest moves any balanced assignment needs, given quotas that may go to anyone:
    /// `Σ max(|owners now|, k) − kept`, with kept bounded by what members and partitions
    /// can keep. Exact for one owner per partition, a lower bound otherwise.
    fn move_bound(
        n: u16,
        k: u16,
        manual: &BTreeSet<u16>,
        members: &[Candidate],
        current: &[Vec<u64>],
    ) -> usize {
        let active = reference_active(n, k, manual, members);
        let e = (0..n).filter(|p| !manual.contains(p)).count();
        let per = usize::from(k).min(active.len());
        let mut worst = 0;
        let mut by_partition = 0;
        let mut count = vec![0usize; active.len()];
        for p in 0..n {
            let now = distinct(&current[usize::from(p)]);
            if manual.contains(&p) || active.is_empty() {
                worst += now.len();
                continue;
            }
            worst += now.len().max(per);
            let mine: Vec<usize> = now
                .iter()
                .filter_map(|c| active.iter().position(|a| a == c))
                .collect();
            by_partition += mine.len().min(per);
            for m in mine {
                count[m] += 1;
            }
        }
        if active.is_empty() {
            return worst;
        }
        let (q, r) = (e * per / active.len(), e * per % active.len());
        count.sort_unstable_by(|a, b| b.cmp(a));
        let by_member: usize = count
            .iter()
            .enumerate()
            .map(|(i, &c)| c.min(if i < r { q + 1 } else { q }))
            .sum();
        worst - by_member.min(by_partition)
    }

    /// Checks invariants 1–4 of the design on `got = assign(…)`, and that assigning again
    /// from its result changes nothing.
    fn check(
        n: u16,
        k: u16,
        manual: &BTreeSet<u16>,
        members: &[Candidate],
        current: &[Vec<u64>],
        unacked: &[u32],
        got: &Assignment,
    ) -> Result<(), TestCaseError> {
        let active = reference_active(n, k, manual, members);
        let e = (0..n).filter(|p| !manual.contains(p)).count();
        let per = usize::from(k).min(active.len());
        prop_assert_eq!(got.owners.len(), usize::from(n));
        let mut load = vec![0usize; active.len()];
        for (p, owners) in (0u16..).zip(&got.owners) {
            if manual.contains(&p) {
                prop_assert!(owners.is_empty(), "manual partition {} owned", p);
                continue;
            }
            // 1: min(K, A) distinct active owners; standbys and lower tiers own nothing.
            prop_assert_eq!(owners.len(), per, "partition {} owners {:?}", p, owners);
            prop_assert_eq!(
                distinct(owners).len(),
                owners.len(),
                "partition {} twice",
                p
            );
            for c in owners {
                let m = active.iter().position(|a| a == c);
                prop_assert!(m.is_some(), "partition {} owned by inactive {}", p, c);
                if let Some(m) = m {
                    load[m] += 1;
                }
            }
        }
        // 2: q or q+1 each.
        if !active.is_empty() {
            let q = e * per / active.len();
            for (m, &l) in load.iter().enumerate() {
                prop_assert!(l == q || l == q + 1, "member {} holds {} (q = {})", m, l, q);
            }
        }
        // The moves are the diff: applied to `current`, they give `owners`.
        let mut applied: Vec<BTreeSet<u64>> = current
            .iter()
            .map(|o| o.iter().copied().collect())
            .collect();
        for mv in &got.moves {
            prop_assert!(mv.from != mv.to, "empty move {:?}", mv);
            let at = &mut applied[usize::from(mv.partition)];
            if let Some(from) = mv.from {
                prop_assert!(at.remove(&from), "{:?}: not an owner", mv);
            }
            if let Some(to) = mv.to {
                prop_assert!(at.insert(to), "{:?}: already an owner", mv);
            }
        }
        for (p, (a, o)) in applied.iter().zip(&got.owners).enumerate() {
            prop_assert_eq!(
                a,
                &o.iter().copied().collect::<BTreeSet<_>>(),
                "partition {}",
                p
            );
        }
        // 4: as few moves as the bound (exact for K = 1; the oracle covers K > 1).
        let bound = move_bound(n, k, manual, members, current);
        if per <= 1 {
            prop_assert_eq!(got.moves.len(), bound, "moves {}", describe(&got.moves));
        } else {
            prop_assert!(got.moves.len() >= bound);
        }
        // 3: nothing changed, nothing moves.
        let again = assign(n, k, manual, members, &got.owners, unacked);
        prop_assert!(again.moves.is_empty(), "again: {}", describe(&again.moves));
        prop_assert_eq!(&again.owners, &got.owners);
        Ok(())
    }

    /// One event in a group's life.
    #[derive(Debug, Clone)]
    enum Step {
        /// A member joins at this priority.
        Join(i32),
        /// A member leaves.
        Leave(Index),
        /// A manual consumer takes the partition, or its last one leaves it.
        Manual(Index),
        /// A partition's unacked count changes.
        Unacked(Index, u32),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            5 => prop_oneof![6 => Just(0), 1 => 1..3i32].prop_map(Step::Join),
            3 => any::<Index>().prop_map(Step::Leave),
            1 => any::<Index>().prop_map(Step::Manual),
            2 => (any::<Index>(), prop_oneof![Just(0u32), 1..5u32])
                .prop_map(|(i, u)| Step::Unacked(i, u)),
        ]
    }

    proptest! {
        #![proptest_config(cases(64))]

        /// Invariants 1–5 after every step of a random history.
        #[test]
        fn histories_keep_the_invariants(
            n in 1u16..=64,
            k in 1u16..=4,
            steps in prop::collection::vec(step(), 1..24),
        ) {
            let mut manual = BTreeSet::new();
            let mut members: Vec<Candidate> = Vec::new();
            let mut owners: Vec<Vec<u64>> = vec![Vec::new(); usize::from(n)];
            let mut unacked = vec![0u32; usize::from(n)];
            let mut seq = 0;
            for step in steps {
                let before = owners.clone();
                let top_before = members.iter().map(|c| c.priority).max();
                let mut joined = None;
                let mut left = None;
                match step {
                    Step::Join(priority) => {
                        seq += 1;
                        members.push(member(seq, priority));
                        joined = Some(member(seq, priority));
                    }
                    Step::Leave(i) if !members.is_empty() => {
                        left = Some(members.remove(i.index(members.len())));
                    }
                    Step::Leave(_) => {}
                    Step::Manual(i) => {
                        let p = i.index(usize::from(n)) as u16;
                        if !manual.remove(&p) {
                            manual.insert(p);
                        }
                    }
                    Step::Unacked(i, u) => unacked[i.index(usize::from(n))] = u,
                }
                let got = assign(n, k, &manual, &members, &owners, &unacked);
                check(n, k, &manual, &members, &owners, &unacked, &got)?;
                owners = got.owners.clone();

                // 5: a join into the active tier takes only from members over quota.
                if let Some(j) = joined.filter(|j| top_before.is_none_or(|t| j.priority <= t)) {
                    let active = reference_active(n, k, &manual, &members);
                    let held = |c: u64, o: &[Vec<u64>]| o.iter().filter(|x| x.contains(&c)).count();
                    for mv in &got.moves {
                        prop_assert_eq!(mv.to, Some(j.consumer), "{}", describe(&got.moves));
                        if let Some(from) = mv.from {
                            prop_assert!(active.contains(&from));
                            prop_assert!(held(from, &before) > held(from, &owners),
                                "c{} gave up a partition without being over quota", from);
                        }
                    }
                }
                // 5: with one owner per partition, a leave moves only the leaver's.
                if let (Some(l), 1) = (left, k) {
                    for mv in &got.moves {
                        prop_assert_eq!(mv.from, Some(l.consumer), "{}", describe(&got.moves));
                    }
                }
            }
        }
    }

    /// The fewest moves of any balanced assignment, by enumerating them all.
    fn oracle(
        n: u16,
        k: u16,
        manual: &BTreeSet<u16>,
        members: &[Candidate],
        current: &[Vec<u64>],
    ) -> usize {
        let active = reference_active(n, k, manual, members);
        let parts: Vec<u16> = (0..n).filter(|p| !manual.contains(p)).collect();
        let now: Vec<Vec<u64>> = current.iter().map(|o| distinct(o)).collect();
        let fixed: usize = (0..n)
            .filter(|p| manual.contains(p) || active.is_empty())
            .map(|p| now[usize::from(p)].len())
            .sum();
        if active.is_empty() {
            return fixed;
        }
        let a = active.len();
        let per = usize::from(k).min(a);
        let q = parts.len() * per / a;
        let choices: Vec<u32> = (0u32..1 << a)
            .filter(|s| s.count_ones() as usize == per)
            .collect();

        #[allow(clippy::too_many_arguments)]
        fn search(
            i: usize,
            parts: &[u16],
            choices: &[u32],
            active: &[u64],
            now: &[Vec<u64>],
            per: usize,
            q: usize,
            load: &mut Vec<usize>,
            cost: usize,
            best: &mut usize,
        ) {
            if cost >= *best {
                return;
            }
            if i == parts.len() {
                if load.iter().all(|&l| l == q || l == q + 1) {
                    *best = cost;
                }
                return;
            }
            let was = &now[usize::from(parts[i])];
            for &set in choices {
                let owners: Vec<usize> =
                    (0..active.len()).filter(|m| set & (1 << m) != 0).collect();
                if owners.iter().any(|&m| load[m] == q + 1) {
                    continue;
                }
                let kept = owners.iter().filter(|&&m| was.contains(&active[m])).count();
                for &m in &owners {
                    load[m] += 1;
                }
                let step = was.len().max(per) - kept;
                search(
                    i + 1,
                    parts,
                    choices,
                    active,
                    now,
                    per,
                    q,
                    load,
                    cost + step,
                    best,
                );
                for &m in &owners {
                    load[m] -= 1;
                }
            }
        }
        let mut best = usize::MAX;
        search(
            0,
            &parts,
            &choices,
            &active,
            &now,
            per,
            q,
            &mut vec![0; a],
            0,
            &mut best,
        );
        fixed + best
    }

    proptest! {
        #![proptest_config(cases(128))]

        /// For N ≤ 6 and M ≤ 4, as few moves as the best balanced assignment, from any
        /// current owners (up to K each, some of them gone or in a lower tier).
        #[test]
        fn moves_match_the_oracle(
            n in 1u16..=6,
            k in 1u16..=4,
            priorities in prop::collection::vec(prop_oneof![4 => Just(0), 1 => Just(1)], 0..=4),
            manual in prop::collection::btree_set(0u16..6, 0..3),
            current in prop::collection::vec(prop::collection::btree_set(ID_OFFSET..ID_OFFSET + 6, 0..=4), 6),
            unacked in prop::collection::vec(0u32..3, 6),
        ) {
            let members: Vec<Candidate> = (1u64..).zip(&priorities).map(|(s, &p)| member(s, p)).collect();
            let current: Vec<Vec<u64>> = current[..usize::from(n)]
                .iter()
                .map(|o| o.iter().copied().take(usize::from(k)).collect())
                .collect();
            let got = assign(n, k, &manual, &members, &current, &unacked);
            check(n, k, &manual, &members, &current, &unacked, &got)?;
            prop_assert_eq!(
                got.moves.len(),
                oracle(n, k, &manual, &members, &current),
                "moves {}", describe(&got.moves)
            );
        }
    }

    /// Settles `members` on `n` partitions from nothing, K = 1.
    fn settled(n: u16, members: &[Candidate]) -> Vec<Vec<u64>> {
        let none = vec![Vec::new(); usize::from(n)];
        assign(
            n,
            1,
            &BTreeSet::new(),
            members,
            &none,
            &vec![0; usize::from(n)],
        )
        .owners
    }

    fn count(owners: &[Vec<u64>], c: u64) -> usize {
        owners.iter().filter(|o| o.contains(&c)).count()
    }

    #[test]
    fn twelve_partitions_three_to_four_members_moves_three() {
        let mut members: Vec<Candidate> = (1..=3).map(|s| member(s, 0)).collect();
        let owners = settled(12, &members);
        members.push(member(4, 0));
        let got = assign(12, 1, &BTreeSet::new(), &members, &owners, &[0; 12]);
        assert_eq!(got.moves.len(), 3, "{}", describe(&got.moves));
        assert!(got.moves.iter().all(|m| m.to == Some(104)));
        for c in 101..=104 {
            assert_eq!(count(&got.owners, c), 3);
        }
    }

    #[test]
    fn twelve_partitions_four_to_three_moves_the_leavers_three() {
        let mut members: Vec<Candidate> = (1..=4).map(|s| member(s, 0)).collect();
        let owners = settled(12, &members);
        members.pop();
        let got = assign(12, 1, &BTreeSet::new(), &members, &owners, &[0; 12]);
        assert_eq!(got.moves.len(), 3, "{}", describe(&got.moves));
        assert!(got.moves.iter().all(|m| m.from == Some(104)));
    }

    #[test]
    fn sixteen_partitions_four_to_five_members_moves_three() {
        let mut members: Vec<Candidate> = (1..=4).map(|s| member(s, 0)).collect();
        let owners = settled(16, &members);
        members.push(member(5, 0));
        let got = assign(16, 1, &BTreeSet::new(), &members, &owners, &[0; 16]);
        assert_eq!(got.moves.len(), 3, "{}", describe(&got.moves));
        assert_eq!(count(&got.owners, 105), 3);
        // The one extra (16 = 5·3 + 1) stays with the earliest of the members that had 4.
        assert_eq!(count(&got.owners, 101), 4);
    }

    #[test]
    fn three_partitions_fifteen_members_three_active_twelve_standbys() {
        let members: Vec<Candidate> = (1..=15).map(|s| member(s, 0)).collect();
        let owners = settled(3, &members);
        assert_eq!(owners, vec![vec![101], vec![102], vec![103]]);
        // A standby leaving moves nothing; an active one leaving hands over to a standby.
        let without_standby: Vec<Candidate> =
            members.iter().copied().filter(|c| c.seq != 9).collect();
        let got = assign(3, 1, &BTreeSet::new(), &without_standby, &owners, &[0; 3]);
        assert!(got.moves.is_empty());
        let without_active: Vec<Candidate> =
            members.iter().copied().filter(|c| c.seq != 2).collect();
        let got = assign(3, 1, &BTreeSet::new(), &without_active, &owners, &[0; 3]);
        assert_eq!(
            got.moves,
            vec![Reassign {
                partition: 1,
                from: Some(102),
                to: Some(104)
            }]
        );
    }

    #[test]
    fn priority_joiner_takes_everything() {
        let mut members: Vec<Candidate> = (1..=3).map(|s| member(s, 0)).collect();
        let owners = settled(8, &members);
        members.push(member(4, 5));
        let got = assign(8, 2, &BTreeSet::new(), &members, &owners, &[0; 8]);
        assert!(
            got.owners.iter().all(|o| o == &vec![104]),
            "{:?}",
            got.owners
        );
        assert_eq!(got.moves.len(), 8);
        assert!(
            got.moves
                .iter()
                .all(|m| m.to == Some(104) && m.from != Some(104))
        );
        // When it leaves, the priority-0 members share the partitions again.
        members.pop();
        let got = assign(8, 1, &BTreeSet::new(), &members, &got.owners, &[0; 8]);
        assert_eq!(got.moves.len(), 8);
        assert_eq!(count(&got.owners, 101), 3);
    }

    #[test]
    fn revoke_prefers_idle_partitions_then_fewest_unacked_then_highest_index() {
        let one = vec![member(1, 0)];
        let two = vec![member(1, 0), member(2, 0)];
        let owners = settled(6, &one);
        let given = |unacked: &[u32]| -> Vec<u16> {
            let got = assign(6, 1, &BTreeSet::new(), &two, &owners, unacked);
            got.moves.iter().map(|m| m.partition).collect()
        };
        assert_eq!(given(&[5, 0, 3, 0, 9, 7]), vec![1, 2, 3]);
        assert_eq!(given(&[5, 2, 3, 1, 9, 7]), vec![1, 2, 3]);
        assert_eq!(given(&[1, 1, 1, 1, 1, 1]), vec![3, 4, 5]);
        assert_eq!(given(&[0, 4, 0, 4, 4, 4]), vec![0, 2, 5]);
    }

    #[test]
    fn two_owners_per_partition_third_member_takes_one_from_each() {
        // Both members would give up partition 2 by index; the newcomer can own it once.
        let two = vec![member(1, 0), member(2, 0)];
        let none = vec![Vec::new(); 3];
        let owners = assign(3, 2, &BTreeSet::new(), &two, &none, &[0; 3]).owners;
        assert!(owners.iter().all(|o| o.len() == 2));
        let three = vec![member(1, 0), member(2, 0), member(3, 0)];
        let got = assign(3, 2, &BTreeSet::new(), &three, &owners, &[0; 3]);
        assert_eq!(got.moves.len(), 2, "{}", describe(&got.moves));
        for c in 101..=103 {
            assert_eq!(count(&got.owners, c), 2);
        }
        assert!(got.owners.iter().all(|o| o.len() == 2 && o[0] != o[1]));
    }

    #[test]
    fn manual_partitions_are_taken_from_the_group() {
        let members = vec![member(1, 0), member(2, 0)];
        let owners = settled(4, &members);
        let manual = BTreeSet::from([0, 9]);
        let got = assign(4, 1, &manual, &members, &owners, &[0; 4]);
        assert!(got.owners[0].is_empty());
        assert_eq!(
            got.moves[0],
            Reassign {
                partition: 0,
                from: Some(101),
                to: None
            }
        );
        // 3 partitions, 2 members: the one that kept two keeps them.
        assert_eq!(got.moves.len(), 1, "{}", describe(&got.moves));
    }

    #[test]
    fn no_member_orphans_every_partition_and_short_inputs_read_as_empty() {
        let got = assign(
            3,
            1,
            &BTreeSet::new(),
            &[],
            &[vec![101], vec![102, 102]],
            &[],
        );
        assert_eq!(got.owners, vec![Vec::<u64>::new(); 3]);
        assert_eq!(
            got.moves,
            vec![
                Reassign {
                    partition: 0,
                    from: Some(101),
                    to: None
                },
                Reassign {
                    partition: 1,
                    from: Some(102),
                    to: None
                },
            ]
        );
        let got = assign(2, 0, &BTreeSet::new(), &[member(1, 0)], &[], &[]);
        assert_eq!(got.owners, vec![vec![101], vec![101]]);
    }

    #[test]
    fn describe_names_each_move_and_cuts_after_32() {
        let moves = [
            Reassign {
                partition: 3,
                from: Some(12),
                to: Some(17),
            },
            Reassign {
                partition: 4,
                from: None,
                to: Some(17),
            },
            Reassign {
                partition: 5,
                from: Some(12),
                to: None,
            },
        ];
        assert_eq!(describe(&moves), "p3 c12→c17 p4 -→c17 p5 c12→-");
        assert_eq!(describe(&[]), "");
        let many: Vec<Reassign> = (0..40)
            .map(|p| Reassign {
                partition: p,
                from: None,
                to: Some(1),
            })
            .collect();
        let text = describe(&many);
        assert!(text.ends_with("p31 -→c1 …(+8)"), "{text}");
        assert_eq!(text.matches('→').count(), 32);
    }
}
