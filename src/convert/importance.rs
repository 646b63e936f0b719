//! `rg-quantize --imatrix`: matches an importance matrix (`crate::imatrix`) to the tensors of
//! the model being converted, refuses one made for another model, and gives each tensor the
//! per-row weights its quantizer uses, plus the `quantize.imatrix.*` provenance keys that
//! llama-quantize writes.

use std::path::Path;

use rgemma_quant::GgmlType;

use super::plan::PlannedTensor;
use super::stream::RowWeights;
use crate::gguf::MetaValue;
use crate::imatrix::{matrix_weights, Imatrix};
use crate::{Error, Result};

/// Matrices in `p` that read separate input slices: the blocks of a 3-D (block-diagonal)
/// tensor, else 1.
fn n_mat(p: &PlannedTensor) -> usize {
    if p.shape.len() == 3 {
        (p.shape[0] as usize).max(1)
    } else {
        1
    }
}

/// An importance matrix checked against a model's tensors.
pub struct Importance {
    imatrix: Imatrix,
    path: String,
}

impl Importance {
    /// Reads `path` and checks it against `plan`: every entry that names a tensor of the model
    /// must have that tensor's shape, and at least one entry must name one (otherwise the file
    /// was made for another model). Entries for names the model lacks are reported in
    /// `warnings` (llama-quantize ignores them too).
    pub fn load(path: &Path, plan: &[PlannedTensor], warnings: &mut Vec<String>) -> Result<Self> {
        let imatrix = Imatrix::read(path)?;
        let shown = path.display();
        let mut matched = 0usize;
        let mut unknown = Vec::new();
        for (name, e) in &imatrix.entries {
            let Some(p) = plan.iter().find(|p| &p.name == name) else {
                unknown.push(name.as_str());
                continue;
            };
            let cols = p.row_len() as usize;
            matrix_weights(e, cols, n_mat(p), 0).map_err(|why| {
                Error::InvalidArgument(format!(
                    "imatrix {shown}: entry {name}: {why} (shape {:?}); was it made for another model?",
                    p.shape
                ))
            })?;
            matched += 1;
        }
        if matched == 0 {
            return Err(Error::InvalidArgument(format!(
                "imatrix {shown}: none of its {} entries names a tensor of this model (first: {}); \
                 it was made for another model",
                imatrix.entries.len(),
                imatrix.entries.keys().next().map_or("none", String::as_str)
            )));
        }
        if !unknown.is_empty() {
            warnings.push(format!(
                "imatrix {shown}: {} entries name no tensor of this model (first: {}); ignored",
                unknown.len(),
                unknown[0]
            ));
        }
        Ok(Importance {
            imatrix,
            path: path.display().to_string(),
        })
    }

    /// The weights for `p` quantized as `ty`, or `None` when `ty` has no weighted quantizer
    /// (Q8_0 and the float types: ggml ignores importance there too) or the file has no entry
    /// for `p` (then a warning is added and `p` is quantized without weights).
    pub fn weights_for(
        &self,
        p: &PlannedTensor,
        ty: GgmlType,
        warnings: &mut Vec<String>,
    ) -> Option<RowWeights> {
        if !rgemma_quant::can_quantize_weighted(ty) {
            return None;
        }
        let Some(e) = self.imatrix.entries.get(&p.name) else {
            warnings.push(format!(
                "no imatrix entry for {} ({ty}): quantized without importance weights",
                p.name
            ));
            return None;
        };
        let (cols, mats) = (p.row_len() as usize, n_mat(p));
        let rows = (p.n_elements() / p.row_len().max(1)) as usize;
        let per_mat = (0..mats)
            .map(|m| matrix_weights(e, cols, mats, m).expect("shape checked by load"))
            .collect();
        Some(RowWeights::new(per_mat, rows / mats.max(1)))
    }

    /// llama-quantize's provenance keys: the imatrix file, its first dataset, the number of
    /// entries and of chunks it was computed on.
    pub fn metadata(&self) -> Vec<(String, MetaValue)> {
        let mut kv = vec![(
            "quantize.imatrix.file".to_string(),
            MetaValue::String(self.path.clone()),
        )];
        if let Some(d) = self.imatrix.datasets.first() {
            kv.push((
                "quantize.imatrix.dataset".to_string(),
                MetaValue::String(d.clone()),
            ));
        }
        kv.push((
            "quantize.imatrix.entries_count".to_string(),
            MetaValue::I32(self.imatrix.entries.len() as i32),
        ));
        if self.imatrix.chunk_count > 0 {
            kv.push((
                "quantize.imatrix.chunks_count".to_string(),
                MetaValue::I32(self.imatrix.chunk_count as i32),
            ));
        }
        kv
    }
}
