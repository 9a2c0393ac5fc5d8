//! The control plane with the real `molt` binary: `molt run` with a config
//! file, `molt ctl` over the socket, SIGHUP reloads, SIGTERM stops, config
//! errors, and the socket refusing other users.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{RunDir, module_lib};
use molt_runtime::ctl::{ConfigSource, ControlServer};
use molt_runtime::{Runtime, RuntimeConfig};
use serde_json::Value;

const MOLT: &str = env!("CARGO_BIN_EXE_molt");

fn ctl(socket: &Path, cmd: &str) -> Output {
    Command::new(MOLT).args(["ctl", cmd, "--json", "--socket"]).arg(socket).output().expect("run molt ctl")
}

fn ctl_json(socket: &Path, cmd: &str) -> Value {
    let out = ctl(socket, cmd);
    assert!(out.status.success(), "molt ctl {cmd}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON reply")
}

fn write_config(dir: &Path, run_dir: &Path, greeting: &str) -> PathBuf {
    let cfg = dir.join("molt.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[runtime]
workers = 2
run_dir = "{}"
drain_deadline_ms = 1000

[[modules]]
name = "hello"
path = "{}"
[modules.config]
greeting = "{greeting}"

[[modules]]
name = "echo_c"
path = "{}"
"#,
            run_dir.display(),
            module_lib("hello").display(),
            module_lib("echo_c").display()
        ),
    )
    .unwrap();
    cfg
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !path.exists() {
        assert!(Instant::now() < deadline, "{} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn molt_run_serves_the_control_socket_reloads_on_sighup_and_stops_on_sigterm() {
    let dir = RunDir::new("ctl-run");
    let run_dir = dir.path().join("run");
    let cfg = write_config(dir.path(), &run_dir, "one");
    let child = Command::new(MOLT)
        .args(["run", "--config"])
        .arg(&cfg)
        .args(["--for", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut molt = Running(child);
    let socket = run_dir.join("ctl.sock");
    wait_for(&socket);
    assert_eq!(std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777, 0o600, "the socket is 0600");

    let status = ctl_json(&socket, "status");
    let modules: Vec<&str> =
        status["generation"]["modules"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(modules, ["hello", "echo_c"]);
    assert_eq!(status["workers"].as_array().unwrap().len(), 2);

    // An explicit reload of an unchanged config keeps every version.
    let r = ctl_json(&socket, "reload");
    assert_eq!(r["ok"], true);
    assert_eq!(r["kept"].as_array().unwrap().len(), 2, "{r}");

    // SIGHUP after a config change: hello is loaded anew, echo_c kept.
    write_config(dir.path(), &run_dir, "two");
    signal(&molt, rustix::process::Signal::HUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    let reloads = loop {
        let s = ctl_json(&socket, "status");
        let n = s["reloads"].as_array().unwrap().len();
        if n >= 3 {
            break s["reloads"].clone();
        }
        assert!(Instant::now() < deadline, "SIGHUP reload never happened");
        std::thread::sleep(Duration::from_millis(50));
    };
    let last = &reloads[2];
    assert_eq!((last["ok"].as_bool(), last["loaded"].as_array().unwrap().len()), (Some(true), 1), "{last}");
    assert!(last["loaded"][0].as_str().unwrap().starts_with("hello"), "{last}");

    // Rollback over the socket, and metrics.
    let r = ctl_json(&socket, "rollback");
    assert_eq!(r["kind"], "rollback");
    let metrics = ctl_json(&socket, "metrics");
    let text = metrics.as_str().unwrap();
    assert!(text.contains("molt_dispatch_total{worker=\"0\"}"), "{text}");
    assert!(text.contains("molt_reloads_total{kind=\"rollback\",result=\"ok\"} 1"), "{text}");
    assert!(text.contains("molt_versions_loaded{module=\"hello\"}"), "{text}");
    assert!(text.contains("molt_http_requests_total{worker=\"0\"} 0"), "{text}");
    assert!(text.contains("molt_http_responses_total{worker=\"1\",class=\"5xx\"} 0"), "{text}");

    // The human table.
    let out = Command::new(MOLT).args(["ctl", "status", "--socket"]).arg(&socket).output().unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("active generation") && table.contains("hello"), "{table}");

    // SIGTERM: a clean stop that unloads everything.
    signal(&molt, rustix::process::Signal::TERM);
    let out = std::mem::replace(&mut molt.0, Command::new("true").spawn().unwrap()).wait_with_output().unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("molt stopped:") && stdout.contains("0 pinned"), "{stdout}");
    assert!(!socket.exists(), "the socket is removed on stop");
}

fn signal(child: &Running, sig: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(child.0.id() as i32).expect("child pid");
    rustix::process::kill_process(pid, sig).expect("signal the molt process");
}

#[test]
fn molt_run_refuses_a_bad_config_naming_file_line_and_key() {
    let dir = RunDir::new("ctl-badcfg");
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[runtime]\nworkers = 1\n\n[[modules]]\nname = \"hello\"\npath = \"x.so\"\nmode = \"fast\"\n")
        .unwrap();
    let out = Command::new(MOLT).args(["run", "--config"]).arg(&cfg).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("config {}:7:", cfg.display())), "{err}");
    assert!(err.contains("unknown variant `fast`") && err.contains("drain"), "{err}");

    std::fs::write(&cfg, "[[modules]]\nname = \"hello\"\npath = \"missing.so\"\n").unwrap();
    let out = Command::new(MOLT).args(["run", "--config"]).arg(&cfg).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("module hello:") && err.contains("missing.so: not found"), "{err}");
}

/// The socket is 0600 in a 0700 directory, and the server checks the
/// peer's uid with SO_PEERCRED: another user is refused both ways. Needs
/// root (to run a client as uid 65534), which CI has.
#[test]
fn another_uid_cannot_use_the_control_socket() {
    if molt_runtime::sys::files::effective_uid() != 0 {
        assert!(std::env::var_os("CI").is_none(), "CI runs as root: this test must not skip there");
        eprintln!("skipped: needs root to run a client as another uid");
        return;
    }
    let dir = RunDir::new("ctl-uid");
    let run_dir = dir.path().join("run");
    let rt =
        Runtime::start(RuntimeConfig { workers: 1, run_dir: run_dir.clone(), ..RuntimeConfig::default() }).unwrap();
    let server =
        ControlServer::start(Arc::clone(rt.shared()), ConfigSource::Builtin(PathBuf::from("/nonexistent"))).unwrap();
    let socket = server.path().to_owned();
    // A copy of the client that uid 65534 can reach, wherever the build tree lives.
    let client_dir = RunDir::new("ctl-uid-client");
    std::fs::set_permissions(client_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let client = client_dir.path().join("molt");
    std::fs::copy(MOLT, &client).unwrap();
    std::fs::set_permissions(&client, std::fs::Permissions::from_mode(0o755)).unwrap();
    let as_nobody = || {
        Command::new(&client).args(["ctl", "status", "--socket"]).arg(&socket).uid(65534).gid(65534).output().unwrap()
    };
    // The owner may.
    assert!(ctl(&socket, "status").status.success());
    // Another uid cannot even reach it: 0700 run directory, 0600 socket.
    let out = as_nobody();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Opened up on the file system, the peer-credential check still refuses it.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&run_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = as_nobody();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("permission denied: uid 65534 may not use this control socket"), "{err}");
}

#[test]
fn the_built_in_default_serves_http_through_the_example_modules() {
    use std::io::{BufRead, BufReader, Read, Write};
    common::module_lib("hello"); // builds the example modules next to the binary
    let dir = RunDir::new("ctl-default");
    let child = Command::new(MOLT)
        .args(["run", "--http", "127.0.0.1:0", "--for", "60"])
        .env("XDG_RUNTIME_DIR", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut molt = Running(child);
    let mut lines = BufReader::new(molt.0.stdout.take().unwrap()).lines();
    let mut printed = Vec::new();
    let addr = loop {
        let line = lines.next().expect("molt printed its HTTP address").unwrap();
        printed.push(line.clone());
        if let Some(rest) = line.strip_prefix("http: http://") {
            break rest.split('/').next().unwrap().to_owned();
        }
    };
    for _ in 0..3 {
        printed.push(lines.next().unwrap().unwrap());
    }
    let text = printed.join("\n");
    assert!(text.contains("[rate_limit, header_rewrite, hello]"), "{text}");
    assert!(text.contains("control socket:") && text.contains("reload:"), "{text}");
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
    assert!(resp.contains("X-Served-By: molt\r\n"), "{resp}");
    assert!(resp.ends_with("hello from hello 1.0.0\n"), "{resp}");
    signal(&molt, rustix::process::Signal::TERM);
    let status = molt.0.wait().unwrap();
    assert!(status.success());
    let rest: Vec<String> = lines.map_while(|l| l.ok()).collect();
    assert!(rest.iter().any(|l| l.starts_with("molt stopped:") && l.contains("0 pinned")), "{rest:?}");
}

/// Requests that arrive while molt is still loading its modules wait for
/// them (in the listen backlog) instead of getting 503 "not loaded".
#[test]
fn requests_during_the_first_load_wait_for_the_modules() {
    let dir = RunDir::new("ctl-early");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(MOLT)
        .args(["run", "--http", &format!("127.0.0.1:{port}"), "--for", "30"])
        .env("XDG_RUNTIME_DIR", dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _molt = Running(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    // As soon as the port takes connections, several requests at once.
    let conns: Vec<std::net::TcpStream> = loop {
        if let Ok(s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let mut v = vec![s];
            v.extend((0..7).filter_map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).ok()));
            break v;
        }
        assert!(Instant::now() < deadline, "molt never listened");
        std::thread::sleep(Duration::from_millis(2));
    };
    for mut s in conns {
        use std::io::{Read, Write};
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    }
}
