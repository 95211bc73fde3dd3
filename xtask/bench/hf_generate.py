#!/usr/bin/env python3
"""Times greedy generation of a llava-hf model directory in HF transformers (eager attention,
float32, CPU) for `cargo xtask bench-hf`. Prints one JSON object.

Decode speed = (N - 1) / (time of an N-token generate - time of a 1-token generate), medians over
--repeats, the same definition `twigvlm generate --json` reports (the first token comes from the prefill).
"""
import argparse
import json
import statistics
import time

import torch
from PIL import Image
from transformers import AutoTokenizer, LlavaForConditionalGeneration, LlavaProcessor
from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
          "The assistant gives helpful, detailed, and polite answers to the user's questions.")

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--image")
ap.add_argument("--prompt", required=True)
ap.add_argument("--max-new-tokens", type=int, default=32)
ap.add_argument("--threads", type=int, required=True)
ap.add_argument("--repeats", type=int, default=3)
args = ap.parse_args()

torch.set_num_threads(args.threads)
model = LlavaForConditionalGeneration.from_pretrained(args.model, dtype=torch.float32, attn_implementation="eager").eval()
tok = AutoTokenizer.from_pretrained(args.model)
cfg = model.config
ip = LlavaImageProcessorPil.from_pretrained(args.model)
proc = LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=cfg.vision_config.patch_size,
                      vision_feature_select_strategy=cfg.vision_feature_select_strategy, num_additional_image_tokens=1)
user = f"<image>\n{args.prompt}" if args.image else args.prompt
if tok.chat_template:
    # The model's own template (the demo model's), as twigvlm renders it.
    text = tok.apply_chat_template([{"role": "user", "content": user}], add_generation_prompt=True, tokenize=False)
else:
    text = f"{SYSTEM} USER: {user} ASSISTANT:"
if args.image:
    inputs = proc(images=Image.open(args.image).convert("RGB"), text=text, return_tensors="pt")
else:
    inputs = tok(text, return_tensors="pt")


def run(n):
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                             pad_token_id=cfg.text_config.pad_token_id)
    return time.perf_counter() - start, out[0, inputs["input_ids"].shape[1]:].tolist()


run(2)  # warm-up
first = [run(1)[0] for _ in range(args.repeats)]
full = [run(args.max_new_tokens) for _ in range(args.repeats)]
t1 = statistics.median(first)
tn = statistics.median(t for t, _ in full)
n = args.max_new_tokens
print(json.dumps({
    "engine": "hf-transformers", "threads": args.threads, "prompt_tokens": int(inputs["input_ids"].shape[1]),
    "new_tokens": n, "prefill_ms": t1 * 1e3, "decode_ms": (tn - t1) * 1e3, "tokens_per_s": (n - 1) / (tn - t1),
    "generated_ids": full[0][1], "torch": torch.__version__,
}))
