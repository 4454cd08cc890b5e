//! Compiles the test and bench XDP programs (gslb-ebpf-testing) for the BPF
//! target with the nightly toolchain; each of its binaries is one object,
//! embedded by `gslb_tests::programs`.
fn main() -> anyhow::Result<()> {
    // aya-build watches gslb-ebpf-testing only; the packet operations it
    // links and the shared layouts change the objects too.
    println!("cargo:rerun-if-changed=../gslb-ebpf");
    println!("cargo:rerun-if-changed=../gslb-common");
    aya_build::build_ebpf(
        [aya_build::Package { name: "gslb-ebpf-testing", root_dir: "../gslb-ebpf-testing", ..Default::default() }],
        aya_build::Toolchain::default(),
    )
}
