//! Checkpoint reading: files → [`TensorSource`], key layouts → [`layout::CheckpointLayout`],
//! tensors → burn modules via [`WeightLoader`].

pub mod export;
pub mod layout;
pub mod loader;
pub mod parts;
pub mod source;
pub mod writer;

pub use export::hf_tensors;
pub use layout::CheckpointLayout;
pub use loader::{LoadReport, WeightLoader};
pub use parts::{load_projector, load_vision_tower, save_projector, save_vision_tower};
pub use source::TensorSource;
pub use writer::{write_safetensors, NamedTensor, StorageDtype};
