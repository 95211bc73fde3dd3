//! Writing f32 tensors to a safetensors file, atomically (temporary file + rename).

use std::path::Path;

use anyhow::Context;
use safetensors::tensor::TensorView;
use safetensors::Dtype;

pub fn write_tensors(path: &Path, entries: &[(&str, Vec<f32>, Vec<usize>)]) -> anyhow::Result<()> {
    let bytes: Vec<Vec<u8>> = entries.iter().map(|(_, v, _)| v.iter().flat_map(|x| x.to_le_bytes()).collect()).collect();
    let views = entries
        .iter()
        .zip(&bytes)
        .map(|((name, _, shape), data)| Ok((*name, TensorView::new(Dtype::F32, shape.clone(), data)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let tmp = path.with_extension("safetensors.tmp");
    safetensors::serialize_to_file(views, None, &tmp).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(())
}
