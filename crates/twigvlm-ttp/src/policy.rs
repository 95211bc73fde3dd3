//! Prefill policies: which visual tokens survive into layer K, decided by whose attention. All
//! policies run through the same prefill ([`crate::prefill`]); they differ only in the scores
//! that rank the visual tokens and in the layer plan.

use std::fmt;
use std::str::FromStr;

use crate::budget::{LayerPlan, VisualBudget};
use crate::error::{Result, TtpError};
use twigvlm_twig::TwigConfig;

/// K when no twig fixes it: FastV's and the paper's pruning layer for LLaVA-1.5-7B.
pub const PAPER_PRUNE_LAYER: usize = 2;

/// The paper's FinalWipe layer as a share of the depth: K_f = 24 of L = 32.
const PAPER_WIPE_SHARE: (usize, usize) = (24, 32);

/// A base layer named as the paper counts them (1-indexed), possibly relative to the twig.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerRef {
    /// The N-th layer.
    Number(usize),
    /// Layer K: the last layer below the pruning point (FastV's choice).
    K,
    /// Layer K+T: as deep as the twig's last block.
    KPlusT,
}

/// Where the scores that rank visual tokens come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefillPolicy {
    /// No pruning.
    None,
    /// FastV: the attention inside layer K, no FinalWipe, FastV's budget.
    FastV,
    /// The attention inside a base layer (the paper's ablation), pruning the input of layer K.
    VlmLayer(LayerRef),
    /// Uniformly random visual tokens (seeded).
    Random { seed: u64 },
    /// TTP: the attention of the twig's last block.
    Twig,
    /// TwigVLM++: the twig's pruning head (a learned gating of its last block's attention).
    TwigHead,
}

impl PrefillPolicy {
    /// Whether the policy ranks with the twig (and needs one attached).
    pub fn ranks_with_twig(self) -> bool {
        matches!(self, PrefillPolicy::Twig | PrefillPolicy::TwigHead)
    }
}

impl FromStr for PrefillPolicy {
    type Err = TtpError;

    fn from_str(text: &str) -> Result<Self> {
        let unknown = || TtpError::UnknownPolicy(text.to_string());
        let policy = match text.trim() {
            "none" => PrefillPolicy::None,
            "fastv" => PrefillPolicy::FastV,
            "random" => PrefillPolicy::Random { seed: 0 },
            "twig" => PrefillPolicy::Twig,
            "twig++" => PrefillPolicy::TwigHead,
            other => match other.split_once(':') {
                Some(("random", seed)) => PrefillPolicy::Random { seed: seed.parse().map_err(|_| unknown())? },
                Some(("vlm-layer", layer)) => PrefillPolicy::VlmLayer(match layer {
                    "K" => LayerRef::K,
                    "K+T" => LayerRef::KPlusT,
                    number => match number.parse() {
                        Ok(n) if n >= 1 => LayerRef::Number(n),
                        _ => return Err(unknown()),
                    },
                }),
                _ => return Err(unknown()),
            },
        };
        Ok(policy)
    }
}

impl fmt::Display for PrefillPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PrefillPolicy::None => write!(f, "none"),
            PrefillPolicy::FastV => write!(f, "fastv"),
            PrefillPolicy::VlmLayer(LayerRef::Number(n)) => write!(f, "vlm-layer:{n}"),
            PrefillPolicy::VlmLayer(LayerRef::K) => write!(f, "vlm-layer:K"),
            PrefillPolicy::VlmLayer(LayerRef::KPlusT) => write!(f, "vlm-layer:K+T"),
            PrefillPolicy::Random { seed: 0 } => write!(f, "random"),
            PrefillPolicy::Random { seed } => write!(f, "random:{seed}"),
            PrefillPolicy::Twig => write!(f, "twig"),
            PrefillPolicy::TwigHead => write!(f, "twig++"),
        }
    }
}

/// The twig's place in the base model, as pruning needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TwigPlace {
    pub k: usize,
    pub t: usize,
    /// The FinalWipe layer K_f the twig's model works with, when its config names one (the
    /// default of every policy but FastV).
    pub final_wipe: Option<usize>,
    /// Whether the twig has a pruning head (`twig++` needs one).
    pub pruning_head: bool,
}

impl TwigPlace {
    pub fn of(config: &TwigConfig) -> Self {
        Self { k: config.k, t: config.t, final_wipe: config.final_wipe, pruning_head: config.pruning_head }
    }
}

/// The ranking source of a resolved policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scores {
    /// Head-mean attention of the last prompt token inside base layer `index` (0-based).
    BaseLayer(usize),
    /// Head-mean attention of the last prompt token in the twig's last block.
    Twig,
    /// The twig's pruning head.
    TwigHead,
    Random {
        seed: u64,
    },
    /// No ranking: FinalWipe alone keeps every visual token until K_f.
    Unranked,
}

/// What a prefill does with visual tokens: a policy, a budget and an optional FinalWipe layer.
#[derive(Debug, Clone, PartialEq)]
pub struct PruningSpec {
    pub policy: PrefillPolicy,
    /// R̄; required by every policy but `none`.
    pub budget: Option<VisualBudget>,
    /// K_f; `None` takes the policy's default (the twig config's layer when it names one, else
    /// the paper's 24/32 of the depth; FastV: none). K_f = L disables FinalWipe. With the `none`
    /// policy and no budget, FinalWipe alone: every visual token until K_f, none from there.
    pub final_wipe: Option<usize>,
}

/// A policy resolved against a model: where pruning happens and how tokens are ranked.
#[derive(Debug, Clone, PartialEq)]
pub struct PruningPlan {
    pub policy: PrefillPolicy,
    pub budget: VisualBudget,
    pub layers: LayerPlan,
    pub scores: Scores,
}

impl PruningPlan {
    /// R' for an image of `visual_tokens`, or `None` when the budget lets every layer see all of
    /// them (nothing needs pruning, and nothing is pruned, FinalWipe included).
    pub fn kept_visual_tokens(&self, visual_tokens: usize) -> Option<usize> {
        let tokens = self.budget.tokens(visual_tokens);
        (tokens < visual_tokens as f64).then(|| self.layers.kept_visual_tokens(tokens, visual_tokens))
    }
}

impl PruningSpec {
    /// No pruning.
    pub fn none() -> Self {
        Self { policy: PrefillPolicy::None, budget: None, final_wipe: None }
    }

    /// FinalWipe alone (the `none` policy and K_f): at `final_wipe`, else at the layer the
    /// pruning policies wipe from by default on this model; `None` when that is the depth (the
    /// model is too shallow for FinalWipe).
    pub fn final_wipe_only(num_layers: usize, twig: Option<TwigPlace>, final_wipe: Option<usize>) -> Option<Self> {
        let wipe_layer = final_wipe.unwrap_or_else(|| default_final_wipe(num_layers, twig));
        (wipe_layer != num_layers).then_some(Self {
            policy: PrefillPolicy::None,
            budget: None,
            final_wipe: Some(wipe_layer),
        })
    }

    /// Resolves the policy for a decoder of `num_layers` layers and the attached twig; `None`
    /// for the `none` policy. K is the twig's, or [`PAPER_PRUNE_LAYER`] without a twig.
    pub fn plan(&self, num_layers: usize, twig: Option<TwigPlace>) -> Result<Option<PruningPlan>> {
        let budget = match (self.policy, self.budget, self.final_wipe) {
            (PrefillPolicy::None, None, None) => return Ok(None),
            (PrefillPolicy::None, None, Some(k_f)) => return final_wipe_alone(num_layers, k_f),
            (PrefillPolicy::None, Some(_), _) => return Err(TtpError::NoPolicy),
            (policy, None, _) => return Err(TtpError::MissingBudget(policy.to_string())),
            (_, Some(budget), _) => budget,
        };
        let k = twig.map_or(PAPER_PRUNE_LAYER, |t| t.k);
        let wipe_layer = match (self.policy, self.final_wipe) {
            (PrefillPolicy::FastV, Some(k_f)) if k_f != num_layers => {
                return Err(TtpError::InvalidLayers(format!(
                "FastV has no FinalWipe; use vlm-layer:K with --final-wipe {k_f} for FastV's attention with FinalWipe"
            )))
            }
            (PrefillPolicy::FastV, _) => num_layers,
            (_, Some(k_f)) => k_f,
            (_, None) => default_final_wipe(num_layers, twig),
        };
        let layers = LayerPlan::new(num_layers, k, wipe_layer)?;
        let base_layer = |layer: LayerRef| -> Result<Scores> {
            let number = match layer {
                LayerRef::Number(n) => n,
                LayerRef::K => k,
                LayerRef::KPlusT => k + twig.ok_or(TtpError::MissingTwig)?.t,
            };
            if number == 0 || number > num_layers {
                return Err(TtpError::InvalidLayers(format!("vlm-layer:{number} needs 1 ≤ N ≤ {num_layers}")));
            }
            Ok(Scores::BaseLayer(number - 1))
        };
        let scores = match self.policy {
            PrefillPolicy::None => unreachable!("planned above"),
            PrefillPolicy::FastV => base_layer(LayerRef::K)?,
            PrefillPolicy::VlmLayer(layer) => base_layer(layer)?,
            PrefillPolicy::Random { seed } => Scores::Random { seed },
            PrefillPolicy::Twig => {
                twig.ok_or(TtpError::MissingTwig)?;
                Scores::Twig
            }
            PrefillPolicy::TwigHead if twig.ok_or(TtpError::MissingTwig)?.pruning_head => Scores::TwigHead,
            PrefillPolicy::TwigHead => return Err(TtpError::MissingPruningHead),
        };
        Ok(Some(PruningPlan { policy: self.policy, budget, layers, scores }))
    }
}

/// FinalWipe at `wipe_layer` without pruning: every layer below it sees every visual token (its
/// budget is the share of layers that see the image).
fn final_wipe_alone(num_layers: usize, wipe_layer: usize) -> Result<Option<PruningPlan>> {
    let layers = LayerPlan::new(num_layers, 1, wipe_layer)?;
    let budget = VisualBudget::Share(wipe_layer as f64 / num_layers as f64);
    Ok(Some(PruningPlan { policy: PrefillPolicy::None, budget, layers, scores: Scores::Unranked }))
}

/// K_f when none is given: the twig config's layer when it names one, else the paper's.
fn default_final_wipe(num_layers: usize, twig: Option<TwigPlace>) -> usize {
    let k = twig.map_or(PAPER_PRUNE_LAYER, |t| t.k);
    twig.and_then(|t| t.final_wipe).unwrap_or_else(|| default_wipe_layer(num_layers, k))
}

/// The paper's K_f scaled to this depth (rounded), above K; the depth itself (no FinalWipe)
/// when the model is too shallow for one.
fn default_wipe_layer(num_layers: usize, prune_layer: usize) -> usize {
    let (num, den) = PAPER_WIPE_SHARE;
    let scaled = (num_layers * num + den / 2) / den;
    if scaled > prune_layer {
        scaled
    } else {
        num_layers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWIG: Option<TwigPlace> = Some(TwigPlace { k: 2, t: 3, final_wipe: None, pruning_head: false });

    fn spec(policy: &str, final_wipe: Option<usize>) -> PruningSpec {
        PruningSpec { policy: policy.parse().unwrap(), budget: Some(VisualBudget::Tokens(64.0)), final_wipe }
    }

    #[test]
    fn policies_round_trip_through_text() {
        for text in
            ["none", "fastv", "vlm-layer:3", "vlm-layer:K", "vlm-layer:K+T", "random", "random:7", "twig", "twig++"]
        {
            assert_eq!(text.parse::<PrefillPolicy>().unwrap().to_string(), text);
        }
        for bad in ["", "fast", "vlm-layer:0", "vlm-layer:x", "random:-1", "twig:2"] {
            assert!(bad.parse::<PrefillPolicy>().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn llava_7b_plans_follow_the_paper() {
        let twig = spec("twig", None).plan(32, TWIG).unwrap().unwrap();
        assert_eq!((twig.layers.prune_layer, twig.layers.wipe_layer, twig.scores), (2, 24, Scores::Twig));
        let fastv = spec("fastv", None).plan(32, TWIG).unwrap().unwrap();
        assert_eq!((fastv.layers.wipe_layer, fastv.scores), (32, Scores::BaseLayer(1)));
        let deep = spec("vlm-layer:K+T", None).plan(32, TWIG).unwrap().unwrap();
        assert_eq!(deep.scores, Scores::BaseLayer(4));
        // The 30-layer demo model: 24/32 of 30 = 22.5 → 23.
        assert_eq!(spec("random", None).plan(30, TWIG).unwrap().unwrap().layers.wipe_layer, 23);
    }

    #[test]
    fn the_twig_config_sets_the_default_final_wipe() {
        let own = Some(TwigPlace { final_wipe: Some(30), ..TWIG.unwrap() });
        assert!(!spec("twig", None).plan(30, own).unwrap().unwrap().layers.has_final_wipe());
        assert_eq!(spec("twig", Some(20)).plan(30, own).unwrap().unwrap().layers.wipe_layer, 20);
        assert_eq!(spec("fastv", None).plan(30, own).unwrap().unwrap().layers.wipe_layer, 30);
    }

    #[test]
    fn final_wipe_alone_keeps_every_visual_token_below_it() {
        let alone = PruningSpec { policy: PrefillPolicy::None, budget: None, final_wipe: Some(24) };
        let plan = alone.plan(32, None).unwrap().unwrap();
        assert_eq!((plan.layers.wipe_layer, plan.scores), (24, Scores::Unranked));
        assert_eq!(plan.kept_visual_tokens(576), Some(576));
        assert!(PruningSpec { final_wipe: Some(33), ..alone }.plan(32, None).is_err());
    }

    #[test]
    fn final_wipe_only_wipes_where_the_pruning_policies_do() {
        let at = |twig, given| PruningSpec::final_wipe_only(30, twig, given).map(|spec| spec.final_wipe);
        assert_eq!(at(TWIG, None), Some(Some(spec("twig", None).plan(30, TWIG).unwrap().unwrap().layers.wipe_layer)));
        assert_eq!(at(None, None), Some(Some(23)));
        assert_eq!(at(Some(TwigPlace { final_wipe: Some(20), ..TWIG.unwrap() }), None), Some(Some(20)));
        assert_eq!(at(TWIG, Some(12)), Some(Some(12)));
        assert_eq!(at(TWIG, Some(30)), None);
        let only = PruningSpec::final_wipe_only(30, TWIG, None).unwrap();
        assert_eq!(only.plan(30, TWIG).unwrap().unwrap().scores, Scores::Unranked);
    }

    #[test]
    fn a_budget_of_every_visual_token_prunes_nothing() {
        let plan = spec("twig", None).plan(32, TWIG).unwrap().unwrap();
        let at = |budget: VisualBudget| PruningPlan { budget, ..plan.clone() }.kept_visual_tokens(576);
        assert_eq!(at(VisualBudget::Tokens(576.0)), None);
        assert_eq!(at(VisualBudget::Share(1.0)), None);
        assert_eq!(at(VisualBudget::Tokens(575.0)), Some(576));
    }

    #[test]
    fn final_wipe_at_the_depth_disables_it() {
        let plan = spec("twig", Some(32)).plan(32, TWIG).unwrap().unwrap();
        assert!(!plan.layers.has_final_wipe());
    }

    #[test]
    fn inconsistent_specs_are_refused() {
        assert!(matches!(spec("twig", None).plan(32, None), Err(TtpError::MissingTwig)));
        assert!(matches!(spec("twig++", None).plan(32, None), Err(TtpError::MissingTwig)));
        assert!(matches!(spec("twig++", None).plan(32, TWIG), Err(TtpError::MissingPruningHead)));
        let with_head = Some(TwigPlace { pruning_head: true, ..TWIG.unwrap() });
        assert_eq!(spec("twig++", None).plan(32, with_head).unwrap().unwrap().scores, Scores::TwigHead);
        assert!(matches!(spec("vlm-layer:K+T", None).plan(32, None), Err(TtpError::MissingTwig)));
        assert!(matches!(spec("fastv", Some(24)).plan(32, TWIG), Err(TtpError::InvalidLayers(_))));
        assert!(matches!(spec("twig", Some(2)).plan(32, TWIG), Err(TtpError::InvalidLayers(_))));
        assert!(matches!(spec("vlm-layer:33", None).plan(32, TWIG), Err(TtpError::InvalidLayers(_))));
        let no_budget = PruningSpec { budget: None, ..spec("twig", None) };
        assert!(matches!(no_budget.plan(32, TWIG), Err(TtpError::MissingBudget(_))));
        assert!(matches!(spec("none", None).plan(32, TWIG), Err(TtpError::NoPolicy)));
        assert!(matches!(spec("none", Some(24)).plan(32, TWIG), Err(TtpError::NoPolicy)));
        assert_eq!(PruningSpec::none().plan(32, TWIG).unwrap(), None);
    }
}
