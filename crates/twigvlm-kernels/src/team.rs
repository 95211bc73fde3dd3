//! A team of helper threads that stay awake between the hundreds of short kernels of a decoding
//! step. A general-purpose pool puts idle workers to sleep within microseconds, and waking one
//! costs about as much as a small kernel's work (measured on the demo model, 2 cores: 211 linear
//! calls per step took 18 ms through rayon against 10 ms back to back). The helpers here spin
//! for [`SPIN_WINDOW`] after their last task, so the next kernel finds them awake, then park.
//!
//! One caller at a time uses the team; a second concurrent caller runs its tasks on its own
//! thread. The caller always works on its own tasks too.

use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Mutex, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// How long a helper keeps polling for work after its last task before it parks.
const SPIN_WINDOW: Duration = Duration::from_millis(3);
/// Polls between two looks at the clock while spinning.
const POLLS_PER_CLOCK_READ: u32 = 256;

/// Runs `task(i)` for every `i` in `0..tasks`, on the calling thread and the team's helpers, and
/// returns when all are done.
pub fn parallel_for(tasks: usize, task: &(dyn Fn(usize) + Sync)) {
    let team = team();
    let Ok(_turn) = team.submit.try_lock() else {
        (0..tasks).for_each(task);
        return;
    };
    if team.helpers().is_empty() || tasks <= 1 {
        (0..tasks).for_each(task);
        return;
    }
    let job = Job { task, tasks, next: AtomicUsize::new(0), done: AtomicUsize::new(0) };
    // SAFETY of the helpers' access: the pointer is cleared and every helper that may have read
    // it is waited for (`active`) before `job` goes out of scope.
    team.job.store(&job as *const Job<'_> as *mut Job<'static>, SeqCst);
    team.epoch.fetch_add(1, SeqCst);
    for helper in team.helpers() {
        helper.unpark();
    }
    job.work();
    while job.done.load(SeqCst) < tasks {
        std::hint::spin_loop();
    }
    team.job.store(std::ptr::null_mut(), SeqCst);
    while team.active.load(SeqCst) != 0 {
        std::hint::spin_loop();
    }
}

/// The number of threads [`parallel_for`] runs on (helpers and the caller).
pub fn threads() -> usize {
    team().helpers().len() + 1
}

struct Job<'a> {
    task: &'a (dyn Fn(usize) + Sync),
    tasks: usize,
    next: AtomicUsize,
    done: AtomicUsize,
}

impl Job<'_> {
    fn work(&self) {
        loop {
            let i = self.next.fetch_add(1, SeqCst);
            if i >= self.tasks {
                return;
            }
            (self.task)(i);
            self.done.fetch_add(1, SeqCst);
        }
    }
}

struct Team {
    /// Set once, right after the helpers are spawned.
    helpers: OnceLock<Vec<Thread>>,
    job: AtomicPtr<Job<'static>>,
    /// Bumped for every job, so that a helper notices new work.
    epoch: AtomicU64,
    /// Helpers that may be reading `job`.
    active: AtomicUsize,
    submit: Mutex<()>,
}

impl Team {
    fn helpers(&self) -> &[Thread] {
        self.helpers.get().map_or(&[], Vec::as_slice)
    }
}

fn team() -> &'static Team {
    static TEAM: OnceLock<&'static Team> = OnceLock::new();
    TEAM.get_or_init(|| {
        let team: &'static Team = Box::leak(Box::new(Team {
            helpers: OnceLock::new(),
            job: AtomicPtr::new(std::ptr::null_mut()),
            epoch: AtomicU64::new(0),
            active: AtomicUsize::new(0),
            submit: Mutex::new(()),
        }));
        let count = std::thread::available_parallelism().map_or(1, |n| n.get()).saturating_sub(1);
        let helpers = (0..count)
            .filter_map(|i| {
                let spawned =
                    std::thread::Builder::new().name(format!("twigvlm-kernels-{i}")).spawn(move || help(team));
                spawned.ok().map(|handle| handle.thread().clone())
            })
            .collect();
        // Only this initialiser sets it.
        let _ = team.helpers.set(helpers);
        team
    })
}

fn help(team: &'static Team) {
    let mut seen = team.epoch.load(SeqCst);
    loop {
        let started = Instant::now();
        let mut polls = 0u32;
        while team.epoch.load(SeqCst) == seen {
            std::hint::spin_loop();
            polls += 1;
            if polls.is_multiple_of(POLLS_PER_CLOCK_READ) && started.elapsed() > SPIN_WINDOW {
                std::thread::park_timeout(SPIN_WINDOW * 100);
            }
        }
        seen = team.epoch.load(SeqCst);
        team.active.fetch_add(1, SeqCst);
        let job = team.job.load(SeqCst);
        if !job.is_null() {
            // SAFETY: the submitter keeps the job alive until `active` drops back to zero.
            unsafe { &*job }.work();
        }
        team.active.fetch_sub(1, SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn every_task_runs_once_also_from_concurrent_callers() {
        std::thread::scope(|scope| {
            for caller in 0..4 {
                scope.spawn(move || {
                    for round in 0..200 {
                        let tasks = 1 + (caller * 7 + round) % 13;
                        let hits: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
                        super::parallel_for(tasks, &|i| {
                            hits[i].fetch_add(1, Ordering::Relaxed);
                        });
                        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
                    }
                });
            }
        });
    }
}
