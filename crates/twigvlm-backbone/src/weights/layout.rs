//! Where each part of a LLaVA model lives in a checkpoint's key space. Each part is found on its
//! own among the prefixes that transformers 4.x, 5.x (module names and `save_pretrained` output)
//! and the original LLaVA repository use; below a prefix every layout shares the HF names
//! (`layers.{i}.self_attn.q_proj`, `encoder.layers.{i}.mlp.fc1`).

use super::source::TensorSource;
use crate::error::{BackboneError, Result};

/// Which family of `config.json` goes with the weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayoutKind {
    /// llava-hf (`LlavaForConditionalGeneration`), any transformers version.
    LlavaHf,
    /// The original LLaVA repository (`LlavaLlamaForCausalLM`, `model.mm_projector.{0,2}`).
    Original,
}

/// Key prefixes of one checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointLayout {
    pub kind: LayoutKind,
    /// Prefix of the CLIP vision transformer, if the checkpoint carries it (the original LLaVA keeps
    /// CLIP in its own directory).
    pub vision: Option<String>,
    /// Prefixes of the projector's linear layers (one for a `linear` projector).
    pub projector: Vec<String>,
    /// Prefix of the Llama body (`embed_tokens`, `layers`, `norm`).
    pub language_model: String,
    /// Prefix of the LM head.
    pub lm_head: String,
}

/// The vision tower's prefix in transformers 4.x and 5.x `save_pretrained` output (what this
/// project writes its trained towers under).
pub const SAVED_VISION_PREFIX: &str = "vision_tower.vision_model";
/// The projector's prefix in `save_pretrained` output.
pub const SAVED_PROJECTOR_PREFIX: &str = "multi_modal_projector";

/// Llama body prefixes: 5.x modules, 4.x and 5.x `save_pretrained`, original LLaVA.
const LANGUAGE_MODEL: [&str; 3] = ["model.language_model", "language_model.model", "model"];
const LM_HEAD: [&str; 2] = ["lm_head", "language_model.lm_head"];
/// CLIP prefixes: 5.x modules (4.52–4.x and 5.24), 4.x, 5.x `save_pretrained`, tuned original tower,
/// and a CLIP checkpoint of its own (CLIPModel / CLIPVisionModel).
const VISION: [&str; 6] = [
    "model.vision_tower.vision_model",
    "model.vision_tower",
    SAVED_VISION_PREFIX,
    "vision_tower",
    "model.vision_tower.vision_tower.vision_model",
    "vision_model",
];
const HF_PROJECTOR: [&str; 2] = ["model.multi_modal_projector", SAVED_PROJECTOR_PREFIX];
const ORIGINAL_PROJECTOR: &str = "model.mm_projector";

impl CheckpointLayout {
    /// Recognises the layout from the tensor names.
    pub fn detect(source: &TensorSource) -> Result<Self> {
        let unknown = || BackboneError::UnknownLayout { sample: source.names().take(8).map(String::from).collect() };
        let language_model = LANGUAGE_MODEL
            .iter()
            .find(|p| source.contains(&format!("{p}.embed_tokens.weight")))
            .ok_or_else(unknown)?
            .to_string();
        let lm_head = LM_HEAD
            .iter()
            .find(|p| source.contains(&format!("{p}.weight")))
            .map_or_else(|| LM_HEAD[0].to_string(), |p| p.to_string());
        let vision = find_vision(source);
        if let Some(p) = HF_PROJECTOR.iter().find(|p| source.contains(&format!("{p}.linear_1.weight"))) {
            return Ok(Self {
                kind: LayoutKind::LlavaHf,
                vision,
                projector: vec![format!("{p}.linear_1"), format!("{p}.linear_2")],
                language_model,
                lm_head,
            });
        }
        let projector = if source.contains(&format!("{ORIGINAL_PROJECTOR}.weight")) {
            vec![ORIGINAL_PROJECTOR.to_string()]
        } else if source.contains(&format!("{ORIGINAL_PROJECTOR}.0.weight")) {
            vec![format!("{ORIGINAL_PROJECTOR}.0"), format!("{ORIGINAL_PROJECTOR}.2")]
        } else {
            return Err(unknown());
        };
        Ok(Self { kind: LayoutKind::Original, vision, projector, language_model, lm_head })
    }
}

/// The CLIP vision-transformer prefix of a checkpoint, if it has one.
pub fn find_vision(source: &TensorSource) -> Option<String> {
    VISION.iter().find(|p| source.contains(&format!("{p}.embeddings.patch_embedding.weight"))).map(|p| p.to_string())
}

/// Tensors that LLaVA inference never reads, by design: CLIP's text tower and heads, the vision
/// post-layernorm, buffers, and vision layers past the selected feature layer.
pub fn ignorable(name: &str, vision_prefix: &str, vision_layers_used: usize) -> bool {
    const BY_DESIGN: [&str; 7] = [
        "post_layernorm.",
        "text_model.",
        "visual_projection.",
        "text_projection.",
        "logit_scale",
        "position_ids",
        "rotary_emb.inv_freq",
    ];
    if BY_DESIGN.iter().any(|p| name.contains(p)) {
        return true;
    }
    let layers = format!("{vision_prefix}.encoder.layers.");
    name.strip_prefix(&layers)
        .and_then(|rest| rest.split('.').next())
        .and_then(|i| i.parse::<usize>().ok())
        .is_some_and(|i| i >= vision_layers_used)
}
