//! Running an XDP program once through BPF_PROG_TEST_RUN.

use aya::programs::{TestRun, TestRunOptions, Xdp};

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

pub fn action_name(a: u32) -> &'static str {
    ["ABORTED", "DROP", "PASS", "TX", "REDIRECT"].get(a as usize).copied().unwrap_or("?")
}

/// What the program returned and the frame it left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub action: u32,
    pub frame: Vec<u8>,
}

/// Runs `prog` on `frame`. With `ingress`, the packet appears to arrive on
/// that interface (of the calling thread's namespace); otherwise on `lo`.
pub fn run_xdp(prog: &Xdp, frame: &[u8], ingress: Option<u32>) -> Outcome {
    let mut out = vec![0u8; frame.len() + 512];
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex,
    // rx_queue_index, egress_ifindex.
    let ctx: Vec<u8> =
        [0, frame.len() as u32, 0, ingress.unwrap_or(0), 0, 0].iter().flat_map(|w: &u32| w.to_ne_bytes()).collect();
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(frame);
    opts.data_out = Some(&mut out);
    if ingress.is_some() {
        opts.ctx_in = Some(&ctx);
    }
    let result = prog.test_run(opts).expect("BPF_PROG_TEST_RUN");
    out.truncate(result.data_size_out as usize);
    Outcome { action: result.return_value, frame: out }
}
