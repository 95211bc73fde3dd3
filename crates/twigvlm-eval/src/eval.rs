//! The evaluation harness: greedy answers over a dataset, exact match per task, object-level F1
//! for descriptions, with the blank-image and majority-answer baselines beside them.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::stats::{wilson, Interval};
use serde::Serialize;
use twigvlm_backbone::ops::DecodeOps;
use twigvlm_backbone::{Interrupt, StackRunner};
use twigvlm_data::score::{exact_match, normalise_answer, DescribeCounts};
use twigvlm_data::spec::Dataset;
use twigvlm_data::{Conversation, QuestionKind, Turn};
use twigvlm_engine::{run_batched, BatchLimits, DecoderKind, Engine, GenerateRequest, Prompt, PruningSpec};

/// How many tokens an answer may take, by the kind of question.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnswerBudget {
    /// A short shapes-world answer ("row 3, column five" is the longest).
    pub short: usize,
    /// A description (six objects, about 14 tokens each) or a user's question of unknown length.
    pub long: usize,
}

impl Default for AnswerBudget {
    fn default() -> Self {
        Self { short: 16, long: 160 }
    }
}

impl AnswerBudget {
    pub fn for_turn(&self, turn: &Turn) -> usize {
        match turn.kind {
            Some(kind) if !kind.is_description() => self.short,
            _ => self.long,
        }
    }
}

#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub answer_budget: AnswerBudget,
    /// Also answer every question about the same image with the objects removed.
    pub blank_image_baseline: bool,
    /// The network that answers (`twig-only` scores the twig alone).
    pub decoder: DecoderKind,
    /// Which visual tokens the prefill keeps.
    pub pruning: PruningSpec,
    /// Questions answered at once, their forwards batched ([`twigvlm_engine::batch`]); the
    /// answers do not depend on it.
    pub batch: BatchLimits,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self {
            answer_budget: AnswerBudget::default(),
            blank_image_baseline: true,
            decoder: DecoderKind::Base,
            pruning: PruningSpec::none(),
            batch: BatchLimits::ONE,
        }
    }
}

/// Scores of one task.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TaskReport {
    pub n: usize,
    pub accuracy: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blank_image_accuracy: Option<f64>,
    /// Accuracy of always giving the most frequent reference answer.
    pub majority_accuracy: f64,
    pub majority_answer: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct DescribeReport {
    pub n: usize,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blank_image_f1: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// The network that answered.
    pub decoder: DecoderKind,
    /// Questions asked.
    pub n: usize,
    /// Exact match over all short-answer questions.
    pub accuracy: f64,
    /// Its 95% confidence interval (Wilson) over these questions.
    pub accuracy_ci: Interval,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blank_image_accuracy: Option<f64>,
    pub majority_accuracy: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub describe_f1: Option<f64>,
    pub per_task: BTreeMap<String, TaskReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub describe: Option<DescribeReport>,
    pub seconds: f64,
    /// Whether each short-answer question was answered right, in the dataset's order (what
    /// paired comparisons of two evaluations of the same questions resample).
    #[serde(skip)]
    pub outcomes: Vec<bool>,
}

#[derive(Default)]
struct ShortTally {
    references: Vec<String>,
    correct: usize,
    blank_correct: usize,
}

/// One generation of an evaluation: a turn of an example, with its image or the blank one.
#[derive(Debug, Clone, Copy)]
struct Ask {
    example: usize,
    turn: usize,
    blank: bool,
}

/// Evaluates every turn of `dataset` as a single-turn question (user data: history is not
/// replayed), `options.batch` questions at a time. `on_question(done)` reports progress.
pub fn evaluate<'e, B: DecodeOps>(
    engine: &'e Engine<B>,
    dataset: &Dataset,
    options: &EvalOptions,
    on_question: impl Fn(usize) + Sync,
) -> anyhow::Result<EvalReport> {
    let started = std::time::Instant::now();
    let blank_source = match dataset {
        Dataset::Shapes(shapes) if options.blank_image_baseline => Some(shapes),
        _ => None,
    };
    let examples: Vec<Conversation> = (0..dataset.len()).map(|index| dataset.get(index)).collect();
    let mut asks = Vec::new();
    for (example, conversation) in examples.iter().enumerate() {
        for turn in 0..conversation.turns.len() {
            for blank in [false, true].into_iter().take(if blank_source.is_some() { 2 } else { 1 }) {
                asks.push(Ask { example, turn, blank });
            }
        }
    }
    let answers: Mutex<Vec<Option<anyhow::Result<String>>>> = Mutex::new((0..asks.len()).map(|_| None).collect());
    let answered = AtomicUsize::new(0);
    let answer = |ask: Ask, runner: &dyn StackRunner<'e, B>| -> anyhow::Result<String> {
        let conversation = &examples[ask.example];
        let turn = &conversation.turns[ask.turn];
        let image = match blank_source.filter(|_| ask.blank) {
            Some(shapes) => Some(shapes.blank_image(ask.example).load()?),
            None => conversation.image.as_ref().map(|source| source.load()).transpose()?,
        };
        let request = GenerateRequest {
            decoder: options.decoder,
            pruning: options.pruning.clone(),
            ..GenerateRequest::greedy(Prompt::User(turn.user.clone()), image, options.answer_budget.for_turn(turn))
        };
        Ok(engine.generate_with(&request, &Interrupt::NEVER, runner, |_| ControlFlow::Continue(()))?.text)
    };
    // Each job is an ask with the index of its answer.
    let mut jobs = asks.iter().copied().enumerate().collect::<Vec<_>>().into_iter();
    run_batched(
        options.batch,
        &mut jobs,
        |(slot, ask): (usize, Ask), runner: &dyn StackRunner<'e, B>| {
            let result = answer(ask, runner);
            answers.lock().unwrap_or_else(|poisoned| poisoned.into_inner())[slot] = Some(result);
            if !ask.blank {
                on_question(answered.fetch_add(1, Ordering::Relaxed) + 1);
            }
        },
        |_| {},
    );
    let mut answers = answers.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut take = |slot: usize| answers[slot].take().expect("every question was answered");

    let mut short: BTreeMap<String, ShortTally> = BTreeMap::new();
    let mut outcomes = Vec::new();
    let (mut describe, mut blank_describe, mut describe_n) = (DescribeCounts::default(), DescribeCounts::default(), 0);
    let mut asked = 0;
    // A blank-image twin, when there is one, follows its question.
    for (slot, ask) in asks.iter().enumerate().filter(|(_, ask)| !ask.blank) {
        let turn = &examples[ask.example].turns[ask.turn];
        let prediction = take(slot)?;
        let blank_prediction = blank_source.map(|_| take(slot + 1)).transpose()?;
        tracing::debug!(task = turn.task_name(), question = %turn.user, reference = %turn.assistant, %prediction, "answer");
        if turn.kind.is_some_and(QuestionKind::is_description) {
            describe_n += 1;
            describe.add(&prediction, &turn.assistant);
            if let Some(p) = &blank_prediction {
                blank_describe.add(p, &turn.assistant);
            }
        } else {
            let tally = short.entry(turn.task_name().to_string()).or_default();
            tally.references.push(normalise_answer(&turn.assistant));
            let right = exact_match(&prediction, &turn.assistant);
            outcomes.push(right);
            tally.correct += usize::from(right);
            tally.blank_correct += blank_prediction.is_some_and(|p| exact_match(&p, &turn.assistant)) as usize;
        }
        asked += 1;
    }
    let describe = (describe_n > 0).then_some((describe_n, describe, blank_describe));
    let mut report = report(options.decoder, short, describe, blank_source.is_some(), asked, started);
    report.outcomes = outcomes;
    Ok(report)
}

fn report(
    decoder: DecoderKind,
    short: BTreeMap<String, ShortTally>,
    describe: Option<(usize, DescribeCounts, DescribeCounts)>,
    with_blank: bool,
    asked: usize,
    started: std::time::Instant,
) -> EvalReport {
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let (mut n_short, mut correct, mut blank_correct, mut majority_correct) = (0, 0, 0, 0);
    let per_task = short
        .into_iter()
        .map(|(task, tally)| {
            let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
            for r in &tally.references {
                *counts.entry(r.as_str()).or_default() += 1;
            }
            let (majority_answer, majority) =
                counts.iter().max_by_key(|(_, &c)| c).map(|(a, &c)| (a.to_string(), c)).unwrap_or_default();
            let n = tally.references.len();
            (n_short, correct, blank_correct, majority_correct) = (
                n_short + n,
                correct + tally.correct,
                blank_correct + tally.blank_correct,
                majority_correct + majority,
            );
            let report = TaskReport {
                n,
                accuracy: ratio(tally.correct, n),
                blank_image_accuracy: with_blank.then(|| ratio(tally.blank_correct, n)),
                majority_accuracy: ratio(majority, n),
                majority_answer,
            };
            (task, report)
        })
        .collect();
    let describe = describe.map(|(n, counts, blank)| DescribeReport {
        n,
        precision: counts.precision(),
        recall: counts.recall(),
        f1: counts.f1(),
        blank_image_f1: with_blank.then(|| blank.f1()),
    });
    EvalReport {
        decoder,
        n: asked,
        accuracy: ratio(correct, n_short),
        accuracy_ci: wilson(correct, n_short),
        blank_image_accuracy: with_blank.then(|| ratio(blank_correct, n_short)),
        majority_accuracy: ratio(majority_correct, n_short),
        describe_f1: describe.as_ref().map(|d| d.f1),
        per_task,
        describe,
        seconds: started.elapsed().as_secs_f64(),
        outcomes: Vec::new(),
    }
}
