//! Binary upgrade with the real binary: `molt ctl upgrade` hands the
//! listening sockets, the control socket, the run dir's lock and the state
//! region to a new process while load runs, 20 times in a row, with nothing
//! refused, failed or cut; and every way the new process can fail leaves
//! the old one serving.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::http::Client;
use common::{RunDir, module_lib};
use serde_json::Value;

const MOLT: &str = env!("CARGO_BIN_EXE_molt");

/// The config: `hello` answers `/`, `/up` goes to a backend, a TCP route
/// whose connections the `counter` module owns, a TCP route to an echo
/// server, and `fixture_gate`, whose init a test can make hang or fail.
fn write_config(dir: &Path, run_dir: &Path, backend: SocketAddr, echo: SocketAddr) -> PathBuf {
    let cfg = dir.join("molt.toml");
    // The counter from a file of this test's own, which a test may replace.
    let counter = dir.join("libcounter.so");
    std::fs::copy(module_lib("counter"), &counter).unwrap();
    std::fs::write(
        &cfg,
        format!(
            r#"
[runtime]
workers = 2
run_dir = "{run}"
drain_deadline_ms = 5000
upgrade_ready_timeout_ms = 2000

[[modules]]
name = "hello"
path = "{hello}"

[[modules]]
name = "counter"
path = "{counter}"

[[modules]]
name = "fixture_gate"
path = "{gate}"
[modules.config]
hang_if = "{dir}/hang"
fail_if = "{dir}/fail"

[admin]
listen = "127.0.0.1:0"

[[http]]
name = "web"
listen = "127.0.0.1:0"
[http.upstreams]
back = ["{backend}"]
[[http.routes]]
path = "/"
modules = ["hello"]
[[http.routes]]
path = "/up"
upstream = "back"

[[tcp]]
listen = "127.0.0.1:0"
handler = "counter"

[[tcp]]
listen = "127.0.0.1:0"
upstreams = ["{echo}"]
"#,
            run = run_dir.display(),
            hello = module_lib("hello").display(),
            counter = counter.display(),
            gate = module_lib("fixture_gate").display(),
            dir = dir.display(),
        ),
    )
    .unwrap();
    cfg
}

/// An echo server: every connection gets its bytes back.
fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

/// A running molt (the first process, then whoever took over); every
/// process still alive is killed on drop.
struct Molt {
    first: Child,
    socket: PathBuf,
    run_dir: PathBuf,
    http: SocketAddr,
    counter: SocketAddr,
    echo: SocketAddr,
    admin: Option<SocketAddr>,
    pids: Vec<u32>,
}

impl Molt {
    fn start(cfg: &Path, run_dir: &Path) -> Molt {
        // The banner names the addresses; every later process writes to
        // the same pipe, which `banner` keeps draining.
        let (first, common::Banner { http, tcp, admin }) = common::molt_run(cfg, 300);
        let pid = first.id();
        Molt {
            first,
            socket: run_dir.join("ctl.sock"),
            run_dir: run_dir.to_owned(),
            http: http.unwrap(),
            counter: tcp[0],
            echo: tcp[1],
            admin,
            pids: vec![pid],
        }
    }

    fn ctl(&self, args: &[&str]) -> Result<Value, String> {
        let out =
            Command::new(MOLT).arg("ctl").args(args).arg("--json").arg("--socket").arg(&self.socket).output().unwrap();
        if out.status.success() {
            Ok(serde_json::from_slice(&out.stdout).unwrap())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Upgrade to the same binary; the new pid.
    fn upgrade(&mut self) -> u32 {
        let r = self.ctl(&["upgrade"]).unwrap_or_else(|e| panic!("upgrade failed: {e}"));
        assert_eq!(r["outcome"], "ok", "{r}");
        let pid = r["new_pid"].as_u64().unwrap() as u32;
        self.pids.push(pid);
        pid
    }

    /// The pid the run dir's lock names.
    fn lock_pid(&self) -> u32 {
        std::fs::read_to_string(self.run_dir.join("molt.lock")).unwrap().trim().parse().unwrap()
    }
}

impl Drop for Molt {
    fn drop(&mut self) {
        for &p in &self.pids {
            if common::pid_alive(p) {
                let _ = rustix::process::kill_process(
                    rustix::process::Pid::from_raw(p as i32).unwrap(),
                    rustix::process::Signal::KILL,
                );
            }
        }
        let _ = self.first.wait();
    }
}

/// What the load saw.
#[derive(Default)]
struct Seen {
    ok: AtomicU64,
    failed: AtomicU64,
    refused: AtomicU64,
    streams_ok: AtomicU64,
    /// Keep-alive responses that said `Connection: close` (the old
    /// process asking its clients to go).
    asked_to_go: AtomicU64,
    streams_broken: AtomicU64,
    counts: std::sync::Mutex<Vec<u64>>,
    why: std::sync::Mutex<Vec<String>>,
}

impl Seen {
    fn fail(&self, why: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut w = self.why.lock().unwrap();
        if w.len() < 20 {
            w.push(why);
        }
    }
}

fn connect(addr: SocketAddr, seen: &Seen) -> Option<TcpStream> {
    match TcpStream::connect(addr) {
        Ok(s) => {
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            s.set_nodelay(true).unwrap();
            Some(s)
        }
        Err(e) => {
            seen.refused.fetch_add(1, Ordering::Relaxed);
            seen.fail(format!("connect to {addr}: {e}"));
            None
        }
    }
}

/// Keep-alive GETs of `path` until `stop`; a response that says close
/// moves the client to a new connection.
fn keep_alive_load(addr: SocketAddr, path: &'static str, want: &'static str, stop: Arc<AtomicBool>, seen: Arc<Seen>) {
    let mut c: Option<Client> = None;
    while !stop.load(Ordering::Relaxed) {
        let mut client = match c.take() {
            Some(c) => c,
            None => match connect(addr, &seen) {
                Some(s) => Client::from_stream(s),
                None => continue,
            },
        };
        match client.get(path) {
            Some(r) if r.status == 200 && r.text().contains(want) => {
                seen.ok.fetch_add(1, Ordering::Relaxed);
                if r.close {
                    seen.asked_to_go.fetch_add(1, Ordering::Relaxed);
                } else {
                    c = Some(client);
                }
            }
            Some(r) => seen.fail(format!("GET {path}: {} {}", r.status, r.text())),
            None => seen.fail(format!("GET {path}: the connection closed without a response")),
        }
    }
}

/// One request per connection until `stop`.
fn new_connection_load(addr: SocketAddr, stop: Arc<AtomicBool>, seen: Arc<Seen>) {
    while !stop.load(Ordering::Relaxed) {
        let Some(s) = connect(addr, &seen) else { continue };
        let mut client = Client::from_stream(s);
        client.send(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        match client.read("GET") {
            Some(r) if r.status == 200 => {
                seen.ok.fetch_add(1, Ordering::Relaxed);
            }
            Some(r) => seen.fail(format!("new connection: {} {}", r.status, r.text())),
            None => seen.fail("new connection: closed without a response".into()),
        }
    }
}

/// Streams through the TCP proxy to the echo server: each writes 20
/// messages over about 100 ms and must read every byte back in order.
fn echo_streams(addr: SocketAddr, stop: Arc<AtomicBool>, seen: Arc<Seen>) {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let Some(mut s) = connect(addr, &seen) else { continue };
        n += 1;
        let mut intact = true;
        for i in 0..20u64 {
            let msg = format!("stream {n} message {i:>4} {:>40}\n", "x").into_bytes();
            let mut back = vec![0u8; msg.len()];
            if s.write_all(&msg).is_err() || s.read_exact(&mut back).is_err() || back != msg {
                intact = false;
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if intact {
            seen.streams_ok.fetch_add(1, Ordering::Relaxed);
        } else {
            seen.streams_broken.fetch_add(1, Ordering::Relaxed);
            seen.fail(format!("echo stream {n} broken"));
        }
    }
}

/// Increments through the counter module's TCP route: one byte each,
/// acknowledged with the new count.
fn counter_load(addr: SocketAddr, stop: Arc<AtomicBool>, seen: Arc<Seen>) {
    while !stop.load(Ordering::Relaxed) {
        let Some(mut s) = connect(addr, &seen) else { continue };
        for _ in 0..20 {
            let mut v = [0u8; 8];
            if s.write_all(b"+").is_err() || s.read_exact(&mut v).is_err() {
                seen.fail("counter: no acknowledgement".into());
                break;
            }
            seen.counts.lock().unwrap().push(u64::from_ne_bytes(v));
        }
    }
}

fn one_increment(addr: SocketAddr) -> u64 {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"+").unwrap();
    let mut v = [0u8; 8];
    s.read_exact(&mut v).unwrap();
    u64::from_ne_bytes(v)
}

fn start_load(m: &Molt, stop: &Arc<AtomicBool>, seen: &Arc<Seen>) -> Vec<std::thread::JoinHandle<()>> {
    let mut threads = Vec::new();
    let (http, counter, echo) = (m.http, m.counter, m.echo);
    for (path, want) in [("/", "hello"), ("/", "hello"), ("/up/echo", "")] {
        let (stop, seen) = (stop.clone(), seen.clone());
        threads.push(std::thread::spawn(move || keep_alive_load(http, path, want, stop, seen)));
    }
    let (st, se) = (stop.clone(), seen.clone());
    threads.push(std::thread::spawn(move || new_connection_load(http, st, se)));
    for _ in 0..2 {
        let (st, se) = (stop.clone(), seen.clone());
        threads.push(std::thread::spawn(move || echo_streams(echo, st, se)));
    }
    let (st, se) = (stop.clone(), seen.clone());
    threads.push(std::thread::spawn(move || counter_load(counter, st, se)));
    threads
}

fn wait_gone(pid: u32, within: Duration) -> bool {
    let until = Instant::now() + within;
    while common::pid_alive(pid) {
        if Instant::now() > until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

#[test]
fn twenty_upgrades_under_load_lose_nothing() {
    let dir = RunDir::new("upgrade-load");
    let run_dir = dir.path().join("run");
    let (backend, _) = common::http::backend("b");
    let cfg = write_config(dir.path(), &run_dir, backend, echo_server());
    let mut m = Molt::start(&cfg, &run_dir);
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Seen::default());
    let threads = start_load(&m, &stop, &seen);
    let until = Instant::now() + Duration::from_secs(10);
    while seen.ok.load(Ordering::Relaxed) < 200 || seen.counts.lock().unwrap().len() < 50 {
        assert!(Instant::now() < until, "the load never got going: {:?}", seen.why.lock().unwrap());
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut durations = Vec::new();
    for i in 0..20 {
        let before = m.pids.last().copied().unwrap();
        let at = Instant::now();
        let pid = m.upgrade();
        durations.push(at.elapsed());
        assert_ne!(pid, before);
        assert_eq!(m.lock_pid(), pid, "upgrade {i}: the lock names the new process");
        // Requests keep flowing between upgrades.
        let ok = seen.ok.load(Ordering::Relaxed);
        let until = Instant::now() + Duration::from_secs(10);
        while seen.ok.load(Ordering::Relaxed) < ok + 50 {
            assert!(Instant::now() < until, "no requests served after upgrade {i}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let why = seen.why.lock().unwrap().clone();
    assert_eq!(seen.refused.load(Ordering::Relaxed), 0, "refused connections: {why:?}");
    assert_eq!(seen.failed.load(Ordering::Relaxed), 0, "failed requests: {why:?}");
    assert_eq!(seen.streams_broken.load(Ordering::Relaxed), 0);
    assert!(seen.streams_ok.load(Ordering::Relaxed) >= 10, "echo streams ran across the upgrades");
    // Keep-alive clients left each old process when it asked them to (a
    // `Connection: close` answer), not at its drain deadline.
    assert!(seen.asked_to_go.load(Ordering::Relaxed) >= 20, "{}", seen.asked_to_go.load(Ordering::Relaxed));
    // Every acknowledged increment is there: the counts are distinct, and
    // the next one is one past all of them.
    let mut counts = seen.counts.lock().unwrap().clone();
    counts.sort_unstable();
    let n = counts.len() as u64;
    counts.dedup();
    assert_eq!(counts.len() as u64, n, "an increment was acknowledged twice");
    assert_eq!(one_increment(m.counter), n + 1, "every acknowledged increment survived 20 upgrades");
    // The last process answers status, with the whole history.
    let status = m.ctl(&["status"]).unwrap();
    let last = *m.pids.last().unwrap();
    assert_eq!(status["pid"].as_u64(), Some(u64::from(last)));
    let history = status["upgrades"].as_array().unwrap();
    assert_eq!(history.len(), 20);
    assert!(history.iter().all(|u| u["outcome"] == "ok"));
    // The admin listener went along: the last process serves it.
    let mut admin = Client::connect(m.admin.expect("the admin listener"));
    let r = admin.get("/metrics").expect("metrics from the admin listener");
    assert_eq!(r.status, 200);
    assert!(r.text().contains("molt_upgrades_total"), "{}", r.text());
    // Every old process drained and exited.
    for &p in &m.pids[..m.pids.len() - 1] {
        assert!(wait_gone(p, Duration::from_secs(10)), "old process {p} is still running");
    }
    durations.sort();
    eprintln!(
        "upgrades: {} requests ({} asked to go), {} increments, {} echo streams; upgrade time median {:?}, max {:?}",
        seen.ok.load(Ordering::Relaxed),
        seen.asked_to_go.load(Ordering::Relaxed),
        n,
        seen.streams_ok.load(Ordering::Relaxed),
        durations[durations.len() / 2],
        durations.last().unwrap()
    );
}

#[test]
fn a_failed_upgrade_leaves_the_old_process_serving() {
    let dir = RunDir::new("upgrade-fail");
    let run_dir = dir.path().join("run");
    let (backend, _) = common::http::backend("b");
    let cfg = write_config(dir.path(), &run_dir, backend, echo_server());
    let mut m = Molt::start(&cfg, &run_dir);
    let first = m.pids[0];
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Seen::default());
    let threads = start_load(&m, &stop, &seen);

    let expect_failure = |m: &Molt, args: &[&str], step: &str, words: &str| {
        let at = Instant::now();
        let e = m.ctl(args).expect_err("the upgrade must fail");
        assert!(e.contains(&format!("failed at step {step}")) && e.contains(words), "{args:?}: {e}");
        assert!(e.contains(&format!("pid {first}")) && e.contains("serves on"), "{e}");
        assert_eq!(m.ctl(&["status"]).unwrap()["pid"].as_u64(), Some(u64::from(first)), "the old one answers");
        assert_eq!(m.lock_pid(), first);
        at.elapsed()
    };
    // A binary that exits at once, and one that does not exist.
    expect_failure(&m, &["upgrade", "--binary", "/bin/false"], "start", "exited");
    expect_failure(&m, &["upgrade", "--binary", "/nonexistent/molt"], "start", "cannot start");
    // A new process that hangs before it is ready (its module's init
    // waits) is killed at upgrade_ready_timeout_ms.
    std::fs::write(dir.path().join("hang"), b"").unwrap();
    let took = expect_failure(&m, &["upgrade"], "ready", "not ready within 2 s");
    assert!(took < Duration::from_secs(8), "the ready timeout bounds it: {took:?}");
    std::fs::remove_file(dir.path().join("hang")).unwrap();
    // A new process whose module fails to load says so.
    std::fs::write(dir.path().join("fail"), b"").unwrap();
    expect_failure(&m, &["upgrade"], "ready", "failed at modules");
    std::fs::remove_file(dir.path().join("fail")).unwrap();
    // One upgrade at a time: a second request while one waits is refused.
    std::fs::write(dir.path().join("hang"), b"").unwrap();
    let (socket, molt) = (m.socket.clone(), MOLT);
    let waiting = std::thread::spawn(move || {
        Command::new(molt).args(["ctl", "upgrade", "--socket"]).arg(&socket).output().unwrap()
    });
    std::thread::sleep(Duration::from_millis(500));
    expect_failure(&m, &["upgrade"], "start", "another upgrade is running; one at a time");
    let first_one = waiting.join().unwrap();
    assert!(String::from_utf8_lossy(&first_one.stderr).contains("not ready within"));
    std::fs::remove_file(dir.path().join("hang")).unwrap();
    // A module file replaced by one at another state schema would need a
    // migration, which no process may commit while the writer role moves.
    let counter = dir.path().join("libcounter.so");
    let saved = dir.path().join("libcounter.so.saved");
    std::fs::rename(&counter, &saved).unwrap();
    std::fs::copy(module_lib("counter_v2"), &counter).unwrap();
    expect_failure(&m, &["upgrade"], "ready", "not this process's to change now");
    std::fs::rename(&saved, &counter).unwrap();
    // A config changed since it was loaded is refused before anything starts.
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, format!("{text}\n# edited\n")).unwrap();
    expect_failure(&m, &["upgrade"], "check", "changed since this process last loaded it");
    std::fs::write(&cfg, &text).unwrap();
    // A new process that read another config is refused at the handshake.
    let other = dir.path().join("other.toml");
    std::fs::write(&other, text.replace("drain_deadline_ms = 5000", "drain_deadline_ms = 4000")).unwrap();
    let script = dir.path().join("other-config.sh");
    std::fs::write(&script, format!("#!/bin/sh\nexec {MOLT} run --config {}\n", other.display())).unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    expect_failure(&m, &["upgrade", "--binary", script.to_str().unwrap()], "handshake", "another config");

    // The processes started were killed and reaped.
    let status = m.ctl(&["status"]).unwrap();
    let history = status["upgrades"].as_array().unwrap().clone();
    assert_eq!(history.len(), 9);
    for u in &history {
        assert_eq!(u["outcome"], "failed");
        let p = u["new_pid"].as_u64().unwrap() as u32;
        assert!(p == 0 || !common::pid_alive(p), "the failed new process {p} is gone");
    }
    let metrics = m.ctl(&["metrics"]).unwrap();
    let text = metrics.as_str().unwrap();
    assert!(text.contains(r#"molt_upgrades_total{result="failed"} 9"#), "{text}");
    // And the old process can still upgrade.
    let pid = m.upgrade();
    assert_eq!(m.lock_pid(), pid);
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let why = seen.why.lock().unwrap().clone();
    assert_eq!(seen.failed.load(Ordering::Relaxed), 0, "failed requests: {why:?}");
    assert!(seen.ok.load(Ordering::Relaxed) > 100);
    assert!(wait_gone(first, Duration::from_secs(10)), "the old process exits after the good upgrade");
}

/// Under a `Type=notify` unit: the listening socket comes from systemd
/// (`LISTEN_FDS`, descriptor 3, with a connection already queued on it) and
/// readiness goes to `NOTIFY_SOCKET`, from the new process after an upgrade.
#[test]
fn systemd_socket_activation_and_readiness_across_an_upgrade() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let dir = RunDir::new("upgrade-systemd");
    let run_dir = dir.path().join("run");
    let (backend, _) = common::http::backend("b");
    let cfg = write_config(dir.path(), &run_dir, backend, echo_server());
    // The socket systemd would have bound, and a client already waiting on it.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let text = std::fs::read_to_string(&cfg).unwrap();
    let text =
        text.replacen("name = \"web\"\nlisten = \"127.0.0.1:0\"", &format!("name = \"web\"\nlisten = \"{addr}\""), 1);
    std::fs::write(&cfg, text).unwrap();
    let mut early = Client::from_stream(TcpStream::connect(addr).unwrap());
    early.send(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n");
    let notify_path = dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let fd = listener.as_raw_fd();
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", "LISTEN_PID=$$ exec \"$0\" \"$@\"", MOLT, "run", "--config"])
        .arg(&cfg)
        .args(["--for", "120"])
        .env("LISTEN_FDS", "1")
        .env("NOTIFY_SOCKET", &notify_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: between fork and exec only dup2 runs (async-signal-safe); it
    // puts the listener at descriptor 3, without close-on-exec, as systemd does.
    unsafe {
        cmd.pre_exec(move || {
            let r = libc_dup2(fd, 3);
            if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
        });
    }
    let child = cmd.spawn().unwrap();
    drop(listener);
    let mut m = Molt {
        first: child,
        socket: run_dir.join("ctl.sock"),
        run_dir: run_dir.clone(),
        http: addr,
        counter: addr,
        echo: addr,
        admin: None,
        pids: vec![],
    };
    m.pids.push(m.first.id());
    let mut buf = [0u8; 256];
    let n = notify.recv(&mut buf).expect("READY=1 from molt");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert_eq!(msg, format!("MAINPID={}\nREADY=1", m.pids[0]));
    // The connection queued before molt started is served.
    let r = early.read("GET").expect("the early client's answer");
    assert_eq!(r.status, 200);
    assert!(r.text().contains("hello"));
    // After an upgrade, the new process is the main one and says so.
    let new = m.upgrade();
    let n = notify.recv(&mut buf).expect("the new process's READY=1");
    assert_eq!(String::from_utf8_lossy(&buf[..n]), format!("MAINPID={new}\nREADY=1"));
    let mut c = Client::connect(addr);
    assert_eq!(c.get("/").unwrap().status, 200);
    assert!(wait_gone(m.pids[0], Duration::from_secs(10)));
}

/// `dup2` through rustix, for the pre-exec hook above.
fn libc_dup2(from: i32, to: i32) -> i32 {
    use std::os::fd::BorrowedFd;
    // SAFETY: `from` is the listener, open in this (forked) process; `to`
    // becomes a new descriptor owned by the program about to be exec'd.
    let from_fd = unsafe { BorrowedFd::borrow_raw(from) };
    if from == to {
        // dup2 onto itself keeps close-on-exec: clear it instead.
        return if rustix::io::fcntl_setfd(from_fd, rustix::io::FdFlags::empty()).is_ok() { to } else { -1 };
    }
    // SAFETY: descriptor 3 is free for the taking in the child (it is
    // replaced, as dup2 does); the OwnedFd is forgotten so it stays open.
    let mut to_fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(to) };
    let r = rustix::io::dup2(from_fd, &mut to_fd);
    std::mem::forget(to_fd);
    if r.is_ok() { to } else { -1 }
}

/// A new process whose isolated module cannot start is not ready: the
/// upgrade fails at its modules and the old process serves on.
#[test]
fn an_isolated_module_that_cannot_start_fails_the_upgrade() {
    let dir = RunDir::new("upgrade-iso");
    let run_dir = dir.path().join("run");
    let cfg = dir.path().join("molt.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[runtime]
workers = 2
run_dir = "{run}"
drain_deadline_ms = 2000

[[modules]]
name = "fixture_gate"
path = "{gate}"
isolation = "process"
[modules.config]
fail_if = "{dir}/fail"

[[modules]]
name = "hello"
path = "{hello}"

[[http]]
name = "web"
listen = "127.0.0.1:0"
[[http.routes]]
path = "/"
modules = ["fixture_gate", "hello"]
"#,
            run = run_dir.display(),
            gate = module_lib("fixture_gate").display(),
            hello = module_lib("hello").display(),
            dir = dir.path().display(),
        ),
    )
    .unwrap();
    let (child, banner) = common::molt_run(&cfg, 120);
    let http = banner.http.expect("an HTTP listener");
    let pid = child.id();
    let m = Molt {
        first: child,
        socket: run_dir.join("ctl.sock"),
        run_dir,
        http,
        counter: http,
        echo: http,
        admin: None,
        pids: vec![pid],
    };
    let mut c = Client::connect(m.http);
    assert_eq!(c.get("/").unwrap().status, 200);
    std::fs::write(dir.path().join("fail"), b"").unwrap();
    let e = m.ctl(&["upgrade"]).expect_err("the new process's isolated module does not start");
    assert!(e.contains("failed at step ready") && e.contains("isolated module fixture_gate"), "{e}");
    assert_eq!(m.lock_pid(), pid);
    assert_eq!(Client::connect(m.http).get("/").unwrap().status, 200, "the old process serves on");
}

/// Socket activation given nonsense, or a socket the config does not
/// listen on: molt refuses to start, saying which.
#[test]
fn socket_activation_refuses_what_it_cannot_use() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let dir = RunDir::new("upgrade-sd-bad");
    let run_dir = dir.path().join("run");
    let (backend, _) = common::http::backend("b");
    let cfg = write_config(dir.path(), &run_dir, backend, echo_server());
    let run = |fds: &str, listener: Option<&TcpListener>| {
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "LISTEN_PID=$$ exec \"$0\" \"$@\"", MOLT, "run", "--config"])
            .arg(&cfg)
            .args(["--for", "5"])
            .env("LISTEN_FDS", fds)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(l) = listener {
            let fd = l.as_raw_fd();
            // SAFETY: only dup2 runs between fork and exec (async-signal-safe).
            unsafe {
                cmd.pre_exec(move || if libc_dup2(fd, 3) < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) });
            }
        }
        cmd.output().unwrap()
    };
    let out = run("abc", None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("LISTEN_FDS=\"abc\" is not a number"), "{:?}", out);
    let stray = TcpListener::bind("127.0.0.1:0").unwrap();
    let out = run("1", Some(&stray));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("systemd passed a socket on {}", stray.local_addr().unwrap())), "{err}");
}

/// A "new process" that connects to the upgrade socket and speaks nonsense
/// (a frame that is not the protocol, or one claiming 100 MB) is refused at
/// the handshake; the old process serves on. The fake is this test binary,
/// run again by a script in the new binary's place.
#[test]
fn a_new_process_that_speaks_nonsense_is_refused() {
    if let Ok(kind) = std::env::var("MOLT_FAKE_JOINER") {
        let path = std::env::var("MOLT_UPGRADE_SOCKET").expect("started by an upgrade");
        let mut s = std::os::unix::net::UnixStream::connect(path).unwrap();
        if kind == "huge" {
            s.write_all(&(100u32 << 20).to_le_bytes()).unwrap();
        } else {
            let body = b"{\"type\":\"hello\",\"nonsense\":true}";
            s.write_all(&(body.len() as u32).to_le_bytes()).unwrap();
            s.write_all(body).unwrap();
        }
        std::thread::sleep(Duration::from_secs(30));
        return;
    }
    let dir = RunDir::new("upgrade-fake");
    let run_dir = dir.path().join("run");
    let (backend, _) = common::http::backend("b");
    let cfg = write_config(dir.path(), &run_dir, backend, echo_server());
    let m = Molt::start(&cfg, &run_dir);
    let first = m.pids[0];
    let me = std::env::current_exe().unwrap();
    for (kind, want) in [("json", "not the upgrade protocol"), ("huge", "bytes (at most")] {
        let script = dir.path().join(format!("fake-{kind}.sh"));
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nMOLT_FAKE_JOINER={kind} exec {} --exact a_new_process_that_speaks_nonsense_is_refused --nocapture\n",
                me.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        let e = m.ctl(&["upgrade", "--binary", script.to_str().unwrap()]).expect_err("refused");
        assert!(e.contains("failed at step handshake") && e.contains(want), "{kind}: {e}");
        assert_eq!(m.lock_pid(), first);
        assert_eq!(Client::connect(m.http).get("/").unwrap().status, 200, "the old process serves on");
    }
}
