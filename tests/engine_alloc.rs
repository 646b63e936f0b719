//! The decode path does not allocate: after a warm-up, evaluating one more token (matmuls
//! on packed and stored weights, the scan, attention, the head and its soft-cap) makes no
//! heap allocation on any thread of the context. A counting global allocator observes the
//! test's own thread and every thread started after the context under test was created
//! (its rayon workers). Threads of contexts dropped earlier are left out: their pools wind
//! down in the background, and a worker's exit allocates (crossbeam-epoch hands its garbage
//! bag to the global queue), at a time only the scheduler decides.

mod engine_common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use engine_common::context;
use rgemma::convert::FileType;
use rgemma::model::LoadOptions;

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

/// Bumped before each context under test is created; a thread's first allocation stamps it
/// with the current value, so threads born later carry a newer stamp.
static GENERATION: AtomicUsize = AtomicUsize::new(1);
/// Stamp of the test's own thread: always counted.
const TEST_THREAD: usize = usize::MAX;

thread_local! {
    // Const-initialised and without a destructor: safe to touch inside the allocator, even
    // while the thread exits.
    static BORN: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn count_this_allocation() {
    let generation = GENERATION.load(Ordering::Relaxed);
    let born = BORN.with(|b| {
        if b.get() == 0 {
            b.set(generation);
        }
        b.get()
    });
    if born == TEST_THREAD || born == generation {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

/// Marks the calling thread as the test's and starts a new generation: call it just before
/// creating the context under test.
fn new_generation() {
    BORN.with(|b| b.set(TEST_THREAD));
    GENERATION.fetch_add(1, Ordering::Relaxed);
}

// SAFETY: forwards to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_this_allocation();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_this_allocation();
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The counter sees every thread of the process, so the tests of this file must not run at
/// the same time (the harness runs tests in parallel): each holds this lock throughout.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn decoding_a_token_does_not_allocate() {
    let _serial = one_at_a_time();
    for (ft, repack) in [
        (FileType::F32, false),
        (FileType::Q4_0, true),
        (FileType::Q4_0, false),
        (FileType::Q8_0, true),
    ] {
        let model = engine_common::model_with("tiny-rg", ft, &LoadOptions { repack });
        new_generation();
        let mut ctx = context(&model, 8);
        // Warm-up: the first calls size the reused buffers (and past the attention window
        // of 16, so the ring wraps during the warm-up).
        for t in 0..40u32 {
            ctx.eval(&[t % 200 + 2], false).unwrap();
        }
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        for t in 0..20u32 {
            ctx.eval(&[t * 7 % 200 + 2], false).unwrap();
        }
        let made = ALLOCATIONS.load(Ordering::Relaxed) - before;
        assert_eq!(
            made,
            0,
            "{} (repack {repack}): {made} allocations in 20 decode steps",
            ft.name()
        );
    }
}

#[test]
fn batched_decoding_does_not_allocate() {
    let _serial = one_at_a_time();
    use rgemma::model::{BatchContext, BatchRow, ContextParams};
    let model = engine_common::model_with("tiny-rg", FileType::Q4_0, &LoadOptions { repack: true });
    let params = ContextParams {
        batch_size: 16,
        n_threads: 2,
        n_seq_max: 6,
        ..Default::default()
    };
    new_generation();
    let mut ctx = BatchContext::new(model, params).unwrap();
    let mut rows: Vec<BatchRow> = Vec::with_capacity(16);
    // Step t decodes one token of every sequence but one (which sits out: its logits move to
    // its own buffer), with a short prompt chunk for another, so every path is warm.
    let step = |ctx: &mut BatchContext, rows: &mut Vec<BatchRow>, t: u32| {
        rows.clear();
        for seq in 0..6usize {
            if seq == (t as usize) % 6 {
                continue;
            }
            let n = if seq == (t as usize + 1) % 6 { 3 } else { 1 };
            for i in 0..n {
                rows.push(BatchRow {
                    token: (t * 7 + seq as u32 * 13 + i) % 200 + 2,
                    seq,
                    logits: i + 1 == n,
                });
            }
        }
        ctx.decode(rows).unwrap();
        // Fork now and then (a fixed-size copy).
        if t.is_multiple_of(5) {
            ctx.seq_copy(1, 4).unwrap();
        }
    };
    for t in 0..40 {
        step(&mut ctx, &mut rows, t);
    }
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for t in 40..60 {
        step(&mut ctx, &mut rows, t);
    }
    let made = ALLOCATIONS.load(Ordering::Relaxed) - before;
    assert_eq!(made, 0, "{made} allocations in 20 batched steps");
}
