//! `cargo xtask vm`: a command in a QEMU VM booted with one of Debian's
//! cloud kernels, or on this host (`--kernel host`).
//!
//! The guest's root is the host's own root, shared read-only over virtiofs
//! under a tmpfs overlay: the host's build, tools and libraries are all
//! there at their usual paths and nothing the guest writes reaches the host.
//! The command runs in the host's working directory with its environment,
//! on a virtio console that is its terminal; the kernel's console goes to
//! a log shown when the VM fails. Hardware acceleration is used when the
//! CPU offers it and a KVM guest boots; otherwise software emulation.

mod assets;

use std::{
    fs,
    io::{BufRead, BufReader, IsTerminal},
    path::{Path, PathBuf},
    process::{Child, ChildStderr, ChildStdout, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

pub use assets::{Kernel, Tools};

use crate::target_dir;

/// How long a guest may take from QEMU's start to the command's: software
/// emulation boots in a few seconds here, KVM in one; a KVM that never
/// boots (as on hosts whose /dev/kvm has no hardware behind it) is given up.
const BOOT_DEADLINE_TCG: Duration = Duration::from_secs(120);
const BOOT_DEADLINE_KVM: Duration = Duration::from_secs(20);

/// The guest's size, unless asked otherwise: the lab and the fuzzers fit.
pub const MEMORY_MIB: u64 = 3072;
pub const CPUS: u32 = 2;

/// Where the command's output goes.
pub enum Output<'a> {
    /// This process's terminal (or stdout): the guest's console is the
    /// command's terminal, Ctrl-C included.
    Terminal,
    /// Each line, as it comes; the command's stdin is empty.
    Lines(&'a mut dyn FnMut(&str)),
}

/// A kernel to run on: a Debian cloud series under QEMU, or this host.
pub enum Target {
    Host,
    Vm(Box<Machine>),
}

impl Target {
    /// `host`, or a Debian cloud kernel series such as `6.1` or `6.12`,
    /// fetched and prepared when needed.
    pub fn prepare(kernel: &str, memory_mib: u64, cpus: u32) -> Result<Target> {
        if kernel == "host" {
            return Ok(Target::Host);
        }
        let tools = Tools::ensure()?;
        let kernel = Kernel::ensure(kernel, &tools)?;
        Ok(Target::Vm(Box::new(Machine { tools, kernel, memory_mib, cpus })))
    }

    /// The kernel release the command sees.
    pub fn release(&self) -> String {
        match self {
            Target::Host => fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string(),
            Target::Vm(machine) => machine.kernel.release.clone(),
        }
    }

    /// Runs `command` to its end and returns its exit status.
    pub fn run(&self, command: &[String], output: Output) -> Result<i32> {
        match self {
            Target::Vm(machine) => machine.run(command, output),
            Target::Host => {
                let mut cmd = Command::new(&command[0]);
                cmd.args(&command[1..]);
                let status = match output {
                    Output::Terminal => cmd.status()?,
                    Output::Lines(each) => {
                        let mut child =
                            cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
                        forward_lines(child.stdout.take(), child.stderr.take(), each);
                        child.wait()?
                    }
                };
                Ok(status.code().unwrap_or(128))
            }
        }
    }
}

/// Sends each line of `stream` from a thread of its own, which ends with
/// the stream (with no stream, `tx` is dropped at once).
fn read_lines(stream: Option<impl std::io::Read + Send + 'static>, tx: std::sync::mpsc::Sender<String>) {
    if let Some(stream) = stream {
        std::thread::spawn(move || BufReader::new(stream).lines().map_while(Result::ok).try_for_each(|l| tx.send(l)));
    }
}

/// Both output streams of a child as lines (stderr's read by a thread),
/// each without the \r a terminal puts before \n.
fn forward_lines(stdout: Option<ChildStdout>, stderr: Option<ChildStderr>, each: &mut dyn FnMut(&str)) {
    let (tx, rx) = std::sync::mpsc::channel();
    let err_tx = tx.clone();
    read_lines(stdout, tx);
    read_lines(stderr, err_tx);
    for line in rx {
        each(line.trim_end_matches('\r'));
    }
}

pub struct Machine {
    pub tools: Tools,
    pub kernel: Kernel,
    memory_mib: u64,
    cpus: u32,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Accel {
    Kvm,
    Tcg,
}

/// What the guest reported on its status port.
enum Outcome {
    Exited(i32),
    /// KVM did not bring the guest up in time.
    KvmHung,
}

impl Machine {
    fn run(&self, command: &[String], mut output: Output) -> Result<i32> {
        let accel = accel();
        match self.boot(accel, command, &mut output)? {
            Outcome::Exited(code) => Ok(code),
            Outcome::KvmHung => {
                eprintln!(
                    "xtask: a KVM guest did not boot within {}s; using software emulation (remembered in {})",
                    BOOT_DEADLINE_KVM.as_secs(),
                    kvm_hangs_marker().display()
                );
                fs::write(kvm_hangs_marker(), "")?;
                match self.boot(Accel::Tcg, command, &mut output)? {
                    Outcome::Exited(code) => Ok(code),
                    Outcome::KvmHung => unreachable!("software emulation does not use KVM"),
                }
            }
        }
    }

    fn boot(&self, accel: Accel, command: &[String], output: &mut Output) -> Result<Outcome> {
        let run = RunDir::new()?;
        fs::write(run.job(), job_script(command, matches!(output, Output::Terminal))?)?;

        let mut virtiofsd = Command::new(self.tools.virtiofsd())
            .arg(format!("--socket-path={}", run.socket().display()))
            .args(["-o", "source=/", "-o", "cache=always", "-o", "sandbox=chroot"])
            .env("LD_LIBRARY_PATH", self.tools.library_path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(run.path("virtiofsd.log"))?)
            .spawn()
            .context("starting virtiofsd")?;
        let result = wait_for(&run.socket(), Duration::from_secs(10))
            .context("virtiofsd did not open its socket")
            .and_then(|()| self.qemu(accel, &run, output));
        let _ = virtiofsd.kill();
        let _ = virtiofsd.wait();
        result
    }

    fn qemu(&self, accel: Accel, run: &RunDir, output: &mut Output) -> Result<Outcome> {
        let interactive = matches!(output, Output::Terminal) && std::io::stdin().is_terminal();
        let memory = format!("{}M", self.memory_mib);
        let mut qemu = Command::new(self.tools.qemu());
        qemu.env("LD_LIBRARY_PATH", self.tools.library_path())
            .args(["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"])
            .args(["-m", &memory, "-smp", &self.cpus.to_string()]);
        for dir in self.tools.firmware_dirs() {
            qemu.arg("-L").arg(dir);
        }
        match accel {
            Accel::Kvm => qemu.args(["-accel", "kvm", "-cpu", "host"]),
            Accel::Tcg => qemu.args(["-accel", "tcg", "-cpu", "max"]),
        };
        qemu.arg("-kernel")
            .arg(&self.kernel.image)
            .arg("-initrd")
            .arg(&self.kernel.initramfs)
            .arg("-append")
            .arg(format!(
                "console=ttyS0 quiet panic=-1 gslb.job={} gslb.modules={} gslb.kmod={}",
                run.job().display(),
                self.kernel.modules.display(),
                self.tools.kmod().display()
            ))
            .arg("-serial")
            .arg(format!("file:{}", run.path("console.log").display()))
            .arg("-serial")
            .arg(format!("file:{}", run.path("status").display()))
            // The command's terminal. With signal=off, Ctrl-C on an
            // interactive terminal goes to the guest, not to QEMU.
            .args(["-chardev", &format!("stdio,id=job,signal={}", if interactive { "off" } else { "on" })])
            .args(["-device", "virtio-serial-pci", "-device", "virtconsole,chardev=job"])
            .args(["-chardev", &format!("socket,id=root,path={}", run.socket().display())])
            .args(["-device", "vhost-user-fs-pci,chardev=root,tag=host"])
            // virtiofs needs the guest's memory shared with virtiofsd.
            .args(["-object", &format!("memory-backend-memfd,id=mem,size={memory},share=on")])
            .args(["-numa", "node,memdev=mem"]);
        match output {
            Output::Terminal => {}
            Output::Lines(_) => {
                qemu.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
            }
        }
        let mut child = qemu.spawn().context("starting QEMU")?;
        let pipes = (child.stdout.take(), child.stderr.take());
        let child = Arc::new(Mutex::new(child));
        let deadline = match accel {
            Accel::Kvm => BOOT_DEADLINE_KVM,
            Accel::Tcg => BOOT_DEADLINE_TCG,
        };
        let watchdog = {
            let child = child.clone();
            let status = run.path("status");
            std::thread::spawn(move || watch_boot(&child, &status, deadline))
        };
        if let Output::Lines(each) = output {
            forward_lines(pipes.0, pipes.1, each);
        }
        let booted = watchdog.join().expect("the boot watchdog does not panic");
        let qemu_status = child.lock().expect("not poisoned").wait()?;
        let status = fs::read_to_string(run.path("status")).unwrap_or_default();
        if let Some(code) = status.lines().find_map(|l| l.strip_prefix("exit ")) {
            return Ok(Outcome::Exited(code.trim().parse().context("the guest's exit status")?));
        }
        if !booted && accel == Accel::Kvm {
            return Ok(Outcome::KvmHung);
        }
        let console = fs::read_to_string(run.path("console.log")).unwrap_or_default();
        let tail: Vec<&str> = console.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect();
        let why = match status.lines().find_map(|l| l.strip_prefix("boot-failed ")) {
            Some(reason) => format!("the guest could not start the command: {reason}"),
            None if !booted => format!("the guest did not start the command within {}s", deadline.as_secs()),
            None => format!("the VM stopped before the command ended (QEMU: {qemu_status})"),
        };
        bail!("{why}; the guest kernel's last messages:\n{}", tail.join("\n"))
    }
}

/// Kills QEMU if the guest has not reported `started` within `deadline`;
/// returns whether it did. Returns when QEMU exits or is killed.
fn watch_boot(child: &Mutex<Child>, status: &Path, deadline: Duration) -> bool {
    let start = Instant::now();
    let mut started = false;
    loop {
        if child.lock().expect("not poisoned").try_wait().ok().flatten().is_some() {
            return started;
        }
        if !started {
            started = fs::read_to_string(status).is_ok_and(|s| s.lines().any(|l| l == "started"));
            if !started && start.elapsed() > deadline {
                let _ = child.lock().expect("not poisoned").kill();
                return false;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_for(path: &Path, limit: Duration) -> Result<()> {
    let start = Instant::now();
    while !path.exists() {
        if start.elapsed() > limit {
            bail!("{} did not appear within {}s", path.display(), limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn kvm_hangs_marker() -> PathBuf {
    target_dir().join("vm/kvm-hangs")
}

/// KVM when the CPU has virtualisation extensions, /dev/kvm opens and no
/// earlier KVM guest hung here; `GSLB_VM_ACCEL=kvm|tcg` decides instead.
fn accel() -> Accel {
    match std::env::var("GSLB_VM_ACCEL").as_deref() {
        Ok("kvm") => return Accel::Kvm,
        Ok("tcg") => return Accel::Tcg,
        _ => {}
    }
    let extensions = fs::read_to_string("/proc/cpuinfo")
        .is_ok_and(|c| c.lines().any(|l| l.starts_with("flags") && (l.contains(" vmx") || l.contains(" svm"))));
    let opens = fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok();
    if extensions && opens && !kvm_hangs_marker().exists() {
        Accel::Kvm
    } else {
        Accel::Tcg
    }
}

/// The script the guest runs: the host's working directory and
/// environment, the terminal's size, then the command.
fn job_script(command: &[String], terminal: bool) -> Result<String> {
    let quote = |s: &str| shlex::try_quote(s).map(|q| q.into_owned()).context("a NUL byte in the command");
    let mut script = String::from("# Written by cargo xtask vm.\n");
    let cwd = std::env::current_dir()?;
    script.push_str(&format!("cd {} || exit 126\n", quote(&cwd.to_string_lossy())?));
    for (key, value) in std::env::vars() {
        // The shell's own, and the host terminal's session.
        if matches!(key.as_str(), "PWD" | "OLDPWD" | "SHLVL" | "_" | "LD_LIBRARY_PATH")
            || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            continue;
        }
        script.push_str(&format!("export {key}={}\n", quote(&value)?));
    }
    if terminal {
        if let Some((cols, rows)) = terminal_size() {
            script.push_str(&format!("stty cols {cols} rows {rows} 2>/dev/null\n"));
        }
    } else {
        // Output is lines for a log, not a terminal.
        script.push_str("stty -onlcr -echo 2>/dev/null\n");
    }
    let words: Vec<String> = command.iter().map(|w| quote(w)).collect::<Result<_>>()?;
    script.push_str(&format!("exec {}\n", words.join(" ")));
    Ok(script)
}

/// The host terminal's columns and rows, from `stty size`.
fn terminal_size() -> Option<(u16, u16)> {
    let out = Command::new("stty").arg("size").stdin(Stdio::inherit()).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let mut it = text.split_whitespace().map(|n| n.parse().ok());
    let (rows, cols) = (it.next()??, it.next()??);
    Some((cols, rows))
}

/// A directory for one VM's socket, job, logs and status, removed after.
struct RunDir(PathBuf);

impl RunDir {
    fn new() -> Result<RunDir> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = target_dir().join("vm/run").join(format!("{}-{n}", std::process::id()));
        if dir.exists() {
            fs::remove_dir_all(&dir)?;
        }
        fs::create_dir_all(&dir)?;
        Ok(RunDir(dir))
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    fn job(&self) -> PathBuf {
        self.path("job.sh")
    }
    fn socket(&self) -> PathBuf {
        self.path("root.sock")
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
