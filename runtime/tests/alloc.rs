//! Allocations a worker makes per request proxied through the three-module
//! chain (`rate_limit`, `header_rewrite`, `router`) on one keep-alive
//! connection: counted on the worker's own thread by this binary's global
//! allocator, so the client and backend threads of the test are not.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

use common::http::{Client, backend};
use common::{RunDir, module_cfg, module_lib};

struct Counting;

thread_local! {
    /// Set on the worker's thread: its allocations are counted.
    static COUNTED: Cell<bool> = const { Cell::new(false) };
}
static ALLOCS: AtomicU64 = AtomicU64::new(0);
static REALLOCS: AtomicU64 = AtomicU64::new(0);

fn counted() -> bool {
    COUNTED.try_with(Cell::get).unwrap_or(false)
}

// SAFETY: every call is passed on to the system allocator unchanged; the
// counting touches only an atomic and a const-initialised thread-local.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if counted() {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if counted() {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if counted() {
            REALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The budget: at most 4 allocations per request through the chain
/// (and never a per-request churn of the worker's version pins, which once
/// made it 12).
#[test]
fn a_request_through_three_modules_allocates_at_most_four_times_on_its_worker() {
    let dir = RunDir::new("alloc");
    let (b, _) = backend("b");
    let modules = vec![
        module_cfg("rate_limit", &module_lib("rate_limit"), &[("rate", "1000000"), ("burst", "200000")]),
        module_cfg("header_rewrite", &module_lib("header_rewrite"), &[("request.set.X-Test", "molt")]),
        module_cfg("router", &module_lib("router"), &[("default", "b")]),
    ];
    let site = common::one_route_site(b, &["rate_limit", "header_rewrite", "router"]);
    let rt = common::proxy_runtime_on(1, dir.path(), vec![site], vec![], &modules);
    rt.on_worker(0, |_| COUNTED.with(|c| c.set(true))).unwrap();
    let mut c = Client::connect(rt.http_addrs()[0]);
    for _ in 0..200 {
        assert_eq!(c.get("/echo").unwrap().status, 200);
    }
    const N: u64 = 2000;
    let (before, grown) = (ALLOCS.load(Ordering::Relaxed), REALLOCS.load(Ordering::Relaxed));
    for _ in 0..N {
        let r = c.get("/echo").unwrap();
        assert_eq!((r.status, r.header("X-Seen-X-Test").as_deref()), (200, Some("molt")), "the chain ran");
    }
    let per_request = (ALLOCS.load(Ordering::Relaxed) - before) as f64 / N as f64;
    let reallocs = (REALLOCS.load(Ordering::Relaxed) - grown) as f64 / N as f64;
    eprintln!("per request on the worker: {per_request:.3} allocations, {reallocs:.3} reallocations");
    assert!(per_request <= 4.05, "{per_request:.2} allocations per request on the worker (at most 4)");
    assert!(reallocs <= 0.05, "{reallocs:.2} reallocations per request on the worker (buffers regrown)");
    rt.shutdown();
}
