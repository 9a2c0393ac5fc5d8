//! What molt trusts on disk and on the network at start: its run dir (a
//! real directory of its own user, mode 0700, one instance at a time), its
//! state file (0600, never rewritten unless it is a molt state file) and
//! its listening addresses (never shared with another process).

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::{RunDir, module_cfg, module_lib};
use molt_runtime::runtime::StateConfig;
use molt_runtime::{Runtime, RuntimeConfig};

fn config(run_dir: &Path) -> RuntimeConfig {
    RuntimeConfig {
        workers: 1,
        run_dir: run_dir.to_owned(),
        state: StateConfig { path: Some(run_dir.join("state.molt")), size: 1 << 20, reset: false },
        ..RuntimeConfig::default()
    }
}

fn start_err(cfg: RuntimeConfig) -> String {
    match Runtime::start(cfg) {
        Ok(rt) => {
            rt.shutdown();
            panic!("started");
        }
        Err(e) => e.to_string(),
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn a_run_dir_open_to_others_or_not_ours_is_refused() {
    let base = RunDir::new("rundir-base");
    let open = base.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
    let e = start_err(config(&open));
    assert!(e.contains(&open.display().to_string()) && e.contains("0755") && e.contains("chmod 700"), "{e}");
    assert_eq!(mode(&open), 0o755, "the run dir was left as it was");

    let link = base.path().join("link");
    let real = base.path().join("real");
    std::fs::create_dir(&real).unwrap();
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let e = start_err(config(&link));
    assert!(e.contains("symbolic link"), "{e}");

    if molt_runtime::sys::files::effective_uid() == 0 {
        let theirs = base.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
        let e = start_err(config(&theirs));
        assert!(e.contains("owned by uid 65534"), "{e}");
    } else {
        assert!(std::env::var_os("CI").is_none(), "CI runs as root: the other-owner case must run there");
        eprintln!("not root: the other-owner case needs chown and is not run");
    }
    // A missing run dir is made, 0700.
    let fresh = base.path().join("fresh");
    let rt = Runtime::start(config(&fresh)).expect("a new run dir");
    assert_eq!(mode(&fresh), 0o700);
    rt.shutdown();
}

#[test]
fn a_second_instance_on_a_run_dir_is_refused_and_harms_nothing() {
    let dir = RunDir::new("rundir-two");
    let rt = common::proxy_runtime(dir.path(), vec![], vec![], &[module_cfg("hello", &module_lib("hello"), &[])]);
    let copy: PathBuf = rt.active("hello").unwrap().meta().copy.clone();
    // Another state file, so only the run dir is shared.
    let mut cfg = config(dir.path());
    cfg.state.path = Some(dir.path().join("other-state.molt"));
    let e = start_err(cfg);
    assert!(e.contains(&format!("pid {}", std::process::id())), "the error names the holder: {e}");
    assert!(copy.exists(), "the first instance's module copy was removed");
    assert!(rt.active("hello").unwrap().call_direct(1, b"x").is_ok());
    rt.shutdown();
}

#[test]
fn a_listen_address_another_process_serves_is_refused() {
    // Another process's SO_REUSEPORT listener (same uid): the kernel would
    // split connections between the two without a word.
    let other = molt_runtime::net::bind_reuseport("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr: SocketAddr = other.local_addr().unwrap();
    let dir = RunDir::new("rundir-addr");
    let mut cfg = config(dir.path());
    cfg.http = vec![common::one_route_site(addr, &[])];
    cfg.http[0].listen = addr;
    let e = start_err(cfg);
    assert!(e.contains(&addr.to_string()) && e.contains("already"), "{e}");
    drop(other);
}

#[test]
fn one_address_twice_in_a_config_is_refused() {
    let src = r#"
[[tcp]]
listen = "127.0.0.1:18080"
upstreams = ["127.0.0.1:9"]

[[http]]
listen = "127.0.0.1:18080"
[[http.routes]]
path = "/"
"#;
    let e = molt_runtime::config::Config::parse(src, "molt.toml", Path::new("/etc/molt")).unwrap_err();
    assert!(e.to_string().contains("127.0.0.1:18080") && e.to_string().contains("twice"), "{e}");
    assert_eq!(e.line, 7, "{e}");
}

#[test]
fn the_state_file_is_private_and_reset_only_rewrites_state_files() {
    let dir = RunDir::new("rundir-state");
    let elsewhere = RunDir::new("rundir-state-files");
    let state = elsewhere.path().join("state.molt");
    let mut cfg = config(dir.path());
    cfg.state.path = Some(state.clone());
    Runtime::start(cfg).unwrap().shutdown();
    assert_eq!(mode(&state), 0o600, "a state file outside the run dir is created 0600");

    // --reset-state on a file that is not a molt state file: refused, untouched.
    let notes = elsewhere.path().join("notes.txt");
    std::fs::write(&notes, "precious").unwrap();
    let mut cfg = config(dir.path());
    cfg.state = StateConfig { path: Some(notes.clone()), size: 1 << 20, reset: true };
    let e = start_err(cfg);
    assert!(e.contains("not a molt state file"), "{e}");
    assert_eq!(std::fs::read_to_string(&notes).unwrap(), "precious");

    // Nor through a symlink, whatever it points at.
    let link = elsewhere.path().join("link.molt");
    std::os::unix::fs::symlink(&state, &link).unwrap();
    let mut cfg = config(dir.path());
    cfg.state = StateConfig { path: Some(link), size: 1 << 20, reset: true };
    let e = start_err(cfg);
    assert!(e.contains("symbolic link"), "{e}");
}
