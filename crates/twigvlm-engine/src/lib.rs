//! The TwigVLM inference engine: load a LLaVA-1.5 model (and the twig trained for it) onto a
//! backend, then answer requests with any prefill policy (token pruning) and any decoder (the
//! base model, the twig alone, or self-speculative decoding).
//!
//! ```no_run
//! use burn::backend::Flex;
//! use twigvlm_engine::{Engine, GenerateRequest, LoadOptions};
//!
//! # fn main() -> Result<(), twigvlm_engine::EngineError> {
//! let engine = Engine::<Flex>::load("models/shapes-smol".as_ref(), &LoadOptions::default(), Default::default())?;
//! let image = image::open("examples/shapes-1.png").expect("an image");
//! let request = GenerateRequest::greedy("What color is the circle?".into(), Some(image), 16);
//! let result = engine.generate(&request, |_| std::ops::ControlFlow::Continue(()))?;
//! println!("{}", result.text);
//! # Ok(())
//! # }
//! ```
//!
//! To serve several requests at once, their forwards batched, see [`batch`].
//!
//! To run on whichever backend the user picks at run time, implement [`BackendJob`] and hand it
//! to [`BackendKind::run_in`]; the `cuda` and `wgpu` features compile those backends in.

#![deny(missing_docs)]

pub mod backend;
pub mod batch;
pub mod decoder;
pub mod engine;
pub mod error;
pub mod explain;
pub mod facts;
pub mod output;
pub mod prompt_cache;
pub mod request;

pub use backend::{configure_gpu, AutodiffJob, BackendError, BackendJob, BackendKind, FloatDtype, GpuAutotune};
pub use batch::{run_batched, BatchForward, BatchLimits, JobSource, Next};
pub use decoder::DecoderKind;
pub use engine::{EncodedPrompt, Engine};
pub use error::{EngineError, RequestError, RequestPart};
pub use facts::ModelFacts;
pub use output::{GenerateResult, GenerateStats};
pub use request::{check_twig_use, uses_twig, GenerateRequest, Prompt};
pub use twigvlm_backbone::LoadOptions;
pub use twigvlm_ssd::{DraftConfig, DraftLength, DraftTree, Sampling, StopReason, DEFAULT_DRAFT_VOCAB};
pub use twigvlm_ttp::{PrefillPolicy, PruningSpec, VisualBudget};
