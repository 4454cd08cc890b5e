//! What a test VM boots from, fetched from Debian and kept under
//! target/vm: QEMU and its helpers unpacked into a folder of their own
//! (installing qemu-system-x86 on the host would replace the host's newer
//! qemu-utils), the cloud kernels unpacked with their modules indexed, and a
//! small initramfs per kernel. Nothing here is installed on the host.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};

use crate::target_dir;

/// QEMU, the libraries of it the host lacks, its firmware, the virtiofs
/// daemon that shares the host's root, busybox for the initramfs, kmod to
/// index and load the guest kernel's modules, and cpio to pack the
/// initramfs. `Tools::check` says when a Debian update needs another one.
const TOOL_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "qemu-system-common",
    "qemu-system-data",
    "seabios",
    "libcapstone4",
    "libfdt1",
    "libpmem1",
    "libndctl6",
    "libdaxctl1",
    "librdmacm1",
    "libibverbs1",
    "libnl-3-200",
    "libnl-route-3-200",
    "libslirp0",
    "libvdeplug2",
    "busybox-static",
    "kmod",
    "cpio",
];

/// Modules the initramfs loads, in this order with their dependencies first:
/// the virtio PCI transport, the console the command runs on, the host's
/// root over virtiofs and the overlay that makes it writable in the guest.
/// A kernel that builds one in needs no file for it.
const INITRAMFS_MODULES: &[&str] = &["virtio_pci", "virtio_console", "virtiofs", "overlay"];

/// The two init stages (see each file).
const STAGE1: &str = include_str!("stage1.sh");
const STAGE2: &str = include_str!("stage2.sh");

fn vm_dir() -> PathBuf {
    target_dir().join("vm")
}

/// The unpacked tools.
pub struct Tools {
    root: PathBuf,
}

impl Tools {
    /// Fetches and unpacks the tools unless the same list already is.
    pub fn ensure() -> Result<Tools> {
        let root = vm_dir().join("tools");
        let marker = root.join(".packages");
        let wanted = TOOL_PACKAGES.join("\n");
        if fs::read_to_string(&marker).ok().as_deref() != Some(wanted.as_str()) {
            eprintln!("xtask: fetching QEMU and its helpers from Debian into {}", root.display());
            if root.exists() {
                fs::remove_dir_all(&root)?;
            }
            fs::create_dir_all(&root)?;
            for deb in apt_download(TOOL_PACKAGES)? {
                unpack(&deb, &root)?;
                fs::remove_file(&deb)?;
            }
            for tool in ["depmod", "modprobe"] {
                std::os::unix::fs::symlink("kmod", root.join("bin").join(tool))?;
            }
            let tools = Tools { root: root.clone() };
            tools.check()?;
            fs::write(&marker, wanted)?;
            return Ok(tools);
        }
        Ok(Tools { root })
    }

    /// Every tool finds its libraries: QEMU's and virtiofsd's among the
    /// unpacked ones, kmod's on the host (the guest kernel runs it as
    /// modprobe with no environment).
    fn check(&self) -> Result<()> {
        let mut missing = String::new();
        for (binary, with_ours) in [(self.qemu(), true), (self.virtiofsd(), true), (self.kmod(), false)] {
            let mut ldd = Command::new("ldd");
            ldd.arg(&binary);
            if with_ours {
                ldd.env("LD_LIBRARY_PATH", self.library_path());
            }
            let out = ldd.output().context("running ldd")?;
            for line in String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains("not found")) {
                missing.push_str(&format!("\n  {}: {}", binary.display(), line.trim()));
            }
        }
        if !missing.is_empty() {
            bail!("libraries missing for the VM tools (add their Debian packages to TOOL_PACKAGES):{missing}");
        }
        Ok(())
    }

    pub fn qemu(&self) -> PathBuf {
        self.root.join("usr/bin/qemu-system-x86_64")
    }
    pub fn virtiofsd(&self) -> PathBuf {
        self.root.join("usr/lib/qemu/virtiofsd")
    }
    pub fn kmod(&self) -> PathBuf {
        self.root.join("bin/kmod")
    }
    fn busybox(&self) -> PathBuf {
        self.root.join("bin/busybox")
    }
    /// Directories QEMU looks in for its firmware (`-L`).
    pub fn firmware_dirs(&self) -> [PathBuf; 2] {
        [self.root.join("usr/share/qemu"), self.root.join("usr/share/seabios")]
    }
    pub fn library_path(&self) -> String {
        format!("{0}/usr/lib/x86_64-linux-gnu:{0}/lib/x86_64-linux-gnu", self.root.display())
    }
}

/// One of Debian's cloud kernels, unpacked, with its initramfs.
pub struct Kernel {
    /// What `uname -r` says in the guest.
    pub release: String,
    pub image: PathBuf,
    pub initramfs: PathBuf,
    /// The guest's /lib/modules/RELEASE, indexed by depmod.
    pub modules: PathBuf,
}

impl Kernel {
    /// The newest Debian cloud kernel of the series `series` ("6.1",
    /// "6.12"), fetched and prepared unless it already is.
    pub fn ensure(series: &str, tools: &Tools) -> Result<Kernel> {
        let package = newest_cloud_kernel(series)?;
        let root = vm_dir().join("kernels").join(&package);
        let ready = root.join(".ready");
        if !ready.exists() {
            eprintln!("xtask: fetching {package} from Debian into {}", root.display());
            if root.exists() {
                fs::remove_dir_all(&root)?;
            }
            fs::create_dir_all(&root)?;
            for deb in apt_download(&[package.as_str()])? {
                unpack(&deb, &root)?;
                fs::remove_file(&deb)?;
            }
        }
        let release = only_entry(&root.join("lib/modules"))?;
        let kernel = Kernel {
            image: root.join("boot").join(format!("vmlinuz-{release}")),
            initramfs: root.join("initramfs.cpio"),
            modules: root.join("lib/modules").join(&release),
            release,
        };
        if !ready.exists() {
            let status = Command::new(tools.root.join("bin/depmod"))
                .arg("-b")
                .arg(&root)
                .arg(&kernel.release)
                .status()
                .context("running depmod")?;
            if !status.success() {
                bail!("depmod for {} failed: {status}", kernel.release);
            }
            fs::write(&ready, "")?;
        }
        // Built again whenever what goes into it changes.
        let recipe = format!("{STAGE1}{STAGE2}{INITRAMFS_MODULES:?}");
        let recipe_file = root.join("initramfs.recipe");
        if fs::read_to_string(&recipe_file).ok().as_deref() != Some(recipe.as_str()) || !kernel.initramfs.exists() {
            build_initramfs(&kernel, tools)?;
            fs::write(&recipe_file, recipe)?;
        }
        Ok(kernel)
    }
}

/// The name of the newest `linux-image-SERIES.*-cloud-amd64-unsigned` in
/// the package lists (updated once if it has none).
fn newest_cloud_kernel(series: &str) -> Result<String> {
    let prefix = format!("linux-image-{series}.");
    let find = || -> Result<Option<String>> {
        let out = Command::new("apt-cache").args(["pkgnames", &prefix]).output().context("running apt-cache")?;
        let names = String::from_utf8_lossy(&out.stdout);
        Ok(names
            .lines()
            .filter(|n| n.ends_with("-cloud-amd64-unsigned"))
            .max_by_key(|n| numbers(&n[prefix.len()..]))
            .map(str::to_owned))
    };
    if let Some(name) = find()? {
        return Ok(name);
    }
    crate::run(Command::new("apt-get").args(["update", "-qq"]))?;
    find()?.with_context(|| {
        format!("Debian has no package {prefix}*-cloud-amd64-unsigned: the kernels are Debian's cloud series, such as 6.1 and 6.12")
    })
}

/// The numbers in a version string, in order, to compare versions by.
fn numbers(version: &str) -> Vec<u64> {
    version.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty()).filter_map(|s| s.parse().ok()).collect()
}

/// Downloads packages into target/vm/debs (updating the lists once if
/// they are stale) and returns the files.
fn apt_download(packages: &[&str]) -> Result<Vec<PathBuf>> {
    let dir = vm_dir().join("debs");
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    fs::create_dir_all(&dir)?;
    let download = || {
        Command::new("apt-get")
            .args(["download", "-qq", "-o", "APT::Sandbox::User=root"])
            .args(packages)
            .current_dir(&dir)
            .status()
            .context("running apt-get download")
    };
    if !download()?.success() {
        crate::run(Command::new("apt-get").args(["update", "-qq"]))?;
        if !download()?.success() {
            bail!("apt-get download {} failed", packages.join(" "));
        }
    }
    let mut debs = Vec::new();
    for entry in fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "deb") {
            debs.push(path);
        }
    }
    Ok(debs)
}

fn unpack(deb: &Path, into: &Path) -> Result<()> {
    crate::run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(into))
}

fn only_entry(dir: &Path) -> Result<String> {
    let mut names = fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    let first = names.next().with_context(|| format!("{} is empty", dir.display()))??;
    Ok(first.file_name().to_string_lossy().into_owned())
}

/// Writes the kernel's initramfs: busybox, the two init stages and the
/// modules `INITRAMFS_MODULES` need, uncompressed, in load order.
fn build_initramfs(kernel: &Kernel, tools: &Tools) -> Result<()> {
    let staging = kernel.initramfs.with_extension("d");
    if staging.exists() {
        fs::remove_dir_all(&staging)?;
    }
    fs::create_dir_all(staging.join("bin"))?;
    fs::create_dir_all(staging.join("modules"))?;
    fs::copy(tools.busybox(), staging.join("bin/busybox"))?;
    write_executable(&staging.join("init"), STAGE1)?;
    write_executable(&staging.join("stage2"), STAGE2)?;
    let order = module_load_order(&kernel.modules)?;
    for path in &order {
        decompress_module(&kernel.modules.join(path), &staging.join("modules").join(module_file(path)))?;
    }
    let names: Vec<String> = order.iter().map(|p| module_file(p)).collect();
    fs::write(staging.join("modules/order"), names.join("\n"))?;

    let mut files = String::new();
    for entry in walk(&staging)? {
        files.push_str(&entry.strip_prefix(&staging)?.to_string_lossy());
        files.push('\n');
    }
    let out = fs::File::create(&kernel.initramfs)?;
    let mut cpio = Command::new(tools.root.join("bin/cpio"))
        .args(["--create", "--format=newc", "--quiet"])
        .current_dir(&staging)
        .stdin(Stdio::piped())
        .stdout(out)
        .spawn()
        .context("running cpio")?;
    std::io::Write::write_all(&mut cpio.stdin.take().expect("piped"), files.as_bytes())?;
    if !cpio.wait()?.success() {
        bail!("cpio failed writing {}", kernel.initramfs.display());
    }
    fs::remove_dir_all(&staging)?;
    Ok(())
}

fn write_executable(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text)?;
    fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    Ok(())
}

/// Every path under `dir`, directories before what they hold.
fn walk(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        paths.push(path.clone());
        if path.is_dir() {
            paths.extend(walk(&path)?);
        }
    }
    Ok(paths)
}

/// The module files (relative to the modules directory) to load for
/// `INITRAMFS_MODULES`, dependencies first, from depmod's modules.dep.
fn module_load_order(modules: &Path) -> Result<Vec<String>> {
    let dep = fs::read_to_string(modules.join("modules.dep")).context("reading modules.dep")?;
    let builtin = fs::read_to_string(modules.join("modules.builtin")).unwrap_or_default();
    let mut order: Vec<String> = Vec::new();
    for name in INITRAMFS_MODULES {
        let line = dep.lines().find(|l| {
            let file = l.split(':').next().unwrap_or_default();
            module_name(file) == *name
        });
        let Some(line) = line else {
            if builtin.lines().any(|l| module_name(l) == *name) {
                continue;
            }
            bail!("the kernel in {} has no module {name}, built in or not", modules.display());
        };
        let (file, deps) = line.split_once(':').expect("found by its colon");
        // modules.dep lists what a module needs with the deepest last.
        for path in deps.split_whitespace().rev().chain([file]) {
            if !order.iter().any(|p| p == path) {
                order.push(path.to_string());
            }
        }
    }
    Ok(order)
}

/// `kernel/fs/fuse/virtiofs.ko.xz` -> `virtiofs` (the name insmod knows).
fn module_name(path: &str) -> String {
    let file = module_file(path);
    file.strip_suffix(".ko").unwrap_or(&file).replace('-', "_")
}

/// The uncompressed file name of a module: `virtiofs.ko`.
fn module_file(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let file = file.strip_suffix(".xz").or_else(|| file.strip_suffix(".zst")).unwrap_or(file);
    file.to_string()
}

/// Copies a module, uncompressed (busybox's insmod takes plain .ko files).
fn decompress_module(from: &Path, to: &Path) -> Result<()> {
    let tool = match from.extension().and_then(|e| e.to_str()) {
        Some("xz") => "xz",
        Some("zst") => "zstd",
        _ => {
            fs::copy(from, to)?;
            return Ok(());
        }
    };
    let out = fs::File::create(to)?;
    let status =
        Command::new(tool).arg("-dc").arg(from).stdout(out).status().with_context(|| format!("running {tool}"))?;
    if !status.success() {
        bail!("{tool} could not decompress {}", from.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_and_versions() {
        assert_eq!(module_name("kernel/fs/fuse/virtiofs.ko.xz"), "virtiofs");
        assert_eq!(module_name("kernel/drivers/virtio/virtio_pci.ko"), "virtio_pci");
        assert_eq!(module_file("kernel/fs/overlayfs/overlay.ko.zst"), "overlay.ko");
        assert!(numbers("0-57-cloud-amd64-unsigned") > numbers("0-9-cloud-amd64-unsigned"));
        assert!(numbers("113+deb12-cloud-amd64-unsigned") > numbers("107+deb12-cloud-amd64-unsigned"));
    }
}
