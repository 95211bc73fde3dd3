//! Prompt caches kept across requests. A follow-up turn about the same image (the next question
//! of a chat, whose history repeats the earlier turns) begins with the tokens of an earlier
//! prompt; its prefill continues from that prompt's caches instead of running the vision tower
//! and those tokens again. Only unpruned prefills are kept and reused: a pruned prefill's caches
//! depend on the whole question (the ranking reads its last token).
//!
//! The caches are least-recently-used within a byte budget. A kept cache shares its buffers
//! with the request that made it until that request appends, which then copies each layer's
//! buffer once.

use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use burn::prelude::*;
use image::DynamicImage;
use twigvlm_backbone::{CachedPrefix, PromptState, PromptTokens};

/// Which image a prompt's visual tokens show (a hash of its pixels and size); the tokens alone
/// cannot tell two images apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageKey(u64);

impl ImageKey {
    /// The key of `image`.
    pub fn of(image: &DynamicImage) -> Self {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (image.width(), image.height(), image.color()).hash(&mut hasher);
        image.as_bytes().hash(&mut hasher);
        Self(hasher.finish())
    }
}

/// One kept prompt.
struct Entry<B: Backend> {
    tokens: Vec<u32>,
    image: Option<ImageKey>,
    prefix: CachedPrefix<B>,
    bytes: usize,
}

/// The kept prompt caches (see the module docs).
pub struct PromptCache<B: Backend> {
    budget_bytes: usize,
    /// Least recently used first.
    entries: Mutex<Vec<Entry<B>>>,
}

impl<B: Backend> PromptCache<B> {
    /// Keeps caches up to `budget_bytes` in all.
    pub fn new(budget_bytes: usize) -> Self {
        Self { budget_bytes, entries: Mutex::new(Vec::new()) }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, Vec<Entry<B>>> {
        self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The caches of the longest kept beginning of `tokens` about the same `image` (with the
    /// twig's cache when `with_twig`), cut to leave at least the prompt's last token to run and
    /// covering the image's span. `None` when no kept prompt shares that much.
    pub fn lookup(&self, tokens: &PromptTokens, image: Option<ImageKey>, with_twig: bool) -> Option<CachedPrefix<B>> {
        let needed = tokens.image_span.as_ref().map_or(1, |span| span.end.max(1));
        let mut entries = self.entries();
        let (index, len) = entries
            .iter()
            .enumerate()
            .filter(|(_, entry)| entry.image == image && (!with_twig || entry.prefix.twig_cache.is_some()))
            .map(|(index, entry)| {
                let shared = entry.tokens.iter().zip(&tokens.ids).take_while(|(a, b)| a == b).count();
                (index, shared.min(entry.prefix.len).min(tokens.len() - 1))
            })
            .filter(|&(_, len)| len >= needed)
            .max_by_key(|&(_, len)| len)?;
        let entry = entries.remove(index);
        let mut prefix = entry.prefix.clone();
        entries.push(entry);
        prefix.base_cache.crop(len).expect("a kept prompt holds its tokens in every layer");
        if let Some(twig) = prefix.twig_cache.as_mut() {
            twig.crop(len).expect("a kept prompt holds its tokens in every twig block");
        }
        prefix.len = len;
        Some(prefix)
    }

    /// Keeps the caches of `state`, the unpruned prefill of `tokens` about `image`, dropping the
    /// least recently used beyond the budget (and any earlier copy of the same prompt).
    pub fn store(&self, tokens: &PromptTokens, image: Option<ImageKey>, state: &PromptState<B>) {
        let bytes = state.base_cache.stored_bytes() + state.twig_cache.as_ref().map_or(0, |c| c.stored_bytes());
        if bytes > self.budget_bytes {
            return;
        }
        let mut entries = self.entries();
        entries.retain(|entry| entry.tokens != tokens.ids || entry.image != image);
        let mut total: usize = entries.iter().map(|entry| entry.bytes).sum::<usize>() + bytes;
        while total > self.budget_bytes {
            total -= entries.remove(0).bytes;
        }
        let prefix = CachedPrefix {
            len: state.prompt_len,
            base_cache: state.base_cache.clone(),
            twig_cache: state.twig_cache.clone(),
        };
        entries.push(Entry { tokens: tokens.ids.clone(), image, prefix, bytes });
    }

    /// Prompts kept now.
    pub fn len(&self) -> usize {
        self.entries().len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
