//! GGUF (llama.cpp) checkpoints: the file reader with dequantisation to f32, tokenizer conversion,
//! and the import of a Llama into a HF-style model directory.

pub mod dequant;
pub mod import;
pub mod reader;
pub mod tokenizer;

pub use dequant::GgmlType;
pub use import::{import_gguf, ImportDtype, ImportSummary};
pub use reader::{GgufFile, GgufTensorInfo, MetadataValue};
