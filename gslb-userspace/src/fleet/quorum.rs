//! Health by quorum: every live edge publishes its own verdict per backend;
//! the fleet's verdict is what a quorum of them sees. Every edge computes it
//! from the same published verdicts, so every edge builds the same tables.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::keys::Verdicts;
use crate::health::Health;

/// The fleet's verdict on one backend, and the votes behind it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetVerdict {
    pub health: Health,
    /// Live edges that probe the backend.
    pub voters: u32,
    /// Of them, those that see it down, and failing (suspect or down).
    pub down: u32,
    pub failing: u32,
    /// Votes needed to take it out: `fleet.quorum` (or a majority of the
    /// voters), never more than the voters.
    pub needed: u32,
}

/// The fleet's verdicts from each live edge's, with `quorum` down-votes
/// needed (`None`: a majority of the edges that probe the backend).
pub fn fleet_verdicts<'a>(
    published: impl IntoIterator<Item = &'a Verdicts>,
    quorum: Option<u32>,
) -> BTreeMap<IpAddr, FleetVerdict> {
    let mut tally: BTreeMap<IpAddr, (u32, u32, u32)> = BTreeMap::new();
    for verdicts in published {
        for (backend, health) in verdicts {
            let votes = tally.entry(*backend).or_default();
            votes.0 += 1;
            votes.1 += (*health == Health::Down) as u32;
            votes.2 += (*health != Health::Up) as u32;
        }
    }
    tally
        .into_iter()
        .map(|(backend, (voters, down, failing))| {
            let needed = quorum.unwrap_or(voters / 2 + 1).min(voters);
            // The panic cap counts failing backends; a quorum of failing
            // votes makes it count on every edge alike.
            let health = if down >= needed {
                Health::Down
            } else if failing >= needed {
                Health::Suspect
            } else {
                Health::Up
            };
            (backend, FleetVerdict { health, voters, down, failing, needed })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdicts(list: &[(&str, Health)]) -> Verdicts {
        list.iter().map(|(a, h)| (a.parse().unwrap(), *h)).collect()
    }

    #[test]
    fn a_majority_takes_a_backend_out() {
        let b = "10.0.0.1";
        let one_of_two = [verdicts(&[(b, Health::Down)]), verdicts(&[(b, Health::Up)])];
        let v = fleet_verdicts(&one_of_two, None)[&b.parse().unwrap()];
        assert_eq!((v.health, v.voters, v.needed), (Health::Up, 2, 2), "one edge's view is not the fleet's");
        let two_of_three =
            [verdicts(&[(b, Health::Down)]), verdicts(&[(b, Health::Down)]), verdicts(&[(b, Health::Up)])];
        assert_eq!(fleet_verdicts(&two_of_three, None)[&b.parse().unwrap()].health, Health::Down);
        let alone = [verdicts(&[(b, Health::Down)])];
        assert_eq!(fleet_verdicts(&alone, None)[&b.parse().unwrap()].health, Health::Down, "a lone edge decides");
    }

    #[test]
    fn configured_quorum_is_capped_by_the_voters() {
        let b = "10.0.0.1";
        let one_of_two = [verdicts(&[(b, Health::Down)]), verdicts(&[(b, Health::Up)])];
        assert_eq!(fleet_verdicts(&one_of_two, Some(1))[&b.parse().unwrap()].health, Health::Down);
        let alone = [verdicts(&[(b, Health::Down)])];
        let v = fleet_verdicts(&alone, Some(3))[&b.parse().unwrap()];
        assert_eq!((v.health, v.needed), (Health::Down, 1));
    }

    #[test]
    fn failing_votes_count_for_the_panic_cap() {
        let b = "10.0.0.1";
        let mixed = [verdicts(&[(b, Health::Suspect)]), verdicts(&[(b, Health::Down)]), verdicts(&[(b, Health::Up)])];
        assert_eq!(fleet_verdicts(&mixed, None)[&b.parse().unwrap()].health, Health::Suspect);
    }
}
