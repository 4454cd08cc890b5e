//! Compiles the XDP programs (gslb-ebpf) for the BPF target with the nightly
//! toolchain; the object is embedded into this crate.
fn main() -> anyhow::Result<()> {
    // aya-build watches gslb-ebpf only; the shared types change the object too.
    println!("cargo:rerun-if-changed=../gslb-common");
    let features: &[&str] =
        if std::env::var_os("CARGO_FEATURE_PROGRAM_VARIANT").is_some() { &["variant"] } else { &[] };
    aya_build::build_ebpf(
        [aya_build::Package { name: "gslb-ebpf", root_dir: "../gslb-ebpf", features, ..Default::default() }],
        aya_build::Toolchain::default(),
    )
}
