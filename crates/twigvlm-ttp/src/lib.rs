//! Prefill policies for twig-guided token pruning (TTP) and its baselines — none, FastV, the
//! attention of a chosen base layer, random, and the twig — with FinalWipe and visual budgets.
//! A policy only decides which visual tokens continue past layer K; [`prefill`] runs every
//! policy through the same code and leaves per-layer caches that any decoder continues from.

pub mod budget;
pub mod error;
pub mod policy;
pub mod prefill;
pub mod selection;

pub use budget::{LayerPlan, VisualBudget};
pub use error::{Result, TtpError};
pub use policy::{LayerRef, PrefillPolicy, PruningPlan, PruningSpec, Scores, TwigPlace, PAPER_PRUNE_LAYER};
pub use prefill::{forward_kept, prefill, Prefill, PruningOutcome};
