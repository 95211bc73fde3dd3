//! The engine: a loaded model plus the pipeline prompt → tokens → text.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::prelude::*;
use image::DynamicImage;
use serde::Serialize;
use twigvlm_backbone::chat_template::{ChatMessage, ChatTemplate};
use twigvlm_backbone::{load_llava, LoadOptions, LoadedLlava, PromptTokens, TextStream};
use twigvlm_ssd::{
    decode_speculative, decode_vanilla, decode_vanilla_prefilled, DecodeConfig, DraftConfig, Sampler, Sampling,
    ShallowNetwork, SpeculativeStats, StopReason,
};
use twigvlm_ttp::{prefill, PruningOutcome, PruningSpec};
use twigvlm_twig::{load_twig, TwigCheckpoint};

/// Which network generates the answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum DecoderKind {
    /// The base model alone.
    #[default]
    Base,
    /// The twig's shallow network alone (base layers below K, then the twig): the twig's own
    /// quality, and what the speculative decoder drafts with.
    TwigOnly,
    /// Self-speculative decoding: the twig drafts, the base verifies; the base's output
    /// (greedy: the same tokens; sampling: the same distribution, by speculative sampling) in
    /// fewer base forwards when the twig agrees with it.
    Ssd,
}

impl DecoderKind {
    /// The name on the command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            DecoderKind::Base => "base",
            DecoderKind::TwigOnly => "twig-only",
            DecoderKind::Ssd => "ssd",
        }
    }
}

/// What the model is asked.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// One user turn; with an image and no placeholder in it, the image goes first (LLaVA-1.5).
    User(String),
    /// A whole conversation (system, user and assistant messages, the last from the user); the
    /// image placeholder, if the request has an image, sits where the image was given.
    Chat(Vec<ChatMessage>),
}

impl Prompt {
    /// The model text: the conversation through the chat template, ending in the assistant's cue.
    pub fn render(&self, template: &ChatTemplate, has_image: bool) -> anyhow::Result<String> {
        Ok(match self {
            Prompt::User(text) => template.render(text, has_image)?,
            Prompt::Chat(messages) => template.render_messages(messages, true)?,
        })
    }
}

impl From<&str> for Prompt {
    fn from(text: &str) -> Self {
        Prompt::User(text.to_string())
    }
}

/// One generation request.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt: Prompt,
    pub image: Option<DynamicImage>,
    pub max_new_tokens: usize,
    pub sampling: Sampling,
    pub seed: u64,
    /// Copy pixel values and image features back to the host (for `--dump-tensors`).
    pub capture_tensors: bool,
    pub decoder: DecoderKind,
    /// Which visual tokens the prefill keeps.
    pub pruning: PruningSpec,
    /// How the speculative decoder drafts (chain length, threshold, or a tree when greedy).
    pub draft: DraftConfig,
}

impl GenerateRequest {
    /// Greedy decoding by the base model, nothing pruned; change fields with struct-update syntax.
    pub fn greedy(prompt: Prompt, image: Option<DynamicImage>, max_new_tokens: usize) -> Self {
        Self {
            prompt,
            image,
            max_new_tokens,
            sampling: Sampling::Greedy,
            seed: 0,
            capture_tensors: false,
            decoder: DecoderKind::Base,
            pruning: PruningSpec::none(),
            draft: DraftConfig::default(),
        }
    }
}

/// Timings of one generation.
#[derive(Debug, Clone, Serialize)]
pub struct GenerateStats {
    /// Vision tower + projector + prompt prefill.
    pub prefill_ms: f64,
    pub decode_ms: f64,
    pub new_tokens: usize,
    /// New tokens per second of decoding (the first token comes from the prefill).
    pub tokens_per_s: f64,
    pub stop_reason: StopReason,
    /// Draft-and-verify rounds of the `ssd` decoder.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speculative: Option<SpeculativeStats>,
    /// What token pruning kept (`r_prime`, `kept_visual_indices`, …), when it pruned.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub pruning: Option<PruningOutcome>,
}

/// What a generation produced, plus the intermediate tensors `--dump-tensors` writes.
#[derive(Debug, Clone)]
pub struct GenerateResult {
    pub prompt: PromptTokens,
    pub generated_ids: Vec<u32>,
    pub text: String,
    pub stats: GenerateStats,
    /// `[3, size, size]` values fed to the vision tower (with `capture_tensors`).
    pub pixel_values: Option<(Vec<f32>, [usize; 3])>,
    /// Projector output `[visual_tokens, hidden]` (with `capture_tensors`).
    pub image_features: Option<(Vec<f32>, [usize; 2])>,
    /// Logits at the last prompt position.
    pub last_logits: Vec<f32>,
}

/// A prompt ready for the language model.
pub struct EncodedPrompt<B: Backend> {
    pub tokens: PromptTokens,
    /// `[1, prompt_len, hidden]`, the image's features in its span.
    pub embeds: Tensor<B, 3>,
    /// `[3, size, size]` values fed to the vision tower (when captured).
    pub pixel_values: Option<(Vec<f32>, [usize; 3])>,
    /// Projector output `[visual_tokens, hidden]` (when captured).
    pub image_features: Option<(Vec<f32>, [usize; 2])>,
    /// Template, tokenizer, vision tower and projector.
    pub time: std::time::Duration,
}

/// A loaded model on one device.
pub struct Engine<B: Backend> {
    pub llava: LoadedLlava<B>,
    pub device: B::Device,
    pub model_dir: PathBuf,
    /// The twig attached with [`Engine::attach_twig`].
    pub twig: Option<TwigCheckpoint<B>>,
    /// Inner-dimension blocks of one-token matmuls, for the base and any twig attached.
    single_row_split: usize,
}

impl<B: Backend> Engine<B> {
    pub fn load(model_dir: &Path, options: &LoadOptions, device: B::Device) -> anyhow::Result<Self> {
        let llava = load_llava::<B>(model_dir, options, &device)?;
        Ok(Self { llava, device, model_dir: model_dir.to_path_buf(), twig: None, single_row_split: 1 })
    }

    /// Loads a twig checkpoint (ours, or the official layout with `k` given or in a sidecar) for
    /// this model's language model; it must have been trained for this base.
    pub fn attach_twig(&mut self, dir: &Path, k: Option<usize>) -> anyhow::Result<&TwigCheckpoint<B>> {
        let base = &self.llava.model.language_model;
        let mut twig = load_twig(dir, base, &self.llava.config.text, k, &self.device)?;
        twig.twig.set_single_row_split(self.single_row_split);
        Ok(self.twig.insert(twig))
    }

    /// Runs one-token matmuls as `split` inner-dimension blocks (see
    /// [`crate::BackendKind::single_row_split`]), in the base and the twig.
    pub fn set_single_row_split(&mut self, split: usize) {
        self.single_row_split = split;
        self.llava.model.language_model.set_single_row_split(split);
        if let Some(twig) = &mut self.twig {
            twig.twig.set_single_row_split(split);
        }
    }

    /// Template, tokens, vision tower and projector: the prompt's embeddings.
    pub fn encode(
        &self,
        prompt: &Prompt,
        image: Option<&DynamicImage>,
        capture_tensors: bool,
    ) -> anyhow::Result<EncodedPrompt<B>> {
        let llava = &self.llava;
        let started = Instant::now();
        let text = prompt.render(&llava.template, image.is_some())?;
        let visual_tokens = llava.config.visual_tokens_per_image();
        let tokens = llava.tokenizer.encode(&text, visual_tokens)?;

        let (pixel_values, image_features) = match image {
            Some(image) => {
                let (values, shape) = llava.preprocessor.preprocess(image);
                let expected = llava.config.vision.image_size;
                anyhow::ensure!(
                    shape[1] == expected && shape[2] == expected,
                    "preprocessing produced a {}x{} image but the vision tower takes {expected}x{expected}; check preprocessor_config.json",
                    shape[1],
                    shape[2]
                );
                let captured = capture_tensors.then(|| (values.clone(), shape));
                let pixels = Tensor::<B, 3>::from_data(TensorData::new(values, shape), &self.device).unsqueeze::<4>();
                (captured, Some(llava.model.image_features(pixels)))
            }
            None => (None, None),
        };
        let image_features_host = image_features.as_ref().filter(|_| capture_tensors).map(|f| {
            let [_, n, d] = f.dims();
            (f.clone().into_data().convert::<f32>().into_vec::<f32>().expect("f32 features"), [n, d])
        });
        let embeds = llava.model.embed_prompt(&tokens, image_features, &self.device);
        Ok(EncodedPrompt { tokens, embeds, pixel_values, image_features: image_features_host, time: started.elapsed() })
    }

    /// Which visual tokens `pruning` keeps for an encoded prompt (the prefill runs; nothing is
    /// decoded).
    pub fn select_visual_tokens(
        &self,
        encoded: &EncodedPrompt<B>,
        pruning: &PruningSpec,
    ) -> anyhow::Result<Option<PruningOutcome>> {
        let twig = self.twig.as_ref().map(|t| &t.twig);
        let prefilled = prefill(
            &self.llava.model.language_model,
            twig,
            encoded.embeds.clone(),
            encoded.tokens.image_span.clone(),
            pruning,
            false,
        )?;
        Ok(prefilled.pruning)
    }

    /// Runs one request; `on_text` receives decoded text as tokens arrive and may stop the
    /// generation (the result then ends with [`StopReason::Cancelled`]).
    pub fn generate(
        &self,
        request: &GenerateRequest,
        mut on_text: impl FnMut(&str) -> ControlFlow<()>,
    ) -> anyhow::Result<GenerateResult> {
        let llava = &self.llava;
        let EncodedPrompt { tokens: prompt, embeds, pixel_values, image_features: features_host, time: vision_time } =
            self.encode(&request.prompt, request.image.as_ref(), request.capture_tensors)?;

        let text_cfg = &llava.config.text;
        let config = DecodeConfig {
            max_new_tokens: request.max_new_tokens,
            eos_token_ids: text_cfg.eos_token_ids.clone(),
            context_length: text_cfg.max_position_embeddings,
        };
        let mut sampler = Sampler::new(request.sampling, request.seed);
        let mut stream = TextStream::default();
        let mut stream_error = None;
        let mut on_token = |token| match stream.push(&llava.tokenizer, token) {
            Ok(piece) => on_text(&piece),
            Err(e) => {
                stream_error = Some(e);
                ControlFlow::Break(())
            }
        };
        config.check_prompt(prompt.len())?;
        let base = &llava.model.language_model;
        let attached = self.twig.as_ref().map(|t| &t.twig);
        let twig = || {
            attached.ok_or_else(|| {
                anyhow::anyhow!("the {} decoder needs a twig: attach one first (--twig DIR)", request.decoder.name())
            })
        };
        let span = prompt.image_span.clone();
        let (output, speculative, pruning) = match request.decoder {
            DecoderKind::Base => {
                let mut prefilled = prefill(base, attached, embeds, span, &request.pruning, false)?;
                let pruning = prefilled.pruning.take();
                (decode_vanilla_prefilled(base, prefilled, &config, &mut sampler, &mut on_token)?, None, pruning)
            }
            DecoderKind::TwigOnly => {
                anyhow::ensure!(request.pruning == PruningSpec::none(), "the twig-only decoder runs the shallow network on the whole prompt: drop --policy, or decode with --decoder base or ssd");
                (
                    decode_vanilla(
                        &ShallowNetwork { base, twig: twig()? },
                        embeds,
                        &config,
                        &mut sampler,
                        &mut on_token,
                    )?,
                    None,
                    None,
                )
            }
            DecoderKind::Ssd => {
                let mut prefilled = prefill(base, Some(twig()?), embeds, span, &request.pruning, true)?;
                let pruning = prefilled.pruning.take();
                let (output, stats) =
                    decode_speculative(base, twig()?, prefilled, &config, &request.draft, &mut sampler, &mut on_token)?;
                (output, Some(stats), pruning)
            }
        };
        if let Some(e) = stream_error {
            return Err(e.into());
        }
        let prefill = vision_time + output.prefill_time;
        let decode_s = output.decode_time.as_secs_f64();
        let new_tokens = output.tokens.len();
        Ok(GenerateResult {
            text: llava.tokenizer.decode(&output.tokens)?,
            generated_ids: output.tokens,
            prompt,
            stats: GenerateStats {
                prefill_ms: prefill.as_secs_f64() * 1e3,
                decode_ms: decode_s * 1e3,
                new_tokens,
                tokens_per_s: if decode_s > 0.0 { new_tokens.saturating_sub(1) as f64 / decode_s } else { 0.0 },
                stop_reason: output.stop,
                speculative,
                pruning,
            },
            pixel_values,
            image_features: features_host,
            last_logits: output.prompt_logits,
        })
    }
}
