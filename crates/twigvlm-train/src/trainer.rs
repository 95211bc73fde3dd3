//! The training loop shared by every stage: the objective supplies the loss of each step's batch
//! (batches depend only on the step number, so a resumed run sees exactly the data an
//! uninterrupted one would), the loop does the optimisation, logging, checkpoints and resume.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use burn::module::AutodiffModule;
use burn::optim::{GradientsParams, Optimizer};
use burn::prelude::*;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::checkpoint;
use crate::clipping::clip_global_norm;
use crate::error::{Result, TrainError};
use crate::optimizer::OptimizerConfig;
use crate::schedule::LrSchedule;
use twigvlm_backbone::ops::DecodeAutodiff;

/// One stage's training problem.
pub trait Objective<B: DecodeAutodiff> {
    type Model: AutodiffModule<B>;

    /// The loss of step `step`'s batch and how many items (examples or tokens) it covered.
    fn loss(&mut self, model: &Self::Model, step: usize) -> Result<(Tensor<B, 1>, usize)>;

    /// Held-out metrics (name, value), computed every `eval_every` steps and at the end.
    fn evaluate(&mut self, _model: &Self::Model) -> Result<Vec<(String, f64)>> {
        Ok(Vec::new())
    }
}

#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub steps: usize,
    pub schedule: LrSchedule,
    pub optimizer: OptimizerConfig,
    pub checkpoint_every: usize,
    pub eval_every: Option<usize>,
    /// Steps between log entries (loss averaged over them).
    pub log_every: usize,
    pub out_dir: PathBuf,
    /// Continue from `out_dir`'s checkpoint if there is one.
    pub resume: bool,
    pub show_progress: bool,
    /// Wall-clock budget of the run. After [`PACE_STEPS`] steps, and again each time the count
    /// doubles, the loop measures its recent pace and fits the run (at most `steps`), and the
    /// schedule with it, to end inside the budget; it also stops at the budget whatever the plan.
    pub time_limit: Option<Duration>,
}

/// Steps timed before a time-limited run fits its length (the first step, which compiles the
/// GPU kernels, is left out of the pace).
pub const PACE_STEPS: usize = 10;
/// Whether a time-limited run fits its length after this many steps of this run (since it started or resumed): after
/// [`PACE_STEPS`], then each time the count doubles, so that a pace measured while GPU kernels
/// were still being compiled (new shapes keep coming at first) is corrected once they exist.
fn is_fit_point(steps_this_run: usize) -> bool {
    steps_this_run.is_multiple_of(PACE_STEPS) && (steps_this_run / PACE_STEPS).is_power_of_two()
}

/// Share of the remaining budget a time-limited run plans to use (evaluations and checkpoints
/// take the rest).
const BUDGET_SHARE: f64 = 0.9;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    /// Steps done when this entry was written.
    pub step: usize,
    pub loss: f32,
    pub lr: f64,
    pub grad_norm: f64,
    pub items_per_s: f64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub eval: Vec<(String, f64)>,
}

/// Loop state saved with each checkpoint.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TrainReport {
    pub steps_done: usize,
    /// The length a time limit fitted the run to (a resumed run keeps it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fitted_steps: Option<usize>,
    pub seconds: f64,
    pub history: Vec<StepMetrics>,
}

pub fn train<B, O>(
    objective: &mut O,
    model: O::Model,
    options: &TrainOptions,
    device: &B::Device,
) -> Result<(O::Model, TrainReport)>
where
    B: DecodeAutodiff,
    O: Objective<B>,
{
    if options.steps == 0 || options.log_every == 0 || options.checkpoint_every == 0 {
        return Err(TrainError::Config("steps, log_every and checkpoint_every must be positive".into()));
    }
    std::fs::create_dir_all(&options.out_dir)
        .map_err(|e| TrainError::Checkpoint { path: options.out_dir.clone(), reason: e.to_string() })?;
    let mut optimizer = options.optimizer.adamw::<B, O::Model>();
    let (mut model, mut report) = (model, TrainReport::default());
    if options.resume && checkpoint::exists(&options.out_dir) {
        (model, optimizer, report) =
            checkpoint::load::<B, _, _, TrainReport>(&options.out_dir, model, optimizer, device)?;
        tracing::info!(step = report.steps_done, "resumed from checkpoint");
    }
    let progress = if options.show_progress { ProgressBar::new(options.steps as u64) } else { ProgressBar::hidden() };
    progress.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} steps {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    progress.set_position(report.steps_done as u64);

    let started = Instant::now() - Duration::from_secs_f64(report.seconds);
    let run_start = Instant::now();
    let mut plan = Plan::new(options, &report);
    progress.set_length(plan.steps as u64);
    let (mut loss_sum, mut norm_sum, mut items, mut window_steps, mut window_start) =
        (0.0f64, 0.0f64, 0usize, 0usize, Instant::now());
    // (step, time) the pace is measured from: after the first step (which compiles the GPU
    // kernels), then from each fit on.
    let mut pace_window: Option<(usize, Instant)> = None;
    let resumed_at = report.steps_done;
    let mut step = resumed_at;
    while step < plan.steps {
        let (loss, step_items) = objective.loss(&model, step)?;
        let loss_value = loss.clone().into_scalar().elem::<f32>();
        if !loss_value.is_finite() {
            return Err(TrainError::Diverged { step, loss: loss_value });
        }
        let mut grads = GradientsParams::from_grads(loss.backward(), &model);
        let grad_norm = clip_global_norm(&model, &mut grads, options.optimizer.max_grad_norm);
        let lr = plan.schedule.at(step);
        model = optimizer.step(lr, model, grads);
        (loss_sum, norm_sum, items, window_steps) =
            (loss_sum + loss_value as f64, norm_sum + grad_norm, items + step_items, window_steps + 1);
        let done = step + 1;
        step = done;
        progress.inc(1);
        if let Some(limit) = options.time_limit {
            let steps_this_run = done - resumed_at;
            let (window_from, window_start) = *pace_window.get_or_insert_with(|| (done, Instant::now()));
            if is_fit_point(steps_this_run) {
                let pace = window_start.elapsed().as_secs_f64() / (done - window_from) as f64;
                plan.fit(done, limit.saturating_sub(run_start.elapsed()), pace, options.steps);
                report.fitted_steps = Some(plan.steps);
                progress.set_length(plan.steps as u64);
                tracing::info!(steps = plan.steps, pace_s = pace, "fitted the run to the time limit");
                pace_window = Some((done, Instant::now()));
            }
            if run_start.elapsed() >= limit && done < plan.steps {
                tracing::warn!(step = done, "time limit reached before the planned steps");
                plan.steps = done;
                report.fitted_steps = Some(done);
            }
        }

        let evaluate = options.eval_every.is_some_and(|every| done % every == 0) || done == plan.steps;
        if done % options.log_every == 0 || evaluate {
            let eval = if evaluate { objective.evaluate(&model)? } else { Vec::new() };
            let entry = StepMetrics {
                step: done,
                loss: (loss_sum / window_steps as f64) as f32,
                lr,
                grad_norm: norm_sum / window_steps as f64,
                items_per_s: items as f64 / window_start.elapsed().as_secs_f64().max(1e-9),
                eval,
            };
            progress.set_message(format!(
                "loss {:.4} lr {:.2e} |g| {:.2} {:.1} items/s",
                entry.loss, lr, entry.grad_norm, entry.items_per_s
            ));
            if !entry.eval.is_empty() {
                let metrics: Vec<String> = entry.eval.iter().map(|(k, v)| format!("{k} {v:.4}")).collect();
                progress.println(format!("step {done}: loss {:.4}, {}", entry.loss, metrics.join(", ")));
                // Also in the log, which a run with a hidden progress bar (`--quiet`) still writes.
                tracing::info!(step = done, metrics = %metrics.join(", "), "eval");
            }
            tracing::info!(step = done, loss = entry.loss, lr, grad_norm = entry.grad_norm, "train");
            report.history.push(entry);
            (loss_sum, norm_sum, items, window_steps, window_start) = (0.0, 0.0, 0, 0, Instant::now());
        }
        report.steps_done = done;
        if done % options.checkpoint_every == 0 || done == plan.steps {
            report.seconds = started.elapsed().as_secs_f64();
            checkpoint::save(&options.out_dir, &model, &optimizer, &report)?;
        }
    }
    progress.finish_and_clear();
    report.seconds = started.elapsed().as_secs_f64();
    Ok((model, report))
}

/// How long the run is and its learning rates.
struct Plan {
    steps: usize,
    schedule: LrSchedule,
}

impl Plan {
    fn new(options: &TrainOptions, report: &TrainReport) -> Self {
        match report.fitted_steps {
            Some(steps) => Self { steps, schedule: options.schedule.refit(steps) },
            None => Self { steps: options.steps, schedule: options.schedule },
        }
    }

    /// Sets the run's length (at most `most` steps) so that the steps after `done` fit in
    /// `remaining` at `pace` s/step: shorter when the pace is slow, longer again (up to `most`)
    /// when it has picked up.
    fn fit(&mut self, done: usize, remaining: Duration, pace: f64, most: usize) {
        let affordable = (remaining.as_secs_f64() * BUDGET_SHARE / pace.max(f64::EPSILON)).floor() as usize;
        let steps = most.min(done + affordable).max(done);
        if steps != self.steps {
            *self = Self { steps, schedule: self.schedule.refit(steps) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_shrinks_at_a_slow_pace_and_grows_back_when_the_pace_picks_up() {
        let mut plan = Plan { steps: 1000, schedule: LrSchedule::warmup_cosine(1e-3, 1000, 0.1) };
        // 100 s left at 10 s/step: 90% of the budget affords 9 more steps.
        plan.fit(PACE_STEPS, Duration::from_secs(100), 10.0, 1000);
        assert_eq!((plan.steps, plan.schedule.total_steps), (PACE_STEPS + 9, PACE_STEPS + 9));
        // Kernels compiled: 1 s/step affords far more, up to --steps.
        plan.fit(2 * PACE_STEPS, Duration::from_secs(100), 1.0, 1000);
        assert_eq!(plan.steps, 2 * PACE_STEPS + 90);
        plan.fit(4 * PACE_STEPS, Duration::from_secs(10_000), 1.0, 1000);
        assert_eq!(plan.steps, 1000, "never beyond --steps");
        assert!(
            is_fit_point(PACE_STEPS)
                && is_fit_point(4 * PACE_STEPS)
                && !is_fit_point(3 * PACE_STEPS)
                && !is_fit_point(1)
        );
    }
}
