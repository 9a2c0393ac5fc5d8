//! An isolated module with the real binary: the module's library in a
//! `molt module-host` child over shared-memory rings. Calls round-trip; a
//! segfault, an abort and an endless loop in the module are the child's
//! (the caller gets an error and goes on); a module that fails to load says
//! why; the child does not outlive its parent.

mod common;

use std::time::{Duration, Instant};

use common::module_lib;
use molt_runtime::isolate::{IsolateError, Isolated};

const MOLT: &str = env!("CARGO_BIN_EXE_molt");

fn spawn(module: &str) -> Result<Isolated, IsolateError> {
    Isolated::spawn(std::path::Path::new(MOLT), &module_lib(module), &[], Duration::from_secs(10))
}

#[test]
fn calls_round_trip_through_the_child() {
    let mut iso = spawn("hello").unwrap();
    assert!(iso.loaded.starts_with("hello "), "{}", iso.loaded);
    assert_ne!(iso.pid(), std::process::id());
    for i in 0..1000u32 {
        let replies = iso.call(7, &i.to_le_bytes(), Duration::from_secs(5)).unwrap();
        assert_eq!(replies.len(), 1);
        assert_eq!(replies[0].tag, 7);
        assert!(String::from_utf8_lossy(&replies[0].data).contains("hello"));
    }
    // Larger than one ring's record limit: refused, and the child serves on.
    let e = iso.call(7, &vec![0u8; molt_runtime::isolate::RING_CAP], Duration::from_secs(5)).unwrap_err();
    assert!(e.to_string().contains("larger than this ring takes"), "{e}");
    assert_eq!(iso.call(7, b"again", Duration::from_secs(5)).unwrap().len(), 1);
}

#[test]
fn a_crash_or_a_hang_in_the_module_is_the_childs() {
    for (tag, what) in [(666u64, "SIGSEGV"), (668, "SIGABRT")] {
        let mut iso = spawn("fixture_crash").unwrap();
        let pid = iso.pid();
        assert_eq!(iso.call(1, b"x", Duration::from_secs(5)).unwrap()[0].data, b"okx");
        let t = Instant::now();
        let e = iso.call(tag, b"", Duration::from_secs(10)).unwrap_err();
        assert!(matches!(e, IsolateError::Died(_)), "{e}");
        assert!(e.to_string().contains(what), "the exit status names the signal: {e}");
        assert!(t.elapsed() < Duration::from_secs(2), "a death is noticed within a nap: {:?}", t.elapsed());
        assert!(!common::pid_alive(pid));
        // This process is fine, and a new child serves.
        let mut again = spawn("fixture_crash").unwrap();
        assert_eq!(again.call(2, b"y", Duration::from_secs(5)).unwrap()[0].data, b"oky");
    }
    // An endless loop: the call times out and the child is killed.
    let mut iso = spawn("fixture_crash").unwrap();
    let pid = iso.pid();
    let t = Instant::now();
    let e = iso.call(667, b"", Duration::from_millis(300)).unwrap_err();
    assert!(matches!(e, IsolateError::Timeout(_)), "{e}");
    assert!(t.elapsed() < Duration::from_secs(2));
    let until = Instant::now() + Duration::from_secs(5);
    while common::pid_alive(pid) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!common::pid_alive(pid), "the hung child was killed");
}

#[test]
fn a_module_that_fails_to_load_says_why() {
    let e = spawn("fixture_init_fails").err().expect("refused");
    assert!(e.to_string().contains("the config key 'upstream' is required"), "{e}");
    let e = Isolated::spawn(
        std::path::Path::new(MOLT),
        std::path::Path::new("/nonexistent/lib.so"),
        &[],
        Duration::from_secs(10),
    )
    .err()
    .expect("refused");
    assert!(e.to_string().contains("/nonexistent/lib.so"), "{e}");
}

/// The child dies with its parent: a process that holds an isolated module
/// and is killed leaves no child behind.
#[test]
fn the_child_does_not_outlive_its_parent() {
    if std::env::var_os("MOLT_ISOLATE_PARENT").is_some() {
        let iso = spawn("hello").unwrap();
        println!("child {} {}", iso.pid(), iso.dir().display());
        std::thread::sleep(Duration::from_secs(60));
        return;
    }
    let mut parent = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "the_child_does_not_outlive_its_parent", "--nocapture"])
        .env("MOLT_ISOLATE_PARENT", "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(parent.stdout.take().unwrap());
    let mut line = String::new();
    let (pid, dir): (u32, String) = loop {
        line.clear();
        assert!(std::io::BufRead::read_line(&mut out, &mut line).unwrap() > 0, "the parent never said its child");
        if let Some(p) = line.trim().strip_prefix("child ") {
            let (pid, dir) = p.split_once(' ').unwrap();
            break (pid.parse().unwrap(), dir.to_owned());
        }
    };
    assert!(common::pid_alive(pid));
    parent.kill().unwrap();
    parent.wait().unwrap();
    let until = Instant::now() + Duration::from_secs(5);
    while common::pid_alive(pid) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!common::pid_alive(pid), "the child {pid} outlived its parent");
    // A killed parent cannot clean up after its child: we do.
    let _ = std::fs::remove_dir_all(dir);
}

mod hooks {
    use std::cell::RefCell;
    use std::time::Duration;

    use molt_abi::ffi::*;
    use molt_runtime::http::head::{Limits, parse_request};
    use molt_runtime::http::isolated::{apply, decode_reply, snapshot};
    use molt_runtime::http::site::{HttpLimits, HttpRoute, HttpSite};
    use molt_runtime::http::txn::{TxnData, View};
    use molt_runtime::isolate::{IsolateError, Isolated};

    use super::{MOLT, module_lib};

    fn site() -> HttpSite {
        HttpSite {
            name: "web".into(),
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 1)),
            routes: vec![HttpRoute {
                name: "all".into(),
                host: None,
                path: "/".into(),
                upstream: Some(0),
                modules: vec![],
                retry_non_idempotent: false,
            }],
            groups: vec![("back".into(), vec![])],
            limits: HttpLimits::default(),
        }
    }

    fn txn(extra: &str) -> TxnData {
        let raw = format!("GET /path HTTP/1.1\r\nHost: example\r\n{extra}\r\n");
        let Ok(Some((req, _))) = parse_request(raw.as_bytes(), &Limits::default()) else { panic!("parse") };
        TxnData { id: 5, req, route: 0, group: Some(0), answer: None, resp: None, upstream_addr: None }
    }

    /// Run the REQUEST hook of `iso` on a request with `extra` header
    /// lines, apply its edits here; the transaction after.
    fn request_hook(iso: &mut Isolated, extra: &str) -> Result<TxnData, IsolateError> {
        let site = site();
        let mut data = txn(extra);
        {
            let view = View { t: RefCell::new(&mut data), site: &site, peer: "10.1.2.3:4", kind: MOLT_EV_HTTP_REQUEST };
            let snap = snapshot(&view, 5, (0, 0));
            let reply = decode_reply(&iso.hook(&snap, Duration::from_secs(2))?).unwrap();
            assert_eq!(reply.failed, None);
            apply(&reply, &view).unwrap();
        }
        Ok(data)
    }

    fn spawn(module: &str, config: &[(&str, &str)]) -> Isolated {
        let config: Vec<(String, String)> = config.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
        Isolated::spawn(std::path::Path::new(MOLT), &module_lib(module), &config, Duration::from_secs(10)).unwrap()
    }

    /// A hook in the child reads the transaction from its snapshot, and
    /// what it changed comes back and is applied here: one round trip.
    #[test]
    fn hooks_run_in_the_child_and_their_edits_apply_here() {
        let mut rw = spawn("header_rewrite", &[("request.set.X-Rw", "on"), ("request.remove.X-Drop", "")]);
        let t = request_hook(&mut rw, "X-Drop: 1\r\n").unwrap();
        let names: Vec<&str> = t.req.headers.iter().map(|h| h.name.as_str()).collect();
        assert!(names.contains(&"X-Rw") && !names.contains(&"X-Drop"), "{names:?}");
        let mut hello = spawn("hello", &[]);
        let t = request_hook(&mut hello, "").unwrap();
        let a = t.answer.expect("hello answers");
        assert_eq!(a.status, 200);
        assert!(String::from_utf8_lossy(&a.body).contains("hello"));
        let mut c = spawn("fixture_crash", &[]);
        let t = request_hook(&mut c, "").unwrap();
        assert!(t.req.headers.iter().any(|h| h.name == "X-Isolated" && &h.value[..] == b"yes"));
        let t = request_hook(&mut c, "X-Answer: 1\r\n").unwrap();
        assert_eq!(t.answer.map(|a| a.body), Some(b"isolated answer".to_vec()));
    }

    /// `X-Crash` segfaults the module in its REQUEST hook: the child dies,
    /// this process does not, and a new child serves. `X-Loop` never
    /// returns: the hook times out and the child is killed.
    #[test]
    fn a_hook_that_crashes_or_hangs_is_the_childs() {
        let mut c = spawn("fixture_crash", &[]);
        let e = request_hook(&mut c, "X-Crash: 1\r\n").expect_err("the child died");
        assert!(matches!(e, IsolateError::Died(_)) && e.to_string().contains("SIGSEGV"), "{e}");
        let mut again = spawn("fixture_crash", &[]);
        assert!(request_hook(&mut again, "").is_ok());
        let pid = again.pid();
        let e = request_hook(&mut again, "X-Loop: 1\r\n").expect_err("timed out");
        assert!(matches!(e, IsolateError::Timeout(_)), "{e}");
        let until = std::time::Instant::now() + Duration::from_secs(5);
        while crate::common::pid_alive(pid) && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!crate::common::pid_alive(pid));
    }
}
