//! The forward pass's parallel loops, run by a team of threads that stay awake through one call.
//!
//! Decoding one token is about 150 parallel steps of 20-200 µs each (the products, the
//! per-sequence work), with a little serial work between them. Rayon's idle workers go to
//! sleep after ~30 µs without work, and each sleeping thread must then be woken for the next
//! step: a futex call and, on a virtual machine, an interrupt to a halted vCPU, tens of µs
//! each. On a 2-core Xeon VM that cost about a tenth of decode (pool threads busy 88-93 % of
//! a token; 76-77 % of the read bandwidth, 86-87 % when the workers never slept).
//!
//! So for the length of one forward call ([`run_with_team`]) the pool's other threads stay in
//! [`Team::serve`]: they spin on the team's job slot and pick up tasks as soon as the calling
//! thread (the *lead*) posts a loop ([`for_each_task`], [`for_each_chunk_mut`]), and the lead
//! waits for a loop's end by spinning too. While spinning, every thread also runs pending rayon
//! jobs, so loops nested inside a task (per-sequence work splitting its heads or channels) use
//! plain rayon and still find every thread. Outside a forward call nothing spins: the
//! threads return to rayon, which parks them. Spinning threads call `sched_yield` now and then,
//! so a machine with more threads than cores still lets the lead run.
//!
//! Outside [`run_with_team`] (or in a nested loop) the same functions fall back to rayon, so
//! every caller has one code path.

use std::any::Any;
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{fence, AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rayon::prelude::*;

/// How long the lead waits for the helpers to join before it starts without the missing ones
/// (a helper that cannot be scheduled then joins late, or never in this call).
const JOIN_WAIT: Duration = Duration::from_millis(2);

/// Idle spins between two `sched_yield` calls.
const SPINS_PER_YIELD: u32 = 256;

thread_local! {
    /// On the lead thread while it runs a forward call outside any task: the team.
    static TEAM: Cell<*const Team> = const { Cell::new(std::ptr::null()) };
    /// Set while this thread serves a team (so a second helper job on it returns at once).
    static SERVING: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with the current rayon pool's other threads awake and serving its loops. Call it
/// on a thread of the pool (inside `ThreadPool::install`); elsewhere, or with one thread, it
/// just runs `f`.
pub(crate) fn run_with_team<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let (Some(lead), helpers) = (
        rayon::current_thread_index(),
        rayon::current_num_threads().saturating_sub(1),
    ) else {
        return f();
    };
    if helpers == 0 || !TEAM.get().is_null() || SERVING.get() {
        return f();
    }
    let team = Team {
        lead,
        helpers,
        joined: AtomicUsize::new(0),
        started: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        posted: AtomicUsize::new(0),
        job: AtomicPtr::new(std::ptr::null_mut()),
        users: AtomicUsize::new(0),
    };
    recruit(&team, helpers, f)
}

/// Pushes one `serve` job per helper (rayon's join: other threads steal them, nothing is
/// allocated), then leads.
fn recruit<R: Send>(team: &Team, helpers_left: usize, f: impl FnOnce() -> R + Send) -> R {
    if helpers_left == 0 {
        return team.lead(f);
    }
    let (r, ()) = rayon::join(|| recruit(team, helpers_left - 1, f), || team.serve());
    r
}

/// Runs `f(task)` for every task in `0..n` in parallel; the first error is returned (tasks
/// not yet started when it happens are skipped).
pub(crate) fn try_for_each_task<E: Send>(
    n: usize,
    f: impl Fn(usize) -> Result<(), E> + Sync,
) -> Result<(), E> {
    let team = TEAM.get();
    if n <= 1 || team.is_null() {
        return (0..n).into_par_iter().try_for_each(&f);
    }
    let first_error: Mutex<Option<E>> = Mutex::new(None);
    let failed = AtomicBool::new(false);
    let task = |t: usize| {
        if failed.load(Ordering::Relaxed) {
            return;
        }
        if let Err(e) = f(t) {
            failed.store(true, Ordering::Relaxed);
            let mut slot = first_error.lock().unwrap_or_else(|p| p.into_inner());
            slot.get_or_insert(e);
        }
    };
    // SAFETY: TEAM is set only on the lead thread, only while `Team::lead`'s frame (and so
    // the team, which lives in `run_with_team`'s frame below it) is alive.
    unsafe { &*team }.dispatch(n, &task);
    match first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// [`try_for_each_task`] for tasks that cannot fail.
pub(crate) fn for_each_task(n: usize, f: impl Fn(usize) + Sync) {
    let _ = try_for_each_task(n, |t| -> Result<(), std::convert::Infallible> {
        f(t);
        Ok(())
    });
}

/// Runs `f(i, chunk)` for the chunks of `chunk_len` items of `data` (the last may be
/// shorter), in parallel; the first error is returned.
pub(crate) fn try_for_each_chunk_mut<T: Send, E: Send>(
    data: &mut [T],
    chunk_len: usize,
    f: impl Fn(usize, &mut [T]) -> Result<(), E> + Sync,
) -> Result<(), E> {
    assert!(
        chunk_len > 0,
        "for_each_chunk_mut: chunk_len must be positive"
    );
    let len = data.len();
    let base = SharedMut(data.as_mut_ptr());
    try_for_each_task(len.div_ceil(chunk_len), |i| {
        let start = i * chunk_len;
        let end = (start + chunk_len).min(len);
        // SAFETY: start < end <= len, so the range lies in `data`, which is borrowed
        // mutably for this call; each task index runs once, and tasks' ranges are
        // disjoint, so no two live slices overlap.
        let chunk = unsafe { std::slice::from_raw_parts_mut(base.ptr().add(start), end - start) };
        f(i, chunk)
    })
}

/// [`try_for_each_chunk_mut`] for tasks that cannot fail.
pub(crate) fn for_each_chunk_mut<T: Send>(
    data: &mut [T],
    chunk_len: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    let _ = try_for_each_chunk_mut(
        data,
        chunk_len,
        |i, c| -> Result<(), std::convert::Infallible> {
            f(i, c);
            Ok(())
        },
    );
}

/// A raw pointer into a buffer whose disjoint parts parallel tasks write (each task only its
/// own elements; the buffer outlives the loop, which ends before its caller returns).
pub(super) struct SharedMut<T>(pub(super) *mut T);

impl<T> Clone for SharedMut<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SharedMut<T> {}

impl<T> SharedMut<T> {
    // A method, so that closures capture the wrapper (Sync), not its raw-pointer field.
    pub(super) fn ptr(self) -> *mut T {
        self.0
    }
}

// SAFETY: only hands tasks disjoint parts of one buffer (see above); the pointer is only read.
unsafe impl<T: Send> Send for SharedMut<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for SharedMut<T> {}

struct Team {
    /// The lead's index in the pool.
    lead: usize,
    helpers: usize,
    /// Helpers that have entered `serve`.
    joined: AtomicUsize,
    /// Set when the lead starts `f` (helpers that joined stop waiting for the others).
    started: AtomicBool,
    /// Set when `f` has returned: helpers leave.
    stop: AtomicBool,
    /// Sequence number of the last posted job (helpers spin on it).
    posted: AtomicUsize,
    /// The job being run, or null.
    job: AtomicPtr<Job>,
    /// Helpers that may hold a pointer read from `job`.
    users: AtomicUsize,
}

/// One parallel loop: `n` tasks, claimed one at a time.
struct Job {
    seq: usize,
    /// The loop body; it really borrows from `dispatch`'s caller (see `dispatch`).
    task: *const (dyn Fn(usize) + Sync + 'static),
    n: usize,
    next: AtomicUsize,
    done: AtomicUsize,
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

impl Job {
    /// Claims and runs tasks until none are left. Never unwinds: a panicking task is
    /// recorded (and re-raised by the lead once every task has ended).
    fn work(&self) {
        loop {
            let t = self.next.fetch_add(1, Ordering::Relaxed);
            if t >= self.n {
                return;
            }
            // SAFETY: `task` stays valid until the lead sees every task done and no helper
            // holding the job (see `Team::dispatch`); this task is not yet done.
            let task = unsafe { &*self.task };
            if let Err(p) = catch_unwind(AssertUnwindSafe(|| task(t))) {
                let mut slot = self.panic.lock().unwrap_or_else(|e| e.into_inner());
                slot.get_or_insert(p);
            }
            // Release: the task's writes are visible to the lead once it sees the count.
            self.done.fetch_add(1, Ordering::Release);
        }
    }
}

impl Team {
    fn lead<R>(&self, f: impl FnOnce() -> R) -> R {
        let deadline = Instant::now() + JOIN_WAIT;
        while self.joined.load(Ordering::Acquire) < self.helpers && Instant::now() < deadline {
            std::hint::spin_loop();
        }
        self.started.store(true, Ordering::Release);
        // Clears the thread's team and stops the helpers however `f` ends.
        struct Leave<'a>(&'a Team);
        impl Drop for Leave<'_> {
            fn drop(&mut self) {
                TEAM.set(std::ptr::null());
                self.0.stop.store(true, Ordering::Release);
            }
        }
        let _leave = Leave(self);
        TEAM.set(self);
        f()
    }

    fn serve(&self) {
        if rayon::current_thread_index() == Some(self.lead) || SERVING.get() {
            return; // the lead took its own helper job back, or this thread already serves
        }
        SERVING.set(true);
        self.joined.fetch_add(1, Ordering::AcqRel);
        // Until every helper has joined, run nothing else: another helper job stolen now
        // would be dropped here and leave a thread without one.
        while self.joined.load(Ordering::Acquire) < self.helpers
            && !self.started.load(Ordering::Acquire)
        {
            std::hint::spin_loop();
        }
        let mut seen = 0;
        let mut idle = 0u32;
        while !self.stop.load(Ordering::Acquire) {
            let ran = if self.posted.load(Ordering::Acquire) != seen {
                self.take_part(&mut seen)
            } else {
                rayon::yield_now() == Some(rayon::Yield::Executed)
            };
            if ran {
                idle = 0;
            } else {
                idle_wait(&mut idle);
            }
        }
        SERVING.set(false);
    }

    /// Runs this helper's part of the posted job, if it is still posted and not yet seen.
    fn take_part(&self, seen: &mut usize) -> bool {
        // SeqCst on `users` and `job` (both sides): either the lead sees this helper in
        // `users` after unposting, or this helper sees the job unposted. The fences make the
        // store-then-load order explicit (see `dispatch`).
        self.users.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let p = self.job.load(Ordering::SeqCst);
        let mut ran = false;
        if !p.is_null() {
            // SAFETY: the lead keeps the job alive until `job` is null and `users` is 0.
            let job = unsafe { &*p };
            if job.seq != *seen {
                *seen = job.seq;
                job.work();
                ran = true;
            }
        }
        self.users.fetch_sub(1, Ordering::SeqCst);
        ran
    }

    /// Posts `task` for `n` tasks, runs tasks on this (the lead) thread, and returns when all
    /// have run and no helper holds the job any longer.
    fn dispatch(&self, n: usize, task: &(dyn Fn(usize) + Sync)) {
        // SAFETY: only the lifetime is erased; the pointer is dereferenced by `Job::work`
        // only before this function returns (it waits for every task and every holder).
        let task: *const (dyn Fn(usize) + Sync + 'static) = unsafe { std::mem::transmute(task) };
        let seq = self.posted.load(Ordering::Relaxed) + 1;
        let job = Job {
            seq,
            task,
            n,
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            panic: Mutex::new(None),
        };
        // Loops started inside the lead's own tasks go to rayon, like the helpers' ones.
        TEAM.set(std::ptr::null());
        self.job
            .store(&job as *const Job as *mut Job, Ordering::SeqCst);
        self.posted.store(seq, Ordering::Release);
        job.work();
        let mut idle = 0u32;
        while job.done.load(Ordering::Acquire) < n {
            // A helper's task may have nested rayon work waiting: help with it.
            if rayon::yield_now() == Some(rayon::Yield::Executed) {
                idle = 0;
            } else {
                idle_wait(&mut idle);
            }
        }
        self.job.store(std::ptr::null_mut(), Ordering::SeqCst);
        // A SeqCst store then a SeqCst load of another atomic are ordered by the language
        // (aarch64: `stlr` then `ldar`), yet under qemu-user (aarch64 on an x86 host) about
        // 1 run in 12 of the engine tests died in `Job::work` on a finished job's reused
        // stack slot, which is what the load passing the store would allow; with the fences
        // (`dmb ish` / `mfence`, once per loop and helper) 0 runs in 45 did.
        fence(Ordering::SeqCst);
        while self.users.load(Ordering::SeqCst) != 0 {
            std::hint::spin_loop();
        }
        TEAM.set(self);
        if let Some(p) = job.panic.into_inner().unwrap_or_else(|e| e.into_inner()) {
            std::panic::resume_unwind(p);
        }
    }
}

/// One idle round: a spin hint, and now and then the OS scheduler's turn.
fn idle_wait(idle: &mut u32) {
    *idle += 1;
    if idle.is_multiple_of(SPINS_PER_YIELD) {
        std::thread::yield_now();
    } else {
        std::hint::spin_loop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    fn pool(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
    }

    #[test]
    fn every_task_runs_once_on_the_team_and_outside_it() {
        for threads in [1, 2, 3, 5] {
            let p = pool(threads);
            for in_team in [false, true] {
                let counts: Vec<AtomicU64> = (0..1000).map(|_| AtomicU64::new(0)).collect();
                let body = || {
                    for _ in 0..50 {
                        for_each_task(counts.len(), |t| {
                            counts[t].fetch_add(1, Ordering::Relaxed);
                        });
                    }
                };
                p.install(|| if in_team { run_with_team(body) } else { body() });
                assert!(
                    counts.iter().all(|c| c.load(Ordering::Relaxed) == 50),
                    "{threads} threads, team {in_team}"
                );
            }
        }
    }

    #[test]
    fn nested_loops_and_chunks_cover_every_item() {
        let p = pool(3);
        let mut data = vec![0u32; 10_007];
        p.install(|| {
            run_with_team(|| {
                for_each_chunk_mut(&mut data, 64, |i, chunk| {
                    // A nested loop inside a task: rayon, not the team.
                    let sums: Vec<AtomicU64> = (0..4).map(|_| AtomicU64::new(0)).collect();
                    for_each_task(4, |k| {
                        sums[k].fetch_add(k as u64 + 1, Ordering::Relaxed);
                    });
                    let total: u64 = sums.iter().map(|s| s.load(Ordering::Relaxed)).sum();
                    for (j, v) in chunk.iter_mut().enumerate() {
                        *v += (i * 64 + j) as u32 + total as u32;
                    }
                })
            })
        });
        assert!(data.iter().enumerate().all(|(j, &v)| v == j as u32 + 10));
    }

    #[test]
    fn the_first_error_is_returned_and_a_panic_reaches_the_lead() {
        let p = pool(2);
        let r = p.install(|| {
            run_with_team(|| try_for_each_task(100, |t| if t == 37 { Err(t) } else { Ok(()) }))
        });
        assert_eq!(r, Err(37));
        let caught = p.install(|| {
            catch_unwind(AssertUnwindSafe(|| {
                run_with_team(|| {
                    for_each_task(64, |t| {
                        if t == 63 {
                            panic!("task 63");
                        }
                    })
                })
            }))
        });
        assert!(caught.is_err());
        // The pool still works afterwards.
        let n = AtomicUsize::new(0);
        p.install(|| {
            run_with_team(|| {
                for_each_task(10, |_| {
                    n.fetch_add(1, Ordering::Relaxed);
                })
            })
        });
        assert_eq!(n.load(Ordering::Relaxed), 10);
    }
}
