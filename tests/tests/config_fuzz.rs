//! Config parsing under mutation: valid files (the documented example and
//! a small one) changed at random, byte by byte, line by line and value by
//! value. Whatever the text, parsing never panics and ends in either a
//! config the planner accepts or an error located in the file
//! (`FILE:LINE:COLUMN: reason`, the line inside the text).
//!
//! The run prints its seed; `GSLB_FUZZ_SEED=N` replays it.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use gslb_tests::scale::sized;
use gslb_userspace::{config, decide::plan};
use rand::{rngs::StdRng, seq::SliceRandom, Rng, SeedableRng};

const FILE: &str = "fuzz.toml";

const SMALL: &str = r#"[edge]
name = "edge-a"
interfaces = ["eth0", "eth1"]
tunnel_source_v4 = "192.0.2.10"
tunnel_source_v6 = "2001:db8::10"
max_flows = 100000
table_size = 251

[[vip]]
name = "web"
address = "203.0.113.10"
port = 80
protocol = "tcp"
pools = ["p", "q"]
[[vip.steer]]
client_prefix = "100.64.0.0/10"
pools = ["q"]

[[vip]]
name = "dns6"
address = "2001:db8:f::10"
port = 53
protocol = "udp"
pools = ["v6"]

[[pool]]
name = "p"
weight = 3
backends = [ { address = "198.51.100.1", weight = 2 }, { address = "198.51.100.2" } ]

[[pool]]
name = "q"
backends = [ { address = "198.51.100.3", monitor = { protocol = "tcp", port = 443 } } ]

[[pool]]
name = "v6"
backends = [ { address = "2001:db8:100::1" } ]
"#;

/// The first TOML block of `docs/configuration.md`.
fn documented_example() -> String {
    let doc = include_str!("../../docs/configuration.md");
    let start = doc.find("```toml\n").expect("the doc has a TOML example") + "```toml\n".len();
    let end = start + doc[start..].find("```").unwrap();
    doc[start..end].to_string()
}

/// Values that stress the checks: edges of ranges, wrong types, special
/// addresses, odd text.
const VALUES: &[&str] = &[
    "0",
    "-1",
    "1",
    "65535",
    "65536",
    "4294967296",
    "18446744073709551616",
    "1e309",
    "nan",
    "-0.0",
    "true",
    "\"\"",
    "\"0.0.0.0\"",
    "\"::\"",
    "\"255.255.255.255\"",
    "\"224.0.0.1\"",
    "\"ff02::1\"",
    "\"127.0.0.1\"",
    "\"::1\"",
    "\"::ffff:198.51.100.1\"",
    "\"203.0.113.10\"",
    "\"192.0.2.10\"",
    "\"198.51.100.1\"",
    "\"999.1.1.1\"",
    "\"10.0.0.0/33\"",
    "\"2001:db8::/129\"",
    "\"x\"",
    "\"é\u{0}\"",
    "[]",
    "[\"p\"]",
    "{}",
    "\"tcp\"",
    "\"udp\"",
    "\"icmp\"",
    "\"weighted\"",
    "\"failover\"",
    "\"native\"",
    "\"generic\"",
];
/// Characters for byte-level changes.
const CHARS: &[char] =
    &['"', '\'', '[', ']', '{', '}', '=', ',', '.', ':', '/', '#', '\n', ' ', '0', '9', '-', 'a', 'é', '\\'];

fn mutate(rng: &mut StdRng, text: &str) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    match rng.gen_range(0..7) {
        // Replace, insert or delete characters.
        0..=2 => {
            for _ in 0..rng.gen_range(1..4) {
                if chars.is_empty() {
                    break;
                }
                let at = rng.gen_range(0..chars.len());
                match rng.gen_range(0..3) {
                    0 => chars[at] = *CHARS.choose(rng).unwrap(),
                    1 => chars.insert(at, *CHARS.choose(rng).unwrap()),
                    _ => {
                        chars.remove(at);
                    }
                }
            }
            return chars.into_iter().collect();
        }
        // Delete, duplicate or swap lines.
        3 => {
            let at = rng.gen_range(0..lines.len());
            lines.remove(at);
        }
        4 => {
            let at = rng.gen_range(0..lines.len());
            let line = lines[at].clone();
            lines.insert(rng.gen_range(0..lines.len()), line);
        }
        5 => {
            let (a, b) = (rng.gen_range(0..lines.len()), rng.gen_range(0..lines.len()));
            lines.swap(a, b);
        }
        // Give a `key = value` line a stressing value.
        _ => {
            let candidates: Vec<usize> = (0..lines.len()).filter(|&i| lines[i].contains(" = ")).collect();
            if let Some(&at) = candidates.choose(rng) {
                let key = lines[at].split(" = ").next().unwrap().to_string();
                lines[at] = format!("{key} = {}", VALUES.choose(rng).unwrap());
            }
        }
    }
    lines.join("\n") + "\n"
}

/// The rule for one text: no panic; an error inside the text, or a config
/// the planner can build tables for.
fn judge(text: &str) -> Result<(), String> {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let parsed = config::parse(text, Path::new(FILE));
        parsed.map(|c| {
            let limits = c.edge.limits();
            plan::plan(&c, &Default::default(), limits.max_backends, 251, &Default::default()).map(|_| ())
        })
    }));
    match outcome {
        Err(_) => Err("parsing panicked".into()),
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(e))) => Err(format!("accepted, but the planner refused it: {e:#}")),
        Ok(Err(e)) => {
            let lines = text.lines().count().max(1);
            let shown = e.to_string();
            if e.line == 0 || e.line > lines + 1 || e.column == 0 {
                return Err(format!("error not located in the text ({lines} lines): {shown}"));
            }
            if !shown.starts_with(&format!("{FILE}:{}:{}: ", e.line, e.column)) || e.message.trim().is_empty() {
                return Err(format!("error without FILE:LINE:COLUMN and a reason: {shown:?}"));
            }
            Ok(())
        }
    }
}

#[test]
fn mutated_configs_give_a_located_error_or_a_valid_config() {
    let cases = sized(10_000, 100_000);
    let seed = gslb_tests::scale::fuzz_seed(&format!("config fuzz: {cases} cases"));
    let bases = [documented_example(), SMALL.to_string()];
    for base in &bases {
        judge(base).expect("the base configs are valid");
    }
    // Quiet the panic hook: a panic is reported as a failure below.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut accepted, mut refused) = (0u64, 0u64);
    let mut failure = None;
    for i in 0..cases {
        let mut text = bases[(i % 2) as usize].clone();
        // Sometimes several mutations on top of each other.
        let rounds = if rng.gen_bool(0.6) { 1 } else { rng.gen_range(2..=3) };
        for _ in 0..rounds {
            text = mutate(&mut rng, &text);
        }
        match judge(&text) {
            Ok(()) if config::parse(&text, Path::new(FILE)).is_ok() => accepted += 1,
            Ok(()) => refused += 1,
            Err(why) => {
                failure = Some((i, why, text));
                break;
            }
        }
    }
    std::panic::set_hook(hook);
    if let Some((i, why, text)) = failure {
        panic!("case {i} of seed {seed}: {why}\n--- text ---\n{text}");
    }
    println!("accepted {accepted}, refused with a located error {refused}");
    // Both outcomes must be common for the mutations to mean anything.
    assert!(accepted > cases / 50 && refused > cases / 2, "accepted {accepted}, refused {refused}");
}
