//! A module that fails on every request must not flood the log: the real
//! binary, a route whose module panics at each request, and its stderr
//! counted. The metrics stay exact.

mod common;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{RunDir, module_lib};

const MOLT: &str = env!("CARGO_BIN_EXE_molt");

#[test]
fn a_module_failing_in_a_loop_logs_a_bounded_number_of_lines() {
    let dir = RunDir::new("log-flood");
    let run_dir = dir.path().join("run");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let cfg = dir.path().join("molt.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[runtime]
workers = 1
run_dir = "{}"

[[modules]]
name = "fixture_probe"
path = "{}"
failure_policy = "fail_open"

[[http]]
listen = "127.0.0.1:{port}"
[[http.routes]]
path = "/"
modules = ["fixture_probe"]
"#,
            run_dir.display(),
            module_lib("fixture_probe").display()
        ),
    )
    .unwrap();
    let stderr = dir.path().join("stderr.log");
    let mut child = Command::new(MOLT)
        .args(["run", "--config"])
        .arg(&cfg)
        .args(["--for", "60"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    // The control socket opens once the modules are loaded.
    while !run_dir.join("ctl.sock").exists() {
        assert!(Instant::now() < deadline, "molt did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    // 1,000 requests that each make the module panic (fail_open: the
    // request goes on without it; the route has no upstream: a 502, which
    // closes the connection).
    const N: usize = 1000;
    let mut statuses = std::collections::BTreeMap::new();
    for _ in 0..N {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Panic: 1\r\n\r\n").unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        assert!(got.starts_with(b"HTTP/1.1 "), "{}", String::from_utf8_lossy(&got));
        *statuses.entry(String::from_utf8_lossy(&got[9..12]).into_owned()).or_insert(0) += 1;
    }
    assert_eq!(statuses.keys().collect::<Vec<_>>(), ["502"], "fail_open, no upstream: {statuses:?}");
    let metrics =
        Command::new(MOLT).args(["ctl", "metrics", "--socket"]).arg(run_dir.join("ctl.sock")).output().unwrap();
    let metrics = String::from_utf8_lossy(&metrics.stdout).into_owned();
    let _ = rustix::process::kill_process(rustix::process::Pid::from_child(&child), rustix::process::Signal::TERM);
    let _ = child.wait();
    let log = std::fs::read_to_string(&stderr).unwrap();
    let lines = log.lines().filter(|l| l.contains("fixture_probe") && !l.contains("loaded")).count();
    assert!(
        lines <= 30,
        "{lines} log lines for {N} failures:\n{}",
        log.lines().take(40).collect::<Vec<_>>().join("\n")
    );
    assert!(log.contains("not logged"), "no summary of the failures left out:\n{log}");
    let failures: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("molt_http_hook_failures_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(failures, N as u64, "the metric counts every failure:\n{metrics}");
}
