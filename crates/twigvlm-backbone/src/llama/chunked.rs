//! A prompt's prefill in chunks of tokens: each chunk runs through a stack of layers, attending
//! to the chunks before it through the KV cache, before the next chunk starts. A layer then holds
//! the attention scores of one chunk against the prompt instead of the whole prompt against
//! itself, and a stop requested between two layers of a chunk ends the work there. The cache,
//! the hidden states and the probed attention are those of one forward over the whole prompt, up
//! to float rounding.

use std::collections::BTreeMap;
use std::ops::Range;

use burn::prelude::*;

use super::{Alone, AttentionProbe, DecoderLayer, KvCache, LayersOutput, RopeAngles, StackCall, StackRunner};
use crate::interrupt::{Interrupt, Interrupted};
use crate::ops::DecodeOps;

/// How a prefill steps through its prompt.
pub struct PrefillSteps<'a, 'm, B: Backend> {
    /// Most tokens one forward of a layer takes.
    pub chunk_tokens: usize,
    /// Asked before each layer of each chunk.
    pub interrupt: Interrupt<'a>,
    /// Runs each layer of each chunk ([`Alone`] by default; a batching runner puts it beside
    /// other requests' work).
    pub runner: &'a dyn StackRunner<'m, B>,
    /// An earlier stage of the same prefill has run, so this stage's first chunk continues it.
    /// Only a chunk after the first of a stage is new work ([`StackCall::continuation`]): a
    /// batching runner lets other requests step between two chunks of a long prompt, not
    /// between the stages of a short one.
    pub under_way: bool,
}

impl<B: Backend> Clone for PrefillSteps<'_, '_, B> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<B: Backend> Copy for PrefillSteps<'_, '_, B> {}

/// Tokens per chunk by default, as llama.cpp's default micro-batch: large enough that a chunk's
/// matrix products run at full speed, small enough that an 8k-token prompt's scores take an
/// eighth of a single forward's per layer.
pub const DEFAULT_PREFILL_CHUNK_TOKENS: usize = 512;

impl<'a, 'm, B: DecodeOps> PrefillSteps<'a, 'm, B> {
    /// Chunks of the default size, run alone, never interrupted.
    pub fn uninterrupted() -> Self {
        Self::new(Interrupt::NEVER)
    }

    /// Chunks of the default size, run alone, asking `interrupt`.
    pub fn new(interrupt: Interrupt<'a>) -> Self {
        Self { chunk_tokens: DEFAULT_PREFILL_CHUNK_TOKENS, interrupt, runner: &Alone, under_way: false }
    }

    /// The same with `chunk_tokens` tokens per chunk.
    ///
    /// # Panics
    /// When `chunk_tokens` is 0.
    pub fn with_chunk_tokens(self, chunk_tokens: usize) -> Self {
        assert!(chunk_tokens > 0, "a prefill chunk holds at least one token");
        Self { chunk_tokens, ..self }
    }

    /// The same for a later stage of the prefill ([`Self::under_way`]).
    pub fn under_way(self) -> Self {
        Self { under_way: true, ..self }
    }

    /// The same with its layers run by `runner`.
    pub fn with_runner(self, runner: &'a dyn StackRunner<'m, B>) -> Self {
        Self { runner, ..self }
    }

    /// The row ranges of `len` tokens, chunk by chunk.
    fn chunks(&self, len: usize) -> impl Iterator<Item = Range<usize>> {
        let step = self.chunk_tokens;
        (0..len).step_by(step).map(move |start| start..(start + step).min(len))
    }
}

/// Runs a stack of decoder layers (the first one layer `first_index` of `cache` and `probe`) over
/// `hidden` chunk by chunk (see the module docs), asking the interrupt before each layer of each
/// chunk. Probed rows must be ascending; each probed layer's probabilities cover every key the
/// layer's cache holds at the end (keys after a row's chunk are masked for it: zero).
///
/// # Shapes
/// - hidden: `[batch, new, hidden]` → `[batch, new, hidden]`
pub fn prefill_stack<'m, B: DecodeOps>(
    layers: &'m [DecoderLayer<B>],
    first_index: usize,
    hidden: Tensor<B, 3>,
    rope: &RopeAngles<B>,
    cache: &mut KvCache<B>,
    probe: &AttentionProbe,
    steps: &PrefillSteps<'_, 'm, B>,
) -> Result<LayersOutput<B>, Interrupted> {
    debug_assert!(probe.rows.is_sorted(), "probed rows ascend: {:?}", probe.rows);
    let len = hidden.dims()[1];
    let mut outputs = Vec::new();
    let mut probed: BTreeMap<usize, Vec<Tensor<B, 4>>> = BTreeMap::new();
    for rows in steps.chunks(len) {
        let mut chunk = hidden.clone().narrow(1, rows.start, rows.len());
        let chunk_rope = rope.rows(rows.clone());
        let chunk_probe = probe.within(rows.clone());
        for (offset, layer) in layers.iter().enumerate() {
            steps.interrupt.check()?;
            let call = StackCall::new(std::slice::from_ref(layer), first_index + offset, chunk, &chunk_rope)
                .with_probe(&chunk_probe)
                .continuing(offset > 0 || (rows.start == 0 && steps.under_way));
            let out = steps.runner.run_stack(call, cache);
            chunk = out.hidden;
            for (index, probs) in out.attention {
                probed.entry(index).or_default().push(probs);
            }
        }
        outputs.push(chunk);
    }
    let hidden = if outputs.len() == 1 { outputs.remove(0) } else { Tensor::cat(outputs, 1) };
    let attention =
        probed.into_iter().map(|(index, parts)| (index, join_probabilities(parts, cache.layer(index).len()))).collect();
    Ok(LayersOutput { hidden, attention })
}

/// Chunks' `[batch, heads, rows, keys so far]` probabilities as one `[batch, heads, rows, keys]`.
fn join_probabilities<B: Backend>(parts: Vec<Tensor<B, 4>>, keys: usize) -> Tensor<B, 4> {
    let padded: Vec<Tensor<B, 4>> = parts
        .into_iter()
        .map(|part| {
            let [batch, heads, rows, seen] = part.dims();
            if seen == keys {
                part
            } else {
                let unseen =
                    Tensor::<B, 4>::zeros([batch, heads, rows, keys - seen], &part.device()).cast(part.dtype());
                Tensor::cat(vec![part, unseen], 3)
            }
        })
        .collect();
    Tensor::cat(padded, 2)
}
