#!/usr/bin/env python3
"""Writes a mid-size random llava-hf model for `cargo xtask bench-hf` (not committed).

Text: hidden 1024, 12 layers, 16 heads, SwiGLU 2816, vocab 32000. Vision: CLIP 336 px, patch 14
(576 visual tokens), hidden 1024, 4 layers. Random weights (std 0.02 like HF's init, norms 1), f32.
The tokenizer and preprocessing come from the tiny fixture (ids past its vocabulary decode to nothing).
"""
import argparse
import os
import shutil

import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

ap = argparse.ArgumentParser()
ap.add_argument("--out", required=True)
ap.add_argument("--tokenizer-from", required=True)
args = ap.parse_args()

torch.manual_seed(0)
text = LlamaConfig(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=12,
                   num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=2048,
                   rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=449)
vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=4, num_attention_heads=16,
                          image_size=336, patch_size=14, hidden_act="quick_gelu", layer_norm_eps=1e-5)
cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_index=450, vision_feature_layer=-2,
                  vision_feature_select_strategy="default", projector_hidden_act="gelu")
model = LlavaForConditionalGeneration(cfg).eval()
os.makedirs(args.out, exist_ok=True)
model.save_pretrained(args.out, safe_serialization=True)
for name in ["tokenizer.json", "tokenizer_config.json"]:
    shutil.copy(os.path.join(args.tokenizer_from, name), os.path.join(args.out, name))
import json
pre = json.load(open(os.path.join(args.tokenizer_from, "preprocessor_config.json")))
pre["size"] = {"shortest_edge": 336}
pre["crop_size"] = {"height": 336, "width": 336}
json.dump(pre, open(os.path.join(args.out, "preprocessor_config.json"), "w"), indent=1)
print("wrote", args.out)
