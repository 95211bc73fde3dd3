//! The engine: a loaded model plus the pipeline prompt → tokens → text.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::prelude::*;
use image::DynamicImage;
use twigvlm_backbone::{
    load_llava, Alone, CachedPrefix, Interrupt, LoadOptions, LoadedLlava, PrefillSteps, PromptTokens, StackRunner,
    TextStream, DEFAULT_PREFILL_CHUNK_TOKENS,
};
use twigvlm_ssd::{
    decode_speculative, decode_vanilla, decode_vanilla_prefilled, DecodeConfig, Sampler, ShallowNetwork,
};
use twigvlm_ttp::{prefill, Prefill, PruningOutcome, PruningSpec, TtpError, TwigPlace};
use twigvlm_twig::{load_twig, prefill_unpruned_after, Twig, TwigCheckpoint};

use crate::decoder::DecoderKind;
use crate::error::{EngineError, RequestError, Result};
use crate::facts::ModelFacts;
use crate::output::{GenerateResult, GenerateStats};
use crate::prompt_cache::{ImageKey, PromptCache};
use crate::request::{GenerateRequest, Prompt};
use twigvlm_backbone::ops::DecodeOps;

/// A prompt ready for the language model.
pub struct EncodedPrompt<B: Backend> {
    /// The prompt's token ids and where its image sits.
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
    /// The model with its tokenizer, chat template and image preprocessor.
    pub llava: LoadedLlava<B>,
    /// Where the model runs.
    pub device: B::Device,
    /// The directory it was loaded from.
    pub model_dir: PathBuf,
    /// The twig attached with [`Engine::attach_twig`].
    pub twig: Option<TwigCheckpoint<B>>,
    /// Prompt tokens a prefill runs through the layers at once ([`PrefillSteps`]; default
    /// [`DEFAULT_PREFILL_CHUNK_TOKENS`], at least 1).
    pub prefill_chunk_tokens: usize,
    /// What requests are checked against.
    facts: ModelFacts,
    /// Caches of earlier prompts, when kept ([`Engine::keep_prompt_caches`]).
    prompt_cache: Option<PromptCache<B>>,
}

/// What a prefill runs: the prompt's embeddings (only the tokens after `reused`'s when a kept
/// prompt's caches continue), and where its caches are kept for later prompts, if they are.
struct PrefillInput<'a, B: Backend> {
    embeds: Tensor<B, 3>,
    reused: Option<CachedPrefix<B>>,
    keep: Option<(&'a PromptCache<B>, Option<ImageKey>)>,
}

impl<B: Backend> PrefillInput<'_, B> {
    fn whole(embeds: Tensor<B, 3>) -> Self {
        Self { embeds, reused: None, keep: None }
    }
}

impl<B: DecodeOps> Engine<B> {
    /// Loads the model in `model_dir` (any layout and format the backbone reads) onto `device`.
    pub fn load(model_dir: &Path, options: &LoadOptions, device: B::Device) -> Result<Self> {
        let llava = load_llava::<B>(model_dir, options, &device)?;
        let facts = ModelFacts {
            template: llava.template.clone(),
            tokenizer: llava.tokenizer.clone(),
            preprocessor: llava.preprocessor.clone(),
            visual_tokens: llava.config.visual_tokens_per_image(),
            context_length: llava.config.text.max_position_embeddings,
            num_layers: llava.model.language_model.num_layers(),
            twig: None,
        };
        Ok(Self {
            llava,
            device,
            model_dir: model_dir.to_path_buf(),
            twig: None,
            prefill_chunk_tokens: DEFAULT_PREFILL_CHUNK_TOKENS,
            facts,
            prompt_cache: None,
        })
    }

    /// What requests are checked against ([`GenerateRequest::validate`]).
    pub fn facts(&self) -> &ModelFacts {
        &self.facts
    }

    /// Keeps the caches of unpruned prompts, up to `budget_bytes` in all, for later prompts that
    /// begin with the same tokens about the same image ([`crate::prompt_cache`]); 0 keeps none.
    pub fn keep_prompt_caches(&mut self, budget_bytes: usize) {
        self.prompt_cache = (budget_bytes > 0).then(|| PromptCache::new(budget_bytes));
    }

    /// Loads a twig checkpoint (ours, or the official layout with `k` given or in a sidecar) for
    /// this model's language model; it must have been trained for this base.
    pub fn attach_twig(&mut self, dir: &Path, k: Option<usize>) -> Result<&TwigCheckpoint<B>> {
        let base = &self.llava.model.language_model;
        let twig = load_twig(dir, base, &self.llava.config.text, k, &self.device)?;
        self.facts.twig = Some(TwigPlace::of(&twig.twig.config));
        Ok(self.twig.insert(twig))
    }

    /// Template, tokens, vision tower and projector: the prompt's embeddings.
    pub fn encode(
        &self,
        prompt: &Prompt,
        image: Option<&DynamicImage>,
        capture_tensors: bool,
    ) -> Result<EncodedPrompt<B>> {
        let started = Instant::now();
        let llava = &self.llava;
        let tokens = prompt
            .tokens(&llava.template, &llava.tokenizer, image.is_some(), self.facts.visual_tokens())
            .map_err(RequestError::Prompt)?;
        self.embed(tokens, image, capture_tensors, started)
    }

    /// Vision tower and projector over the image, and the embeddings of the prompt `tokens`
    /// (started: when encoding began, for the reported time).
    fn embed(
        &self,
        tokens: PromptTokens,
        image: Option<&DynamicImage>,
        capture_tensors: bool,
        started: Instant,
    ) -> Result<EncodedPrompt<B>> {
        let llava = &self.llava;
        let (pixel_values, image_features) = match image {
            Some(image) => {
                let (values, shape) = llava.preprocessor.preprocess(image).map_err(RequestError::Image)?;
                let expected = llava.config.vision.image_size;
                if shape[1] != expected || shape[2] != expected {
                    return Err(EngineError::ImageSize { found: [shape[1], shape[2]], expected });
                }
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

    /// Which visual tokens `pruning` keeps for an encoded prompt (the prefill runs, asking
    /// `interrupt` before each layer of each chunk; nothing is decoded).
    pub fn select_visual_tokens(
        &self,
        encoded: &EncodedPrompt<B>,
        pruning: &PruningSpec,
        interrupt: &Interrupt,
    ) -> Result<Option<PruningOutcome>> {
        let twig = self.twig.as_ref().map(|t| &t.twig);
        let embeds = encoded.embeds.clone();
        let steps = self.prefill_steps(interrupt, &Alone);
        Ok(self.prefill(twig, PrefillInput::whole(embeds), &encoded.tokens, pruning, false, &steps)?.pruning)
    }

    /// How this engine's prefills step: chunks of [`Engine::prefill_chunk_tokens`] tokens, run
    /// by `runner`, asking `interrupt` before each layer of each chunk.
    fn prefill_steps<'a, 'm>(
        &self,
        interrupt: &Interrupt<'a>,
        runner: &'a dyn StackRunner<'m, B>,
    ) -> PrefillSteps<'a, 'm, B> {
        PrefillSteps::new(*interrupt).with_chunk_tokens(self.prefill_chunk_tokens).with_runner(runner)
    }

    /// The prefill of a prompt under `pruning`, with `twig` when given (see [`PrefillInput`]).
    fn prefill<'m>(
        &'m self,
        twig: Option<&'m Twig<B>>,
        input: PrefillInput<'_, B>,
        tokens: &PromptTokens,
        pruning: &PruningSpec,
        keep_twig_cache: bool,
        steps: &PrefillSteps<'_, 'm, B>,
    ) -> Result<Prefill<B>> {
        let base = &self.llava.model.language_model;
        let PrefillInput { embeds, reused, keep } = input;
        let prefilled = match reused {
            Some(prefix) => {
                let twig = twig.filter(|_| keep_twig_cache);
                Prefill { state: prefill_unpruned_after(base, twig, Some(prefix), embeds, steps)?, pruning: None }
            }
            // Every other pruning error is about what the request asked for.
            None => prefill(base, twig, embeds, tokens.image_span.clone(), pruning, keep_twig_cache, steps).map_err(
                |e| match e {
                    TtpError::Interrupted(interrupted) => EngineError::from(interrupted),
                    e => RequestError::Pruning(e).into(),
                },
            )?,
        };
        if let Some((cache, image)) = keep {
            cache.store(tokens, image, &prefilled.state);
        }
        Ok(prefilled)
    }

    /// The embeddings of `tokens` after their first `start`, which a kept prompt's caches hold
    /// (with the image, if any).
    fn embed_after(&self, tokens: PromptTokens, start: usize, started: Instant) -> EncodedPrompt<B> {
        let ids: Vec<i32> = tokens.ids[start..].iter().map(|&id| id as i32).collect();
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, tokens.len() - start]), &self.device);
        let embeds = self.llava.model.language_model.embed(ids);
        EncodedPrompt { tokens, embeds, pixel_values: None, image_features: None, time: started.elapsed() }
    }

    /// Runs one request; `on_text` receives decoded text as tokens arrive and may stop the
    /// generation (the result then ends with [`twigvlm_ssd::StopReason::Cancelled`]). The
    /// request is validated first ([`GenerateRequest::validate`]): a request this model cannot
    /// run fails with [`EngineError::Request`] before anything runs.
    pub fn generate(
        &self,
        request: &GenerateRequest,
        on_text: impl FnMut(&str) -> ControlFlow<()>,
    ) -> Result<GenerateResult> {
        self.generate_interruptible(request, &Interrupt::NEVER, on_text)
    }

    /// [`Engine::generate`], asking `interrupt` before each layer of each prefill chunk and before
    /// each generated token; once it asks to stop, the request ends with
    /// [`EngineError::Interrupted`].
    pub fn generate_interruptible(
        &self,
        request: &GenerateRequest,
        interrupt: &Interrupt,
        on_text: impl FnMut(&str) -> ControlFlow<()>,
    ) -> Result<GenerateResult> {
        self.generate_with(request, interrupt, &Alone, on_text)
    }

    /// [`Engine::generate_interruptible`] with every forward of the language model (prefill
    /// chunks, decoding steps, heads) run by `runner`: [`Alone`] runs them at once, a
    /// [`crate::batch`] runner beside other requests' rows.
    pub fn generate_with<'m>(
        &'m self,
        request: &GenerateRequest,
        interrupt: &Interrupt,
        runner: &dyn StackRunner<'m, B>,
        mut on_text: impl FnMut(&str) -> ControlFlow<()>,
    ) -> Result<GenerateResult> {
        let started = Instant::now();
        // Validation renders and tokenises the prompt; the embeddings start from its tokens.
        let tokens = request.validate(&self.facts)?;
        let llava = &self.llava;
        // Unpruned prompts are kept for, and continue from, earlier prompts' caches.
        let keep = self.prompt_cache.as_ref().filter(|_| {
            request.pruning == PruningSpec::none()
                && request.decoder != DecoderKind::TwigOnly
                && !request.capture_tensors
        });
        let image_key = keep.and(request.image.as_ref()).map(ImageKey::of);
        let reused = keep.and_then(|cache| cache.lookup(&tokens, image_key, request.decoder == DecoderKind::Ssd));
        let reused_prompt_tokens = reused.as_ref().map_or(0, |prefix| prefix.len);
        let EncodedPrompt { tokens: prompt, embeds, pixel_values, image_features, time: vision_time } = match reused {
            Some(_) => self.embed_after(tokens, reused_prompt_tokens, started),
            None => self.embed(tokens, request.image.as_ref(), request.capture_tensors, started)?,
        };
        let input = PrefillInput { embeds, reused, keep: keep.map(|cache| (cache, image_key)) };

        let text_cfg = &llava.config.text;
        let config = DecodeConfig {
            max_new_tokens: request.max_new_tokens,
            eos_token_ids: text_cfg.eos_token_ids.clone(),
            context_length: text_cfg.max_position_embeddings,
        };
        let mut sampler = Sampler::new(request.sampling, request.seed);
        let mut stream = TextStream::default();
        let mut stream_error = None;
        let mut interrupted = None;
        let mut on_token = |token| {
            if let Err(e) = interrupt.check() {
                interrupted = Some(e);
                return ControlFlow::Break(());
            }
            match stream.push(&llava.tokenizer, token) {
                Ok(piece) => on_text(&piece),
                Err(e) => {
                    stream_error = Some(e);
                    ControlFlow::Break(())
                }
            }
        };
        let base = &llava.model.language_model;
        let attached = self.twig.as_ref().map(|t| &t.twig);
        // `validate` checked that the decoders which need the twig have it.
        let twig = || attached.expect("validated: the decoder's twig is attached");
        let steps = self.prefill_steps(interrupt, runner);
        let (output, speculative, pruning) = match request.decoder {
            DecoderKind::Base => {
                let Prefill { state, pruning } =
                    self.prefill(attached, input, &prompt, &request.pruning, false, &steps)?;
                (decode_vanilla_prefilled(base, runner, state, &config, &mut sampler, &mut on_token)?, None, pruning)
            }
            DecoderKind::TwigOnly => {
                let shallow = ShallowNetwork { base, twig: twig() };
                (decode_vanilla(&shallow, runner, input.embeds, &config, &mut sampler, &mut on_token)?, None, None)
            }
            DecoderKind::Ssd => {
                let Prefill { state, pruning } =
                    self.prefill(Some(twig()), input, &prompt, &request.pruning, true, &steps)?;
                let (output, stats) = decode_speculative(
                    ShallowNetwork { base, twig: twig() },
                    runner,
                    state,
                    &config,
                    &request.draft,
                    &mut sampler,
                    &mut on_token,
                )?;
                (output, Some(stats), pruning)
            }
        };
        if let Some(e) = interrupted {
            return Err(e.into());
        }
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
                reused_prompt_tokens,
            },
            pixel_values,
            image_features,
            last_logits: output.prompt_logits,
        })
    }
}
