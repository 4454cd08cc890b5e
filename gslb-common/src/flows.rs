//! The flow table: the backend each recent flow was sent to, so that a flow
//! stays on its backend when its VIP's table changes.
//!
//! An array of buckets, each one 64-byte cache line of `FLOW_WAYS` slots,
//! shared by every CPU (a flow's packets may arrive on any queue) and
//! written without locks. A flow lives in the bucket its 64-bit hash picks
//! and is known by that hash: two flows share a record only if their
//! 64-bit hashes are equal. Each slot is two words, each written with one
//! store, and a slot matches only if both name the same flow, so a reader
//! racing a writer on another CPU misses (and uses the Maglev table) rather
//! than taking another flow's backend.
//!
//! Eviction follows the kernel's LRU in spirit: a flow seen only once (a
//! lone SYN, a spoofed one) goes before flows seen again, and among those a
//! clock sweep evicts one not seen since the last sweep.

/// Flows per bucket: four 16-byte slots fill one cache line.
pub const FLOW_WAYS: usize = 4;

/// A slot's recency, in the low two bits of its `key` word.
const STATE: u64 = 3;
/// Recorded, not seen since.
const NEW: u64 = 0;
/// Seen again, but not since the last eviction sweep passed it.
const IDLE: u64 = 1;
/// Seen since the last sweep passed it.
const ACTIVE: u64 = 2;

/// One recorded flow; all zero when empty.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowSlot {
    /// The flow's hash, its low two bits replaced by the slot's recency.
    pub key: u64,
    /// The flow hash's low 32 bits (high half) and its backend id (low
    /// half; never 0 in a used slot).
    pub owner: u64,
}

/// Value of `FLOWS`: one bucket of flows.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowBucket {
    pub slots: [FlowSlot; FLOW_WAYS],
}

/// Buckets that hold at least `flows` flows.
pub const fn flow_buckets(flows: u32) -> u32 {
    flows.div_ceil(FLOW_WAYS as u32)
}

/// The flows a table asked to hold `flows` holds: whole buckets, so
/// `flows` rounded up to a multiple of `FLOW_WAYS` (down, at the very top
/// of the range).
pub const fn flow_capacity(flows: u32) -> u32 {
    let rounded = flow_buckets(flows) as u64 * FLOW_WAYS as u64;
    if rounded > u32::MAX as u64 {
        u32::MAX / FLOW_WAYS as u32 * FLOW_WAYS as u32
    } else {
        rounded as u32
    }
}

/// The bucket, of `buckets`, that flow `hash` lives in (from the hash's
/// high half; a multiply instead of a division).
#[inline(always)]
pub fn flow_bucket(hash: u64, buckets: u32) -> u32 {
    (((hash >> 32) * buckets as u64) >> 32) as u32
}

#[inline(always)]
fn owner_of(hash: u64, backend: u32) -> u64 {
    (hash << 32) | backend as u64
}

/// Whether a slot's two words, as read, name flow `hash`.
#[inline(always)]
fn names(key: u64, owner: u64, hash: u64) -> bool {
    key & !STATE == hash & !STATE && owner >> 32 == hash & 0xffff_ffff && owner as u32 != 0
}

impl FlowBucket {
    /// The way that holds flow `hash`, and its backend.
    #[inline(always)]
    pub fn find(&self, hash: u64) -> Option<(usize, u32)> {
        for way in 0..FLOW_WAYS {
            let slot = &self.slots[way];
            // One load per word: another CPU may be rewriting the slot.
            let key = unsafe { core::ptr::read_volatile(&slot.key) };
            let owner = unsafe { core::ptr::read_volatile(&slot.owner) };
            if names(key, owner, hash) {
                return Some((way, owner as u32));
            }
        }
        None
    }

    /// Notes that the flow in `way` was seen again. Written only when the
    /// state changes, so a busy flow does not dirty the line every packet.
    #[inline(always)]
    pub fn touch(&mut self, way: usize) {
        let key = self.slots[way].key;
        if key & STATE != ACTIVE {
            self.slots[way].key = (key & !STATE) | ACTIVE;
        }
    }

    /// Records flow `hash` on `backend` (not 0): in the way it already has,
    /// else an empty one, else in place of the flow `evict` picks.
    #[inline(always)]
    pub fn record(&mut self, hash: u64, backend: u32) {
        let way = self.free_way(hash);
        let slot = &mut self.slots[way];
        slot.key = (hash & !STATE) | NEW;
        slot.owner = owner_of(hash, backend);
    }

    #[inline(always)]
    fn free_way(&mut self, hash: u64) -> usize {
        let mut empty = FLOW_WAYS;
        for way in 0..FLOW_WAYS {
            let slot = &self.slots[way];
            if names(slot.key, slot.owner, hash) {
                return way;
            }
            if slot.owner == 0 && empty == FLOW_WAYS {
                empty = way;
            }
        }
        if empty < FLOW_WAYS {
            return empty;
        }
        self.evict(hash)
    }

    /// The way to reuse in a full bucket: a flow seen only once, else the
    /// first flow a clock sweep finds not seen since it last passed (the
    /// sweep marks the ones it passes). The sweep starts at a way the new
    /// flow's hash picks, so CPUs inserting at once spread out.
    #[inline(always)]
    fn evict(&mut self, hash: u64) -> usize {
        let start = (hash >> 8) as usize;
        for i in 0..FLOW_WAYS {
            let way = (start + i) % FLOW_WAYS;
            if self.slots[way].key & STATE == NEW {
                return way;
            }
        }
        // Two laps at most: the first leaves every way idle.
        for i in 0..2 * FLOW_WAYS {
            let way = (start + i) % FLOW_WAYS;
            let key = self.slots[way].key;
            if key & STATE != ACTIVE {
                return way;
            }
            self.slots[way].key = (key & !STATE) | IDLE;
        }
        start % FLOW_WAYS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hashes that share a bucket index but differ elsewhere.
    fn hash(n: u64) -> u64 {
        0x1234_5678_0000_0000 | (n << 12) | 0x0ab4
    }

    #[test]
    fn a_recorded_flow_is_found_with_its_backend_and_no_other_is() {
        let mut b = FlowBucket::default();
        assert_eq!(b.find(hash(1)), None, "an empty bucket holds nothing");
        b.record(hash(1), 7);
        b.record(hash(2), 9);
        assert_eq!(b.find(hash(1)).map(|(_, id)| id), Some(7));
        assert_eq!(b.find(hash(2)).map(|(_, id)| id), Some(9));
        assert_eq!(b.find(hash(3)), None);
        // The owner word holds the hash's low bits, state bits included.
        assert_eq!(b.find(hash(1) ^ 2), None);
        // Recording a flow again replaces its backend in place.
        b.record(hash(1), 8);
        assert_eq!(b.find(hash(1)).map(|(_, id)| id), Some(8));
        assert_eq!(b.slots.iter().filter(|s| s.owner != 0).count(), 2);
    }

    #[test]
    fn a_slot_caught_half_rewritten_matches_neither_flow() {
        let mut b = FlowBucket::default();
        b.record(hash(1), 7);
        let old = b.slots[0];
        b.slots[0] = FlowSlot::default();
        b.record(hash(2), 9);
        let new = b.slots[0];
        for torn in [FlowSlot { key: old.key, owner: new.owner }, FlowSlot { key: new.key, owner: old.owner }] {
            let b = FlowBucket { slots: [torn, FlowSlot::default(), FlowSlot::default(), FlowSlot::default()] };
            assert_eq!(b.find(hash(1)), None, "{torn:?}");
            assert_eq!(b.find(hash(2)), None, "{torn:?}");
        }
    }

    #[test]
    fn flows_seen_once_are_evicted_before_flows_seen_again() {
        let mut b = FlowBucket::default();
        for n in 0..FLOW_WAYS as u64 {
            b.record(hash(n), n as u32 + 1);
        }
        // Flow 0 is established: seen again after its first packet.
        let (way, _) = b.find(hash(0)).unwrap();
        b.touch(way);
        // A flood of one-packet flows churns the other ways only.
        for n in 100..1_100 {
            b.record(hash(n), 1);
            assert!(b.find(hash(0)).is_some(), "the established flow was evicted by flood flow {n}");
        }
    }

    #[test]
    fn a_bucket_of_established_flows_evicts_the_one_idle_longest() {
        let mut b = FlowBucket::default();
        for n in 0..FLOW_WAYS as u64 {
            b.record(hash(n), n as u32 + 1);
            let (way, _) = b.find(hash(n)).unwrap();
            b.touch(way);
        }
        // A new flow sweeps every way to idle and takes one.
        b.record(hash(10), 11);
        assert!(b.find(hash(10)).is_some());
        // The survivors keep being seen; flow 11 then evicts the seen-once
        // flow 10, then the next new flow an idle one: never a seen flow.
        let survivors: Vec<u64> = (0..FLOW_WAYS as u64).filter(|&n| b.find(hash(n)).is_some()).collect();
        assert_eq!(survivors.len(), FLOW_WAYS - 1);
        for &n in &survivors {
            let (way, _) = b.find(hash(n)).unwrap();
            b.touch(way);
        }
        b.record(hash(11), 12);
        assert!(b.find(hash(10)).is_none() && b.find(hash(11)).is_some(), "the seen-once flow goes first");
        assert!(survivors.iter().all(|&n| b.find(hash(n)).is_some()));
    }

    #[test]
    fn buckets_cover_the_table_evenly() {
        let buckets = 1_000u32;
        let mut counts = vec![0u32; buckets as usize];
        let mut h = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..100_000 {
            h = h.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            counts[flow_bucket(h, buckets) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| (50..150).contains(&c)), "{:?}", &counts[..20]);
        assert_eq!(flow_buckets(4_096), 1_024);
        assert_eq!(flow_buckets(4_097), 1_025);
        assert_eq!((flow_capacity(4_096), flow_capacity(4_097), flow_capacity(1)), (4_096, 4_100, 4));
        assert_eq!(flow_capacity(u32::MAX), u32::MAX - 3);
        assert_eq!(core::mem::size_of::<FlowBucket>(), 64);
    }
}
