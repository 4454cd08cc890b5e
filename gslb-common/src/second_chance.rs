//! Second chance: what the edge remembers about each table slot's previous
//! owners, and the hop list it sends them in, so a backend that does not
//! own a mid-flow connection can hand it on to one that may.
//!
//! The hop list rides in GUE (draft-ietf-intarea-gue, variant 0) as private
//! data: outer IP, UDP (source port from the flow hash, so fabrics spread
//! the flows; checksum zero, as tunnels may), the 4-byte GUE header, then
//! the hop list:
//!
//! ```text
//!  0       1       2       3
//! +-------+-------+-------+-------+
//! |0 0 0 hlen     | proto | flags 0       |  GUE: hlen = private words
//! +-------+-------+-------+-------+
//! | type 0x4753   | count | next  |  hop list header
//! +-------+-------+-------+-------+
//! | hop 0 (4 or 16 bytes, the outer family)  ...
//! | hop 1                                    ...
//! +-------------------------------+
//! | the inner packet (proto: 4 IPv4, 41 IPv6)
//! ```
//!
//! The list always has room for `MAX_HOPS` addresses (unused ones are zero),
//! so its size depends only on the outer family. `count` addresses are
//! valid; `next` is the index of the next one to try.

/// Previous owners remembered per table slot, and hops in a hop list.
pub const MAX_HOPS: usize = 2;
/// The UDP port hop-list packets are sent to, unless configured otherwise.
pub const DEFAULT_GUE_PORT: u16 = 6080;
/// The hop list's private-data type ("GS").
pub const HOP_LIST_TYPE: u16 = 0x4753;
/// UDP header.
pub const UDP_LEN: usize = 8;
/// GUE header.
pub const GUE_LEN: usize = 4;
/// Hop list header (type, count, next).
pub const HOP_LIST_HEADER_LEN: usize = 4;
/// Where `count` and `next` sit in the hop list header.
pub const HOP_LIST_COUNT: usize = 2;
pub const HOP_LIST_NEXT: usize = 3;

/// Bytes from the end of the outer IP header to the inner packet: UDP, GUE
/// and the hop list, for an outer IPv6 (`v6`) or IPv4 header.
pub const fn hop_list_encap_len(v6: bool) -> usize {
    UDP_LEN + GUE_LEN + hop_list_len(v6)
}

/// The hop list (GUE private data): header and `MAX_HOPS` addresses.
pub const fn hop_list_len(v6: bool) -> usize {
    HOP_LIST_HEADER_LEN + MAX_HOPS * if v6 { 16 } else { 4 }
}

/// The first GUE byte: version 0, no control flag, the private data's
/// length in 32-bit words.
pub const fn gue_first_byte(v6: bool) -> u8 {
    (hop_list_len(v6) / 4) as u8
}

/// The outer UDP source port for a flow: from its hash, in the ephemeral
/// range, so the fabric's ECMP hashes flows apart and keeps each together.
#[inline(always)]
pub fn gue_source_port(flow_hash: u64) -> u16 {
    0xc000 | ((flow_hash >> 16) as u16 & 0x3fff)
}

/// `Backend::flags`: the backend's `decap` understands hop lists (set from
/// the config, never guessed).
pub const BACKEND_SECOND_CHANCE: u32 = 2;

/// A flow table entry's backend id has this bit set when the edge first
/// saw the flow mid-connection: its packets carry a hop list.
pub const FLOW_MID_FLOW: u32 = 1 << 31;

/// Value of `OWNER_HISTORY`, indexed like one generation of a table
/// (`table_id * table_size + slot`): the slot's last `MAX_HOPS` distinct
/// previous owners, most recent first, and when each lost the slot
/// (CLOCK_BOOTTIME seconds). An owner id of 0 is an empty entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotHistory {
    pub owners: [u32; MAX_HOPS],
    pub superseded: [u32; MAX_HOPS],
}

impl SlotHistory {
    /// Notes that the slot passed from `old` to `new` at `now`: `old`
    /// becomes the most recent previous owner. `new` is the owner now, so
    /// it is no previous owner; a slot whose owner did not change keeps its
    /// history.
    pub fn superseded(&mut self, old: u32, new: u32, now: u32) {
        if old == new || old == 0 {
            return;
        }
        let mut kept = SlotHistory { owners: [old, 0], superseded: [now, 0] };
        let mut n = 1;
        for i in 0..MAX_HOPS {
            let owner = self.owners[i];
            if n < MAX_HOPS && owner != 0 && owner != old && owner != new {
                kept.owners[n] = owner;
                kept.superseded[n] = self.superseded[i];
                n += 1;
            }
        }
        *self = kept;
    }

    /// The previous owners still within `window` seconds of losing the
    /// slot at `now`, other than `current`, most recent first (0: none).
    #[inline(always)]
    pub fn candidates(&self, current: u32, now: u32, window: u32) -> [u32; MAX_HOPS] {
        let mut out = [0u32; MAX_HOPS];
        let mut n = 0;
        for i in 0..MAX_HOPS {
            let owner = self.owners[i];
            if owner != 0 && owner != current && now.wrapping_sub(self.superseded[i]) < window {
                out[n] = owner;
                n += 1;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_keeps_the_last_distinct_previous_owners() {
        let mut h = SlotHistory::default();
        h.superseded(5, 5, 10);
        assert_eq!(h, SlotHistory::default(), "an unchanged slot adds nothing");
        h.superseded(0, 5, 10);
        assert_eq!(h, SlotHistory::default(), "an empty slot was nobody's");
        h.superseded(1, 2, 100);
        assert_eq!(h.owners, [1, 0]);
        h.superseded(2, 3, 200);
        assert_eq!((h.owners, h.superseded), ([2, 1], [200, 100]));
        // Back to 1: it owns the slot again, so only 3 and 2 came before.
        h.superseded(3, 1, 300);
        assert_eq!((h.owners, h.superseded), ([3, 2], [300, 200]));
        // 3 again: it is the most recent, not listed twice.
        h.superseded(1, 3, 400);
        assert_eq!((h.owners, h.superseded), ([1, 2], [400, 200]));
    }

    #[test]
    fn candidates_are_recent_and_not_the_current_owner() {
        let h = SlotHistory { owners: [7, 9], superseded: [1_000, 400] };
        assert_eq!(h.candidates(3, 1_100, 3_600), [7, 9]);
        assert_eq!(h.candidates(7, 1_100, 3_600), [9, 0], "the current owner is no previous owner");
        assert_eq!(h.candidates(3, 1_100, 500), [7, 0], "9 lost the slot 700 s ago, past the window");
        assert_eq!(h.candidates(3, 1_100, 0), [0, 0], "a zero window turns second chance off");
        assert_eq!(SlotHistory::default().candidates(3, 5, 100), [0, 0]);
    }

    #[test]
    fn the_hop_list_has_a_fixed_size_per_family() {
        assert_eq!(hop_list_encap_len(false), 8 + 4 + 4 + 8);
        assert_eq!(hop_list_encap_len(true), 8 + 4 + 4 + 32);
        assert_eq!(gue_first_byte(false), 3);
        assert_eq!(gue_first_byte(true), 9);
        assert!(gue_source_port(u64::MAX) >= 0xc000 && gue_source_port(0) == 0xc000);
        assert_eq!(core::mem::size_of::<SlotHistory>(), 16);
    }
}
