//! Stand-in assignment until the real one lands: partitions dealt out in turn.

use std::collections::BTreeSet;

/// A group member as assignment sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// Its consumer.
    pub consumer: u64,
    /// Join order.
    pub seq: u64,
    /// Its priority.
    pub priority: i32,
}

/// One partition changing owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reassign {
    /// The partition.
    pub partition: u16,
    /// Who loses it.
    pub from: Option<u64>,
    /// Who gains it.
    pub to: Option<u64>,
}

/// Owners per partition and the moves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// Each partition's owners.
    pub owners: Vec<Vec<u64>>,
    /// The moves from the current owners.
    pub moves: Vec<Reassign>,
}

/// Deals partitions out in turn.
pub fn assign(
    n: u16,
    _k: u16,
    manual: &BTreeSet<u16>,
    members: &[Candidate],
    current: &[Vec<u64>],
    _unacked: &[u32],
) -> Assignment {
    let mut owners = vec![Vec::new(); usize::from(n)];
    let mut moves = Vec::new();
    let mut i = 0;
    for p in 0..n {
        if manual.contains(&p) || members.is_empty() {
            continue;
        }
        owners[usize::from(p)].push(members[i % members.len()].consumer);
        i += 1;
    }
    for p in 0..n {
        let (c, t) = (current.get(usize::from(p)), &owners[usize::from(p)]);
        if c != Some(t) {
            moves.push(Reassign {
                partition: p,
                from: c.and_then(|c| c.first().copied()),
                to: t.first().copied(),
            });
        }
    }
    Assignment { owners, moves }
}

/// The moves for a log line.
pub fn describe(moves: &[Reassign]) -> String {
    format!("{moves:?}")
}
