//! Where the twig attaches (K), how deep it is (T), how it starts, and whether it owns its head.

use serde::{Deserialize, Serialize};
use serde_with::{DeserializeFromStr, SerializeDisplay};
use strum::{Display, EnumMessage, EnumString, VariantArray};

use crate::error::{Result, TwigError};

/// How the twig's blocks, norm and head are initialised.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Display,
    EnumString,
    VariantArray,
    EnumMessage,
    SerializeDisplay,
    DeserializeFromStr,
)]
#[strum(serialize_all = "lowercase")]
pub enum TwigInit {
    /// Copies of base layers K..K+T-1, the base final norm and LM head (the paper's default).
    Adjacent,
    /// Copies of the base model's last T layers, final norm and LM head (ablation).
    Last,
    /// Fresh random blocks, a unit norm and a copy of the LM head (ablation).
    Random,
}

/// Whether the twig trains its own LM head or reuses the frozen base head.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Display,
    EnumString,
    VariantArray,
    EnumMessage,
    SerializeDisplay,
    DeserializeFromStr,
)]
#[strum(serialize_all = "lowercase")]
pub enum TwigHead {
    /// Its own head, initialised from the base head (the paper's choice).
    Trained,
    /// The base model's head, frozen: nothing to store, and for a tied-embedding base it stays the
    /// embedding matrix.
    Shared,
}

/// Whether the twig's blocks train their MLPs or keep them as copies of the base layers they
/// started from.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    Display,
    EnumString,
    VariantArray,
    EnumMessage,
    SerializeDisplay,
    DeserializeFromStr,
)]
#[strum(serialize_all = "lowercase")]
pub enum TwigMlp {
    /// Every block parameter trains (the paper's choice).
    #[default]
    Trained,
    /// The MLPs stay the copies the initialisation made: only attention, norms (and a trained
    /// head) learn, and the checkpoint stores no MLP weight (its loader copies them from the base
    /// again), three quarters of each block's size. Needs an initialisation that copies base
    /// layers (`adjacent` or `last`).
    Frozen,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TwigConfig {
    /// Base layers before the twig (the twig reads layer K's input hidden states).
    pub k: usize,
    /// Decoder blocks in the twig.
    pub t: usize,
    pub init: TwigInit,
    pub head: TwigHead,
    /// Absent from twig.json files written before it existed: those trained every MLP.
    #[serde(default)]
    pub mlp: TwigMlp,
    /// The FinalWipe layer K_f that pruning with this twig uses by default: the layer above which
    /// its base model no longer needs the image (`None`: the paper's 24/32 of the depth).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_wipe: Option<usize>,
    /// Whether the twig carries a pruning head ([`crate::PruningHead`], TwigVLM++), which the
    /// `twig++` policy ranks with.
    #[serde(default)]
    pub pruning_head: bool,
}

impl TwigConfig {
    /// The paper's LLaVA-1.5-7B setting.
    pub const PAPER_K: usize = 2;
    pub const PAPER_T: usize = 3;

    pub fn new(k: usize, t: usize) -> Self {
        Self {
            k,
            t,
            init: TwigInit::Adjacent,
            head: TwigHead::Trained,
            mlp: TwigMlp::Trained,
            final_wipe: None,
            pruning_head: false,
        }
    }

    /// K ≥ 1 (the twig shares at least one base layer), T ≥ 1, the copied base layers exist, and
    /// frozen MLPs have base layers to be copies of.
    pub fn validate(&self, base_layers: usize) -> Result<()> {
        if self.k == 0 {
            return Err(TwigError::Shape("K must be at least 1 (the twig attaches after a base layer)".into()));
        }
        if self.t == 0 {
            return Err(TwigError::Shape("T must be at least 1".into()));
        }
        if self.k + self.t > base_layers {
            return Err(TwigError::Shape(format!(
                "K + T = {} + {} exceeds the base model's {base_layers} layers",
                self.k, self.t
            )));
        }
        if let Some(k_f) = self.final_wipe.filter(|&k_f| k_f <= self.k || k_f > base_layers) {
            return Err(TwigError::Shape(format!(
                "the default FinalWipe layer {k_f} must lie above K = {} and at most at the base model's {base_layers} layers",
                self.k
            )));
        }
        if self.mlp == TwigMlp::Frozen && self.init == TwigInit::Random {
            return Err(TwigError::Shape(
                "frozen MLPs are copies of base layers; a random initialisation copies none (use adjacent or last)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Base layers the twig's blocks start as (None: random).
    pub fn source_layers(&self, base_layers: usize) -> Option<std::ops::Range<usize>> {
        match self.init {
            TwigInit::Adjacent => Some(self.k..self.k + self.t),
            TwigInit::Last => Some(base_layers - self.t..base_layers),
            TwigInit::Random => None,
        }
    }
}

impl Default for TwigConfig {
    fn default() -> Self {
        Self::new(Self::PAPER_K, Self::PAPER_T)
    }
}
