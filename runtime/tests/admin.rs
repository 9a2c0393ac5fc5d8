//! The admin HTTP listener (`[admin] listen`): `/metrics` for Prometheus,
//! `/healthz` and `/readyz` for supervisors, on real sockets; what it says
//! to other methods, paths and broken requests; and `molt run` serving it
//! from its config.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{RunDir, module_cfg, module_lib};
use molt_runtime::ctl::AdminServer;

fn get(addr: SocketAddr, raw: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(raw).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, out)
}

#[test]
fn metrics_health_and_readiness() {
    let dir = RunDir::new("admin");
    let rt = common::proxy_runtime(dir.path(), vec![], vec![], &[]);
    let admin = AdminServer::start(rt.shared().clone(), "127.0.0.1:0".parse().unwrap()).unwrap();
    let a = admin.addr();
    assert_eq!(get(a, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").0, 200);
    let (status, body) = get(a, b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 503, "no module loaded yet: {body}");
    rt.reload(&[module_cfg("hello", &module_lib("hello"), &[])]).unwrap();
    let (status, body) = get(a, b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 200, "{body}");
    let (status, body) = get(a, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 200);
    assert!(body.contains("application/openmetrics-text; version=1.0.0"), "{body}");
    assert!(body.trim_end().ends_with("# EOF"), "a whole OpenMetrics exposition: {body}");
    assert!(body.contains("# TYPE molt_dispatch counter"), "{body}");
    assert!(body.contains("molt_reloads_total{kind=\"load\",result=\"ok\"} 1"), "{body}");
    assert_eq!(get(a, b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").0, 405);
    assert_eq!(get(a, b"GET /admin/secret HTTP/1.1\r\nHost: x\r\n\r\n").0, 404);
    let huge = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000));
    assert_eq!(get(a, huge.as_bytes()).0, 431);
    // A client that sends half a head does not hold up the next one.
    let _slow = {
        let mut s = TcpStream::connect(a).unwrap();
        s.write_all(b"GET /metr").unwrap();
        s
    };
    let t = Instant::now();
    assert_eq!(get(a, b"GET /healthz HTTP/1.1\r\n\r\n").0, 200);
    assert!(t.elapsed() < Duration::from_secs(1));
    drop(admin);
    rt.shutdown();
}

#[test]
fn molt_run_serves_the_admin_listener_of_its_config() {
    let dir = RunDir::new("admin-run");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let cfg = dir.path().join("molt.toml");
    std::fs::write(
        &cfg,
        format!(
            "[runtime]\nworkers = 1\nrun_dir = \"{}\"\n\n[admin]\nlisten = \"127.0.0.1:{port}\"\n\n[[modules]]\nname = \"hello\"\npath = \"{}\"\n",
            dir.path().join("run").display(),
            module_lib("hello").display()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_molt"))
        .args(["run", "--config"])
        .arg(&cfg)
        .args(["--for", "30"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let ready = loop {
        if let Ok(mut s) = TcpStream::connect(addr) {
            let _ = s.write_all(b"GET /readyz HTTP/1.1\r\n\r\n");
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            if out.starts_with("HTTP/1.1 200") {
                break true;
            }
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(ready, "molt run never served /readyz 200 on its admin listener");
}
