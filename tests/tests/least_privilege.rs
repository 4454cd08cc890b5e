//! The agent without root: a system user with only CAP_BPF, CAP_PERFMON,
//! CAP_NET_ADMIN and CAP_NET_RAW takes over the pinned state a root agent
//! left, steers real traffic, restarts and adopts its own pins, and answers
//! its group's members on the admin socket and nobody else. Without one of
//! those capabilities it refuses to start, naming it. `decap` runs the same
//! way, without CAP_NET_RAW.

use std::process::Command;
use std::time::Duration;

use gslb_tests::checks::{assert_untouched, wait_for_progress, web_v4};
use gslb_tests::deploy::{config_path, Deployment, Setup, Weights};
use gslb_tests::lab::{BackendNode, ClientNode, EdgeNode};
use gslb_tests::traffic::{short_connections, LongLived};

const LAB_BINARY: &str = env!("CARGO_BIN_EXE_gslb-lab");
const EDGE: EdgeNode = EdgeNode::EdgeA;
/// The agent's user; its group is the admin socket's.
const AGENT: &str = "gslb-lab-agent";
/// A member of the agent's group.
const OPERATOR: &str = "gslb-lab-operator";
/// Anyone else.
const OUTSIDER: &str = "gslb-lab-outsider";
/// The capabilities docs/operations.md documents, in setpriv's syntax.
const CAPS: &str = "+bpf,+perfmon,+net_admin,+net_raw";
/// The same as bits of CapEff: NET_ADMIN 12, NET_RAW 13, PERFMON 38, BPF 39.
const CAP_BITS: u64 = 1 << 12 | 1 << 13 | 1 << 38 | 1 << 39;
/// decap's: the agent's but CAP_NET_RAW.
const DECAP_CAPS: &str = "+bpf,+perfmon,+net_admin";
const DECAP_CAP_BITS: u64 = CAP_BITS & !(1 << 13);

fn run(program: &str, args: &[&str]) -> std::process::Output {
    Command::new(program).args(args).output().unwrap_or_else(|e| panic!("running {program}: {e}"))
}

/// System users this test makes, removed again when it ends, however it
/// ends.
struct Users(Vec<&'static str>);

impl Users {
    fn create() -> Users {
        let mut users = Users(Vec::new());
        for (name, group) in [(AGENT, None), (OPERATOR, Some(AGENT)), (OUTSIDER, None)] {
            let _ = run("userdel", &[name]);
            let mut args = vec!["--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin"];
            if let Some(group) = group {
                args.extend(["--groups", group]);
            }
            args.push(name);
            let out = run("useradd", &args);
            assert!(out.status.success(), "useradd {name}: {}", String::from_utf8_lossy(&out.stderr));
            users.0.push(name);
        }
        users
    }
}

impl Drop for Users {
    fn drop(&mut self) {
        for name in self.0.iter().rev() {
            let _ = run("userdel", &[name]);
        }
    }
}

/// `gslb ARGS` as `user` with its groups and no capabilities.
fn gslb_as(user: &str, args: &[&str]) -> std::process::Output {
    let mut all = vec![
        format!("--reuid={user}"),
        format!("--regid={user}"),
        "--init-groups".into(),
        "--inh-caps=-all".into(),
        "--bounding-set=-all".into(),
        "--".into(),
        LAB_BINARY.into(),
        "gslb".into(),
    ];
    all.extend(args.iter().map(|a| a.to_string()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    run("setpriv", &all)
}

/// The uid and effective capabilities of a running process.
fn uid_and_caps(pid: u32) -> (u32, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).unwrap().trim().to_string();
    let uid = field("Uid:").split_whitespace().nth(1).unwrap().parse().unwrap();
    (uid, u64::from_str_radix(&field("CapEff:"), 16).unwrap())
}

#[test]
fn the_agent_steers_as_an_unprivileged_user_and_serves_only_its_group() {
    let _users = Users::create();
    let d = Deployment::start(LAB_BINARY.as_ref(), &Setup::from(&Weights::default())).unwrap();
    let traffic = LongLived::start(&d.lab, ClientNode::Client1, web_v4(), 30, Duration::from_millis(10)).unwrap();

    // The root agent goes; its pins and files become the agent user's, as
    // the package's unit does at every start.
    d.stop_agent(EDGE).unwrap();
    let pins = d.lab.bpffs_dir(EDGE);
    for path in [d.lab.run_dir(), pins.clone()] {
        let out = run("chown", &["-R", &format!("{AGENT}:{AGENT}"), path.to_str().unwrap()]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    // One documented capability short: refused, naming it.
    let error = d.start_agent_as(EDGE, AGENT, "+bpf,+net_admin,+net_raw").expect_err("started without CAP_PERFMON");
    assert!(format!("{error:#}").contains("this process lacks CAP_PERFMON"), "{error:#}");

    // With them: it adopts what root left and steers.
    d.start_agent_as(EDGE, AGENT, CAPS).unwrap();
    let pid = d.agent_pid(EDGE).unwrap();
    let (uid, caps) = uid_and_caps(pid);
    assert_ne!(uid, 0, "the agent runs as root");
    assert_eq!(caps, CAP_BITS, "the agent's effective capabilities are {caps:#x}");
    assert!(d.status(EDGE).unwrap().adopted);
    let report = short_connections(&d.lab, ClientNode::Client2, web_v4(), 200, 16).unwrap();
    assert_eq!(report.failures, 0, "new connections failed: {:?}", report.errors);

    // Restarted as the same user, it adopts its own pins.
    d.stop_agent(EDGE).unwrap();
    d.start_agent_as(EDGE, AGENT, CAPS).unwrap();
    let status = d.status(EDGE).unwrap();
    assert!(status.adopted && status.interfaces["eth0"] == "adopted", "{:?}", status.interfaces);
    let report = short_connections(&d.lab, ClientNode::Client2, web_v4(), 200, 16).unwrap();
    assert_eq!(report.failures, 0, "new connections failed after the restart: {:?}", report.errors);

    // The admin socket: the group's member may, others may not.
    let config = config_path(&d.lab, EDGE);
    let config = config.to_str().unwrap();
    let out = gslb_as(OPERATOR, &["status", "--config", config]);
    assert!(out.status.success(), "a member of the agent's group: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("edge edge-a"));
    let out = gslb_as(OPERATOR, &["reload", "--config", config]);
    assert!(out.status.success(), "reload by a member: {}", String::from_utf8_lossy(&out.stderr));
    for args in [&["status", "--config", config][..], &["drain", "--config", config, "eu-west"][..]] {
        let out = gslb_as(OUTSIDER, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "an outsider ran {args:?}");
        assert!(stderr.contains("permission denied on the agent's admin socket"), "{stderr}");
        assert!(stderr.contains("or as a member of the group that owns it (`ls -l`"), "{stderr}");
    }
    assert!(d.status(EDGE).unwrap().pools.iter().all(|p| p.backends.iter().all(|b| !b.drained)));

    // decap too, with its three capabilities.
    let backend = BackendNode::EuWest1;
    d.stop_decap(backend).unwrap();
    d.start_decap_as(backend, AGENT, DECAP_CAPS).unwrap();
    let (uid, caps) = uid_and_caps(d.decap_pid(backend).unwrap());
    assert_ne!(uid, 0, "decap runs as root");
    assert_eq!(caps, DECAP_CAP_BITS, "decap's effective capabilities are {caps:#x}");
    let report = short_connections(&d.lab, ClientNode::Client2, web_v4(), 200, 16).unwrap();
    assert_eq!(report.failures, 0, "new connections failed with decap unprivileged: {:?}", report.errors);
    assert!(
        report.per_backend.contains_key(backend.name()),
        "no connection reached {backend}: {:?}",
        report.per_backend
    );

    let before = traffic.snapshot();
    wait_for_progress(&traffic, &before, 10, "with the unprivileged agent");
    assert_untouched(&traffic.stop(), "from the root agent to the unprivileged one and its restart");
}
