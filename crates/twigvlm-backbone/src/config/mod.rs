//! Validated model configuration. `hf` mirrors the JSON files; the types here are what the model
//! code is built from, with every derived quantity computed in one place.

pub mod hf;

use serde::{Deserialize, Serialize};

/// Element-wise activations that appear in LLaVA configs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Activation {
    /// Exact GELU (erf), transformers' `"gelu"`.
    Gelu,
    /// tanh-approximated GELU (`"gelu_new"`, `"gelu_pytorch_tanh"`).
    GeluTanh,
    /// CLIP's `x * sigmoid(1.702 x)`.
    QuickGelu,
    /// `x * sigmoid(x)`.
    Silu,
}

impl Activation {
    /// Parses a transformers `hidden_act` string.
    pub fn from_hf(name: &str) -> Result<Self, String> {
        match name {
            "gelu" => Ok(Self::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(Self::GeluTanh),
            "quick_gelu" => Ok(Self::QuickGelu),
            "silu" | "swish" => Ok(Self::Silu),
            other => Err(format!(
                "activation `{other}` is not supported (gelu, gelu_new, gelu_pytorch_tanh, quick_gelu, silu)"
            )),
        }
    }
}

/// Which vision-tower positions become visual tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FeatureSelect {
    /// Drop the CLS position (transformers `"default"`, original LLaVA `"patch"`).
    Patches,
    /// Keep CLS and patches (transformers `"full"`, original LLaVA `"cls_patch"`).
    ClsAndPatches,
}

/// Llama decoder hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    /// Fewer than `num_heads` means grouped-query attention.
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    pub attention_bias: bool,
    pub mlp_bias: bool,
    /// The LM head reuses the token embedding matrix.
    pub tie_word_embeddings: bool,
    pub mlp_activation: Activation,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

/// CLIP ViT vision-tower hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipVisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_channels: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub layer_norm_eps: f64,
    pub activation: Activation,
}

impl ClipVisionConfig {
    pub fn patches_per_side(&self) -> usize {
        self.image_size / self.patch_size
    }
    pub fn num_patches(&self) -> usize {
        self.patches_per_side() * self.patches_per_side()
    }
    /// Patches plus the CLS position.
    pub fn num_positions(&self) -> usize {
        self.num_patches() + 1
    }
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }
}

/// The two-layer MLP projector (`mlp2x_gelu`) or a single linear map (`linear`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProjectorConfig {
    pub vision_hidden_size: usize,
    pub text_hidden_size: usize,
    pub bias: bool,
    /// `None` = the original LLaVA `linear` projector (one layer).
    pub activation: Option<Activation>,
}

/// A whole LLaVA-1.5 model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlavaConfig {
    pub vision: ClipVisionConfig,
    pub projector: ProjectorConfig,
    pub text: LlamaConfig,
    /// Token id that marks visual positions in HF-style prompts.
    pub image_token_id: Option<u32>,
    /// Index into the vision tower's hidden-state list (embeddings first), negative from the end.
    pub vision_feature_layer: i64,
    pub feature_select: FeatureSelect,
}

impl LlavaConfig {
    /// How many encoder layers must run to produce the selected hidden state
    /// (hidden state 0 is the embedding output after `pre_layrnorm`).
    pub fn vision_layers_needed(&self) -> Result<usize, String> {
        let states = self.vision.num_layers as i64 + 1;
        let idx =
            if self.vision_feature_layer < 0 { states + self.vision_feature_layer } else { self.vision_feature_layer };
        if !(0..states).contains(&idx) {
            return Err(format!(
                "vision_feature_layer {} is out of range for a vision tower with {} layers",
                self.vision_feature_layer, self.vision.num_layers
            ));
        }
        Ok(idx as usize)
    }

    /// Visual tokens one image contributes to the prompt.
    pub fn visual_tokens_per_image(&self) -> usize {
        match self.feature_select {
            FeatureSelect::Patches => self.vision.num_patches(),
            FeatureSelect::ClsAndPatches => self.vision.num_positions(),
        }
    }

    /// Checks the invariants the model code relies on.
    pub fn validate(&self) -> Result<(), String> {
        let t = &self.text;
        if t.num_heads == 0 || t.num_kv_heads == 0 || !t.num_heads.is_multiple_of(t.num_kv_heads) {
            return Err(format!(
                "num_attention_heads ({}) must be a positive multiple of num_key_value_heads ({})",
                t.num_heads, t.num_kv_heads
            ));
        }
        if !t.head_dim.is_multiple_of(2) {
            return Err(format!("head_dim {} must be even for rotary embeddings", t.head_dim));
        }
        let v = &self.vision;
        if v.num_heads == 0 || !v.hidden_size.is_multiple_of(v.num_heads) {
            return Err(format!("vision hidden_size {} is not divisible by its {} heads", v.hidden_size, v.num_heads));
        }
        if v.patch_size == 0 || !v.image_size.is_multiple_of(v.patch_size) {
            return Err(format!("vision image_size {} is not a multiple of patch_size {}", v.image_size, v.patch_size));
        }
        if self.projector.vision_hidden_size != v.hidden_size {
            return Err(format!(
                "projector input {} differs from the vision hidden size {}",
                self.projector.vision_hidden_size, v.hidden_size
            ));
        }
        if self.projector.text_hidden_size != t.hidden_size {
            return Err(format!(
                "projector output {} differs from the text hidden size {}",
                self.projector.text_hidden_size, t.hidden_size
            ));
        }
        self.vision_layers_needed().map(|_| ())
    }
}

fn token_ids(value: &Option<serde_json::Value>) -> Vec<u32> {
    match value {
        Some(serde_json::Value::Number(n)) => n.as_u64().map(|v| vec![v as u32]).unwrap_or_default(),
        Some(serde_json::Value::Array(items)) => items.iter().filter_map(|v| v.as_u64()).map(|v| v as u32).collect(),
        _ => Vec::new(),
    }
}

impl hf::HfLlamaConfig {
    /// Converts and validates; `tie_fallback` is the top-level `tie_word_embeddings` if any.
    pub fn to_llama(&self, tie_fallback: Option<bool>) -> Result<LlamaConfig, String> {
        let rope_theta = self.rope_theta_value()?;
        let num_kv_heads = self.num_key_value_heads.unwrap_or(self.num_attention_heads);
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads) && self.head_dim.is_none()
        {
            return Err(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        Ok(LlamaConfig {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_layers: self.num_hidden_layers,
            num_heads: self.num_attention_heads,
            num_kv_heads,
            head_dim: self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads),
            rms_norm_eps: self.rms_norm_eps,
            rope_theta,
            max_position_embeddings: self.max_position_embeddings,
            attention_bias: self.attention_bias,
            mlp_bias: self.mlp_bias,
            tie_word_embeddings: self.tie_word_embeddings.or(tie_fallback).unwrap_or(false),
            mlp_activation: Activation::from_hf(&self.hidden_act)?,
            bos_token_id: token_ids(&self.bos_token_id).first().copied(),
            eos_token_ids: token_ids(&self.eos_token_id),
        })
    }

    fn rope_theta_value(&self) -> Result<f64, String> {
        const DEFAULT_ROPE_THETA: f64 = 10_000.0;
        let check_type = |v: &serde_json::Value| -> Result<(), String> {
            let kind = v.get("rope_type").or_else(|| v.get("type")).and_then(|t| t.as_str());
            match kind {
                None | Some("default") => Ok(()),
                Some(other) => Err(format!("rope scaling `{other}` is not supported (only the default RoPE)")),
            }
        };
        if let Some(scaling) = self.rope_scaling.as_ref().filter(|v| !v.is_null()) {
            check_type(scaling)?;
        }
        if let Some(params) = self.rope_parameters.as_ref().filter(|v| !v.is_null()) {
            check_type(params)?;
            if let Some(theta) = params.get("rope_theta").and_then(|t| t.as_f64()) {
                return Ok(theta);
            }
        }
        Ok(self.rope_theta.unwrap_or(DEFAULT_ROPE_THETA))
    }
}

impl hf::HfClipVisionConfig {
    pub fn to_clip(&self) -> Result<ClipVisionConfig, String> {
        Ok(ClipVisionConfig {
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_layers: self.num_hidden_layers,
            num_heads: self.num_attention_heads,
            num_channels: self.num_channels,
            image_size: self.image_size,
            patch_size: self.patch_size,
            layer_norm_eps: self.layer_norm_eps,
            activation: Activation::from_hf(&self.hidden_act)?,
        })
    }
}

impl hf::HfLlavaConfig {
    pub fn to_llava(&self) -> Result<LlavaConfig, String> {
        let text_hf = match &self.text_config {
            Some(t) => t.clone(),
            None => serde_json::from_str::<hf::HfLlamaConfig>("{}").map_err(|e| e.to_string())?,
        };
        let text = text_hf.to_llama(self.tie_word_embeddings)?;
        let vision = self.vision_config.clone().unwrap_or_else(hf::HfClipVisionConfig::llava_default).to_clip()?;
        let vision_feature_layer = self.vision_feature_layer.as_i64().ok_or_else(|| {
            format!("vision_feature_layer {} is not supported: only a single layer index is", self.vision_feature_layer)
        })?;
        let feature_select = match self.vision_feature_select_strategy.as_str() {
            "default" => FeatureSelect::Patches,
            "full" => FeatureSelect::ClsAndPatches,
            other => return Err(format!("vision_feature_select_strategy `{other}` is not supported (default, full)")),
        };
        const LLAVA_HF_DEFAULT_IMAGE_TOKEN: i64 = 32000;
        let image_token = self.image_token_index.unwrap_or(LLAVA_HF_DEFAULT_IMAGE_TOKEN);
        let cfg = LlavaConfig {
            projector: ProjectorConfig {
                vision_hidden_size: vision.hidden_size,
                text_hidden_size: text.hidden_size,
                bias: self.multimodal_projector_bias,
                activation: Some(Activation::from_hf(&self.projector_hidden_act)?),
            },
            vision,
            text,
            image_token_id: u32::try_from(image_token).ok(),
            vision_feature_layer,
            feature_select,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

impl hf::HfOriginalLlavaExtras {
    /// Combines the original LLaVA top-level Llama fields, its `mm_*` fields and the CLIP directory's config.
    pub fn to_llava(&self, llama: &hf::HfLlamaConfig, clip: &hf::HfClipVisionConfig) -> Result<LlavaConfig, String> {
        let text = llama.to_llama(None)?;
        let vision = clip.to_clip()?;
        let feature_select = match self.mm_vision_select_feature.as_str() {
            "patch" => FeatureSelect::Patches,
            "cls_patch" => FeatureSelect::ClsAndPatches,
            other => return Err(format!("mm_vision_select_feature `{other}` is not supported (patch, cls_patch)")),
        };
        let activation = match self.mm_projector_type.as_str() {
            "linear" => None,
            "mlp2x_gelu" => Some(Activation::Gelu),
            other => return Err(format!("mm_projector_type `{other}` is not supported (linear, mlp2x_gelu)")),
        };
        if self.mm_use_im_start_end {
            return Err("mm_use_im_start_end = true is not supported (LLaVA-1.5 does not use it)".into());
        }
        let cfg = LlavaConfig {
            projector: ProjectorConfig {
                vision_hidden_size: self.mm_hidden_size.unwrap_or(vision.hidden_size),
                text_hidden_size: text.hidden_size,
                bias: true,
                activation,
            },
            vision,
            text,
            image_token_id: None,
            vision_feature_layer: self.mm_vision_select_layer,
            feature_select,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}
