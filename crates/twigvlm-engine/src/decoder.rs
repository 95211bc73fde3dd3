//! Which network generates an answer.

use serde_with::{DeserializeFromStr, SerializeDisplay};
use strum::{Display, EnumMessage, EnumString, VariantArray};

/// Which network generates the answer.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Display,
    EnumString,
    VariantArray,
    EnumMessage,
    SerializeDisplay,
    DeserializeFromStr,
)]
#[strum(serialize_all = "kebab-case")]
pub enum DecoderKind {
    /// The base model alone.
    #[default]
    Base,
    /// The twig's shallow network alone (base layers below K, then the twig): the twig's own
    /// quality, and what the speculative decoder drafts with.
    TwigOnly,
    /// Self-speculative decoding: the twig drafts, the base verifies; the base's output
    /// (greedy: the same tokens; sampling: the same distribution, by speculative sampling) in
    /// fewer base forwards when the twig agrees with it.
    Ssd,
}

impl DecoderKind {
    /// Whether this decoder runs the twig.
    pub fn needs_twig(self) -> bool {
        self != DecoderKind::Base
    }
}

#[cfg(test)]
mod tests {
    use strum::VariantArray;

    use super::*;

    #[test]
    fn decoder_names_round_trip_through_text_and_json() {
        for &decoder in DecoderKind::VARIANTS {
            assert_eq!(decoder.to_string().parse::<DecoderKind>().unwrap(), decoder);
            let json = serde_json::to_string(&decoder).unwrap();
            assert_eq!(json, format!("\"{decoder}\""));
        }
        assert_eq!(DecoderKind::TwigOnly.to_string(), "twig-only");
        assert!("fast".parse::<DecoderKind>().is_err());
    }
}
