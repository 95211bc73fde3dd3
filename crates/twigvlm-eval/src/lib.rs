//! Evaluation tools over a [`twigvlm_engine::Engine`]: exact-match accuracy and describe F1
//! ([`eval`]), the RelAcc table of pruning policies ([`relacc`]), the side-by-side speed benchmark
//! ([`bench`]), self-distillation data for twigs ([`distill`]), heat maps of what each policy
//! keeps ([`explain`]), the cost of a decoding step against its rows ([`steps`]), confidence
//! intervals ([`stats`]), PNG charts ([`plot`]), randomly initialised checkpoints with real models'
//! shapes ([`synthetic`]) and a load generator for a running server ([`load`]).

pub mod bench;
pub mod distill;
pub mod eval;
pub mod explain;
pub mod load;
pub mod plot;
pub mod relacc;
pub mod stats;
pub mod steps;
pub mod synthetic;
