//! Guest requests by tree and status code: one count per (tree, code) in
//! a table per thread (see `per_thread`), so counting needs no lock, no map
//! and no allocation (but the thread's first).
use std::sync::atomic::{AtomicU64, Ordering};

use thread_local::ThreadLocal;

use super::per_thread::bump;

/// Which part of the API a request asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tree {
    /// `/openstack/...`
    OpenStack = 0,
    /// Everything else: the EC2 tree (`/`, `/latest/...`, `/ec2/...`).
    Ec2 = 1,
    /// `PUT /latest/api/token` (also under `/ec2`): IMDSv2 tokens.
    Token = 2,
}

impl Tree {
    pub const COUNT: usize = 3;
    pub const ALL: [Tree; Tree::COUNT] = [Tree::OpenStack, Tree::Ec2, Tree::Token];

    pub fn as_str(self) -> &'static str {
        match self {
            Tree::OpenStack => "openstack",
            Tree::Ec2 => "ec2",
            Tree::Token => "token",
        }
    }
}

/// HTTP status codes are 100..=599. A code outside that (hyper never makes
/// one) is counted in one extra slot and shown as code 0.
const FIRST_CODE: u16 = 100;
const CODES: usize = 500;

/// [tree][code - 100], plus one slot per tree for codes out of range.
/// 12 KiB, an allocation of its own per thread: two threads' tables can
/// share at most the lines at their ends, which hold codes never sent.
type Table = Box<[[AtomicU64; CODES + 1]; Tree::COUNT]>;

#[derive(Debug, Default)]
pub struct RequestCounts {
    per_thread: ThreadLocal<Table>,
}

fn new_table() -> Table {
    Box::new(std::array::from_fn(|_| {
        std::array::from_fn(|_| AtomicU64::new(0))
    }))
}

fn slot(status: u16) -> usize {
    match status.checked_sub(FIRST_CODE) {
        Some(offset) if usize::from(offset) < CODES => usize::from(offset),
        _ => CODES,
    }
}

fn code_of(slot: usize) -> u16 {
    if slot == CODES {
        0
    } else {
        FIRST_CODE + slot as u16
    }
}

impl RequestCounts {
    pub fn add(&self, tree: Tree, status: u16) {
        let table = self.per_thread.get_or(new_table);
        bump(&table[tree as usize][slot(status)], 1);
    }

    #[cfg(test)]
    pub fn get(&self, tree: Tree, status: u16) -> u64 {
        self.per_thread
            .iter()
            .map(|table| table[tree as usize][slot(status)].load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }

    /// Every (tree, code, count) with a count above zero, summed over the
    /// threads.
    pub fn nonzero(&self) -> Vec<(Tree, u16, u64)> {
        let mut totals = [[0u64; CODES + 1]; Tree::COUNT];
        for table in self.per_thread.iter() {
            for (totals, counts) in totals.iter_mut().zip(table.iter()) {
                for (total, count) in totals.iter_mut().zip(counts) {
                    *total = total.wrapping_add(count.load(Ordering::Relaxed));
                }
            }
        }
        let mut out = Vec::new();
        for tree in Tree::ALL {
            for (slot, &count) in totals[tree as usize].iter().enumerate() {
                if count > 0 {
                    out.push((tree, code_of(slot), count));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_kept_apart_and_out_of_range_ones_counted_as_other() {
        let counts = RequestCounts::default();
        counts.add(Tree::Token, 200);
        counts.add(Tree::Token, 200);
        counts.add(Tree::Token, 400);
        counts.add(Tree::Ec2, 599);
        counts.add(Tree::Ec2, 99);
        counts.add(Tree::Ec2, 600);
        assert_eq!(
            counts.nonzero(),
            vec![
                (Tree::Ec2, 599, 1),
                (Tree::Ec2, 0, 2),
                (Tree::Token, 200, 2),
                (Tree::Token, 400, 1),
            ]
        );
    }

    #[test]
    fn counts_are_summed_over_the_threads() {
        let counts = RequestCounts::default();
        counts.add(Tree::Ec2, 200);
        std::thread::scope(|scope| {
            for _ in 0..3 {
                scope.spawn(|| {
                    for _ in 0..1000 {
                        counts.add(Tree::Ec2, 200);
                        counts.add(Tree::OpenStack, 404);
                    }
                });
            }
        });
        assert_eq!(
            counts.nonzero(),
            vec![(Tree::OpenStack, 404, 3000), (Tree::Ec2, 200, 3001)]
        );
        assert_eq!(counts.get(Tree::Ec2, 200), 3001);
    }
}
