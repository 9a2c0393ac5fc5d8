//! In-process dispatch: an event from a worker's local run queue through the
//! ABI into a module's `handle_event` and back, next to (in the same run) a
//! bare `extern "C"` function-pointer call and a direct call of the module's
//! handler as resolved through its `dlsym`'d entry and descriptor. The module
//! is `fixture_probe` answering `NOOP`, so what is measured is the path, not
//! the handler's work.

use std::ffi::c_void;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use fixture_probe::tag;
use molt_abi::ffi::*;
use molt_runtime::host::HOST_API;
use molt_runtime::module::event;
use molt_runtime::worker::{Event, Payload, WorkerCore};

extern "C" fn bare(_ctx: *const molt_ctx, _data: *mut c_void, ev: *const molt_event) -> molt_status {
    // SAFETY: called below with a valid event.
    unsafe { (*ev).kind as i32 - MOLT_EV_MESSAGE as i32 }
}

/// Which half of a local send `chunks` times.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Half {
    /// Queuing the events.
    Enqueue,
    /// Draining them through the handler.
    Dispatch,
}

/// Run `iters` NOOP events to `cont` through worker `w` in chunks of 256,
/// timing only `half`.
fn chunks(w: &WorkerCore, cont: u64, iters: u64, half: Half) -> Duration {
    let noop = || Event {
        target: cont,
        source: 0,
        kind: MOLT_EV_MESSAGE,
        flags: 0,
        tag: tag::NOOP,
        arg0: 0,
        payload: Payload::copy_from(&[]),
    };
    let mut spent = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(256);
        let t = Instant::now();
        for _ in 0..n {
            w.enqueue_local(noop());
        }
        if half == Half::Enqueue {
            spent += t.elapsed();
        }
        let t = Instant::now();
        w.run_until_idle();
        if half == Half::Dispatch {
            spent += t.elapsed();
        }
        left -= n;
    }
    spent
}

fn dispatch(c: &mut Criterion) {
    let (rt, v) = molt_benches::probe_runtime(1);
    let cont = rt.spawn(&v, 0, 0).unwrap();
    molt_benches::expect(&rt, tag::STARTED);
    let mut g = c.benchmark_group("in_process_dispatch");

    g.bench_function("bare_extern_c_fn_pointer", |b| {
        let f: molt_handler_fn = black_box(bare);
        let ev = event(MOLT_EV_MESSAGE, 1, 0, tag::NOOP, &[]);
        // SAFETY: `bare` only reads the event.
        b.iter(|| unsafe { f(black_box(core::ptr::null()), core::ptr::null_mut(), black_box(&ev)) });
    });

    g.bench_function("module_handler_via_dlsym_entry", |b| {
        let (h, instance) = v.raw_handler();
        let ctx = molt_ctx {
            size: v1_0::CTX_SIZE as u32,
            abi_major: MOLT_ABI_MAJOR,
            abi_minor: MOLT_ABI_MINOR,
            api: &HOST_API,
            instance,
            self_: cont,
            worker: 0,
            reserved: 0,
            host: core::ptr::null_mut(),
        };
        let ev = event(MOLT_EV_MESSAGE, cont, 0, tag::NOOP, &[]);
        // SAFETY: the probe's handler with its own instance; NOOP makes no
        // host call, so the null `host` frame is never read.
        b.iter(|| unsafe { h(black_box(&ctx), core::ptr::null_mut(), black_box(&ev)) });
    });

    // From the run queue to the handler and back: events are queued in
    // chunks of 256 outside the timed section, then the worker drains them
    // (a loop turn: reaper check, inbox, timers, the batch).
    g.bench_function("molt_dispatch_runq_to_handler", |b| {
        b.iter_custom(|iters| {
            rt.on_worker(0, move |w| chunks(w, cont, iters, Half::Dispatch)).unwrap_or(Duration::ZERO)
        });
    });
    // What queuing one event costs the sender (the other half of a local send).
    g.bench_function("molt_enqueue_local", |b| {
        b.iter_custom(|iters| {
            rt.on_worker(0, move |w| chunks(w, cont, iters, Half::Enqueue)).unwrap_or(Duration::ZERO)
        });
    });
    g.finish();
    drop(v);
    rt.shutdown();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = dispatch
}
criterion_main!(benches);
