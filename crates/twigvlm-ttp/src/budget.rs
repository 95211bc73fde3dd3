//! Visual budgets and the layers that pruning touches. The user gives R̄, the average number of
//! visual tokens per decoder layer; with pruning at layer K and FinalWipe at K_f, layers below K
//! see all N_v visual tokens, layers K..K_f-1 see R', and layers from K_f on see none, so
//! R' = ceil((L·R̄ − K·N_v) / (K_f − K)), clamped to [0, N_v]. Without FinalWipe (K_f = L) this is
//! FastV's budget R = (L·R̄ − K·N_v) / (L − K).

use std::fmt;
use std::str::FromStr;

use crate::error::{Result, TtpError};

/// Rounding slack for R' (budgets given as shares are not exact in binary floating point, and
/// an exact quotient must not round up to the next token).
const CEIL_SLACK: f64 = 1e-9;

/// R̄: the average number of visual tokens each decoder layer may see.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum VisualBudget {
    /// A token count (`--visual-budget 64`).
    Tokens(f64),
    /// A share of the image's visual tokens in 0..=1 (`--visual-budget 11.1%`).
    Share(f64),
}

impl VisualBudget {
    /// R̄ in tokens for an image of `visual_tokens` tokens.
    pub fn tokens(self, visual_tokens: usize) -> f64 {
        match self {
            VisualBudget::Tokens(tokens) => tokens,
            VisualBudget::Share(share) => share * visual_tokens as f64,
        }
    }
}

impl FromStr for VisualBudget {
    type Err = TtpError;

    fn from_str(text: &str) -> Result<Self> {
        let invalid = || TtpError::InvalidBudget(text.to_string());
        let trimmed = text.trim();
        let budget = match trimmed.strip_suffix('%') {
            Some(percent) => {
                let percent: f64 = percent.trim().parse().map_err(|_| invalid())?;
                if !(0.0..=100.0).contains(&percent) {
                    return Err(invalid());
                }
                VisualBudget::Share(percent / 100.0)
            }
            None => {
                let tokens: f64 = trimmed.parse().map_err(|_| invalid())?;
                if !tokens.is_finite() || tokens < 0.0 {
                    return Err(invalid());
                }
                VisualBudget::Tokens(tokens)
            }
        };
        Ok(budget)
    }
}

impl fmt::Display for VisualBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VisualBudget::Tokens(tokens) => write!(f, "{tokens}"),
            VisualBudget::Share(share) => write!(f, "{}%", share * 100.0),
        }
    }
}

/// Where pruning acts in a decoder of `num_layers` layers: the input of layer `prune_layer` (K)
/// loses visual tokens, and layers from `wipe_layer` (K_f) on see none (K_f = L: no FinalWipe).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct LayerPlan {
    pub num_layers: usize,
    pub prune_layer: usize,
    pub wipe_layer: usize,
}

impl LayerPlan {
    /// Checks 1 ≤ K < K_f ≤ L.
    pub fn new(num_layers: usize, prune_layer: usize, wipe_layer: usize) -> Result<Self> {
        if prune_layer == 0 || prune_layer >= num_layers {
            return Err(TtpError::InvalidLayers(format!(
                "pruning at layer K={prune_layer} needs 1 ≤ K < {num_layers} (the model's depth)"
            )));
        }
        if wipe_layer <= prune_layer || wipe_layer > num_layers {
            return Err(TtpError::InvalidLayers(format!(
                "FinalWipe at layer K_f={wipe_layer} needs K={prune_layer} < K_f ≤ {num_layers} (K_f = {num_layers} means no FinalWipe)"
            )));
        }
        Ok(Self { num_layers, prune_layer, wipe_layer })
    }

    pub fn has_final_wipe(&self) -> bool {
        self.wipe_layer < self.num_layers
    }

    /// R': visual tokens kept in layers K..K_f-1 so that the average over all layers is
    /// `budget_tokens` (R̄), for an image of `visual_tokens` (N_v).
    pub fn kept_visual_tokens(&self, budget_tokens: f64, visual_tokens: usize) -> usize {
        let (l, k, k_f, n_v) =
            (self.num_layers as f64, self.prune_layer as f64, self.wipe_layer as f64, visual_tokens as f64);
        let r_prime = ((l * budget_tokens - k * n_v) / (k_f - k) - CEIL_SLACK).ceil();
        r_prime.clamp(0.0, n_v) as usize
    }

    /// The average visual tokens per layer when layers K..K_f-1 keep `kept` of `visual_tokens`.
    pub fn average_visual_tokens(&self, kept: usize, visual_tokens: usize) -> f64 {
        let seen = self.prune_layer * visual_tokens + (self.wipe_layer - self.prune_layer) * kept;
        seen as f64 / self.num_layers as f64
    }

    /// KV-cache length of each layer after a prefill of `prompt_len` tokens holding
    /// `visual_tokens` of which `kept` survive pruning.
    pub fn cache_lengths(&self, prompt_len: usize, visual_tokens: usize, kept: usize) -> Vec<usize> {
        (0..self.num_layers)
            .map(|layer| match layer {
                l if l < self.prune_layer => prompt_len,
                l if l < self.wipe_layer => prompt_len - visual_tokens + kept,
                _ => prompt_len - visual_tokens,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// LLaVA-1.5-7B: L=32, K=2, K_f=24, N_v=576 (the paper's table).
    #[test]
    fn r_prime_matches_the_paper_for_llava_7b() {
        let plan = LayerPlan::new(32, 2, 24).unwrap();
        let kept: Vec<usize> = [64.0, 128.0, 192.0].iter().map(|&r| plan.kept_visual_tokens(r, 576)).collect();
        assert_eq!(kept, [41, 134, 227]);
        let share: VisualBudget = "11.1%".parse().unwrap();
        assert_eq!(plan.kept_visual_tokens(share.tokens(576), 576), 41);
    }

    #[test]
    fn fastv_budget_has_no_final_wipe() {
        let plan = LayerPlan::new(32, 2, 32).unwrap();
        assert!(!plan.has_final_wipe());
        // (32·64 − 2·576) / 30 = 29.87
        assert_eq!(plan.kept_visual_tokens(64.0, 576), 30);
        assert_eq!(plan.kept_visual_tokens(576.0, 576), 576);
    }

    #[test]
    fn r_prime_is_clamped() {
        let plan = LayerPlan::new(32, 2, 24).unwrap();
        assert_eq!(plan.kept_visual_tokens(0.0, 576), 0);
        assert_eq!(plan.kept_visual_tokens(500.0, 576), 576);
    }

    #[test]
    fn exact_quotients_do_not_round_up() {
        // (4·4 − 1·8) / (3 − 1) = 4 exactly.
        let plan = LayerPlan::new(4, 1, 3).unwrap();
        assert_eq!(plan.kept_visual_tokens(4.0, 8), 4);
        assert_eq!(plan.average_visual_tokens(4, 8), 4.0);
    }

    #[test]
    fn invalid_layers_are_refused() {
        assert!(matches!(LayerPlan::new(32, 0, 24), Err(TtpError::InvalidLayers(_))));
        assert!(matches!(LayerPlan::new(32, 2, 2), Err(TtpError::InvalidLayers(_))));
        assert!(matches!(LayerPlan::new(32, 2, 33), Err(TtpError::InvalidLayers(_))));
        assert!(matches!(LayerPlan::new(32, 32, 32), Err(TtpError::InvalidLayers(_))));
    }

    #[test]
    fn budgets_parse_and_refuse_nonsense() {
        assert_eq!("64".parse::<VisualBudget>().unwrap(), VisualBudget::Tokens(64.0));
        assert_eq!("25%".parse::<VisualBudget>().unwrap(), VisualBudget::Share(0.25));
        for bad in ["", "-1", "101%", "abc", "12%%", "NaN", "inf"] {
            assert!(bad.parse::<VisualBudget>().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn cache_lengths_follow_the_plan() {
        let plan = LayerPlan::new(6, 2, 4).unwrap();
        assert_eq!(plan.cache_lengths(20, 8, 3), [20, 20, 15, 15, 12, 12]);
    }
}
