//! Serde mirrors of the `config.json` files this crate reads. Defaults equal transformers'
//! class defaults, because `save_pretrained` omits sub-config fields that keep their default
//! (llava-hf/llava-1.5-7b-hf's `text_config` has no `hidden_size`, for instance).

use serde::Deserialize;

/// `config.json` of a llava-hf checkpoint (`LlavaForConditionalGeneration`), transformers 4.x or 5.x.
#[derive(Debug, Clone, Deserialize)]
pub struct HfLlavaConfig {
    #[serde(default)]
    pub model_type: Option<String>,
    /// 4.x writes `image_token_index`, 5.x `image_token_id`.
    #[serde(default, alias = "image_token_id")]
    pub image_token_index: Option<i64>,
    #[serde(default = "default_projector_act")]
    pub projector_hidden_act: String,
    #[serde(default = "default_feature_layer")]
    pub vision_feature_layer: serde_json::Value,
    #[serde(default = "default_select_strategy")]
    pub vision_feature_select_strategy: String,
    #[serde(default = "default_true")]
    pub multimodal_projector_bias: bool,
    #[serde(default)]
    pub text_config: Option<HfLlamaConfig>,
    #[serde(default)]
    pub vision_config: Option<HfClipVisionConfig>,
    /// Some checkpoints record tying at the top level instead of inside `text_config`.
    #[serde(default)]
    pub tie_word_embeddings: Option<bool>,
}

/// Llama text config (transformers `LlamaConfig`). Also the top level of an original LLaVA
/// `config.json`, whose extra `mm_*` fields are read by [`HfOriginalLlavaExtras`].
#[derive(Debug, Clone, Deserialize)]
pub struct HfLlamaConfig {
    #[serde(default = "d_vocab")]
    pub vocab_size: usize,
    #[serde(default = "d_hidden")]
    pub hidden_size: usize,
    #[serde(default = "d_intermediate")]
    pub intermediate_size: usize,
    #[serde(default = "d_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "d_heads")]
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "d_silu")]
    pub hidden_act: String,
    #[serde(default = "d_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default = "d_rms_eps")]
    pub rms_norm_eps: f64,
    /// transformers 4.x.
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// transformers 4.x rope scaling (only absent / `default` is supported).
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    /// transformers 5.x: `{"rope_type": "default", "rope_theta": ...}`.
    #[serde(default)]
    pub rope_parameters: Option<serde_json::Value>,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default)]
    pub tie_word_embeddings: Option<bool>,
    #[serde(default)]
    pub bos_token_id: Option<serde_json::Value>,
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
}

/// CLIP vision config (transformers `CLIPVisionConfig`).
#[derive(Debug, Clone, Deserialize)]
pub struct HfClipVisionConfig {
    #[serde(default = "d_clip_hidden")]
    pub hidden_size: usize,
    #[serde(default = "d_clip_intermediate")]
    pub intermediate_size: usize,
    #[serde(default = "d_clip_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "d_clip_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "d_channels")]
    pub num_channels: usize,
    #[serde(default = "d_clip_image")]
    pub image_size: usize,
    #[serde(default = "d_clip_patch")]
    pub patch_size: usize,
    #[serde(default = "d_quick_gelu")]
    pub hidden_act: String,
    #[serde(default = "d_ln_eps")]
    pub layer_norm_eps: f64,
}

/// A CLIP checkpoint directory's `config.json`: either a `CLIPVisionConfig` at the top level or a
/// full `CLIPConfig` with a `vision_config` inside (openai/clip-vit-large-patch14-336 ships the latter).
#[derive(Debug, Clone, Deserialize)]
pub struct HfClipDirConfig {
    #[serde(default)]
    pub vision_config: Option<HfClipVisionConfig>,
    #[serde(flatten)]
    pub top_level: HfClipVisionConfig,
}

/// The multimodal fields of an original LLaVA-1.5 `config.json` (`LlavaLlamaForCausalLM`).
#[derive(Debug, Clone, Deserialize)]
pub struct HfOriginalLlavaExtras {
    pub mm_vision_tower: String,
    #[serde(default)]
    pub mm_hidden_size: Option<usize>,
    #[serde(default = "default_feature_layer_i64")]
    pub mm_vision_select_layer: i64,
    #[serde(default = "default_select_feature")]
    pub mm_vision_select_feature: String,
    #[serde(default = "default_projector_type")]
    pub mm_projector_type: String,
    #[serde(default)]
    pub image_aspect_ratio: Option<String>,
    #[serde(default)]
    pub mm_use_im_start_end: bool,
}

/// `preprocessor_config.json` (CLIPImageProcessor / LlavaImageProcessor fields).
#[derive(Debug, Clone, Deserialize)]
pub struct HfPreprocessorConfig {
    #[serde(default)]
    pub size: Option<serde_json::Value>,
    #[serde(default)]
    pub crop_size: Option<serde_json::Value>,
    #[serde(default = "default_true")]
    pub do_resize: bool,
    #[serde(default = "default_true")]
    pub do_center_crop: bool,
    #[serde(default = "default_true")]
    pub do_rescale: bool,
    #[serde(default = "default_true")]
    pub do_normalize: bool,
    #[serde(default)]
    pub do_pad: Option<bool>,
    #[serde(default = "d_rescale")]
    pub rescale_factor: f64,
    #[serde(default)]
    pub image_mean: Option<Vec<f64>>,
    #[serde(default)]
    pub image_std: Option<Vec<f64>>,
    #[serde(default)]
    pub resample: Option<u32>,
}

fn default_true() -> bool {
    true
}
fn default_projector_act() -> String {
    "gelu".into()
}
fn default_feature_layer() -> serde_json::Value {
    serde_json::Value::from(-2)
}
fn default_feature_layer_i64() -> i64 {
    -2
}
fn default_select_strategy() -> String {
    "default".into()
}
fn default_select_feature() -> String {
    "patch".into()
}
fn default_projector_type() -> String {
    "linear".into()
}
fn d_vocab() -> usize {
    32000
}
fn d_hidden() -> usize {
    4096
}
fn d_intermediate() -> usize {
    11008
}
fn d_layers() -> usize {
    32
}
fn d_heads() -> usize {
    32
}
fn d_silu() -> String {
    "silu".into()
}
fn d_max_pos() -> usize {
    2048
}
fn d_rms_eps() -> f64 {
    1e-6
}
fn d_clip_hidden() -> usize {
    768
}
fn d_clip_intermediate() -> usize {
    3072
}
fn d_clip_layers() -> usize {
    12
}
fn d_clip_heads() -> usize {
    12
}
fn d_channels() -> usize {
    3
}
fn d_clip_image() -> usize {
    224
}
fn d_clip_patch() -> usize {
    32
}
fn d_quick_gelu() -> String {
    "quick_gelu".into()
}
fn d_ln_eps() -> f64 {
    1e-5
}
fn d_rescale() -> f64 {
    1.0 / 255.0
}

impl HfClipVisionConfig {
    /// transformers' `LlavaConfig` default vision tower (CLIP ViT-L/14-336), used when a llava-hf
    /// `config.json` carries no `vision_config` at all.
    pub fn llava_default() -> Self {
        Self {
            hidden_size: 1024,
            intermediate_size: 4096,
            num_hidden_layers: 24,
            num_attention_heads: 16,
            num_channels: d_channels(),
            image_size: 336,
            patch_size: 14,
            hidden_act: d_quick_gelu(),
            layer_norm_eps: d_ln_eps(),
        }
    }
}
