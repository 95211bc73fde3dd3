//! Which base model a twig belongs to. A twig reads the base's layer-K hidden states and is
//! verified against the base's own predictions, so loading it on another base silently gives
//! garbage; the fingerprint (shapes plus sampled weights of every layer) catches that.

use burn::prelude::*;
use serde::{Deserialize, Serialize};
use twigvlm_backbone::ops::DecodeOps;
use twigvlm_backbone::LlamaDecoder;

/// Values read from the start of each sampled weight.
const SAMPLED_VALUES: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseIdentity {
    pub layers: usize,
    pub hidden_size: usize,
    pub vocab_size: usize,
    /// FNV-1a (64 bit, hex) over the shapes and the first values of the embedding, every layer's
    /// q/down projections and the head.
    pub fingerprint: String,
}

impl std::fmt::Display for BaseIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} layers, hidden {}, vocab {}, fingerprint {}",
            self.layers, self.hidden_size, self.vocab_size, self.fingerprint
        )
    }
}

struct Fnv(u64);

impl Fnv {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    fn bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(Self::PRIME);
        }
    }

    fn sample<B: DecodeOps>(&mut self, tensor: Tensor<B, 2>) {
        let n = tensor.dims()[1].min(SAMPLED_VALUES);
        let row = tensor.slice([0..1, 0..n]).into_data().convert::<f32>();
        for v in row.as_slice::<f32>().expect("f32 after convert") {
            // Rounded to f16 precision so that f32 and f16 copies of one model agree.
            self.bytes(&burn::tensor::f16::from_f32(*v).to_bits().to_le_bytes());
        }
    }
}

impl BaseIdentity {
    pub fn of<B: DecodeOps>(base: &LlamaDecoder<B>) -> Self {
        let mut hash = Fnv(Fnv::OFFSET);
        let (layers, hidden_size, vocab_size) = (base.num_layers(), base.hidden_size(), base.vocab_size());
        for n in [layers, hidden_size, vocab_size] {
            hash.bytes(&(n as u64).to_le_bytes());
        }
        hash.sample(base.embed_tokens.weight.val());
        for layer in &base.layers {
            hash.sample(layer.self_attn.q_proj.weight.val());
            hash.sample(layer.mlp.down_proj.weight.val());
        }
        hash.sample(base.lm_head.weight.val());
        Self { layers, hidden_size, vocab_size, fingerprint: format!("{:016x}", hash.0) }
    }
}
