//! The N+1 capacity rule: whether the other pools can absorb the loss of
//! the busiest one (see docs/operations.md, capacity planning).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::config::{Config, Pool};

/// Whether N+1 holds for a VIP, and the sentence that says so.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    pub ok: bool,
    pub message: String,
}

/// The N+1 rule for a VIP at its current shares: run at the highest load
/// that keeps every pool within its `max_utilization`, lose the busiest
/// pool, and see whether the others can carry its share within their
/// capacity. Needs every pool in use to declare `capacity`.
pub fn capacity(config: &Config, weights: &BTreeMap<IpAddr, u64>) -> Option<Verdict> {
    let total: u64 = weights.values().sum();
    if total == 0 {
        return None;
    }
    // Each pool's share of new flows; an address in several pools counts
    // for the first.
    let mut shares: Vec<(&Pool, f64)> = Vec::new();
    let mut seen = BTreeSet::new();
    for pool in &config.pools {
        let weight: u64 =
            pool.backends.iter().filter(|b| seen.insert(b.address)).filter_map(|b| weights.get(&b.address)).sum();
        if weight > 0 {
            shares.push((pool, weight as f64 / total as f64));
        }
    }
    if shares.len() < 2 || shares.iter().any(|(p, _)| p.capacity.is_none()) {
        return None;
    }
    let peak = shares
        .iter()
        .map(|(p, share)| p.capacity.unwrap_or(0.0) * p.max_utilization / share)
        .fold(f64::INFINITY, f64::min);
    let (busiest, lost) = shares.iter().copied().fold((shares[0].0, 0.0), |m, (p, s)| if s > m.1 { (p, s) } else { m });
    let mut worst: Option<(String, f64)> = None;
    for (pool, share) in &shares {
        if pool.name == busiest.name {
            continue;
        }
        let load = peak * share / (1.0 - lost) / pool.capacity.unwrap_or(1.0);
        if worst.as_ref().is_none_or(|(_, w)| load > *w) {
            worst = Some((pool.name.clone(), load));
        }
    }
    let (pool, load) = worst?;
    let ok = load <= 1.0;
    let message = if ok {
        format!("N+1 holds: losing {} puts {} at {:.0}% of capacity at peak", busiest.name, pool, load * 100.0)
    } else {
        format!(
            "N+1 FAILS: losing {} would put {} at {:.0}% of capacity at peak; add capacity or lower max_utilization",
            busiest.name,
            pool,
            load * 100.0
        )
    };
    Some(Verdict { ok, message })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use crate::config::fixtures::EDGE;

    fn config_with(capacities: &str) -> Config {
        let text = format!(
            "{EDGE}\n[[vip]]\nname = \"web\"\naddress = \"203.0.113.1\"\nport = 80\nprotocol = \"tcp\"\npools = [\"a\", \"b\", \"c\"]\n{capacities}"
        );
        config::parse(&text, std::path::Path::new("t.toml")).unwrap()
    }

    fn weights(config: &Config) -> BTreeMap<IpAddr, u64> {
        config.effective_weights(&config.vips[0])
    }

    #[test]
    fn n_plus_one_holds_with_headroom_and_fails_without() {
        let pools = |utilization: f64| {
            ["a", "b", "c"]
                .iter()
                .enumerate()
                .map(|(i, name)| {
                    format!(
                        "[[pool]]\nname = \"{name}\"\ncapacity = 100\nmax_utilization = {utilization}\nbackends = [ {{ address = \"10.0.0.{}\" }} ]\n",
                        i + 1
                    )
                })
                .collect::<String>()
        };
        // Three equal pools at 75%: peak 225, and losing one puts 112.5 on
        // each survivor of capacity 100.
        let tight = config_with(&pools(0.75));
        let verdict = capacity(&tight, &weights(&tight)).unwrap();
        assert!(!verdict.ok && verdict.message.contains("112%"), "{}", verdict.message);
        // At 60%: peak 180, 90 on each survivor.
        let roomy = config_with(&pools(0.6));
        let verdict = capacity(&roomy, &weights(&roomy)).unwrap();
        assert!(verdict.ok && verdict.message.contains("90%"), "{}", verdict.message);
    }

    #[test]
    fn no_verdict_without_capacities() {
        let text = "[[pool]]\nname = \"a\"\nbackends = [ { address = \"10.0.0.1\" } ]\n[[pool]]\nname = \"b\"\nbackends = [ { address = \"10.0.0.2\" } ]\n[[pool]]\nname = \"c\"\nbackends = [ { address = \"10.0.0.3\" } ]\n";
        let config = config_with(text);
        assert!(capacity(&config, &weights(&config)).is_none());
    }
}
