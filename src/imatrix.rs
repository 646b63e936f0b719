//! Importance matrices: for every weight matrix, how large the inputs that meet it are, per
//! input column (the sum of squared inputs and how many rows were summed), measured on
//! calibration text. The weighted quantizers (`rgemma_quant::quantize_row_weighted`) spend
//! their precision where those inputs are large.
//!
//! Files interoperate with llama.cpp (its `tools/imatrix` and `common/imatrix-loader`):
//! - **GGUF** (its current format): `general.type = "imatrix"`, `imatrix.datasets` (string
//!   array), `imatrix.chunk_count` and `imatrix.chunk_size` (u32), and per matrix `NAME` two
//!   F32 tensors, `NAME.in_sum2` with dims `[cols, n_mat]` (the raw sums) and `NAME.counts`
//!   with dims `[1, n_mat]` (rows summed per matrix), in name order; as ggml records dims,
//!   trailing 1s are dropped (`[cols]` and `[1]` for a single matrix).
//! - **legacy `.dat`**: i32 entry count; per entry an i32-length name, i32 `ncall`, i32
//!   `nval`, then `nval` f32 holding `sum / count · ncall`; then an optional i32 chunk count
//!   and an i32-length dataset name.
//!
//! A weight of `n_mat` matrices is the block-diagonal RG-LRU gates (one matrix per block, each
//! reading its own slice of the input); every other weight is one matrix. The tied embedding
//! is collected from the output head's inputs, under `token_embd.weight`.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use rgemma_quant::GgmlType;

use crate::gguf::{GgufFile, GgufWriter, MetaArray, MetaValue, TensorSpec, GGUF_MAGIC};
use crate::model::{MatmulInput, MatmulObserver};
use crate::{Error, Result};

/// One weight's statistics.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// Columns of one matrix (the weight's row length).
    pub cols: usize,
    /// `n_mat * cols` values: for matrix `m`, column `j`, `sums[m * cols + j]`. Raw sums of
    /// squared inputs (GGUF), or `sum / count · ncall` from a legacy file (then `counts`
    /// holds `ncall`), so that `sums / counts` is the mean square either way.
    pub sums: Vec<f32>,
    /// Rows summed into each matrix (legacy files: `ncall` for every matrix).
    pub counts: Vec<u64>,
}

impl Entry {
    pub fn n_mat(&self) -> usize {
        self.counts.len()
    }

    /// The quantizer's weights of matrix `m`: the mean square of each column's inputs, as
    /// llama-quantize forms them (1 for every column of a matrix that saw no rows).
    pub fn weights(&self, m: usize) -> Vec<f32> {
        let sums = &self.sums[m * self.cols..(m + 1) * self.cols];
        let count = self.counts[m] as f32;
        if count > 0.0 {
            sums.iter().map(|s| s / count).collect()
        } else {
            vec![1.0; self.cols]
        }
    }
}

/// An importance matrix: entries by weight name plus where they came from.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Imatrix {
    pub entries: BTreeMap<String, Entry>,
    /// Calibration files (their paths as given).
    pub datasets: Vec<String>,
    /// Chunks of calibration text processed.
    pub chunk_count: u32,
    /// Tokens per chunk (0 when unknown: legacy files).
    pub chunk_size: u32,
    /// Read from a legacy `.dat` file.
    pub legacy: bool,
}

const KEY_DATASETS: &str = "imatrix.datasets";
const KEY_CHUNK_COUNT: &str = "imatrix.chunk_count";
const KEY_CHUNK_SIZE: &str = "imatrix.chunk_size";
const SUMS: &str = ".in_sum2";
const COUNTS: &str = ".counts";

impl Imatrix {
    /// Writes llama.cpp's GGUF imatrix format (see the module doc).
    pub fn write_gguf(&self, path: &Path) -> Result<()> {
        let metadata = vec![
            (
                "general.type".to_string(),
                MetaValue::String("imatrix".into()),
            ),
            (
                KEY_DATASETS.to_string(),
                MetaValue::Array(MetaArray::String(self.datasets.clone())),
            ),
            (
                KEY_CHUNK_COUNT.to_string(),
                MetaValue::U32(self.chunk_count),
            ),
            (KEY_CHUNK_SIZE.to_string(), MetaValue::U32(self.chunk_size)),
        ];
        let mut specs = Vec::new();
        // Dims as ggml records them (trailing 1s dropped), as llama-imatrix's files have.
        let trim = |mut dims: Vec<u64>| {
            while dims.len() > 1 && dims.last() == Some(&1) {
                dims.pop();
            }
            dims
        };
        for (name, e) in &self.entries {
            let n_mat = e.n_mat() as u64;
            specs.push(TensorSpec {
                name: format!("{name}{SUMS}"),
                ty: GgmlType::F32,
                dims: trim(vec![e.cols as u64, n_mat]),
            });
            specs.push(TensorSpec {
                name: format!("{name}{COUNTS}"),
                ty: GgmlType::F32,
                dims: trim(vec![1, n_mat]),
            });
        }
        let mut w = GgufWriter::create(path, &metadata, &specs)?;
        for e in self.entries.values() {
            w.write_tensor_data(&f32_bytes(&e.sums))?;
            let counts: Vec<f32> = e.counts.iter().map(|&c| c as f32).collect();
            w.write_tensor_data(&f32_bytes(&counts))?;
        }
        w.finish()?;
        Ok(())
    }

    /// Writes llama.cpp's legacy `.dat` format (see the module doc): values are stored as
    /// `sum / count · ncall` with `ncall` the chunks a matrix saw (rounded up), as
    /// llama-imatrix does; a matrix that saw no rows stores 1s.
    pub fn write_dat(&self, path: &Path) -> Result<()> {
        let chunk = self.chunk_size.max(1) as u64;
        let mut out = Vec::new();
        out.extend((self.entries.len() as i32).to_le_bytes());
        for (name, e) in &self.entries {
            out.extend((name.len() as i32).to_le_bytes());
            out.extend(name.as_bytes());
            let max = e.counts.iter().copied().max().unwrap_or(0);
            let ncall = max.div_ceil(chunk) as i32;
            out.extend(ncall.to_le_bytes());
            out.extend((e.sums.len() as i32).to_le_bytes());
            for (i, &s) in e.sums.iter().enumerate() {
                let count = e.counts[i / e.cols] as f32;
                let v = if count == 0.0 { 1.0 } else { s / count };
                out.extend((v * ncall as f32).to_le_bytes());
            }
        }
        out.extend((self.chunk_count as i32).to_le_bytes());
        let dataset = self.datasets.last().map_or("", String::as_str);
        out.extend((dataset.len() as i32).to_le_bytes());
        out.extend(dataset.as_bytes());
        write_atomically(path, &out)
    }

    /// Reads either format (GGUF when the file starts with its magic).
    pub fn read(path: &Path) -> Result<Imatrix> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let what = |why: String| Error::Format(format!("{}: {why}", path.display()));
        if bytes.len() >= 4
            && u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) == GGUF_MAGIC
        {
            let g = GgufFile::from_bytes(bytes).map_err(|e| what(e.to_string()))?;
            Imatrix::from_gguf(&g).map_err(what)
        } else {
            Imatrix::from_dat(&bytes).map_err(what)
        }
    }

    fn from_gguf(g: &GgufFile) -> std::result::Result<Imatrix, String> {
        match g.get_str("general.type") {
            Ok("imatrix") => {}
            Ok(other) => return Err(format!("not an imatrix (a GGUF of type '{other}')")),
            Err(_) => {
                return Err("not an imatrix (a GGUF without general.type = \"imatrix\")".into())
            }
        }
        let mut m = Imatrix {
            datasets: g
                .get_str_array(KEY_DATASETS)
                .map(<[String]>::to_vec)
                .unwrap_or_default(),
            chunk_count: g.get_u32(KEY_CHUNK_COUNT).unwrap_or(0),
            chunk_size: g.get_u32(KEY_CHUNK_SIZE).unwrap_or(0),
            ..Default::default()
        };
        let f32s = |name: &str| -> std::result::Result<(Vec<f32>, Vec<u64>), String> {
            let t = g.tensor(name).ok_or_else(|| format!("{name} is missing"))?;
            // ggml records a tensor's dims up to its last one above 1: [cols] for one matrix.
            if t.ty != GgmlType::F32 || t.dims.is_empty() || t.dims.len() > 2 {
                return Err(format!("{name} must be a 1-D or 2-D F32 tensor"));
            }
            let v = g
                .tensor_data(t)
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            Ok((v, vec![t.dims[0], t.dims.get(1).copied().unwrap_or(1)]))
        };
        for t in g.tensors() {
            let Some(name) = t.name.strip_suffix(SUMS) else {
                if !t.name.ends_with(COUNTS) {
                    return Err(format!("unexpected tensor {}", t.name));
                }
                continue;
            };
            let (sums, dims) = f32s(&t.name)?;
            let (counts, cdims) = f32s(&format!("{name}{COUNTS}"))?;
            if cdims != [1, dims[1]] {
                return Err(format!(
                    "{name}: {} counts for {} matrices",
                    counts.len(),
                    dims[1]
                ));
            }
            if let Some(bad) = sums.iter().chain(&counts).find(|v| !v.is_finite()) {
                return Err(format!("{name}: non-finite value {bad}"));
            }
            if counts.iter().any(|&c| c < 0.0) {
                return Err(format!("{name}: negative count"));
            }
            let entry = Entry {
                cols: dims[0] as usize,
                sums,
                counts: counts.iter().map(|&c| c.round() as u64).collect(),
            };
            m.entries.insert(name.to_string(), entry);
        }
        if m.entries.is_empty() {
            return Err("no entries".into());
        }
        Ok(m)
    }

    fn from_dat(bytes: &[u8]) -> std::result::Result<Imatrix, String> {
        let mut r = Cursor { bytes, pos: 0 };
        let n = r.i32()?;
        if n < 1 {
            return Err("not an imatrix file (neither GGUF nor a legacy .dat with entries)".into());
        }
        let mut m = Imatrix {
            legacy: true,
            ..Default::default()
        };
        for i in 0..n {
            let name = r.string().map_err(|e| format!("entry {}: {e}", i + 1))?;
            let ncall = r.i32()?;
            let nval = r.i32()?;
            if nval < 1 || ncall < 0 {
                return Err(format!("{name}: {nval} values, {ncall} calls"));
            }
            let sums = (0..nval)
                .map(|_| r.f32())
                .collect::<std::result::Result<Vec<_>, _>>()?;
            if let Some(bad) = sums.iter().find(|v| !v.is_finite()) {
                return Err(format!("{name}: non-finite value {bad}"));
            }
            let entry = Entry {
                cols: nval as usize,
                sums,
                counts: vec![ncall as u64],
            };
            m.entries.insert(name, entry);
        }
        // The trailer (chunk count, dataset) is optional.
        if r.pos < bytes.len() {
            m.chunk_count = r.i32()?.max(0) as u32;
            if r.pos < bytes.len() {
                let dataset = r.string()?;
                if !dataset.is_empty() {
                    m.datasets.push(dataset);
                }
            }
        }
        Ok(m)
    }
}

/// A legacy entry is one row of `nval` values whatever the weight's matrices; this gives the
/// weights of matrix `m` of a weight with rows of `cols` values (a legacy entry for an
/// `n_mat` weight holds `n_mat * cols` values), or why the entry does not fit.
pub fn matrix_weights(
    e: &Entry,
    cols: usize,
    n_mat: usize,
    m: usize,
) -> std::result::Result<Vec<f32>, String> {
    let values = e.sums.len();
    if values != cols * n_mat {
        return Err(format!(
            "{values} values, the tensor needs {cols} columns × {n_mat} matrices"
        ));
    }
    if e.n_mat() == n_mat && e.cols == cols {
        return Ok(e.weights(m));
    }
    if e.n_mat() == 1 {
        // Legacy: one count for the whole flattened row.
        let flat = e.weights(0);
        return Ok(flat[m * cols..(m + 1) * cols].to_vec());
    }
    Err(format!("{} matrices, the tensor has {n_mat}", e.n_mat()))
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> std::result::Result<&[u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or_else(|| format!("truncated at byte {}", self.pos))?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn i32(&mut self) -> std::result::Result<i32, String> {
        let b = self.take(4)?;
        Ok(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn f32(&mut self) -> std::result::Result<f32, String> {
        Ok(f32::from_bits(self.i32()? as u32))
    }

    fn string(&mut self) -> std::result::Result<String, String> {
        let len = self.i32()?;
        if len < 0 {
            return Err(format!("negative name length {len}"));
        }
        let b = self.take(len as usize)?;
        String::from_utf8(b.to_vec()).map_err(|_| "a name is not UTF-8".into())
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Writes `bytes` to a temporary file beside `path` and renames it into place, so that a
/// failure never leaves a truncated file under the final name.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let result = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

/// Running sums of one weight (f64, so that millions of rows add without losing the small
/// ones; the file stores f32 as llama.cpp's does).
struct Acc {
    cols: usize,
    sums: Vec<f64>,
    counts: Vec<u64>,
}

/// Collects an importance matrix from the products a context runs: install it with
/// `Context::set_matmul_observer`, evaluate the calibration text, then take [`Collector::imatrix`].
#[derive(Default)]
pub struct Collector {
    acc: Mutex<HashMap<String, Acc>>,
}

impl Collector {
    pub fn new() -> Collector {
        Collector::default()
    }

    /// What has been collected so far, with its provenance.
    pub fn imatrix(&self, datasets: Vec<String>, chunk_count: u32, chunk_size: u32) -> Imatrix {
        let acc = self.acc.lock().unwrap_or_else(|e| e.into_inner());
        let entries = acc
            .iter()
            .map(|(name, a)| {
                let e = Entry {
                    cols: a.cols,
                    sums: a.sums.iter().map(|&s| s as f32).collect(),
                    counts: a.counts.clone(),
                };
                (name.clone(), e)
            })
            .collect();
        Imatrix {
            entries,
            datasets,
            chunk_count,
            chunk_size,
            legacy: false,
        }
    }
}

impl MatmulObserver for Collector {
    fn observe(&self, input: &MatmulInput<'_>) {
        let mut acc = self.acc.lock().unwrap_or_else(|e| e.into_inner());
        let width = input.n_mat * input.cols;
        let a = acc.entry(input.weight.to_string()).or_insert_with(|| Acc {
            cols: input.cols,
            sums: vec![0.0; width],
            counts: vec![0; input.n_mat],
        });
        if a.sums.len() != width {
            // One name, two shapes: cannot happen with one model; keep the first.
            return;
        }
        for t in 0..input.n_rows {
            let row = &input.x[t * input.x_stride..t * input.x_stride + width];
            for (s, &v) in a.sums.iter_mut().zip(row) {
                *s += (v as f64) * (v as f64);
            }
        }
        for c in a.counts.iter_mut() {
            *c += input.n_rows as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Imatrix {
        let mut m = Imatrix {
            datasets: vec!["calib.txt".into()],
            chunk_count: 3,
            chunk_size: 4,
            ..Default::default()
        };
        m.entries.insert(
            "blk.0.ffn_up.weight".into(),
            Entry {
                cols: 3,
                sums: vec![1.5, 0.25, 12.0],
                counts: vec![12],
            },
        );
        m.entries.insert(
            "blk.0.rg_a_gate.weight".into(),
            Entry {
                cols: 2,
                sums: vec![2.0, 4.0, 6.0, 8.0],
                counts: vec![12, 0],
            },
        );
        m
    }

    #[test]
    fn gguf_round_trips_and_dat_keeps_the_mean_squares() {
        let dir = std::env::temp_dir().join(format!("rg-imatrix-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let m = sample();
        let g = dir.join("m.gguf");
        m.write_gguf(&g).unwrap();
        assert_eq!(Imatrix::read(&g).unwrap(), m);

        let d = dir.join("m.dat");
        m.write_dat(&d).unwrap();
        let back = Imatrix::read(&d).unwrap();
        assert!(back.legacy);
        assert_eq!(back.chunk_count, 3);
        assert_eq!(back.datasets, m.datasets);
        for (name, e) in &m.entries {
            let b = &back.entries[name];
            for k in 0..e.n_mat() {
                let want = e.weights(k);
                let got = matrix_weights(b, e.cols, e.n_mat(), k).unwrap();
                for (x, y) in want.iter().zip(&got) {
                    assert!((x - y).abs() <= 1e-6 * x.abs(), "{name}[{k}]: {x} vs {y}");
                }
            }
        }
        // A matrix that saw no rows weighs every column 1.
        assert_eq!(
            m.entries["blk.0.rg_a_gate.weight"].weights(1),
            vec![1.0, 1.0]
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn bad_files_are_errors() {
        let dir = std::env::temp_dir().join(format!("rg-imatrix-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let m = sample();
        let d = dir.join("m.dat");
        m.write_dat(&d).unwrap();
        let full = std::fs::read(&d).unwrap();
        for cut in [0, 3, 4, 10, 30] {
            let p = dir.join(format!("cut{cut}.dat"));
            std::fs::write(&p, &full[..cut]).unwrap();
            assert!(Imatrix::read(&p).is_err(), "truncated at {cut}");
        }
        let mut nan = full.clone();
        // The first value of the first entry.
        let off = 4 + 4 + "blk.0.ffn_up.weight".len() + 8;
        nan[off..off + 4].copy_from_slice(&f32::NAN.to_le_bytes());
        std::fs::write(dir.join("nan.dat"), &nan).unwrap();
        let err = Imatrix::read(&dir.join("nan.dat")).unwrap_err().to_string();
        assert!(err.contains("non-finite"), "{err}");
        assert!(Imatrix::read(&dir.join("missing.dat")).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn the_collector_sums_squares_per_matrix_and_column() {
        let c = Collector::new();
        // Two rows of a 2-matrix weight with 2 columns each, stride 5.
        let x = [1.0, 2.0, 3.0, 4.0, 99.0, -1.0, 0.5, 0.0, 2.0, 99.0];
        c.observe(&MatmulInput {
            weight: "w",
            n_mat: 2,
            cols: 2,
            x: &x,
            x_stride: 5,
            n_rows: 2,
        });
        let m = c.imatrix(vec![], 1, 2);
        let e = &m.entries["w"];
        assert_eq!(e.sums, vec![2.0, 4.25, 9.0, 20.0]);
        assert_eq!(e.counts, vec![2, 2]);
        assert_eq!(e.weights(1), vec![4.5, 10.0]);
    }
}
