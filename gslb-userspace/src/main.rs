//! `gslb`: the edge agent and its command line.
use std::net::IpAddr;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use gslb_userspace::dataplane::{Decap, Limits, Steer};

#[derive(Parser)]
#[command(name = "gslb", version, about = "XDP edge packet steerer for global server load balancing")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load `steer` and `decap` and run them through the kernel verifier,
    /// then exit: a quick check that this kernel accepts the programs.
    Verify,
    /// Attach `decap` to a backend interface and keep running until
    /// interrupted.
    Decap {
        #[arg(long)]
        iface: String,
        /// The backend's tunnel address.
        #[arg(long)]
        address: Vec<IpAddr>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Verify => {
            Steer::load(Limits::default())?;
            Decap::load()?;
            println!("steer and decap passed the verifier");
        }
        Command::Decap { iface, address } => {
            let mut decap = Decap::load()?;
            for a in address {
                decap.add_address(a)?;
            }
            let _link = decap
                .program()
                .attach(&iface, aya::programs::XdpMode::Default)
                .with_context(|| format!("attaching decap to {iface}"))?;
            println!("decap attached to {iface}; Ctrl-C to detach");
            let (tx, rx) = std::sync::mpsc::channel();
            ctrlc_wait(tx);
            let _ = rx.recv();
        }
    }
    Ok(())
}

/// Sends one message on `tx` when SIGINT or SIGTERM arrives.
fn ctrlc_wait(tx: std::sync::mpsc::Sender<()>) {
    std::thread::spawn(move || {
        let mut signals =
            signal_hook::iterator::Signals::new([signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM])
                .expect("installing signal handlers");
        signals.forever().next();
        let _ = tx.send(());
    });
}
