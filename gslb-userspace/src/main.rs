//! `gslb`: the edge agent and its command line (see `cli`).

fn main() {
    if let Err(error) = gslb_userspace::cli::main() {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}
