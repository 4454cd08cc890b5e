//! Building a weighted Maglev lookup table (userspace only).
//!
//! Each backend walks its own permutation of the table's slots, derived from
//! its address, and claims the next free slot on its turn. Turns are handed
//! out in proportion to weight, and each backend stops at its exact share of
//! the table (largest-remainder rounding), so shares match weights to within
//! one slot. The result depends only on the set of (address, weight, id):
//! not on input order, so every edge builds the same table.

use alloc::vec;
use alloc::vec::Vec;

use crate::{backend_hashes, Addr16, NO_BACKEND};

/// One backend as the table builder sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaglevBackend {
    /// Stored in the table's slots.
    pub id: u32,
    /// Seeds the backend's permutation.
    pub addr: Addr16,
    pub weight: u32,
}

/// Whether `n` can serve as a table size (a prime, as Maglev needs).
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2u64;
    while d * d <= n as u64 {
        if (n as u64).is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

/// Slots each backend owns: proportional to weight, rounded by largest
/// remainder (ties to the earlier backend), summing to `size` exactly.
fn quotas(backends: &[MaglevBackend], size: u32) -> Vec<u32> {
    let total: u64 = backends.iter().map(|b| b.weight as u64).sum();
    let exact: Vec<(u64, u64)> = backends
        .iter()
        .map(|b| {
            let p = size as u64 * b.weight as u64;
            (p / total, p % total)
        })
        .collect();
    let mut quotas: Vec<u32> = exact.iter().map(|&(q, _)| q as u32).collect();
    let short = size - quotas.iter().sum::<u32>();
    let mut by_remainder: Vec<usize> = (0..backends.len()).collect();
    by_remainder.sort_by(|&a, &b| exact[b].1.cmp(&exact[a].1).then(a.cmp(&b)));
    for &i in by_remainder.iter().take(short as usize) {
        quotas[i] += 1;
    }
    quotas
}

/// Builds a table of `size` slots (a prime larger than the number of
/// backends). Backends with weight 0 get no slots; with none left every
/// slot is `NO_BACKEND`.
pub fn build_table(backends: &[MaglevBackend], size: u32) -> Vec<u32> {
    build(backends, size, tail_threshold(size))
}

/// `build_table`, looking through the free slots rather than walking once at
/// most `tail_at` are left (a parameter so the tests can try both ways).
fn build(backends: &[MaglevBackend], size: u32, tail_at: u32) -> Vec<u32> {
    assert!(is_prime(size), "Maglev table size {size} is not prime");
    let mut live: Vec<MaglevBackend> = backends.iter().copied().filter(|b| b.weight > 0).collect();
    if live.is_empty() {
        return vec![NO_BACKEND; size as usize];
    }
    assert!((live.len() as u32) < size, "more backends than table slots");
    live.sort_by(|a, b| a.addr.cmp(&b.addr).then(a.id.cmp(&b.id)));

    let quotas = quotas(&live, size);
    let max_weight = live.iter().map(|b| b.weight as u64).max().unwrap_or(1);
    let m = size as u64;
    let mut walks: Vec<Walk> = live
        .iter()
        .zip(&quotas)
        .map(|(b, &left)| {
            let (h1, h2) = backend_hashes(&b.addr);
            Walk { id: b.id, weight: b.weight as u64, pos: h1 % m, skip: h2 % (m - 1) + 1, inverse: 0, credit: 0, left }
        })
        .collect();

    // The table itself tells a free slot, so no separate "taken" array.
    let free = free_marker(&live);
    let mut table = vec![free; size as usize];
    let mut free_left = size;
    // Once few slots are free, walking a permutation to the next one takes
    // about size / free_left steps; instead look through the list of free
    // slots for the one the walk would reach first (same slot, fewer steps).
    let mut tail: Option<Vec<u32>> = None;
    while free_left > 0 {
        for w in walks.iter_mut() {
            w.credit += w.weight;
            while w.credit >= max_weight && w.left > 0 {
                w.credit -= max_weight;
                if tail.is_none() && free_left <= tail_at {
                    tail = Some((0..size).filter(|&s| table[s as usize] == free).collect());
                }
                let slot = match &mut tail {
                    None => w.next_free(&table, free, m),
                    Some(free_slots) => w.first_reached(free_slots, m),
                };
                table[slot] = w.id;
                w.left -= 1;
                free_left -= 1;
            }
        }
    }
    table
}

/// A backend's progress along its permutation `offset + k * skip (mod m)`.
struct Walk {
    id: u32,
    weight: u64,
    /// The next slot of the permutation to look at.
    pos: u64,
    skip: u64,
    /// `skip`'s inverse mod m, computed when first needed (0 until then).
    inverse: u64,
    credit: u64,
    /// Slots still to claim.
    left: u32,
}

impl Walk {
    fn advance(pos: u64, skip: u64, m: u64) -> u64 {
        // pos, skip < m, so one subtraction replaces `% m`.
        let next = pos + skip;
        if next >= m {
            next - m
        } else {
            next
        }
    }

    /// Claims the next free slot of the permutation, walking to it.
    fn next_free(&mut self, table: &[u32], free: u32, m: u64) -> usize {
        loop {
            let slot = self.pos as usize;
            self.pos = Self::advance(self.pos, self.skip, m);
            if table[slot] == free {
                return slot;
            }
        }
    }

    /// Claims, and removes from `free_slots`, the free slot the walk would
    /// reach first: every slot it already passed is taken, and the walk never
    /// wraps (a walk with slots left to claim always finds one), so this is
    /// the slot `next_free` would return.
    fn first_reached(&mut self, free_slots: &mut Vec<u32>, m: u64) -> usize {
        if self.inverse == 0 {
            self.inverse = inverse_mod(self.skip, m);
        }
        // Steps from pos to slot s: (s - pos) / skip (mod m).
        let steps = |s: u64| Self::advance(s, m - self.pos, m) * self.inverse % m;
        let (i, _) = free_slots.iter().enumerate().min_by_key(|&(_, &s)| steps(s as u64)).expect("a free slot");
        let slot = free_slots.swap_remove(i) as u64;
        self.pos = Self::advance(slot, self.skip, m);
        slot as usize
    }
}

/// Free slots left when `build_table` stops walking and looks through them
/// instead: walking costs about size / free steps per slot, looking costs
/// free, so they cross near the square root of size.
fn tail_threshold(size: u32) -> u32 {
    let mut t = 1u32;
    while (t as u64 * t as u64) < size as u64 {
        t += 1;
    }
    t
}

/// `x`'s inverse mod prime `m` (0 < x < m), by the extended Euclidean algorithm.
fn inverse_mod(x: u64, m: u64) -> u64 {
    // Invariant: r_i == t_i * x (mod m).
    let (mut r0, mut r1) = (m as i64, x as i64);
    let (mut t0, mut t1) = (0i64, 1i64);
    while r1 != 0 {
        let q = r0 / r1;
        (r0, r1) = (r1, r0 - q * r1);
        (t0, t1) = (t1, t0 - q * t1);
    }
    // r0 == gcd == 1
    t0.rem_euclid(m as i64) as u64
}

/// A value no live backend has as its id, to mark free slots while building:
/// `NO_BACKEND` unless some backend uses it (ids are not checked here).
fn free_marker(live: &[MaglevBackend]) -> u32 {
    if !live.iter().any(|b| b.id == NO_BACKEND) {
        return NO_BACKEND;
    }
    let mut ids: Vec<u32> = live.iter().map(|b| b.id).collect();
    ids.sort_unstable();
    ids.dedup();
    // ids starts at 0; the first gap is unused. There are fewer ids than
    // u32 values (fewer backends than slots), so ids.len() fits.
    ids.iter().zip(0u32..).find(|&(&id, v)| id != v).map_or(ids.len() as u32, |(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr_from_v4;
    use alloc::collections::BTreeMap;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    const M: u32 = 65_537;

    /// The builder as it was before it was made faster, kept to prove the
    /// fast one gives the same tables.
    fn reference_build_table(backends: &[MaglevBackend], size: u32) -> Vec<u32> {
        assert!(is_prime(size), "Maglev table size {size} is not prime");
        let mut live: Vec<MaglevBackend> = backends.iter().copied().filter(|b| b.weight > 0).collect();
        let mut table = vec![NO_BACKEND; size as usize];
        if live.is_empty() {
            return table;
        }
        assert!((live.len() as u32) < size, "more backends than table slots");
        live.sort_by(|a, b| a.addr.cmp(&b.addr).then(a.id.cmp(&b.id)));

        let quotas = quotas(&live, size);
        let max_weight = live.iter().map(|b| b.weight as u64).max().unwrap_or(1);
        struct Walk {
            offset: u64,
            skip: u64,
            step: u64,
            credit: u64,
            left: u32,
        }
        let m = size as u64;
        let mut walks: Vec<Walk> = live
            .iter()
            .zip(&quotas)
            .map(|(b, &left)| {
                let (h1, h2) = backend_hashes(&b.addr);
                Walk { offset: h1 % m, skip: h2 % (m - 1) + 1, step: 0, credit: 0, left }
            })
            .collect();

        let mut filled = 0u32;
        let mut taken = vec![false; size as usize];
        while filled < size {
            for (b, w) in live.iter().zip(walks.iter_mut()) {
                w.credit += b.weight as u64;
                while w.credit >= max_weight && w.left > 0 {
                    w.credit -= max_weight;
                    loop {
                        let slot = ((w.offset + w.step * w.skip) % m) as usize;
                        w.step += 1;
                        if !taken[slot] {
                            taken[slot] = true;
                            table[slot] = b.id;
                            break;
                        }
                    }
                    w.left -= 1;
                    filled += 1;
                }
            }
        }
        table
    }

    fn backend(i: u32, weight: u32) -> MaglevBackend {
        MaglevBackend { id: i + 1, addr: addr_from_v4([198, 51, 100, i as u8]), weight }
    }

    fn counts(table: &[u32]) -> BTreeMap<u32, u32> {
        let mut c = BTreeMap::new();
        for &id in table {
            *c.entry(id).or_insert(0) += 1;
        }
        c
    }

    #[test]
    fn shares_follow_weights_within_one_percent() {
        let backends: Vec<_> =
            [100, 50, 25, 10, 1, 300, 77].iter().enumerate().map(|(i, &w)| backend(i as u32, w)).collect();
        let table = build_table(&backends, M);
        let total: u32 = backends.iter().map(|b| b.weight).sum();
        let c = counts(&table);
        for b in &backends {
            let want = M as f64 * b.weight as f64 / total as f64;
            let got = c[&b.id] as f64;
            assert!((got - want).abs() <= want * 0.01 + 1.0, "backend {} got {got}, want {want}", b.id);
        }
        assert!(!c.contains_key(&NO_BACKEND));
    }

    #[test]
    fn removing_a_backend_moves_only_its_slots_and_under_one_percent_more() {
        for n in [3u32, 5, 10, 20] {
            let all: Vec<_> = (0..n).map(|i| backend(i, 100 + 10 * i)).collect();
            let before = build_table(&all, M);
            for gone in 0..n {
                let rest: Vec<_> = all.iter().copied().filter(|b| b.id != gone + 1).collect();
                let after = build_table(&rest, M);
                let others_moved = before.iter().zip(&after).filter(|(b, a)| **b != gone + 1 && b != a).count();
                let others = before.iter().filter(|&&b| b != gone + 1).count();
                let share = others_moved as f64 / others as f64;
                assert!(share <= 0.01, "n={n}, removing {gone}: {:.2}% of other slots moved", share * 100.0);
            }
        }
    }

    #[test]
    fn same_input_same_table_whatever_the_order() {
        let backends: Vec<_> = (0..8).map(|i| backend(i, 10 + i)).collect();
        let mut reversed = backends.clone();
        reversed.reverse();
        assert_eq!(build_table(&backends, M), build_table(&backends, M));
        assert_eq!(build_table(&backends, M), build_table(&reversed, M));
    }

    #[test]
    fn zero_weight_and_empty_pools() {
        assert!(build_table(&[], 13).iter().all(|&s| s == NO_BACKEND));
        let t = build_table(&[backend(0, 0), backend(1, 5)], 13);
        assert!(t.iter().all(|&s| s == 2));
    }

    /// Backends as pools may come: IPv4 and IPv6 addresses (a few shared),
    /// ids 1..=n with a few 0 or repeated, weights in one of several styles
    /// from all equal to anything up to u32::MAX, often with zeros.
    fn random_backends(rng: &mut StdRng, n: usize) -> Vec<MaglevBackend> {
        let style = rng.gen_range(0..5);
        (0..n as u32)
            .map(|i| {
                let addr = match rng.gen_range(0..20) {
                    0 => addr_from_v4([10, 0, 0, rng.gen_range(0..4)]),
                    1..=10 => addr_from_v4(rng.gen()),
                    _ => rng.gen(),
                };
                let id = match rng.gen_range(0..30) {
                    0 => NO_BACKEND,
                    1 => rng.gen_range(1..=n as u32),
                    _ => i + 1,
                };
                let weight = match style {
                    0 => 100,
                    1 => rng.gen_range(0..=3),
                    2 => rng.gen_range(0..=1_000),
                    3 => [0, 1, 7, 1_000_000, u32::MAX][rng.gen_range(0..5)],
                    _ => rng.gen(),
                };
                MaglevBackend { id, addr, weight }
            })
            .collect()
    }

    #[test]
    fn same_tables_as_the_reference_builder() {
        let mut rng = StdRng::seed_from_u64(0x6d61_676c_6576);
        for (size, cases) in [(13u32, 300), (251, 200), (4_099, 60), (65_537, 12)] {
            let most = (size - 1).min(1_200) as usize;
            for case in 0..cases {
                let n = match case {
                    0..=3 => [0, 1, 2, most][case],
                    _ => rng.gen_range(0..=most),
                };
                let backends = random_backends(&mut rng, n);
                let want = reference_build_table(&backends, size);
                assert_eq!(build_table(&backends, size), want, "size {size}, {backends:?}");
                // Walking all the way, and looking through the free slots from the start.
                if size <= 4_099 {
                    assert_eq!(build(&backends, size, 0), want, "size {size}, walking, {backends:?}");
                }
                if size <= 251 {
                    assert_eq!(build(&backends, size, size), want, "size {size}, looking, {backends:?}");
                }
            }
        }
    }

    #[test]
    fn inverses() {
        for m in [2u64, 3, 13, 251, 65_537, 4_294_967_291] {
            for x in (1..m).step_by(((m / 1000) as usize).max(1)).chain([m - 1]) {
                assert_eq!(x as u128 * inverse_mod(x, m) as u128 % m as u128, 1, "{x} mod {m}");
            }
        }
    }

    #[test]
    fn primes() {
        assert!(is_prime(65_537) && is_prime(2) && is_prime(13));
        assert!(!is_prime(65_536) && !is_prime(1) && !is_prime(65_535));
    }
}
