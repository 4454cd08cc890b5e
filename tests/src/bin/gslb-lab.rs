//! `gslb-lab`: the namespace lab from the command line.
//!
//! - `gslb-lab demo`: build the lab, deploy gslb on it, drive traffic and
//!   show a live table until Ctrl-C (what `cargo xtask run` starts).
//! - `gslb-lab gslb ARGS...`: run the `gslb` command line itself; the lab
//!   starts agents and decap this way, so tests always use the `gslb` code
//!   this very build contains.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let result = match args.get(1).map(String::as_str) {
        Some("gslb") => gslb_userspace::cli::run(<gslb_userspace::cli::Cli as clap::Parser>::parse_from(&args[1..])),
        Some("demo") => gslb_tests::demo::run(&args[2..]),
        _ => {
            eprintln!("usage: gslb-lab demo [--seconds N] | gslb-lab gslb ARGS...");
            std::process::exit(2);
        }
    };
    if let Err(error) = result {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}
