//! Prompt tokenisation with image placeholders expanded to the image's visual-token positions.

use std::ops::Range;
use std::path::Path;

use tokenizers::Tokenizer;

use crate::chat_template::{MessageText, RenderedPrompt, Segment, IMAGE_PLACEHOLDER};
use crate::error::{BackboneError, Result};

/// A tokenised prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptTokens {
    /// Token ids; positions in `image_span` hold the image token id (or 0 when the tokenizer has none)
    /// and are replaced by image features before the decoder runs.
    pub ids: Vec<u32>,
    /// Positions of the visual tokens, if the prompt has an image.
    pub image_span: Option<Range<usize>>,
}

impl PromptTokens {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// `tokenizer.json` plus the knowledge of how images enter the token stream.
#[derive(Clone)]
pub struct PromptTokenizer {
    tokenizer: Tokenizer,
    /// The same tokenizer with special tokens read as plain text: what message text that spells
    /// a control token (`<|im_end|>`, `</s>`) is encoded with.
    plain: Tokenizer,
    /// Set when `<image>` is an added token of the tokenizer (llava-hf): the whole text is encoded
    /// at once, exactly as the HF processor does. Otherwise the text is split around the
    /// placeholder and each chunk encoded on its own, as the original LLaVA does.
    image_token_id: Option<u32>,
}

impl PromptTokenizer {
    pub fn from_file(path: &Path) -> Result<Self> {
        let tokenizer = Tokenizer::from_file(path)
            .map_err(|e| BackboneError::Tokenizer(format!("cannot load {}: {e}", path.display())))?;
        let image_token_id = tokenizer
            .get_added_vocabulary()
            .get_added_tokens_decoder()
            .iter()
            .find(|(_, token)| token.content == IMAGE_PLACEHOLDER)
            .map(|(id, _)| *id);
        let mut plain = tokenizer.clone();
        plain.set_encode_special_tokens(true);
        Ok(Self { tokenizer, plain, image_token_id })
    }

    pub fn image_token_id(&self) -> Option<u32> {
        self.image_token_id
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    /// Encodes rendered prompt text; the image placeholder (at most one) becomes `visual_tokens` positions.
    pub fn encode(&self, text: &str, visual_tokens: usize) -> Result<PromptTokens> {
        self.encode_pieces(text, &[], visual_tokens)
    }

    /// Encodes a rendered prompt with its messages' text as plain text: a control token spelled
    /// in a message (`<|im_end|>` typed by a user) is encoded as the characters it is made of, so
    /// that it cannot end a turn or forge a system turn. The image placeholder keeps its meaning.
    /// Text without control tokens is encoded exactly as [`PromptTokenizer::encode`] does.
    pub fn encode_prompt(&self, prompt: &RenderedPrompt, visual_tokens: usize) -> Result<PromptTokens> {
        let controls = self.control_tokens();
        let spells_control = |text: &str| controls.iter().find(|c| text.contains(c.as_str())).cloned();
        let plain: Vec<Range<usize>> = match &prompt.message_text {
            MessageText::Located(spans) => spans
                .iter()
                .flat_map(|span| without_placeholder(&prompt.text, span.clone()))
                .filter(|range| spells_control(&prompt.text[range.clone()]).is_some())
                .collect(),
            MessageText::Unlocated(texts) => match texts.iter().find_map(|t| spells_control(t)) {
                Some(control) => {
                    return Err(BackboneError::Prompt(format!(
                        "a message contains the control token {control}, and this chat template changes message text, so it cannot be kept plain text"
                    )))
                }
                None => Vec::new(),
            },
        };
        self.encode_pieces(&prompt.text, &plain, visual_tokens)
    }

    /// The special tokens' texts but the image placeholder's.
    fn control_tokens(&self) -> Vec<String> {
        let added = self.tokenizer.get_added_vocabulary().get_added_tokens_decoder();
        added.values().filter(|t| t.special && t.content != IMAGE_PLACEHOLDER).map(|t| t.content.clone()).collect()
    }

    /// `text[range]` encoded, the `plain` ranges in it (sorted, disjoint) as plain text; the
    /// tokenizer's own special tokens (a BOS) are added once, at the first piece.
    fn encode_range(&self, text: &str, range: Range<usize>, plain: &[Range<usize>]) -> Result<Vec<u32>> {
        let encode = |tokenizer: &Tokenizer, piece: &str, first: bool| -> Result<Vec<u32>> {
            tokenizer
                .encode(piece, first)
                .map(|e| e.get_ids().to_vec())
                .map_err(|e| BackboneError::Tokenizer(e.to_string()))
        };
        let mut ids = Vec::new();
        let mut at = range.start;
        let mut first = true;
        for span in plain.iter().filter(|s| s.start >= range.start && s.end <= range.end) {
            if at < span.start {
                ids.extend(encode(&self.tokenizer, &text[at..span.start], first)?);
                first = false;
            }
            ids.extend(encode(&self.plain, &text[span.clone()], first)?);
            first = false;
            at = span.end;
        }
        if at < range.end || first {
            ids.extend(encode(&self.tokenizer, &text[at..range.end], first)?);
        }
        Ok(ids)
    }

    fn encode_pieces(&self, text: &str, plain: &[Range<usize>], visual_tokens: usize) -> Result<PromptTokens> {
        let encode = |range: Range<usize>| self.encode_range(text, range, plain);
        if !text.contains(IMAGE_PLACEHOLDER) {
            return Ok(PromptTokens { ids: encode(0..text.len())?, image_span: None });
        }
        let (before, after) = match self.image_token_id {
            Some(image_id) => {
                let ids = encode(0..text.len())?;
                let at = ids.iter().position(|&id| id == image_id).ok_or_else(|| {
                    BackboneError::Tokenizer(format!("{IMAGE_PLACEHOLDER} did not tokenise to its own id {image_id}"))
                })?;
                (ids[..at].to_vec(), ids[at + 1..].to_vec())
            }
            None => {
                let at = text.find(IMAGE_PLACEHOLDER).expect("checked above");
                let before = encode(0..at)?;
                let mut after = encode(at + IMAGE_PLACEHOLDER.len()..text.len())?;
                let bos = before.first().copied().filter(|&b| self.is_special(b));
                if after.first().copied() == bos && bos.is_some() {
                    after.remove(0);
                }
                (before, after)
            }
        };
        let placeholder = self.image_token_id.unwrap_or(0);
        let start = before.len();
        let mut ids = before;
        ids.extend(std::iter::repeat_n(placeholder, visual_tokens));
        ids.extend(after);
        Ok(PromptTokens { ids, image_span: Some(start..start + visual_tokens) })
    }

    /// Encodes training segments (see `ChatTemplate::training_segments`): the first segment like a
    /// prompt (special tokens, image placeholder), later ones as plain continuations. Returns the
    /// tokens and, per token, whether it belongs to a trained segment.
    pub fn encode_segments(&self, segments: &[Segment], visual_tokens: usize) -> Result<(PromptTokens, Vec<bool>)> {
        let mut tokens = PromptTokens { ids: Vec::new(), image_span: None };
        let mut trained = Vec::new();
        for (index, segment) in segments.iter().enumerate() {
            let ids = if index == 0 {
                tokens = self.encode(&segment.text, visual_tokens)?;
                tokens.ids.len()
            } else {
                if segment.text.contains(IMAGE_PLACEHOLDER) {
                    return Err(BackboneError::Prompt(format!(
                        "{IMAGE_PLACEHOLDER} may only appear in the first user turn"
                    )));
                }
                let ids = self
                    .tokenizer
                    .encode(segment.text.as_str(), false)
                    .map_err(|e| BackboneError::Tokenizer(e.to_string()))?;
                tokens.ids.extend_from_slice(ids.get_ids());
                ids.len()
            };
            trained.extend(std::iter::repeat_n(segment.trained, ids));
        }
        Ok((tokens, trained))
    }

    fn is_special(&self, id: u32) -> bool {
        self.tokenizer.get_added_vocabulary().get_added_tokens_decoder().get(&id).is_some_and(|t| t.special)
    }

    /// Decodes ids to text, skipping special tokens.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer.decode(ids, true).map_err(|e| BackboneError::Tokenizer(e.to_string()))
    }
}

/// `span` of `text` without the image placeholders in it.
fn without_placeholder(text: &str, span: Range<usize>) -> Vec<Range<usize>> {
    let mut pieces = Vec::new();
    let mut at = span.start;
    for (offset, _) in text[span.clone()].match_indices(IMAGE_PLACEHOLDER) {
        pieces.push(at..span.start + offset);
        at = span.start + offset + IMAGE_PLACEHOLDER.len();
    }
    pieces.push(at..span.end);
    pieces.retain(|piece| !piece.is_empty());
    pieces
}

/// Turns a growing list of generated ids into text pieces that can be printed as they come,
/// holding back bytes that do not yet form complete characters. Only a short window is decoded
/// per token (the last emitted tokens serve as context for leading-space rules), so streaming stays
/// linear in the output length.
#[derive(Debug, Default)]
pub struct TextStream {
    ids: Vec<u32>,
    /// Start of the context window.
    prefix: usize,
    /// End of what has been emitted.
    read: usize,
}

impl TextStream {
    /// Adds one id and returns the newly completed text, if any.
    pub fn push(&mut self, tokenizer: &PromptTokenizer, id: u32) -> Result<String> {
        self.ids.push(id);
        let context = tokenizer.decode(&self.ids[self.prefix..self.read])?;
        let text = tokenizer.decode(&self.ids[self.prefix..])?;
        if text.ends_with('\u{FFFD}') {
            return Ok(String::new());
        }
        match text.strip_prefix(context.as_str()) {
            Some(piece) if !piece.is_empty() => {
                let piece = piece.to_string();
                self.prefix = self.read;
                self.read = self.ids.len();
                Ok(piece)
            }
            _ => Ok(String::new()),
        }
    }
}
