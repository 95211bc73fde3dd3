//! GGUF (llama.cpp) checkpoints: the file reader with dequantisation to f32.

pub mod dequant;
pub mod reader;

pub use dequant::GgmlType;
pub use reader::{GgufFile, GgufTensorInfo, MetadataValue};
