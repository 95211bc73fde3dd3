//! A soak test of the batch: a few hundred short requests (text and image, plain and
//! speculative) through one batch leave the heap where a few dozen left it. A request that kept
//! its caches (over 100 KiB each on the tiny fixture) or its thread's state after leaving would
//! show as growth.

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::num::NonZeroUsize;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicIsize, Ordering};

use burn::backend::Flex;
use twigvlm_backbone::{Interrupt, StackRunner};
use twigvlm_engine::{run_batched, BatchLimits, DecoderKind, DraftConfig, Engine, GenerateRequest, Prompt};

type B = Flex;

/// Bytes allocated now.
static CURRENT: AtomicIsize = AtomicIsize::new(0);

struct CountingAllocator;

unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let pointer = unsafe { System.alloc(layout) };
        if !pointer.is_null() {
            CURRENT.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        unsafe { System.dealloc(pointer, layout) };
        CURRENT.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let moved = unsafe { System.realloc(pointer, layout, new_size) };
        if !moved.is_null() {
            CURRENT.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        }
        moved
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

const WARM_UP_REQUESTS: usize = 40;
const SOAK_REQUESTS: usize = 300;
/// Heap growth allowed over the soak: the caches of a few of its requests (it measured none).
const ALLOWED_GROWTH: isize = 1 << 20;

/// A few questions over and over: the tokenizer caches the words it has seen, which is not what
/// this test looks for.
const QUESTIONS: [&str; 4] = ["What is this?", "Which colour is it?", "Tell me a story.", "Where is the circle?"];

fn request(index: usize, image: &image::DynamicImage) -> GenerateRequest {
    let prompt = Prompt::User(QUESTIONS[index % QUESTIONS.len()].into());
    let request = GenerateRequest::greedy(prompt, index.is_multiple_of(2).then(|| image.clone()), 4 + index % 9);
    match index % 3 {
        0 => GenerateRequest {
            decoder: DecoderKind::Ssd,
            draft: DraftConfig { max_draft: 3, ..Default::default() },
            ..request
        },
        _ => request,
    }
}

fn run<'m>(engine: &'m Engine<B>, requests: std::ops::Range<usize>, image: &image::DynamicImage) {
    let limits = BatchLimits { max_requests: NonZeroUsize::new(8).unwrap(), ..BatchLimits::default() };
    let mut jobs = requests.map(|index| request(index, image)).collect::<Vec<_>>().into_iter();
    run_batched(
        limits,
        &mut jobs,
        |request: GenerateRequest, runner: &dyn StackRunner<'m, B>| {
            let result = engine.generate_with(&request, &Interrupt::NEVER, runner, |_| ControlFlow::Continue(()));
            assert!(!result.expect("the request runs").generated_ids.is_empty());
        },
        |_| {},
    );
}

#[test]
fn hundreds_of_requests_leave_no_memory_behind() {
    let (engine, _twig) = support::engine_with_twig();
    let image = image::open(twigvlm_testkit::image("shapes-80x60.png")).unwrap();

    run(&engine, 0..WARM_UP_REQUESTS, &image);
    let warm = CURRENT.load(Ordering::Relaxed);
    run(&engine, WARM_UP_REQUESTS..WARM_UP_REQUESTS + SOAK_REQUESTS, &image);
    let after = CURRENT.load(Ordering::Relaxed);
    assert!(
        after - warm < ALLOWED_GROWTH,
        "the heap grew by {} KiB over {SOAK_REQUESTS} requests (from {} KiB)",
        (after - warm) / 1024,
        warm / 1024
    );
}
