//! Token-level batching: several requests run at once, each on its own thread with its own
//! decoder, pruning policy, sampling and caches, and every forward of the language model they
//! ask for goes through one scheduler that runs the calls of the same layers (or the same head)
//! side by side in one forward ([`run_stacks`], [`run_heads`]): the decoding row of each plain
//! request, the drafted rows of each speculative one, a chunk of a new prompt. Each request
//! still attends only to its own cache, with its own length, positions and pruned visual tokens;
//! nothing is padded. On a backend whose linear layers round every row alike (the CPU kernels)
//! a request's tokens are exactly those it gets alone.
//!
//! The scheduler works in rounds: it waits until every running request has handed in its next
//! call (or finished), runs the calls grouped by layers, at most [`BatchLimits::max_rows`] rows
//! per forward, and answers each. Continuations ([`StackCall::continuation`]: the later layers
//! of a prompt chunk, the later steps of a draft, the head after a stack) run first, the others'
//! calls waiting, until no request has one: a chunk goes through all its layers between two
//! decoding steps of the others, and speculative requests verify together once all have
//! drafted. What a request computes outside its calls (the vision tower, choosing tokens)
//! happens while the scheduler waits for it: the device runs one thing at a time. New requests
//! join between rounds, up to [`BatchLimits::max_requests`].

use std::num::NonZeroUsize;
use std::sync::mpsc::{channel, Receiver, Sender};

use burn::prelude::*;
use twigvlm_backbone::llama::runner::{run_heads, run_stacks};
use twigvlm_backbone::llama::LayersOutput;
use twigvlm_backbone::ops::DecodeOps;
use twigvlm_backbone::{HeadCall, KvCache, StackCall, StackRunner};

/// How much one batch holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Requests running at once; more wait in their queue.
    pub max_requests: NonZeroUsize,
    /// Most rows of one forward; calls of the same layers beyond it run in further forwards of
    /// the same round. A single call with more rows (a prompt chunk) runs by itself.
    pub max_rows: NonZeroUsize,
}

impl BatchLimits {
    /// One request at a time: every request runs alone, as without batching.
    pub const ONE: Self = Self { max_requests: NonZeroUsize::MIN, max_rows: NonZeroUsize::MIN };
}

impl Default for BatchLimits {
    /// Eight requests, 16 rows: on the demo model with f16 weights (2 CPU cores) a 4-row step
    /// costs 1.35× a one-row step, an 8-row step 1.8× and a 16-row step 3.3×
    /// (`bench/results/decode-steps`); past 16 rows a step costs about its rows, so larger
    /// forwards only add latency.
    fn default() -> Self {
        Self { max_requests: NonZeroUsize::new(8).expect("8 > 0"), max_rows: NonZeroUsize::new(16).expect("16 > 0") }
    }
}

/// Where a batch takes its requests from.
pub trait JobSource<J> {
    /// The next request to start, if one is waiting. `idle`: nothing is running, so the source
    /// may wait a while for one.
    fn next_job(&mut self, idle: bool) -> Next<J>;
}

/// What a [`JobSource`] has.
#[derive(Debug)]
pub enum Next<J> {
    /// A request to start now.
    Job(J),
    /// Nothing now.
    Wait,
    /// Nothing ever again: the batch ends once its running requests have.
    Closed,
}

/// A [`JobSource`] over a fixed list.
impl<J> JobSource<J> for std::vec::IntoIter<J> {
    fn next_job(&mut self, _idle: bool) -> Next<J> {
        self.next().map_or(Next::Closed, Next::Job)
    }
}

/// One forward a batch ran: what its occupancy metrics count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchForward {
    /// Rows (tokens) of the forward.
    pub rows: usize,
    /// Requests whose rows they are.
    pub requests: usize,
}

/// Runs the jobs of `jobs` concurrently, each as `run(job, runner)` on its own thread, with
/// every forward `run` hands to `runner` batched with the other running jobs' (see the module
/// docs); `observe` sees each batched stack forward. Returns when `jobs` is closed and every
/// job has ended.
///
/// `run` must send its language-model forwards through `runner` and block on nothing but them:
/// while it computes, the scheduler waits for it.
pub fn run_batched<'m, B, J, S, R>(limits: BatchLimits, jobs: &mut S, run: R, mut observe: impl FnMut(BatchForward))
where
    B: DecodeOps,
    J: Send,
    S: JobSource<J> + ?Sized,
    R: Fn(J, &dyn StackRunner<'m, B>) + Sync,
{
    std::thread::scope(|scope| {
        let (to_scheduler, calls) = channel::<Message<'m, B>>();
        let mut scheduler = Scheduler { limits, calls, answers: Vec::new(), running: 0, pending: Vec::new() };
        let run = &run;
        let mut closed = false;
        loop {
            while !closed && scheduler.running < limits.max_requests.get() {
                match jobs.next_job(scheduler.running == 0) {
                    Next::Job(job) => {
                        let (answer, answers) = channel();
                        let client = BatchClient {
                            request: scheduler.answers.len(),
                            to_scheduler: to_scheduler.clone(),
                            answers,
                        };
                        scheduler.answers.push(Some(answer));
                        scheduler.running += 1;
                        scope.spawn(move || run(job, &client));
                    }
                    Next::Wait => break,
                    Next::Closed => closed = true,
                }
            }
            match scheduler.running {
                0 if closed => return,
                0 => continue,
                _ => scheduler.round(&mut observe),
            }
        }
    });
}

/// What a request's thread tells the scheduler.
enum Message<'m, B: Backend> {
    Stack { request: usize, call: StackCall<'m, B>, cache: KvCache<B> },
    Head { request: usize, call: HeadCall<'m, B> },
    Finished { request: usize },
}

/// The scheduler's answer to one call.
enum Answer<B: Backend> {
    Stack(LayersOutput<B>, KvCache<B>),
    Head(Tensor<B, 3>),
}

/// A call handed in and not yet run.
struct Pending<'m, B: Backend> {
    request: usize,
    work: Work<'m, B>,
}

enum Work<'m, B: Backend> {
    Stack(StackCall<'m, B>, KvCache<B>),
    Head(HeadCall<'m, B>),
}

impl<B: DecodeOps> Work<'_, B> {
    fn rows(&self) -> usize {
        match self {
            Work::Stack(call, _) => call.rows(),
            Work::Head(call) => call.rows(),
        }
    }

    /// Whether the two run side by side in one forward.
    fn batches_with(&self, other: &Self) -> bool {
        match (self, other) {
            (Work::Stack(a, _), Work::Stack(b, _)) => a.same_layers(b),
            (Work::Head(a), Work::Head(b)) => a.same_head(b),
            _ => false,
        }
    }

    fn continuation(&self) -> bool {
        match self {
            Work::Stack(call, _) => call.continuation,
            Work::Head(call) => call.continuation,
        }
    }
}

struct Scheduler<'m, B: Backend> {
    limits: BatchLimits,
    calls: Receiver<Message<'m, B>>,
    /// Per request (by number), where its answers go; `None` once it has finished.
    answers: Vec<Option<Sender<Answer<B>>>>,
    running: usize,
    /// Calls handed in for the next round.
    pending: Vec<Pending<'m, B>>,
}

impl<'m, B: DecodeOps> Scheduler<'m, B> {
    /// Waits until every running request has handed in its next call; runs the continuations
    /// among them and waits again, until none is; then runs the rest.
    fn round(&mut self, observe: &mut impl FnMut(BatchForward)) {
        loop {
            while self.pending.len() < self.running {
                if let Some(pending) = self.receive() {
                    self.pending.push(pending);
                }
            }
            let (continuations, new_work): (Vec<_>, Vec<_>) =
                std::mem::take(&mut self.pending).into_iter().partition(|call| call.work.continuation());
            if continuations.is_empty() {
                self.run(new_work, observe);
                return;
            }
            self.pending = new_work;
            self.run(continuations, observe);
        }
    }

    /// The next message: a call, or `None` after a request finished.
    fn receive(&mut self) -> Option<Pending<'m, B>> {
        let message = self.calls.recv().expect("the scheduler holds a sender itself");
        match message {
            Message::Stack { request, call, cache } => Some(Pending { request, work: Work::Stack(call, cache) }),
            Message::Head { request, call } => Some(Pending { request, work: Work::Head(call) }),
            Message::Finished { request } => {
                self.answers[request] = None;
                self.running -= 1;
                None
            }
        }
    }

    /// Runs `calls`: those that batch together in forwards of at most `max_rows` rows.
    fn run(&mut self, mut calls: Vec<Pending<'m, B>>, observe: &mut impl FnMut(BatchForward)) {
        while !calls.is_empty() {
            let first = calls.remove(0);
            let mut rows = first.work.rows();
            let mut forward = vec![first];
            let mut rest = Vec::with_capacity(calls.len());
            for call in calls {
                let fits = rows + call.work.rows() <= self.limits.max_rows.get();
                if fits && call.work.batches_with(&forward[0].work) {
                    rows += call.work.rows();
                    forward.push(call);
                } else {
                    rest.push(call);
                }
            }
            calls = rest;
            self.run_forward(forward, observe);
        }
    }

    /// One forward of calls that batch together; answers each.
    fn run_forward(&mut self, forward: Vec<Pending<'m, B>>, observe: &mut impl FnMut(BatchForward)) {
        let requests: Vec<usize> = forward.iter().map(|call| call.request).collect();
        let rows = forward.iter().map(|call| call.work.rows()).sum();
        let answers: Vec<Answer<B>> = match forward[0].work {
            Work::Stack(..) => {
                observe(BatchForward { rows, requests: requests.len() });
                let (calls, mut caches): (Vec<StackCall<'m, B>>, Vec<KvCache<B>>) = forward
                    .into_iter()
                    .map(|call| match call.work {
                        Work::Stack(call, cache) => (call, cache),
                        Work::Head(_) => unreachable!("a forward holds calls that batch together"),
                    })
                    .unzip();
                let outputs = run_stacks(calls.into_iter().zip(caches.iter_mut()).collect());
                outputs.into_iter().zip(caches).map(|(output, cache)| Answer::Stack(output, cache)).collect()
            }
            Work::Head(_) => {
                let calls = forward
                    .into_iter()
                    .map(|call| match call.work {
                        Work::Head(call) => call,
                        Work::Stack(..) => unreachable!("a forward holds calls that batch together"),
                    })
                    .collect();
                run_heads(calls).into_iter().map(Answer::Head).collect()
            }
        };
        for (request, answer) in requests.into_iter().zip(answers) {
            if let Some(to) = &self.answers[request] {
                // A request that panicked meanwhile has no receiver; its Finished follows.
                let _ = to.send(answer);
            }
        }
    }
}

/// A running request's end of the batch: its [`StackRunner`].
struct BatchClient<'m, B: Backend> {
    request: usize,
    to_scheduler: Sender<Message<'m, B>>,
    answers: Receiver<Answer<B>>,
}

impl<'m, B: DecodeOps> BatchClient<'m, B> {
    fn ask(&self, message: Message<'m, B>) -> Answer<B> {
        self.to_scheduler.send(message).expect("the scheduler runs while requests do");
        self.answers.recv().expect("the scheduler answers every call")
    }
}

impl<'m, B: DecodeOps> StackRunner<'m, B> for BatchClient<'m, B> {
    fn run_stack(&self, call: StackCall<'m, B>, cache: &mut KvCache<B>) -> LayersOutput<B> {
        let owned = std::mem::replace(cache, KvCache::new(0));
        match self.ask(Message::Stack { request: self.request, call, cache: owned }) {
            Answer::Stack(output, returned) => {
                *cache = returned;
                output
            }
            Answer::Head(_) => unreachable!("a stack call is answered with its stack"),
        }
    }

    fn run_head(&self, call: HeadCall<'m, B>) -> Tensor<B, 3> {
        match self.ask(Message::Head { request: self.request, call }) {
            Answer::Head(logits) => logits,
            Answer::Stack(..) => unreachable!("a head call is answered with its logits"),
        }
    }
}

/// Tells the scheduler that the request has ended, however its thread ends (a panic included).
impl<B: Backend> Drop for BatchClient<'_, B> {
    fn drop(&mut self) {
        let _ = self.to_scheduler.send(Message::Finished { request: self.request });
    }
}
