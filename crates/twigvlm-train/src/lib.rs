//! Training on burn autodiff: one loop ([`trainer::train`]) with AdamW, warm-up + cosine learning
//! rate, global-norm gradient clipping, progress, atomic checkpoints and resume; the objectives
//! plug into it (the vision tower's per-patch pre-training, LLaVA stages 1 and 2, the twig).
//! [`stages`] assembles whole training stages from directories and dataset specs, and [`demo`]
//! builds the demo model's directory from its trained parts and a pinned language model.

pub mod alignment;
pub mod checkpoint;
pub mod clipping;
pub mod demo;
pub mod error;
pub mod examples;
pub mod loss;
pub mod metrics;
pub mod optimizer;
pub mod patch_words;
pub mod position_code;
pub mod pruning_grpo;
pub mod schedule;
pub mod stages;
pub mod trainable;
pub mod trainer;
pub mod twig;
pub mod vision;

pub use error::{Result, TrainError};
pub use optimizer::OptimizerConfig;
pub use schedule::LrSchedule;
pub use trainer::{train, Objective, StepMetrics, TrainOptions, TrainReport};
