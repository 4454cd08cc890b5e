//! The Debian package (`cargo xtask package`), installed into a throwaway
//! root: the binary runs and accepts the example config, the maintainer
//! script created the user gslb, the conffiles are registered, the man
//! pages render, the completions load, and `systemd-analyze verify`
//! accepts the units (and rejects broken ones, so the check is live).
//!
//! The package comes from `GSLB_DEB` (set by `cargo xtask test`, which
//! builds it first), else from target/debian. It is installed with
//! `dpkg --root=DIR --force-script-chrootless`: the maintainer scripts run
//! on this host, not chrooted (DIR has no shell), with `DPKG_ROOT=DIR`,
//! which they honour: the user is created in DIR/etc/passwd, and nothing
//! outside DIR is touched. `--force-depends`: DIR has no libc6 or systemd
//! package. DIR is removed at the end, also when a check fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A directory removed when dropped, also while a failed check unwinds.
struct Root(PathBuf);

impl Drop for Root {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn deb() -> PathBuf {
    if let Some(path) = std::env::var_os("GSLB_DEB") {
        return PathBuf::from(path);
    }
    let arch = String::from_utf8(run(Command::new("dpkg").arg("--print-architecture")).stdout).unwrap();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debian").join(format!(
        "gslb_{}-1_{}.deb",
        env!("CARGO_PKG_VERSION"),
        arch.trim()
    ));
    assert!(
        path.is_file(),
        "no package at {}: run `cargo xtask package` (cargo xtask test builds it first)",
        path.display()
    );
    path
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(out: Output) -> String {
    String::from_utf8(out.stdout).unwrap()
}

/// `systemd-analyze verify` of `units` as installed under `root`, with the
/// host's own units (targets, ...) for the dependencies and the root's man
/// pages for `Documentation=`. Ok only with exit status 0 and nothing said:
/// systemd merely warns, and exits 0, about unknown keys and bad values.
fn verify(root: &Path, units: &[&str]) -> Result<(), String> {
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .args(units)
        .env("MANPATH", root.join("usr/share/man"))
        .env("SYSTEMD_LOG_COLOR", "0")
        .current_dir(root)
        .output()
        .expect("systemd-analyze (package systemd)");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() && said.trim().is_empty() {
        Ok(())
    } else {
        Err(format!("{}: {said}", out.status))
    }
}

#[test]
fn the_package_installs_and_its_units_verify() {
    let deb = deb();
    let root = Root(std::env::temp_dir().join(format!("gslb-package-test-{}", std::process::id())));
    let dir = &root.0;
    let _ = std::fs::remove_dir_all(dir);
    for sub in ["var/lib/dpkg/info", "var/lib/dpkg/updates", "usr/lib/systemd"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    std::fs::write(dir.join("var/lib/dpkg/status"), "").unwrap();
    run(Command::new("dpkg")
        .arg(format!("--root={}", dir.display()))
        .args(["--log=/dev/null", "--force-script-chrootless", "--force-depends", "--install"])
        .arg(&deb));

    // The binary, and the example config it ships (valid as shipped).
    let gslb = dir.join("usr/bin/gslb");
    assert!(text(run(Command::new(&gslb).arg("--version"))).contains(env!("CARGO_PKG_VERSION")));
    let config = dir.join("etc/gslb/edge.toml");
    run(Command::new(&gslb).arg("check").arg("--config").arg(&config));
    assert!(dir.join("etc/gslb/decap.env.example").is_file());
    let status = text(run(Command::new("dpkg").arg(format!("--root={}", dir.display())).args(["--status", "gslb"])));
    for conffile in ["/etc/gslb/edge.toml", "/etc/gslb/decap.env.example"] {
        assert!(
            status.lines().any(|l| l.trim_start().starts_with(&format!("{conffile} "))),
            "{conffile} is no conffile:\n{status}"
        );
    }

    // The postinst made the user and group (in the root, not on this host).
    let passwd = std::fs::read_to_string(dir.join("etc/passwd")).unwrap();
    assert!(
        passwd.lines().any(|l| l.starts_with("gslb:") && l.ends_with(":/var/lib/gslb:/usr/sbin/nologin")),
        "{passwd}"
    );
    assert!(std::fs::read_to_string(dir.join("etc/group")).unwrap().lines().any(|l| l.starts_with("gslb:")));

    // Man pages: gslb(1) names each subcommand's page, each is there, and
    // all render without a groff warning.
    let man1 = dir.join("usr/share/man/man1");
    let page = |name: &str| {
        let out = run(Command::new("man")
            .args(["--warnings", "-P", "cat", "-l"])
            .arg(man1.join(format!("{name}.1.gz")))
            .env("MANWIDTH", "100"));
        assert!(out.stderr.is_empty(), "{name}(1): {}", String::from_utf8_lossy(&out.stderr));
        text(out)
    };
    let gslb_1 = page("gslb");
    for sub in ["run", "reload", "status", "drain", "undrain", "check", "decap", "verify", "fleet", "completions"] {
        assert!(gslb_1.contains(&format!("gslb-{sub}(1)")), "gslb(1) lacks gslb-{sub}(1):\n{gslb_1}");
        assert!(page(&format!("gslb-{sub}")).contains("SYNOPSIS"));
    }
    assert!(!gslb_1.contains("bgp-watchdog") && !gslb_1.contains("gslb-man"), "hidden commands in gslb(1)");

    // Completions: bash registers one, zsh and fish name the command.
    let bash = dir.join("usr/share/bash-completion/completions/gslb");
    let registered = text(run(Command::new("bash").arg("-c").arg(r#"source "$0" && complete -p gslb"#).arg(&bash)));
    assert!(registered.contains("_gslb") && registered.trim_end().ends_with(" gslb"), "{registered}");
    let zsh = std::fs::read_to_string(dir.join("usr/share/zsh/vendor-completions/_gslb")).unwrap();
    assert!(zsh.starts_with("#compdef gslb"), "{}", &zsh[..zsh.len().min(80)]);
    let fish = std::fs::read_to_string(dir.join("usr/share/fish/vendor_completions.d/gslb.fish")).unwrap();
    assert!(fish.contains("complete -c gslb") && fish.contains("decap"));

    // Units: each with the documented capabilities as a drop-in.
    let system = dir.join("lib/systemd/system");
    let documented = [
        ("gslb.service.d", "CAP_BPF CAP_PERFMON CAP_NET_ADMIN CAP_NET_RAW"),
        ("gslb-decap@.service.d", "CAP_BPF CAP_PERFMON CAP_NET_ADMIN"),
    ];
    for (drop_in, set) in documented {
        let caps = std::fs::read_to_string(system.join(drop_in).join("capabilities.conf")).unwrap();
        let lines: Vec<&str> = caps
            .lines()
            .filter(|l| l.starts_with("AmbientCapabilities=") || l.starts_with("CapabilityBoundingSet="))
            .collect();
        assert_eq!(lines.len(), 2, "{drop_in}: {caps}");
        // systemd ignores capability names it does not know, silently: ask
        // it about each one.
        for line in lines {
            assert_eq!(line.split_once('=').unwrap().1, set, "{drop_in}");
            let names: Vec<&str> = set.split_whitespace().collect();
            run(Command::new("systemd-analyze").arg("capability").args(&names));
        }
    }
    assert!(Command::new("systemd-analyze")
        .args(["capability", "CAP_NOT_ONE"])
        .output()
        .is_ok_and(|o| !o.status.success()));
    let agent = std::fs::read_to_string(system.join("gslb.service")).unwrap();
    assert!(agent.contains("\nExecStart=/usr/bin/gslb run --config /etc/gslb/edge.toml\n"), "{agent}");
    assert!(agent.contains("\nUser=gslb\n") && agent.contains("\nRuntimeDirectory=gslb\n"), "{agent}");

    // systemd-analyze verify, on the host's units for dependencies (the
    // root has no systemd; any of the host's named gslb* are left out).
    let host_units = dir.join("usr/lib/systemd/system");
    run(Command::new("cp").arg("-a").arg("/lib/systemd/system/.").arg(&host_units));
    for entry in std::fs::read_dir(&host_units).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap().to_string_lossy().starts_with("gslb") {
            run(Command::new("rm").arg("-rf").arg(&path));
        }
    }
    // The agent's unit prepares bpffs with coreutils, which every Debian
    // host has (Essential): the throwaway root gets the host's.
    for tool in ["chmod", "chown", "install"] {
        std::fs::copy(Path::new("/usr/bin").join(tool), dir.join("usr/bin").join(tool)).unwrap();
    }
    verify(dir, &["gslb.service", "gslb-decap@eth0.service"]).unwrap_or_else(|e| panic!("the units: {e}"));

    // The same check fails on broken units: a misspelt key, a program that
    // is not there, a misspelt key in a drop-in (so drop-ins are read).
    let local = dir.join("etc/systemd/system");
    std::fs::create_dir_all(local.join("gslb.service.d")).unwrap();
    std::fs::write(local.join("misspelt.service"), agent.replace("NoNewPrivileges=", "NoNewPrivilege=")).unwrap();
    std::fs::write(local.join("missing.service"), agent.replace("/usr/bin/gslb run", "/usr/bin/gslb-missing run"))
        .unwrap();
    for unit in ["misspelt.service", "missing.service"] {
        assert!(verify(dir, &[unit]).is_err(), "systemd-analyze verify accepted the broken {unit}");
    }
    std::fs::write(local.join("gslb.service.d/broken.conf"), "[Service]\nAmbientCapability=CAP_BPF\n").unwrap();
    assert!(verify(dir, &["gslb.service"]).is_err(), "systemd-analyze verify ignored a broken drop-in");
}
