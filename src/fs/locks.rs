//! The lock order of the filesystem, written in one place and checked in
//! debug builds.
//!
//! Async locks (a directory's listing fetch, a new version's first upload,
//! a writer's `publishing`) may be held across requests and are always
//! taken before any std mutex. A std mutex is never held across an
//! `.await`, disk I/O or eviction (the guard is not `Send`, so a task
//! cannot carry it across an `.await` on the runtime), and two are nested
//! only in this order:
//!
//! ```text
//! tree ──► probes
//! tree ──► writers ──► a writer's state
//! fetches ──► a download's state (a leaf)
//! ```
//!
//! Every other mutex ([`Rank::Leaf`]: open handles, the directory
//! fingerprints, listing and version lock tables, the running fetches,
//! the login, a download's state) may be taken under those, but nothing is taken while a leaf
//! is held, so no cycle can form through it. Each mutex of `Fs` is an
//! [`Ordered`] with its rank; in debug builds (the whole test suite) taking
//! one out of order panics at the place that broke the rule, instead of
//! deadlocking one run in a thousand.

use std::ops::{Deref, DerefMut};
use std::sync::{Mutex, MutexGuard};

/// Where a mutex stands in the order: one may take a mutex of a higher
/// rank while holding one of a lower rank, never the reverse, and never
/// anything while holding a leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Rank {
    Tree = 1,
    Probes = 2,
    Writers = 3,
    WriterState = 4,
    Fetches = 5,
    Leaf = 9,
}

/// A std mutex with its place in the lock order. Poisoning is ignored:
/// every critical section leaves its state consistent before anything
/// that can panic.
#[derive(Debug)]
pub(super) struct Ordered<T> {
    rank: Rank,
    inner: Mutex<T>,
}

impl<T> Ordered<T> {
    pub(super) fn new(rank: Rank, value: T) -> Ordered<T> {
        Ordered {
            rank,
            inner: Mutex::new(value),
        }
    }

    /// With exclusive access no lock is taken, so no order applies.
    pub(super) fn get_mut(&mut self) -> &mut T {
        self.inner.get_mut().unwrap_or_else(|e| e.into_inner())
    }

    #[track_caller]
    pub(super) fn lock(&self) -> Guard<'_, T> {
        held::take(self.rank);
        Guard {
            rank: self.rank,
            inner: self.inner.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }
}

impl<T: Default> Default for Ordered<T> {
    fn default() -> Ordered<T> {
        Ordered::new(Rank::Leaf, T::default())
    }
}

pub(super) struct Guard<'a, T> {
    rank: Rank,
    inner: MutexGuard<'a, T>,
}

impl<T> Deref for Guard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.inner
    }
}

impl<T> DerefMut for Guard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.inner
    }
}

impl<T> Drop for Guard<'_, T> {
    fn drop(&mut self) {
        held::release(self.rank);
    }
}

#[cfg(debug_assertions)]
mod held {
    use super::Rank;
    use std::cell::RefCell;

    thread_local! {
        /// The ranks this thread holds, in the order taken.
        static HELD: RefCell<Vec<Rank>> = const { RefCell::new(Vec::new()) };
    }

    #[track_caller]
    pub(super) fn take(rank: Rank) {
        HELD.with(|h| {
            let mut h = h.borrow_mut();
            if let Some(&top) = h.last() {
                assert!(
                    top != Rank::Leaf && rank > top,
                    "lock order broken: taking {rank:?} while holding {top:?} (see fs/locks.rs)"
                );
            }
            h.push(rank);
        });
    }

    pub(super) fn release(rank: Rank) {
        HELD.with(|h| {
            let mut h = h.borrow_mut();
            if let Some(i) = h.iter().rposition(|&r| r == rank) {
                h.remove(i);
            }
        });
    }
}

#[cfg(not(debug_assertions))]
mod held {
    use super::Rank;

    #[inline(always)]
    pub(super) fn take(_: Rank) {}

    #[inline(always)]
    pub(super) fn release(_: Rank) {}
}

#[cfg(all(test, debug_assertions))]
mod tests {
    use super::*;

    #[test]
    fn nesting_in_order_is_allowed() {
        let tree = Ordered::new(Rank::Tree, ());
        let writers = Ordered::new(Rank::Writers, ());
        let state = Ordered::new(Rank::WriterState, ());
        let _t = tree.lock();
        let _w = writers.lock();
        let _s = state.lock();
    }

    #[test]
    fn guards_dropped_out_of_order_are_released() {
        let tree = Ordered::new(Rank::Tree, ());
        let writers = Ordered::new(Rank::Writers, ());
        let t = tree.lock();
        let w = writers.lock();
        drop(t);
        drop(w);
        let _t = tree.lock();
    }

    #[test]
    #[should_panic(expected = "lock order broken")]
    fn reverse_order_panics() {
        let tree = Ordered::new(Rank::Tree, ());
        let writers = Ordered::new(Rank::Writers, ());
        let _w = writers.lock();
        let _t = tree.lock();
    }

    #[test]
    #[should_panic(expected = "lock order broken")]
    fn nothing_under_a_leaf() {
        let handles = Ordered::new(Rank::Leaf, ());
        let tree = Ordered::new(Rank::Tree, ());
        let _h = handles.lock();
        let _t = tree.lock();
    }
}
