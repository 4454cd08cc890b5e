//! `gslb decap`'s counters as OpenMetrics text, for its optional metrics
//! endpoint: what it stripped, and what became of hop-list packets.

use prometheus_client::registry::Registry;

use gslb_common::DecapStats;

use super::metrics::{counter, counter_family, set_counter, text};

/// The counters, summed over CPUs, as OpenMetrics text.
pub fn render(stats: &DecapStats) -> String {
    let mut registry = Registry::default();
    let r = &mut registry;
    counter(r, "gslb_decap_received", "Packets decap saw", stats.received);
    counter(r, "gslb_decap_decapsulated", "Tunnel packets stripped and delivered", stats.decapsulated);
    counter(r, "gslb_decap_errors", "Tunnel packets for this host that could not be stripped", stats.errors);
    let outcomes = counter_family(
        r,
        "gslb_decap_hop_list_packets",
        "Hop-list (second chance) packets by outcome: delivered (owned here, a SYN or a SYN cookie), forwarded \
         (to the next hop), last_resort (delivered with no hop left, or unroutable), unroutable (the next hop had \
         no route or neighbour), refused (not from a configured edge: passed untouched), malformed (dropped)",
    );
    for (outcome, value) in outcome_counts(stats) {
        set_counter(&outcomes, vec![("outcome", outcome.to_string())], value);
    }
    text(&registry)
}

/// The hop-list counters by outcome name.
pub fn outcome_counts(stats: &DecapStats) -> [(&'static str, u64); 6] {
    [
        ("delivered", stats.hop_list_delivered),
        ("forwarded", stats.hop_list_forwarded),
        ("last_resort", stats.hop_list_last_resort),
        ("unroutable", stats.hop_list_unroutable),
        ("refused", stats.hop_list_refused),
        ("malformed", stats.hop_list_malformed),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_is_a_labelled_counter() {
        let stats = DecapStats { received: 9, hop_list_forwarded: 3, hop_list_refused: 1, ..DecapStats::default() };
        let text = render(&stats);
        assert!(text.contains("gslb_decap_received_total 9"), "{text}");
        assert!(text.contains("gslb_decap_hop_list_packets_total{outcome=\"forwarded\"} 3"), "{text}");
        assert!(text.contains("gslb_decap_hop_list_packets_total{outcome=\"refused\"} 1"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }
}
