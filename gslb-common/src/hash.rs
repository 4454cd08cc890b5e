//! The flow hash and the Maglev slot lookup: one implementation, compiled
//! into the XDP program and into the agent, so both pick the same backend.

use crate::{Addr16, FlowKey, TABLE_GENERATIONS, VIP_FILTER_BITS_LOG2};

const SEED: u64 = 0x6a09_e667_f3bc_c908;
const MUL: u64 = 0x9e37_79b9_7f4a_7c15;

/// The murmur3 64-bit finaliser: every input bit affects every output bit.
#[inline(always)]
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[inline(always)]
fn absorb(h: u64, word: u64) -> u64 {
    (h ^ word).wrapping_mul(MUL).rotate_left(29)
}

#[inline(always)]
fn addr_words(a: &[u8; 16]) -> (u64, u64) {
    (
        u64::from_le_bytes([a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]]),
        u64::from_le_bytes([a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]]),
    )
}

/// Hash of the full 5-tuple.
#[inline(always)]
pub fn hash_five_tuple(k: &FlowKey) -> u32 {
    flow_hash64(k) as u32
}

/// The 64-bit hash of the full 5-tuple: the flow table's key, and (its low
/// 32 bits) the Maglev hash of a flow.
#[inline(always)]
pub fn flow_hash64(k: &FlowKey) -> u64 {
    hash_flow(&k.src, &k.dst, k.src_port, k.dst_port, k.proto)
}

/// `flow_hash64` of a flow's fields (no key built: the XDP stack is small).
#[inline(always)]
pub fn hash_flow(src: &Addr16, dst: &Addr16, src_port: u16, dst_port: u16, proto: u8) -> u64 {
    let (s0, s1) = addr_words(src);
    let (d0, d1) = addr_words(dst);
    let tail = (src_port as u64) | (dst_port as u64) << 16 | (proto as u64) << 32;
    let mut h = SEED;
    h = absorb(h, s0);
    h = absorb(h, s1);
    h = absorb(h, d0);
    h = absorb(h, d1);
    h = absorb(h, tail);
    fmix64(h)
}

/// Hash of the source address alone (source-ip affinity).
#[inline(always)]
pub fn hash_source(k: &FlowKey) -> u32 {
    hash_address(&k.src)
}

/// `hash_source` of an address.
#[inline(always)]
pub fn hash_address(src: &Addr16) -> u32 {
    let (s0, s1) = addr_words(src);
    fmix64(absorb(absorb(SEED, s0), s1)) as u32
}

/// The hash that selects a flow's backend.
#[inline(always)]
pub fn flow_hash(k: &FlowKey, source_ip_affinity: bool) -> u32 {
    if source_ip_affinity {
        hash_source(k)
    } else {
        hash_five_tuple(k)
    }
}

/// Where VIP address `addr` sits in `VIP_FILTER`: the word and its bit.
/// A multiplicative hash: its top bits depend on every address bit.
#[inline(always)]
pub fn vip_filter_bit(addr: &[u8; 16]) -> (u32, u64) {
    let (a0, a1) = addr_words(addr);
    let bit = ((a0 ^ a1).wrapping_mul(MUL) >> (64 - VIP_FILTER_BITS_LOG2)) as u32;
    (bit / 64, 1u64 << (bit % 64))
}

/// Index into the `MAGLEV` array of a flow's slot: the array holds, for each
/// table id, `TABLE_GENERATIONS` tables of `table_size` backend ids.
#[inline(always)]
pub fn maglev_index(table_id: u32, generation: u32, table_size: u32, hash: u32) -> u32 {
    (table_id * TABLE_GENERATIONS + (generation & 1)) * table_size + hash % table_size
}

/// Index into `OWNER_HISTORY` of a flow's slot: one entry per slot of each
/// table id (the history is not per generation).
#[inline(always)]
pub fn history_index(table_id: u32, table_size: u32, hash: u32) -> u32 {
    table_id * table_size + hash % table_size
}

/// Hash seeds of a backend's Maglev permutation (offset, skip), derived from
/// its address only, so every edge derives the same permutation.
#[inline(always)]
pub fn backend_hashes(addr: &[u8; 16]) -> (u64, u64) {
    let (a0, a1) = addr_words(addr);
    let h1 = fmix64(absorb(absorb(SEED ^ 0x1111, a0), a1));
    let h2 = fmix64(absorb(absorb(SEED ^ 0x2222, a1), a0));
    (h1, h2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(sp: u16) -> FlowKey {
        FlowKey { src: [1; 16], dst: [2; 16], src_port: sp, dst_port: 80, proto: 6, _pad: [0; 3] }
    }

    #[test]
    fn five_tuple_hash_depends_on_ports_source_hash_does_not() {
        assert_ne!(hash_five_tuple(&key(1000)), hash_five_tuple(&key(1001)));
        assert_eq!(hash_source(&key(1000)), hash_source(&key(1001)));
    }

    #[test]
    fn hash_spreads_evenly_over_a_prime_table() {
        let m = 65_537u32;
        let buckets = 16usize;
        let mut counts = [0u32; 16];
        for sp in 0..64_000u16 {
            counts[(hash_five_tuple(&key(sp)) % m) as usize * buckets / m as usize] += 1;
        }
        for c in counts {
            assert!((3_600..4_400).contains(&c), "uneven bucket: {counts:?}");
        }
    }

    #[test]
    fn vip_addresses_spread_over_the_filter() {
        let mut seen = alloc::collections::BTreeSet::new();
        for i in 0..512u32 {
            let (word, bit) = vip_filter_bit(&crate::addr_from_v4((0xcb00_7100 + i).to_be_bytes()));
            assert!(word < crate::VIP_FILTER_WORDS && bit.count_ones() == 1);
            seen.insert((word, bit));
        }
        // 512 addresses in 65,536 bits: a handful may share one.
        assert!(seen.len() >= 500, "{} distinct bits", seen.len());
        let v6 = vip_filter_bit(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10]);
        assert!(v6.0 < crate::VIP_FILTER_WORDS);
    }

    #[test]
    fn generations_never_overlap() {
        let m = 7;
        assert_eq!(maglev_index(0, 0, m, 6), 6);
        assert_eq!(maglev_index(0, 1, m, 0), 7);
        assert_eq!(maglev_index(1, 0, m, 13), 14 + 6);
    }
}
