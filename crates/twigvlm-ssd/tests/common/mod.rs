//! The tiny llava-hf fixture's language model (4 layers) and prompts for the decoder tests.
#![allow(dead_code)] // each test file uses its own part

use burn::backend::Flex;
use burn::prelude::*;
use twigvlm_backbone::{load_llava, LlamaDecoder, LoadOptions, LoadedLlava};
use twigvlm_ssd::DecodeConfig;

pub type B = Flex;

pub fn fixture() -> LoadedLlava<B> {
    load_llava::<B>(&twigvlm_testkit::tiny_llava(), &LoadOptions::default(), &Default::default()).unwrap()
}

pub fn embeds(base: &LlamaDecoder<B>, ids: &[i64]) -> Tensor<B, 3> {
    base.embed(Tensor::from_data(TensorData::new(ids.to_vec(), [1, ids.len()]), &Default::default()))
}

pub fn config(max_new_tokens: usize, eos_token_ids: Vec<u32>) -> DecodeConfig {
    DecodeConfig { max_new_tokens, eos_token_ids, context_length: 512 }
}
