//! Picking candidate addresses inside one node block. Pure; no I/O.
//!
//! A replica keeps one [`BlockAllocator`] per block it allocates from: what it knows to be
//! taken (loaded from the datastore, plus its own allocations) and what it is handing out
//! right now. The allocator only proposes candidates; the datastore's atomic Create of the
//! address's record decides. A stale view therefore costs a retry (the Create fails and
//! the address is marked taken) or a reload (when the view says the block is full), never a
//! duplicate.
//!
//! Candidates are handed out round-robin from a cursor, as the reference host-local plugin
//! does, so an address just released is not reused at once (a late packet for the old pod
//! does not reach a new one).

use std::collections::BTreeSet;
use std::net::IpAddr;

use crate::pool::{Reserved, reserved};
use crate::prefix::IpPrefix;

/// Why an address cannot be handed out from a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unusable {
    /// It is not inside the block.
    OutsideBlock,
    /// It is the block's network, gateway or broadcast address.
    Reserved(Reserved),
}

/// Candidate addresses of one block.
#[derive(Clone, Debug)]
pub struct BlockAllocator {
    block: IpPrefix,
    /// Offsets known to be allocated.
    taken: BTreeSet<u128>,
    /// Offsets proposed to a request that has not finished yet.
    in_flight: BTreeSet<u128>,
    /// Next offset to try.
    cursor: u128,
    /// Whether `taken` was ever loaded from the datastore.
    loaded: bool,
    /// The last offset proposed: abandoning it rewinds the cursor, so an address that was
    /// never used (the request found the owner's existing one) is proposed next.
    last_proposed: Option<u128>,
}

impl BlockAllocator {
    /// An allocator of `block` that knows nothing is taken yet (call [`Self::load`]).
    pub fn new(block: IpPrefix) -> Self {
        BlockAllocator {
            block,
            taken: BTreeSet::new(),
            in_flight: BTreeSet::new(),
            cursor: FIRST,
            loaded: false,
            last_proposed: None,
        }
    }

    /// The block.
    pub fn block(&self) -> &IpPrefix {
        &self.block
    }

    /// Whether the taken set was loaded from the datastore at least once.
    pub fn is_loaded(&self) -> bool {
        self.loaded
    }

    /// Replaces what is known to be taken with the datastore's view (addresses outside the
    /// block are ignored). Candidates in flight stay reserved.
    pub fn load(&mut self, taken: impl IntoIterator<Item = IpAddr>) {
        self.taken = taken
            .into_iter()
            .filter_map(|a| self.block.offset_of(a))
            .filter(|o| self.is_assignable(*o))
            .collect();
        self.loaded = true;
    }

    /// Addresses that can be handed out in the block.
    pub fn capacity(&self) -> u128 {
        self.last().saturating_sub(FIRST).saturating_add(1)
    }

    /// Addresses known taken or in flight.
    pub fn used(&self) -> u128 {
        self.taken.union(&self.in_flight).count() as u128
    }

    /// Addresses known taken (not counting those in flight).
    pub fn taken(&self) -> u128 {
        self.taken.len() as u128
    }

    /// Proposes the next free address after the cursor (wrapping once) and marks it in
    /// flight; `None` when every address is known taken or in flight.
    pub fn next_candidate(&mut self) -> Option<IpAddr> {
        if self.used() >= self.capacity() {
            return None;
        }
        let last = self.last();
        let start = self.cursor.clamp(FIRST, last);
        let mut offset = start;
        loop {
            if !self.taken.contains(&offset) && !self.in_flight.contains(&offset) {
                self.in_flight.insert(offset);
                self.cursor = if offset == last { FIRST } else { offset + 1 };
                self.last_proposed = Some(offset);
                return self.block.addr_at(offset);
            }
            offset = if offset == last { FIRST } else { offset + 1 };
            if offset == start {
                return None;
            }
        }
    }

    /// Whether `addr` may be handed out from this block at all.
    pub fn check(&self, addr: IpAddr) -> Result<(), Unusable> {
        if !self.block.contains(addr) {
            return Err(Unusable::OutsideBlock);
        }
        match reserved(&self.block, addr) {
            Some(r) => Err(Unusable::Reserved(r)),
            None => Ok(()),
        }
    }

    /// The address is allocated (by us or by someone else): no longer a candidate.
    pub fn mark_taken(&mut self, addr: IpAddr) {
        if let Some(offset) = self.block.offset_of(addr)
            && self.is_assignable(offset)
        {
            self.in_flight.remove(&offset);
            self.taken.insert(offset);
        }
    }

    /// A candidate was not used (the request failed or found another address).
    pub fn abandon(&mut self, addr: IpAddr) {
        if let Some(offset) = self.block.offset_of(addr) {
            self.in_flight.remove(&offset);
            if self.last_proposed == Some(offset) {
                self.cursor = offset;
                self.last_proposed = None;
            }
        }
    }

    /// The address was released: it may be proposed again (after the cursor comes round).
    pub fn mark_free(&mut self, addr: IpAddr) {
        if let Some(offset) = self.block.offset_of(addr) {
            self.taken.remove(&offset);
            self.in_flight.remove(&offset);
        }
    }

    fn last(&self) -> u128 {
        // Blocks are at most /30 or /126, so size - 2 >= 2.
        self.block.size().unwrap_or(u128::MAX) - 2
    }

    fn is_assignable(&self, offset: u128) -> bool {
        (FIRST..=self.last()).contains(&offset)
    }
}

/// First assignable offset: after the network (0) and gateway (1) addresses.
const FIRST: u128 = 2;

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use proptest::prelude::*;

    fn block(text: &str) -> IpPrefix {
        text.parse().unwrap()
    }

    #[test]
    fn hands_out_in_order_skipping_reserved() {
        let mut a = BlockAllocator::new(block("10.0.1.0/29"));
        let got: Vec<String> = std::iter::from_fn(|| a.next_candidate())
            .map(|x| x.to_string())
            .collect();
        assert_eq!(
            got,
            ["10.0.1.2", "10.0.1.3", "10.0.1.4", "10.0.1.5", "10.0.1.6"]
        );
        assert_eq!(a.capacity(), 5);
        assert_eq!(a.next_candidate(), None);
    }

    #[test]
    fn round_robin_after_release() {
        let mut a = BlockAllocator::new(block("10.0.1.0/29"));
        let first = a.next_candidate().unwrap();
        a.mark_taken(first);
        a.mark_free(first);
        // The cursor moved on: .2 comes back only after the others.
        assert_eq!(a.next_candidate().unwrap().to_string(), "10.0.1.3");
    }

    #[test]
    fn an_unused_candidate_comes_back_first() {
        let mut a = BlockAllocator::new(block("10.0.1.0/29"));
        let unused = a.next_candidate().unwrap();
        a.abandon(unused);
        assert_eq!(a.next_candidate(), Some(unused));
    }

    #[test]
    fn check_names_the_problem() {
        let a = BlockAllocator::new(block("fd00::100/120"));
        assert_eq!(
            a.check("fd00::100".parse().unwrap()),
            Err(Unusable::Reserved(Reserved::Network))
        );
        assert_eq!(
            a.check("fd00::101".parse().unwrap()),
            Err(Unusable::Reserved(Reserved::Gateway))
        );
        assert_eq!(
            a.check("fd00::1ff".parse().unwrap()),
            Err(Unusable::Reserved(Reserved::Broadcast))
        );
        assert_eq!(
            a.check("fd00::200".parse().unwrap()),
            Err(Unusable::OutsideBlock)
        );
        assert_eq!(a.check("fd00::102".parse().unwrap()), Ok(()));
    }

    #[derive(Clone, Debug)]
    enum Op {
        Next,
        Commit(usize),
        Abandon(usize),
        Release(usize),
        Reload,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => Just(Op::Next),
            3 => any::<usize>().prop_map(Op::Commit),
            1 => any::<usize>().prop_map(Op::Abandon),
            2 => any::<usize>().prop_map(Op::Release),
            1 => Just(Op::Reload),
        ]
    }

    proptest! {
        /// Against a model of the datastore: the allocator never proposes an address that is
        /// allocated or in flight, never a reserved one, and says "full" only when the block is.
        #[test]
        fn never_proposes_a_used_address(
            len in 26u8..=30,
            ops in proptest::collection::vec(op(), 1..300),
        ) {
            let b = block(&format!("10.9.8.0/{len}"));
            let mut a = BlockAllocator::new(b);
            a.load([]);
            let mut allocated: HashSet<IpAddr> = HashSet::new();
            let mut in_flight: Vec<IpAddr> = Vec::new();
            for op in ops {
                match op {
                    Op::Next => match a.next_candidate() {
                        Some(addr) => {
                            prop_assert!(a.check(addr).is_ok(), "{addr} is reserved");
                            prop_assert!(!allocated.contains(&addr), "{addr} is allocated");
                            prop_assert!(!in_flight.contains(&addr), "{addr} is in flight");
                            in_flight.push(addr);
                        }
                        None => {
                            let used = allocated.len() + in_flight.len();
                            prop_assert_eq!(used as u128, a.capacity(), "full too early");
                        }
                    },
                    Op::Commit(i) if !in_flight.is_empty() => {
                        let addr = in_flight.swap_remove(i % in_flight.len());
                        a.mark_taken(addr);
                        allocated.insert(addr);
                    }
                    Op::Abandon(i) if !in_flight.is_empty() => {
                        let addr = in_flight.swap_remove(i % in_flight.len());
                        a.abandon(addr);
                    }
                    Op::Release(i) if !allocated.is_empty() => {
                        let addr = *allocated.iter().nth(i % allocated.len()).unwrap();
                        allocated.remove(&addr);
                        a.mark_free(addr);
                    }
                    Op::Reload => a.load(allocated.iter().copied()),
                    _ => {}
                }
                prop_assert_eq!(a.used(), (allocated.len() + in_flight.len()) as u128);
            }
        }

        /// A stale view (someone else allocated) costs retries, never a wrong "full": after
        /// marking every conflict taken, the allocator finds the free addresses that remain.
        #[test]
        fn stale_view_converges(
            others in proptest::collection::btree_set(2u128..=62, 0..61),
        ) {
            let b = block("10.7.0.0/26");
            let mut a = BlockAllocator::new(b);
            a.load([]);
            let mut got = BTreeSet::new();
            while let Some(addr) = a.next_candidate() {
                let offset = b.offset_of(addr).unwrap();
                if others.contains(&offset) {
                    a.mark_taken(addr); // the datastore said ALREADY_EXISTS
                } else {
                    a.mark_taken(addr);
                    prop_assert!(got.insert(offset));
                }
            }
            prop_assert_eq!(got.len() + others.len(), 61);
        }
    }
}
