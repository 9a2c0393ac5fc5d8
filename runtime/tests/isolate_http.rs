//! An isolated HTTP module in the real binary (`isolation = "process"`):
//! `fixture_crash` segfaults its child on `X-Crash` and hangs it on
//! `X-Loop`, under load. molt keeps serving, the child is restarted, status
//! says why, and the failure policy decides what the requests that met the
//! crash see.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::http::Client;
use common::{RunDir, module_lib};
use serde_json::Value;

const MOLT: &str = env!("CARGO_BIN_EXE_molt");

struct Molt {
    child: Child,
    http: SocketAddr,
    socket: PathBuf,
}

impl Drop for Molt {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &Path, policy: &str, backend: SocketAddr) -> Molt {
    start_with(dir, policy, backend, "")
}

fn start_with(dir: &Path, policy: &str, backend: SocketAddr, sandbox: &str) -> Molt {
    start_lib(dir, policy, backend, sandbox, &module_lib("fixture_crash"))
}

fn start_lib(dir: &Path, policy: &str, backend: SocketAddr, sandbox: &str, lib: &Path) -> Molt {
    std::fs::create_dir_all(dir).unwrap();
    let run_dir = dir.join("run");
    let cfg = dir.join("molt.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[runtime]
workers = 2
run_dir = "{run}"

[[modules]]
name = "fixture_crash"
path = "{lib}"
{isolation}
failure_policy = "{policy}"
{sandbox}

[[http]]
name = "web"
listen = "127.0.0.1:0"
[http.upstreams]
back = ["{backend}"]
[[http.routes]]
path = "/"
upstream = "back"
modules = ["fixture_crash"]
"#,
            run = run_dir.display(),
            lib = lib.display(),
            isolation = if sandbox == "in process" { "" } else { "isolation = \"process\"\nhook_timeout_ms = 300" },
            sandbox = if sandbox == "in process" { "" } else { sandbox },
        ),
    )
    .unwrap();
    let (child, banner) = common::molt_run(&cfg, 120);
    Molt { child, http: banner.http.expect("an HTTP listener"), socket: run_dir.join("ctl.sock") }
}

fn status(m: &Molt) -> Value {
    let out = Command::new(MOLT).args(["ctl", "status", "--json", "--socket"]).arg(&m.socket).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn metrics(m: &Molt) -> String {
    let out = Command::new(MOLT).args(["ctl", "metrics", "--socket"]).arg(&m.socket).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn get(addr: SocketAddr, extra: &str) -> u16 {
    let mut c = Client::connect(addr);
    c.get_with("/echo", extra).map_or(0, |r| r.status)
}

/// Keep-alive GETs without a trap header until `stop`: (ok, failed).
fn plain_load(addr: SocketAddr, stop: Arc<AtomicBool>, ok: Arc<AtomicU64>, failed: Arc<AtomicU64>) {
    plain_load_of(addr, "/echo", stop, ok, failed)
}

fn plain_load_of(addr: SocketAddr, path: &str, stop: Arc<AtomicBool>, ok: Arc<AtomicU64>, failed: Arc<AtomicU64>) {
    let mut c = Client::connect(addr);
    while !stop.load(Ordering::Relaxed) {
        match c.get(path) {
            Some(r) if r.status == 200 => {
                ok.fetch_add(1, Ordering::Relaxed);
                if r.close {
                    c = Client::connect(addr);
                }
            }
            _ => {
                failed.fetch_add(1, Ordering::Relaxed);
                c = Client::connect(addr);
            }
        }
    }
}

fn wait_running(m: &Molt, restarts: u64) -> Value {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let s = status(m);
        let iso = s["isolated"][0].clone();
        if iso["state"] == "running" && iso["restarts"].as_u64() >= Some(restarts) {
            return iso;
        }
        assert!(Instant::now() < until, "the child was not restarted: {iso}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// With `fail_open`, a crash costs nothing: requests that meet it go on
/// without the module, and so do those arriving while the child restarts;
/// a crash loop marks the module failed (status says so) and requests go
/// on without it.
#[test]
fn under_load_a_crashing_isolated_module_fails_open_and_is_restarted() {
    let dir = RunDir::new("iso-http-open");
    let (backend, _) = common::http::backend("b");
    let m = start(dir.path(), "fail_open", backend);
    let pid = m.child.id();
    let first = wait_running(&m, 0);
    let (stop, ok, failed) =
        (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load: Vec<_> = (0..3)
        .map(|_| {
            let (s, o, f) = (stop.clone(), ok.clone(), failed.clone());
            std::thread::spawn(move || plain_load(m.http, s, o, f))
        })
        .collect();
    for i in 0..3 {
        assert_eq!(get(m.http, "X-Crash: 1\r\n"), 200, "crash {i}: fail_open lets the request through");
        wait_running(&m, i + 1);
    }
    // Two more within the crash-loop window (5 ends in 30 s): the module is
    // marked failed and not restarted; requests go on without it.
    assert_eq!(get(m.http, "X-Crash: 1\r\n"), 200);
    wait_running(&m, 4);
    assert_eq!(get(m.http, "X-Crash: 1\r\n"), 200);
    let until = Instant::now() + Duration::from_secs(10);
    while status(&m)["isolated"][0]["state"] != "failed" {
        assert!(Instant::now() < until, "no crash loop seen: {}", status(&m)["isolated"][0]);
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(get(m.http, ""), 200, "fail_open: served without the failed module");
    assert!(status(&m)["isolated"][0]["last_exit"].as_str().unwrap().contains("SIGSEGV"));
    // A reload gives a failed module a new child.
    let out = Command::new(MOLT).args(["ctl", "reload", "--socket"]).arg(&m.socket).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let until = Instant::now() + Duration::from_secs(10);
    let revived = loop {
        let iso = status(&m)["isolated"].as_array().unwrap().iter().find(|x| x["state"] == "running").cloned();
        if let Some(iso) = iso {
            break iso;
        }
        assert!(Instant::now() < until, "the reload did not revive the failed module");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(revived["ring_depths"].as_array().unwrap().len(), 2, "one pair of rings per worker: {revived}");
    assert_eq!(get(m.http, "X-Answer: 1\r\n"), 200);
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join().unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "plain requests failed");
    assert!(ok.load(Ordering::Relaxed) > 100, "the load ran: {}", ok.load(Ordering::Relaxed));
    assert_ne!(revived["pid"], first["pid"]);
    assert_eq!(m.child.id(), pid);
    assert!(common::pid_alive(pid), "molt itself never went down");
}

/// With the default policy a request whose hook met the crash is answered
/// 500; a hang is cut at hook_timeout_ms; after each restart requests
/// succeed again; status and metrics tell it.
#[test]
fn a_crash_or_a_hang_is_a_500_for_that_request_and_the_child_comes_back() {
    let dir = RunDir::new("iso-http-restart");
    let (backend, _) = common::http::backend("b");
    let m = start(dir.path(), "restart", backend);
    wait_running(&m, 0);
    assert_eq!(get(m.http, ""), 200);
    let mut c = Client::connect(m.http);
    let r = c.get_with("/echo", "X-Crash: 1\r\n").unwrap();
    assert_eq!(r.status, 500);
    assert!(r.text().contains("module fixture_crash failed at the request"), "{}", r.text());
    wait_running(&m, 1);
    assert_eq!(get(m.http, ""), 200);
    let t = Instant::now();
    assert_eq!(get(m.http, "X-Loop: 1\r\n"), 500);
    assert!(t.elapsed() < Duration::from_secs(2), "cut at the hook timeout: {:?}", t.elapsed());
    let iso = wait_running(&m, 2);
    assert_eq!(get(m.http, ""), 200);
    assert!(iso["last_exit"].as_str().unwrap().contains("SIGKILL"), "{iso}");
    assert!(iso["hook_failures"].as_u64().unwrap() >= 2, "{iso}");
    let text = metrics(&m);
    assert!(text.contains(r#"molt_isolated_restarts_total{module="fixture_crash"} 2"#), "{text}");
    assert!(text.contains(r#"molt_isolated_up{module="fixture_crash"} 1"#), "{text}");
    // The answer the module makes in its child reaches the client.
    let mut c = Client::connect(m.http);
    assert_eq!(c.get_with("/echo", "X-Answer: 1\r\n").unwrap().text(), "isolated answer");
}

/// `[modules.sandbox] files = "confined"`: the child reads only what
/// loading its module needs and `allow_read` (Landlock); without the
/// sandbox the same request opens the file. Limits are reported in status.
#[test]
fn a_sandboxed_child_cannot_open_files_it_was_not_given() {
    let dir = RunDir::new("iso-http-sandbox");
    let (backend, _) = common::http::backend("b");
    let allowed = dir.path().join("allowed.txt");
    std::fs::write(&allowed, b"yes").unwrap();
    let secret = dir.path().join("secret.txt");
    std::fs::write(&secret, b"no").unwrap();
    let open = |m: &Molt, p: &Path| {
        let mut c = Client::connect(m.http);
        let r = c.get_with("/echo", &format!("X-Open: {}\r\n", p.display())).unwrap();
        (r.status, r.text())
    };
    {
        let plain = start(&dir.path().join("plain"), "restart", backend);
        wait_running(&plain, 0);
        assert_eq!(open(&plain, &secret), (200, "opened".to_owned()), "without a sandbox the file opens");
    }
    let sandbox = format!(
        "[modules.sandbox]\nfiles = \"confined\"\nopen_files = 64\naddress_space_mb = 2048\nallow_read = [\"{}\"]\n",
        allowed.display()
    );
    let m = start_with(&dir.path().join("boxed"), "restart", backend, &sandbox);
    let iso = wait_running(&m, 0);
    let said = iso["sandbox"].as_str().unwrap().to_owned();
    assert!(said.contains("open files 64") && said.contains("no_new_privs"), "{said}");
    if said.contains("NOT confined") {
        eprintln!("this kernel has no Landlock: file confinement cannot be shown here ({said})");
        return;
    }
    assert!(said.contains("files confined (Landlock)"), "{said}");
    assert_eq!(open(&m, &secret), (403, "denied".to_owned()), "outside what it was given");
    assert_eq!(open(&m, Path::new("/etc/passwd")), (403, "denied".to_owned()));
    assert_eq!(open(&m, &allowed), (200, "opened".to_owned()), "allow_read");
    assert_eq!(get(m.http, ""), 200, "and it serves");
}

fn count(m: &Molt) -> u64 {
    let mut c = Client::connect(m.http);
    let r = c.get_with("/echo", "X-Count: 1\r\n").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    r.text().parse().unwrap()
}

/// The child maps molt's state file: the block it asked for is created by
/// molt (status lists it), its writes survive a crash of the child and a
/// restart of molt, and the same module run in process finds them.
#[test]
fn state_written_by_the_child_outlives_it_and_molt() {
    let dir = RunDir::new("iso-http-state");
    let (backend, _) = common::http::backend("b");
    let first = {
        let m = start(dir.path(), "restart", backend);
        wait_running(&m, 0);
        let a = count(&m);
        assert_eq!(count(&m), a + 1);
        let blocks = status(&m)["state_blocks"].clone();
        assert!(
            blocks.as_array().unwrap().iter().any(|b| b["owner"] == "fixture_crash" && b["name"] == "hits"),
            "molt made the child's block: {blocks}"
        );
        // The crash comes after its REQUEST hook counted.
        assert_eq!(get(m.http, "X-Crash: 1\r\n"), 500);
        wait_running(&m, 1);
        assert_eq!(count(&m), a + 3, "the new child continues the count");
        a + 3
    };
    // molt restarted, the module now in process: the same block.
    let m = start_with(dir.path(), "restart", backend, "in process");
    let until = Instant::now() + Duration::from_secs(10);
    while get(m.http, "") != 200 {
        assert!(Instant::now() < until, "molt did not serve");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(count(&m), first + 2, "in process, the module finds what its child wrote");
}

/// A reload that changes an isolated module swaps it under load: a new
/// child serves new transactions, those begun on the old child finish there,
/// the old child stops once drained, and no request fails.
#[test]
fn swapping_an_isolated_module_under_load_fails_no_request() {
    let dir = RunDir::new("iso-http-swap");
    let (backend, _) = common::http::backend("b");
    let m = start(dir.path(), "restart", backend);
    let old = wait_running(&m, 0);
    let (stop, ok, failed) =
        (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    // Slow answers: transactions span the swaps, their RESPONSE hooks going
    // to the child their REQUEST hook went to.
    let load: Vec<_> = (0..6)
        .map(|i| {
            let (s, o, f) = (stop.clone(), ok.clone(), failed.clone());
            let path = if i % 2 == 0 { "/delay/40" } else { "/echo" };
            std::thread::spawn(move || plain_load_of(m.http, path, s, o, f))
        })
        .collect();
    let cfg = dir.path().join("molt.toml");
    let mut pids = vec![old["pid"].as_u64().unwrap()];
    for i in 0..5 {
        // A config change of the module: a new version.
        let text = std::fs::read_to_string(&cfg).unwrap();
        let text = if i == 0 {
            let policy = "failure_policy = \"restart\"\n";
            text.replacen(policy, &format!("{policy}[modules.config]\ngen = \"0\"\n"), 1)
        } else {
            text.replace(&format!("gen = \"{}\"", i - 1), &format!("gen = \"{i}\""))
        };
        std::fs::write(&cfg, &text).unwrap();
        let out = Command::new(MOLT).args(["ctl", "reload", "--json", "--socket"]).arg(&m.socket).output().unwrap();
        assert!(out.status.success(), "reload {i}: {}", String::from_utf8_lossy(&out.stderr));
        let s = status(&m);
        let iso = s["isolated"].as_array().unwrap();
        let current = iso.iter().find(|x| x["state"] == "running").expect("a running child");
        let pid = current["pid"].as_u64().unwrap();
        assert!(!pids.contains(&pid), "swap {i}: a new child");
        pids.push(pid);
        let served = ok.load(Ordering::Relaxed);
        let until = Instant::now() + Duration::from_secs(10);
        while ok.load(Ordering::Relaxed) < served + 30 {
            assert!(Instant::now() < until, "no requests after swap {i}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join().unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "failed requests across 5 swaps");
    // Every old child drained and stopped; one serves.
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let iso = status(&m)["isolated"].as_array().unwrap().clone();
        if iso.len() == 1 && iso[0]["state"] == "running" {
            break;
        }
        assert!(Instant::now() < until, "old children left: {iso:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    for p in &pids[..pids.len() - 1] {
        assert!(!common::pid_alive(*p as u32), "old child {p} still runs");
    }
    // Each worker keeps a link per module and per swap still draining, not
    // one per swap ever made: with nothing in flight, five more swaps add
    // none. (Under load a swap may meet the one before still draining, so
    // the count after the loaded swaps depends on timing; this does not.)
    let links = || -> Vec<u64> {
        let text = metrics(&m);
        let v: Vec<u64> = text
            .lines()
            .filter(|l| l.starts_with("molt_isolated_links{"))
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
            .collect();
        assert!(!v.is_empty(), "no molt_isolated_links in the metrics:\n{text}");
        v
    };
    let before = links();
    assert!(before.iter().all(|&n| n <= 6), "links per worker after 5 swaps: {before:?}");
    for i in 5..10 {
        let text = std::fs::read_to_string(&cfg).unwrap();
        std::fs::write(&cfg, text.replace(&format!("gen = \"{}\"", i - 1), &format!("gen = \"{i}\""))).unwrap();
        let out = Command::new(MOLT).args(["ctl", "reload", "--json", "--socket"]).arg(&m.socket).output().unwrap();
        assert!(out.status.success(), "reload {i}: {}", String::from_utf8_lossy(&out.stderr));
    }
    assert_eq!(links(), before, "links per worker grew with swaps made while nothing was in flight");
}

/// `[modules.sandbox] user = "nobody"`: the child runs as that user (molt
/// runs as root here), so it cannot open a file only root may read.
#[test]
fn a_sandboxed_child_runs_as_another_user() {
    if rustix::process::geteuid().as_raw() != 0 {
        eprintln!("not root: sandbox.user cannot be shown on this machine");
        return;
    }
    let Ok((uid, _)) = molt_runtime::sys::sandbox::lookup_user("nobody") else {
        eprintln!("no user nobody on this machine: sandbox.user cannot be shown here");
        return;
    };
    let dir = RunDir::new("iso-http-user");
    let (backend, _) = common::http::backend("b");
    // The module where that user can read it.
    let public = std::env::temp_dir().join(format!("molt-iso-user-{}", std::process::id()));
    std::fs::create_dir_all(&public).unwrap();
    std::fs::set_permissions(&public, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let lib = public.join("libfixture_crash.so");
    std::fs::copy(module_lib("fixture_crash"), &lib).unwrap();
    std::fs::set_permissions(&lib, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let root_only = dir.path().join("root-only.txt");
    std::fs::write(&root_only, b"secret").unwrap();
    let m = start_lib(&dir.path().join("m"), "restart", backend, "[modules.sandbox]\nuser = \"nobody\"\n", &lib);
    let iso = wait_running(&m, 0);
    assert!(iso["sandbox"].as_str().unwrap().contains(&format!("uid {uid}")), "{iso}");
    let pid = iso["pid"].as_u64().unwrap();
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uids = st.lines().find(|l| l.starts_with("Uid:")).unwrap().to_owned();
    assert!(uids.split_whitespace().skip(1).all(|u| u == uid.to_string()), "{uids}");
    let mut c = Client::connect(m.http);
    let r = c.get_with("/echo", &format!("X-Open: {}\r\n", root_only.display())).unwrap();
    assert_eq!((r.status, r.text()), (403, "denied".to_owned()));
    assert_eq!(get(m.http, "X-Answer: 1\r\n"), 200);
    drop(m);
    let _ = std::fs::remove_dir_all(&public);
}

/// `[modules.sandbox] syscalls = "restricted"`: the child can make no new
/// process and no network socket (seccomp); without it, it can; the module
/// still serves (threads, its rings, its hooks).
#[test]
fn a_sandboxed_child_makes_no_process_and_no_network_socket() {
    let dir = RunDir::new("iso-http-seccomp");
    let (backend, _) = common::http::backend("b");
    let ask = |m: &Molt, h: &str| {
        let mut c = Client::connect(m.http);
        c.get_with("/echo", &format!("{h}: 1\r\n")).unwrap().text()
    };
    {
        let plain = start(&dir.path().join("plain"), "restart", backend);
        wait_running(&plain, 0);
        assert_eq!(ask(&plain, "X-Fork"), "fork allowed");
        assert_eq!(ask(&plain, "X-Net"), "net allowed");
    }
    let m = start_with(&dir.path().join("boxed"), "restart", backend, "[modules.sandbox]\nsyscalls = \"restricted\"\n");
    let iso = wait_running(&m, 0);
    assert!(iso["sandbox"].as_str().unwrap().contains("syscalls restricted (seccomp)"), "{iso}");
    assert_eq!(ask(&m, "X-Fork"), "fork denied");
    assert_eq!(ask(&m, "X-Net"), "net denied");
    assert_eq!(get(m.http, "X-Answer: 1\r\n"), 200);
    assert_eq!(get(m.http, ""), 200);
}
