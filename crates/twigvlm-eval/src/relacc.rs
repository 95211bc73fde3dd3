//! The RelAcc table: the same questions answered under every prefill policy and visual budget,
//! each cell's accuracy relative to the unpruned model's (the paper's RelAcc), with 95%
//! confidence intervals. `none` among the policies adds FinalWipe alone (every visual token
//! until K_f, none from there), the cost of the wipe by itself.

use std::path::Path;

use crate::eval::{evaluate, EvalOptions};
use crate::plot::{line_chart, Labels, Series};
use crate::stats::{paired_ratio, Interval};
use serde::Serialize;
use twigvlm_backbone::ops::DecodeOps;
use twigvlm_data::spec::Dataset;
use twigvlm_engine::{DecoderKind, Engine, PrefillPolicy, PruningSpec, VisualBudget};

/// One policy at one budget.
#[derive(Debug, Clone, Serialize)]
pub struct RelAccRow {
    pub policy: String,
    /// R̄ as given (`None` for the unpruned row).
    pub visual_budget: Option<String>,
    /// K_f (the depth when there is no FinalWipe).
    pub final_wipe: usize,
    /// R': visual tokens kept in layers K..K_f-1.
    pub r_prime: usize,
    /// The average visual tokens per layer this cell really gives.
    pub avg_visual_tokens: f64,
    /// Exact match over the short-answer questions.
    pub accuracy: f64,
    /// Its 95% confidence interval (Wilson).
    pub accuracy_ci: Interval,
    pub describe_f1: Option<f64>,
    /// `accuracy` / the unpruned accuracy (`None` when that is 0).
    pub rel_acc: Option<f64>,
    /// Its 95% confidence interval: a paired bootstrap over the questions (the same resampled
    /// questions for this cell and the unpruned one).
    pub rel_acc_ci: Option<Interval>,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RelAccReport {
    /// Questions per cell.
    pub questions: usize,
    /// N_v: visual tokens per image.
    pub visual_tokens: usize,
    pub decoder: DecoderKind,
    /// The unpruned row first, then each policy at each budget.
    pub rows: Vec<RelAccRow>,
}

/// The policy name of the FinalWipe-alone row (the `none` policy with K_f).
pub const FINAL_WIPE_ALONE: &str = "none+final-wipe";

/// A cell to evaluate: the spec and what it keeps.
struct Cell {
    /// The row's policy name.
    name: String,
    spec: PruningSpec,
    final_wipe: usize,
    r_prime: usize,
    avg_visual_tokens: f64,
}

/// Every cell's spec resolved up front, so a bad policy fails before hours of evaluation.
fn cells<B: DecodeOps>(
    engine: &Engine<B>,
    policies: &[PrefillPolicy],
    budgets: &[VisualBudget],
    final_wipe: Option<usize>,
) -> anyhow::Result<Vec<Cell>> {
    let facts = engine.facts();
    let (num_layers, visual) = (facts.num_layers(), facts.visual_tokens());
    let cell = |name: String, spec: PruningSpec| -> anyhow::Result<Cell> {
        let planned = facts.plan(&spec)?.and_then(|plan| Some((plan.kept_visual_tokens(visual)?, plan.layers)));
        Ok(match planned {
            None => Cell { name, spec, final_wipe: num_layers, r_prime: visual, avg_visual_tokens: visual as f64 },
            Some((r_prime, layers)) => Cell {
                name,
                spec,
                final_wipe: layers.wipe_layer,
                r_prime,
                avg_visual_tokens: layers.average_visual_tokens(r_prime, visual),
            },
        })
    };
    let mut cells = vec![cell(PrefillPolicy::None.to_string(), PruningSpec::none())?];
    if policies.contains(&PrefillPolicy::None) {
        if let Some(spec) = PruningSpec::final_wipe_only(num_layers, facts.twig(), final_wipe) {
            cells.push(cell(FINAL_WIPE_ALONE.to_string(), spec)?);
        }
    }
    for &policy in policies.iter().filter(|&&p| p != PrefillPolicy::None) {
        for &budget in budgets {
            cells.push(cell(policy.to_string(), PruningSpec { policy, budget: Some(budget), final_wipe })?);
        }
    }
    Ok(cells)
}

/// Scores `dataset` unpruned and under each policy × budget, answering with `answering`'s
/// decoder, budgets and batch (its pruning and blank-image baseline are the cells').
/// `on_question(cell, done)` reports progress within the cell.
pub fn relacc_table<B: DecodeOps>(
    engine: &Engine<B>,
    dataset: &Dataset,
    policies: &[PrefillPolicy],
    budgets: &[VisualBudget],
    final_wipe: Option<usize>,
    answering: &EvalOptions,
    on_question: impl Fn(usize, usize) + Sync,
) -> anyhow::Result<RelAccReport> {
    let cells = cells(engine, policies, budgets, final_wipe)?;
    let mut rows: Vec<RelAccRow> = Vec::with_capacity(cells.len());
    let mut unpruned_outcomes: Option<Vec<bool>> = None;
    for (index, cell) in cells.into_iter().enumerate() {
        let options = EvalOptions { blank_image_baseline: false, pruning: cell.spec.clone(), ..answering.clone() };
        let report = evaluate(engine, dataset, &options, |done| on_question(index, done))?;
        let unpruned = rows.first().map_or(report.accuracy, |r| r.accuracy);
        let reference = unpruned_outcomes.get_or_insert_with(|| report.outcomes.clone());
        rows.push(RelAccRow {
            policy: cell.name,
            visual_budget: cell.spec.budget.map(|b| b.to_string()),
            final_wipe: cell.final_wipe,
            r_prime: cell.r_prime,
            avg_visual_tokens: cell.avg_visual_tokens,
            accuracy: report.accuracy,
            accuracy_ci: report.accuracy_ci,
            describe_f1: report.describe_f1,
            rel_acc: (unpruned > 0.0).then(|| report.accuracy / unpruned),
            rel_acc_ci: paired_ratio(&report.outcomes, reference),
            seconds: report.seconds,
        });
    }
    Ok(RelAccReport {
        questions: dataset.question_count(),
        visual_tokens: engine.facts().visual_tokens(),
        decoder: answering.decoder,
        rows,
    })
}

/// How many evaluations [`relacc_table`] runs at most (`none` among the policies adds the
/// FinalWipe-alone row where the model is deep enough for one).
pub fn cell_count(policies: &[PrefillPolicy], budgets: &[VisualBudget]) -> usize {
    let pruned = policies.iter().filter(|&&p| p != PrefillPolicy::None).count() * budgets.len();
    1 + usize::from(policies.contains(&PrefillPolicy::None)) + pruned
}

/// RelAcc (%) against the share of visual tokens kept on average (%), one line per policy.
pub fn plot_relacc(report: &RelAccReport, path: &Path) -> anyhow::Result<()> {
    let mut series: Vec<Series> = Vec::new();
    for row in &report.rows {
        let Some(rel_acc) = row.rel_acc else { continue };
        let point = (100.0 * row.avg_visual_tokens / report.visual_tokens as f64, 100.0 * rel_acc);
        match series.iter_mut().find(|s| s.name == row.policy) {
            Some(line) => line.points.push(point),
            None => series.push(Series { name: row.policy.clone(), points: vec![point] }),
        }
    }
    let labels = Labels {
        title: "RelAcc under visual token pruning",
        x: "average visual tokens per layer (% of the image's)",
        y: "RelAcc (%)",
    };
    line_chart(path, &labels, &series)
}
