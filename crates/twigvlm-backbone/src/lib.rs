//! LLaVA-1.5 backbone for TwigVLM, generic over burn backends: CLIP ViT vision tower, projector,
//! Llama decoder with a per-layer KV cache and explicit position ids, checkpoint loading
//! (llava-hf 4.x/5.x and original layouts; safetensors and PyTorch pickles), image preprocessing
//! and prompt tokenisation.

pub mod activation;
pub mod chat_template;
pub mod clip;
pub mod config;
pub mod error;
pub mod gguf;
pub mod interrupt;
pub mod llama;
pub mod llava;
pub mod loading;
pub mod ops;
pub mod preprocess;
pub mod projector;
pub mod prompt;
pub mod resize;
pub mod weights;

pub use chat_template::{ChatMessage, ChatTemplate, RenderedPrompt, Role, IMAGE_PLACEHOLDER};
pub use config::LlavaConfig;
pub use error::{BackboneError, Result};
pub use interrupt::{Interrupt, Interrupted};
pub use llama::{
    Alone, AttentionProbe, CachedPrefix, DecoderLayer, HeadCall, KvCache, LlamaDecoder, PrefillSteps, PromptState,
    StackCall, StackRunner, TreeMask, DEFAULT_PREFILL_CHUNK_TOKENS,
};
pub use llava::LlavaModel;
pub use loading::{
    load_language_model, load_language_model_with, load_llava, read_llava_spec, LoadOptions, LoadedLanguageModel,
    LoadedLlava, CAUSAL_LM_BODY,
};
pub use preprocess::{ImageAspect, ImagePreprocessor};
pub use prompt::{PromptTokenizer, PromptTokens, TextStream};
