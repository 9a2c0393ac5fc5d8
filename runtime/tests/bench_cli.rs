//! `molt bench` as users run it: the real binary, real modules, JSON out.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::module_lib;
use serde_json::Value;

const MOLT: &str = env!("CARGO_BIN_EXE_molt");

/// Run molt with `args`; fail (never hang) past `limit`.
fn molt(args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(MOLT).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let t = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t.elapsed() > limit {
            let _ = child.kill();
            panic!("molt {args:?} hung past {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn dispatch_json_has_every_mechanism_with_ordered_percentiles() {
    let hello = module_lib("hello");
    let out = molt(
        &["bench", "dispatch", "--module", hello.to_str().unwrap(), "--events", "500", "--json"],
        Duration::from_secs(120),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert!(v["machine"]["cpus"].as_u64().unwrap() >= 1);
    assert_eq!(v["payload_bytes"], 16);
    let names: Vec<&str> =
        v["mechanisms"].as_array().unwrap().iter().map(|m| m["mechanism"].as_str().unwrap()).collect();
    assert_eq!(names, ["direct", "in_process", "cross_worker", "isolated", "socket_rpc"]);
    for m in v["mechanisms"].as_array().unwrap() {
        let q: Vec<u64> =
            ["p50_ns", "p90_ns", "p99_ns", "p999_ns", "max_ns"].iter().map(|k| m[*k].as_u64().unwrap()).collect();
        assert!(q[0] > 0, "{m}");
        assert!(q.windows(2).all(|w| w[0] <= w[1]), "percentiles ordered: {m}");
        assert_eq!(m["samples"], 500, "{m}");
        assert!(m["throughput_per_s"].as_f64().unwrap() > 0.0);
    }
    eprintln!("{}", serde_json::to_string_pretty(&v["mechanisms"]).unwrap());
}

#[test]
fn pinned_runs_say_so() {
    let echo = module_lib("echo_c");
    let out = molt(
        &["bench", "dispatch", "--module", echo.to_str().unwrap(), "--events", "200", "--pin", "--json"],
        Duration::from_secs(120),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["pinned"], true);
    assert_eq!(v["mechanisms"].as_array().unwrap().len(), 5);
}

#[test]
fn bad_input_is_a_clear_error_and_a_non_zero_exit() {
    let limit = Duration::from_secs(60);
    let out = molt(&["bench", "dispatch", "--module", "/nonexistent/libx.so"], limit);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/libx.so: not found"));

    let fails = module_lib("fixture_init_fails");
    let out = molt(&["bench", "dispatch", "--module", fails.to_str().unwrap()], limit);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refused:") && err.contains("init returned MOLT_ERR_NOT_FOUND"), "{err}");

    // counter refuses the bench's message tag: its handler errors.
    let counter = module_lib("counter");
    let out = molt(&["bench", "dispatch", "--module", counter.to_str().unwrap()], limit);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the module's handler failed") && err.contains("unknown tag 7"), "{err}");
}

#[test]
fn swap_json_reports_latencies() {
    let echo = module_lib("echo_c");
    let out = molt(
        &["bench", "swap", "--module", echo.to_str().unwrap(), "--count", "10", "--json"],
        Duration::from_secs(120),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["swaps"], 10);
    for (k, n) in
        [("to_first_event", 10), ("reload_call", 10), ("in_flight_steady", 2000), ("in_flight_after_swaps", 200)]
    {
        let x = &v[k];
        assert_eq!(x["samples"], n, "{k}");
        assert!(x["p50_ns"].as_u64().unwrap() > 0 && x["p50_ns"].as_u64() <= x["max_ns"].as_u64(), "{x}");
    }
}

#[test]
fn a_failed_bench_leaves_nothing_behind() {
    // counter answers no bench message: the bench fails after loading it.
    let counter = module_lib("counter");
    let child = Command::new(MOLT)
        .args(["bench", "dispatch", "--module", counter.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let left = std::env::temp_dir().join(format!("molt-bench-{pid}"));
    assert!(!left.exists(), "{} was left behind", left.display());
}

#[test]
fn check_shows_what_the_http_hooks_do_and_loads_what_run_loads() {
    let limit = Duration::from_secs(60);
    let rw = module_lib("header_rewrite");
    let out = molt(&["check", rw.to_str().unwrap(), "request.set.X-Checked=yes", "response.add.X-Served=check"], limit);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("http request   + X-Checked: yes"), "{text}");
    assert!(text.contains("http response  + X-Served: check"), "{text}");
    let hello = module_lib("hello");
    let out = molt(&["check", hello.to_str().unwrap()], limit);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("http answer    200"), "{text}");
    // A module requiring persistent state loads, as under `molt run`.
    let persistent = module_lib("fixture_needs_persistent");
    let out = molt(&["check", persistent.to_str().unwrap()], limit);
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let out = molt(&["check", "/nonexistent/libx.so"], limit);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not found") && err.contains("command line"), "{err}");
}

/// `molt bench hooks`: a module's cost per HTTP transaction, next to a
/// transaction with no module; its hooks ran and did not fail (the router
/// finds the group it selects, header_rewrite a response to edit). A
/// module that fails its hooks is said to, and a missing file is an error.
#[test]
fn hooks_reports_a_modules_cost_per_transaction() {
    let run = |module: &str, extra: &[&str]| -> Value {
        let lib = module_lib(module);
        let mut args = vec!["bench", "hooks", "--module", lib.to_str().unwrap(), "--transactions", "2000", "--json"];
        args.extend_from_slice(extra);
        let out = molt(&args, Duration::from_secs(120));
        assert!(out.status.success(), "{module}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("JSON")
    };
    let v = run("header_rewrite", &["--config", "request.set.X-A=1", "--config", "response.set.X-B=2"]);
    assert_eq!(v["module"], "header_rewrite");
    assert_eq!(v["hook_failures"], 0, "{v}");
    let (bare, with) = (v["no_module_ns"].as_f64().unwrap(), v["with_module_ns"].as_f64().unwrap());
    assert!(bare > 0.0 && with > bare, "{v}");
    assert_eq!(run("router", &["--config", "default=web", "--groups", "api,web"])["hook_failures"], 0);
    // The router selecting a group the listener lacks fails every UPSTREAM hook.
    let v = run("router", &["--config", "default=web"]);
    assert!(v["hook_failures"].as_u64().unwrap() > 0, "{v}");
    let out = molt(&["bench", "hooks", "--module", "/nonexistent/libx.so"], Duration::from_secs(30));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/libx.so"), "the error names the file");
    // A config the module refuses at init: refused, naming the module and why.
    let lib = module_lib("rate_limit");
    let out =
        molt(&["bench", "hooks", "--module", lib.to_str().unwrap(), "--config", "rate=0"], Duration::from_secs(30));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refused") && err.contains("rate_limit") && err.contains("rate 0"), "{err}");
    // A config entry that is not key=value.
    let out = molt(&["bench", "hooks", "--module", lib.to_str().unwrap(), "--config", "rate"], Duration::from_secs(30));
    assert!(!out.status.success());
}
