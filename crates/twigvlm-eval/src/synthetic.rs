//! Randomly initialised models with the exact shapes of real ones, so that speed can be measured
//! at the paper's scale without the real weights (`twigvlm make-model`). Weights are written in
//! the llava-hf layout as f16 safetensors, one tensor at a time (a 7B model never sits in memory),
//! with a config, an image preprocessor config and a word-level tokenizer of the right vocabulary
//! size, plus a random twig in the official layout (K is given on the command line: `--twig-k`).

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;
use half::{bf16, f16};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use safetensors::{Dtype, View};
use serde_json::json;
use strum::{Display, EnumMessage, EnumString, VariantArray};

/// Standard deviation of random weights (Llama's and CLIP's `initializer_range`).
const INIT_STD: f32 = 0.02;
/// Random values are drawn in blocks of this many, one seeded generator per block.
const VALUES_PER_BLOCK: usize = 1 << 20;
/// Spreads the per-tensor seeds apart so that no two blocks of a checkpoint share a generator.
const BLOCK_SEED_STRIDE: u64 = 1 << 32;
/// Image placeholder and padding ids of llava-hf's Llama tokenizer.
const IMAGE_TOKEN_ID: usize = 32000;
const PAD_TOKEN_ID: usize = 32001;
/// CLIP's image normalisation.
const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];
/// The paper's twig for LLaVA-1.5-7B.
pub const TWIG_K: usize = 2;
pub const TWIG_T: usize = 3;

/// The real models whose shapes a random checkpoint copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Display, EnumString, VariantArray, EnumMessage)]
pub enum Preset {
    /// LLaVA-1.5-7B: CLIP ViT-L/14-336 (576 visual tokens), Vicuna-7B (32 × 4096), 7.1B parameters.
    #[strum(serialize = "llava-1.5-7b-shape")]
    Llava7b,
    /// A ~1B LLaVA for CPU: CLIP ViT-B/16-224 (196 visual tokens), a TinyLlama-1.1B decoder
    /// (22 × 2048, 4 KV heads).
    #[strum(serialize = "llava-1b-shape")]
    Llava1b,
}

struct TextShape {
    hidden: usize,
    intermediate: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    vocab: usize,
    context: usize,
    rope_theta: f64,
}

struct VisionShape {
    hidden: usize,
    intermediate: usize,
    layers: usize,
    heads: usize,
    image_size: usize,
    patch_size: usize,
}

impl Preset {
    fn shapes(self) -> (TextShape, VisionShape) {
        match self {
            Preset::Llava7b => (
                TextShape {
                    hidden: 4096,
                    intermediate: 11008,
                    layers: 32,
                    heads: 32,
                    kv_heads: 32,
                    vocab: 32064,
                    context: 4096,
                    rope_theta: 10000.0,
                },
                VisionShape {
                    hidden: 1024,
                    intermediate: 4096,
                    layers: 24,
                    heads: 16,
                    image_size: 336,
                    patch_size: 14,
                },
            ),
            Preset::Llava1b => (
                TextShape {
                    hidden: 2048,
                    intermediate: 5632,
                    layers: 22,
                    heads: 32,
                    kv_heads: 4,
                    vocab: 32064,
                    context: 2048,
                    rope_theta: 10000.0,
                },
                VisionShape { hidden: 768, intermediate: 3072, layers: 12, heads: 12, image_size: 224, patch_size: 16 },
            ),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Init {
    Random,
    Ones,
    Zeros,
}

/// A tensor whose values are drawn when the writer asks for its bytes.
struct LazyTensor {
    shape: Vec<usize>,
    dtype: Dtype,
    init: Init,
    seed: u64,
    on_written: Option<Box<dyn Fn(usize)>>,
}

impl View for LazyTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        // Uniform with the standard deviation of a N(0, INIT_STD) initialiser.
        let bound = INIT_STD * 3f32.sqrt();
        let (seed, init, dtype) = (self.seed, self.init, self.dtype);
        let encode = |v: f32| match dtype {
            Dtype::BF16 => bf16::from_f32(v).to_le_bytes(),
            _ => f16::from_f32(v).to_le_bytes(),
        };
        let mut bytes = vec![0u8; self.data_len()];
        // Blocks of values are drawn in parallel, each from its own seeded generator, so a 7B
        // checkpoint takes seconds on a many-core machine and is the same on every machine.
        bytes.par_chunks_mut(VALUES_PER_BLOCK * 2).enumerate().for_each(|(block, chunk)| {
            let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(BLOCK_SEED_STRIDE).wrapping_add(block as u64));
            for value in chunk.chunks_exact_mut(2) {
                let v = match init {
                    Init::Random => rng.random_range(-bound..bound),
                    Init::Ones => 1.0,
                    Init::Zeros => 0.0,
                };
                value.copy_from_slice(&encode(v));
            }
        });
        if let Some(report) = &self.on_written {
            report(bytes.len());
        }
        Cow::Owned(bytes)
    }

    fn data_len(&self) -> usize {
        self.shape.iter().product::<usize>() * 2
    }
}

/// Names, shapes and initialisers of one checkpoint.
#[derive(Default)]
struct TensorList(Vec<(String, Vec<usize>, Init)>);

impl TensorList {
    fn add(&mut self, name: impl Into<String>, shape: &[usize], init: Init) {
        self.0.push((name.into(), shape.to_vec(), init));
    }

    fn linear(&mut self, name: &str, d_in: usize, d_out: usize, bias: bool) {
        self.add(format!("{name}.weight"), &[d_out, d_in], Init::Random);
        if bias {
            self.add(format!("{name}.bias"), &[d_out], Init::Zeros);
        }
    }

    fn layer_norm(&mut self, name: &str, d: usize) {
        self.add(format!("{name}.weight"), &[d], Init::Ones);
        self.add(format!("{name}.bias"), &[d], Init::Zeros);
    }

    fn llama_layer(&mut self, prefix: &str, t: &TextShape) {
        let head_dim = t.hidden / t.heads;
        self.add(format!("{prefix}.input_layernorm.weight"), &[t.hidden], Init::Ones);
        self.add(format!("{prefix}.post_attention_layernorm.weight"), &[t.hidden], Init::Ones);
        self.linear(&format!("{prefix}.self_attn.q_proj"), t.hidden, t.heads * head_dim, false);
        self.linear(&format!("{prefix}.self_attn.k_proj"), t.hidden, t.kv_heads * head_dim, false);
        self.linear(&format!("{prefix}.self_attn.v_proj"), t.hidden, t.kv_heads * head_dim, false);
        self.linear(&format!("{prefix}.self_attn.o_proj"), t.heads * head_dim, t.hidden, false);
        self.linear(&format!("{prefix}.mlp.gate_proj"), t.hidden, t.intermediate, false);
        self.linear(&format!("{prefix}.mlp.up_proj"), t.hidden, t.intermediate, false);
        self.linear(&format!("{prefix}.mlp.down_proj"), t.intermediate, t.hidden, false);
    }

    fn parameters(&self) -> usize {
        self.0.iter().map(|(_, shape, _)| shape.iter().product::<usize>()).sum()
    }

    /// Writes every tensor to `path` (`dtype`: F16 or BF16), drawing values tensor by tensor.
    fn write(
        self,
        path: &Path,
        dtype: Dtype,
        seed: u64,
        on_written: impl Fn(usize) + Clone + 'static,
    ) -> anyhow::Result<()> {
        let tensors = self.0.into_iter().enumerate().map(|(index, (name, shape, init))| {
            let view = LazyTensor {
                shape,
                dtype,
                init,
                seed: seed.wrapping_add(index as u64),
                on_written: Some(Box::new(on_written.clone())),
            };
            (name, view)
        });
        let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
        let partial = path.with_extension("safetensors.partial");
        safetensors::serialize_to_file(tensors, Some(metadata), &partial)
            .with_context(|| format!("cannot write {}", partial.display()))?;
        std::fs::rename(&partial, path)
            .with_context(|| format!("cannot rename {} to {}", partial.display(), path.display()))
    }
}

fn base_tensors(t: &TextShape, v: &VisionShape) -> TensorList {
    let mut list = TensorList::default();
    let lm = "model.language_model";
    list.add(format!("{lm}.embed_tokens.weight"), &[t.vocab, t.hidden], Init::Random);
    for i in 0..t.layers {
        list.llama_layer(&format!("{lm}.layers.{i}"), t);
    }
    list.add(format!("{lm}.norm.weight"), &[t.hidden], Init::Ones);
    list.linear("lm_head", t.hidden, t.vocab, false);
    let vt = "model.vision_tower";
    let positions = (v.image_size / v.patch_size).pow(2) + 1;
    list.add(format!("{vt}.embeddings.class_embedding"), &[v.hidden], Init::Random);
    list.add(
        format!("{vt}.embeddings.patch_embedding.weight"),
        &[v.hidden, 3, v.patch_size, v.patch_size],
        Init::Random,
    );
    list.add(format!("{vt}.embeddings.position_embedding.weight"), &[positions, v.hidden], Init::Random);
    list.layer_norm(&format!("{vt}.pre_layrnorm"), v.hidden);
    for i in 0..v.layers {
        let prefix = format!("{vt}.encoder.layers.{i}");
        list.layer_norm(&format!("{prefix}.layer_norm1"), v.hidden);
        list.layer_norm(&format!("{prefix}.layer_norm2"), v.hidden);
        for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            list.linear(&format!("{prefix}.self_attn.{proj}"), v.hidden, v.hidden, true);
        }
        list.linear(&format!("{prefix}.mlp.fc1"), v.hidden, v.intermediate, true);
        list.linear(&format!("{prefix}.mlp.fc2"), v.intermediate, v.hidden, true);
    }
    list.layer_norm(&format!("{vt}.post_layernorm"), v.hidden);
    list.linear("model.multi_modal_projector.linear_1", v.hidden, t.hidden, true);
    list.linear("model.multi_modal_projector.linear_2", t.hidden, t.hidden, true);
    list
}

fn twig_tensors(t: &TextShape) -> TensorList {
    let mut list = TensorList::default();
    for i in 0..TWIG_T {
        list.llama_layer(&format!("model.layers.{i}"), t);
    }
    list.add("model.norm.weight", &[t.hidden], Init::Ones);
    list.linear("lm_head", t.hidden, t.vocab, false);
    list
}

fn config_json(t: &TextShape, v: &VisionShape) -> serde_json::Value {
    json!({
        "architectures": ["LlavaForConditionalGeneration"],
        "model_type": "llava",
        "image_token_index": IMAGE_TOKEN_ID,
        "image_seq_length": (v.image_size / v.patch_size).pow(2),
        "projector_hidden_act": "gelu",
        "multimodal_projector_bias": true,
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
        "tie_word_embeddings": false,
        "text_config": {
            "model_type": "llama",
            "hidden_size": t.hidden,
            "intermediate_size": t.intermediate,
            "num_hidden_layers": t.layers,
            "num_attention_heads": t.heads,
            "num_key_value_heads": t.kv_heads,
            "head_dim": t.hidden / t.heads,
            "vocab_size": t.vocab,
            "max_position_embeddings": t.context,
            "rms_norm_eps": 1e-5,
            "rope_theta": t.rope_theta,
            "hidden_act": "silu",
            "attention_bias": false,
            "mlp_bias": false,
            "tie_word_embeddings": false,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": PAD_TOKEN_ID,
        },
        "vision_config": {
            "model_type": "clip_vision_model",
            "hidden_size": v.hidden,
            "intermediate_size": v.intermediate,
            "num_hidden_layers": v.layers,
            "num_attention_heads": v.heads,
            "image_size": v.image_size,
            "patch_size": v.patch_size,
            "num_channels": 3,
            "hidden_act": "quick_gelu",
            "layer_norm_eps": 1e-5,
        },
    })
}

fn preprocessor_json(v: &VisionShape) -> serde_json::Value {
    json!({
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": true,
        "size": {"shortest_edge": v.image_size},
        "do_center_crop": true,
        "crop_size": {"height": v.image_size, "width": v.image_size},
        "do_rescale": true,
        "rescale_factor": 1.0 / 255.0,
        "do_normalize": true,
        "image_mean": CLIP_MEAN,
        "image_std": CLIP_STD,
        "resample": 3,
        "do_convert_rgb": true,
    })
}

/// A word-level tokenizer with `vocab` entries: the special tokens at llava-hf's ids and filler
/// words elsewhere (prompts mostly map to `<unk>`; this model is for timing, not for reading).
fn write_tokenizer(dir: &Path, vocab: usize) -> anyhow::Result<()> {
    use tokenizers::models::wordlevel::WordLevel;
    use tokenizers::pre_tokenizers::whitespace::Whitespace;
    use tokenizers::{AddedToken, Tokenizer};

    let special = [(0, "<unk>"), (1, "<s>"), (2, "</s>"), (IMAGE_TOKEN_ID, "<image>"), (PAD_TOKEN_ID, "<pad>")];
    let words: HashMap<String, u32> = (0..vocab)
        .map(|id| {
            let word = special.iter().find(|(i, _)| *i == id).map_or(format!("w{id}"), |(_, w)| w.to_string());
            (word, id as u32)
        })
        .collect();
    let model = WordLevel::builder()
        .vocab(words.into_iter().collect())
        .unk_token("<unk>".into())
        .build()
        .map_err(anyhow::Error::msg)?;
    let mut tokenizer = Tokenizer::new(model);
    tokenizer.with_pre_tokenizer(Some(Whitespace {}));
    tokenizer.add_special_tokens(&special.map(|(_, w)| AddedToken::from(w, true)));
    let path = dir.join("tokenizer.json");
    tokenizer.save(&path, false).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    let config = json!({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>", "tokenizer_class": "LlamaTokenizer"});
    std::fs::write(dir.join("tokenizer_config.json"), serde_json::to_string_pretty(&config)?)?;
    Ok(())
}

/// What [`write_model`] wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WrittenModel {
    pub base_parameters: usize,
    pub twig_parameters: usize,
    pub bytes: u64,
}

/// Writes the preset's model to `out` and its random twig (official layout, K = [`TWIG_K`],
/// T = [`TWIG_T`]) to `out/twig`; `progress(bytes)` follows the weights being written.
pub fn write_model(
    preset: Preset,
    out: &Path,
    seed: u64,
    progress: impl Fn(usize) + Clone + 'static,
) -> anyhow::Result<WrittenModel> {
    let (text, vision) = preset.shapes();
    let twig_dir = out.join("twig");
    std::fs::create_dir_all(&twig_dir).with_context(|| format!("cannot create {}", twig_dir.display()))?;
    std::fs::write(out.join("config.json"), serde_json::to_string_pretty(&config_json(&text, &vision))?)?;
    std::fs::write(out.join("preprocessor_config.json"), serde_json::to_string_pretty(&preprocessor_json(&vision))?)?;
    write_tokenizer(out, text.vocab)?;
    let (base, twig) = (base_tensors(&text, &vision), twig_tensors(&text));
    let (base_parameters, twig_parameters) = (base.parameters(), twig.parameters());
    base.write(&out.join("model.safetensors"), Dtype::F16, seed, progress.clone())?;
    // The official TwigVLM checkpoints are bf16.
    twig.write(&twig_dir.join("model.safetensors"), Dtype::BF16, seed ^ u64::MAX, progress)?;
    Ok(WrittenModel { base_parameters, twig_parameters, bytes: 2 * (base_parameters + twig_parameters) as u64 })
}

/// Bytes of weights [`write_model`] writes for `preset`.
pub fn weight_bytes(preset: Preset) -> u64 {
    let (text, vision) = preset.shapes();
    2 * (base_tensors(&text, &vision).parameters() + twig_tensors(&text).parameters()) as u64
}
