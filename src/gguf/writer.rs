//! Atomic, streaming GGUF v3 writer.
//!
//! Layout (what ggml's loader demands, and what gguf-py's `GGUFWriter` produces): header,
//! metadata, tensor infos, zero padding to the alignment, then each tensor's bytes followed by
//! zero padding to the alignment (the last tensor included). Tensor offsets are the running
//! sum of the padded sizes in info order.
//!
//! Atomicity: everything goes to `.NAME.tmpXXXXXXXX` in the target directory; `finish`
//! flushes, fsyncs and renames it onto the final name. Any other way out (an error, a drop)
//! removes the temporary file, so the final name only ever holds a complete file.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::reader::{tensor_size, MAX_DIMS, MAX_TENSOR_NAME_LEN};
use super::{GgufError, MetaArray, MetaValue, DEFAULT_ALIGNMENT, GGUF_MAGIC, GGUF_VERSION};
use rgemma_quant::GgmlType;

/// A tensor to be written: name, type and dims in GGUF order (innermost first).
#[derive(Clone, Debug, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub ty: GgmlType,
    pub dims: Vec<u64>,
}

impl TensorSpec {
    /// Size in bytes, or why the dims do not describe a tensor of this type.
    pub fn size(&self) -> Result<u64, GgufError> {
        tensor_size(self.ty, &self.dims)
            .map_err(|why| GgufError::Write(format!("tensor {} ({}): {why}", self.name, self.ty)))
    }
}

/// Writes a GGUF file to a temporary file beside `path`; [`GgufWriter::finish`] fsyncs and
/// renames it into place. Dropping the writer before `finish` removes the temporary file.
pub struct GgufWriter {
    /// `None` once finished (or after a failure that already closed it).
    out: Option<BufWriter<File>>,
    temp_path: PathBuf,
    final_path: PathBuf,
    alignment: u64,
    /// Byte size of each tensor, in order.
    sizes: Vec<u64>,
    names: Vec<String>,
    /// How many tensors have been written.
    written: usize,
    /// Bytes of the next tensor written so far by [`GgufWriter::write_tensor_part`].
    part_written: u64,
    /// Set after a failed write: the file content is unknown, so `finish` must refuse.
    failed: bool,
    renamed: bool,
}

/// Distinguishes temporary files made by one process in the same directory at the same time.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl GgufWriter {
    /// Creates the temporary file and writes the header, the metadata (in the given order;
    /// `general.alignment` is added if absent) and the tensor infos with offsets that are the
    /// running sum of 32-aligned sizes. Refuses duplicate or over-long tensor names.
    pub fn create(
        path: impl AsRef<Path>,
        metadata: &[(String, MetaValue)],
        tensors: &[TensorSpec],
    ) -> Result<GgufWriter, GgufError> {
        let final_path = path.as_ref().to_path_buf();
        let alignment = check_metadata(metadata)?;
        let sizes = check_tensors(tensors)?;

        let (file, temp_path) = create_temp_beside(&final_path)?;
        // From here on, dropping `writer` (also through `?`) removes the temporary file.
        let mut writer = GgufWriter {
            out: Some(BufWriter::with_capacity(1 << 20, file)),
            temp_path,
            final_path,
            alignment,
            sizes,
            names: tensors.iter().map(|t| t.name.clone()).collect(),
            written: 0,
            part_written: 0,
            failed: false,
            renamed: false,
        };
        let add_alignment = !metadata.iter().any(|(k, _)| k == "general.alignment");
        let mut head = Vec::new();
        head.extend(GGUF_MAGIC.to_le_bytes());
        head.extend(GGUF_VERSION.to_le_bytes());
        head.extend((tensors.len() as u64).to_le_bytes());
        head.extend((metadata.len() as u64 + add_alignment as u64).to_le_bytes());
        for (key, value) in metadata {
            encode_string(&mut head, key);
            encode_value(&mut head, value);
        }
        if add_alignment {
            encode_string(&mut head, "general.alignment");
            encode_value(&mut head, &MetaValue::U32(DEFAULT_ALIGNMENT as u32));
        }
        let mut offset = 0u64;
        for (spec, &size) in tensors.iter().zip(&writer.sizes) {
            encode_string(&mut head, &spec.name);
            head.extend((spec.dims.len() as u32).to_le_bytes());
            for d in &spec.dims {
                head.extend(d.to_le_bytes());
            }
            head.extend(spec.ty.id().to_le_bytes());
            head.extend(offset.to_le_bytes());
            offset = offset
                .checked_add(padded(size, alignment))
                .ok_or_else(|| GgufError::Write("total tensor data size overflows".into()))?;
        }
        let pad = padding(head.len() as u64, alignment);
        head.resize(head.len() + pad as usize, 0);
        writer.write_all(&head)?;
        Ok(writer)
    }

    /// Writes the next tensor's bytes (tensors in the order given to `create`); the length
    /// must equal that tensor's size. Padding is added by the writer.
    pub fn write_tensor_data(&mut self, bytes: &[u8]) -> Result<(), GgufError> {
        if self.part_written != 0 {
            self.failed = true;
            return Err(GgufError::Write(format!(
                "tensor {}: a whole tensor was written after {} bytes of it",
                self.names[self.written], self.part_written
            )));
        }
        let size = self.next_size()?;
        if bytes.len() as u64 != size {
            self.failed = true;
            return Err(GgufError::Write(format!(
                "tensor {}: got {} bytes, expected {size}",
                self.names[self.written],
                bytes.len()
            )));
        }
        self.write_tensor_part(bytes)
    }

    /// Writes the next part of the next tensor, so that a large tensor never has to be in
    /// memory whole; once the parts add up to the tensor's size it is padded and the next
    /// tensor begins. A part that runs past the tensor's end is an error.
    pub fn write_tensor_part(&mut self, bytes: &[u8]) -> Result<(), GgufError> {
        let size = self.next_size()?;
        let end = self.part_written + bytes.len() as u64;
        if end > size {
            self.failed = true;
            return Err(GgufError::Write(format!(
                "tensor {}: {end} bytes written, expected {size}",
                self.names[self.written]
            )));
        }
        self.write_all(bytes)?;
        self.part_written = end;
        if end == size {
            let pad = padding(size, self.alignment) as usize;
            self.write_all(&vec![0u8; pad])?;
            self.written += 1;
            self.part_written = 0;
        }
        Ok(())
    }

    /// The size of the tensor being written; an error when every tensor is written.
    fn next_size(&mut self) -> Result<u64, GgufError> {
        match self.sizes.get(self.written) {
            Some(&size) => Ok(size),
            None => {
                self.failed = true;
                Err(GgufError::Write(format!(
                    "all {} tensors were already written",
                    self.sizes.len()
                )))
            }
        }
    }

    /// Checks every tensor was written, fsyncs, renames the temporary file to the final path.
    pub fn finish(mut self) -> Result<(), GgufError> {
        if self.failed {
            return Err(GgufError::Write(
                "an earlier write failed; file not written".into(),
            ));
        }
        if self.written != self.sizes.len() {
            return Err(GgufError::Write(format!(
                "only {} of {} tensors were written",
                self.written,
                self.sizes.len()
            )));
        }
        let out = self
            .out
            .take()
            .ok_or_else(|| GgufError::Write("writer is closed".into()))?;
        let file = out.into_inner().map_err(|e| self.io(e.into_error()))?;
        file.sync_all().map_err(|e| self.io(e))?;
        drop(file);
        std::fs::rename(&self.temp_path, &self.final_path).map_err(|e| self.io(e))?;
        self.renamed = true;
        // Make the rename itself durable; failure here does not undo a complete file.
        if let Some(dir) = self.final_path.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }

    fn write_all(&mut self, bytes: &[u8]) -> Result<(), GgufError> {
        let result = match self.out.as_mut() {
            Some(out) => out.write_all(bytes),
            None => return Err(GgufError::Write("writer is closed".into())),
        };
        result.map_err(|e| {
            self.failed = true;
            self.io(e)
        })
    }

    fn io(&self, source: std::io::Error) -> GgufError {
        GgufError::Io {
            path: self.temp_path.clone(),
            source,
        }
    }
}

impl Drop for GgufWriter {
    fn drop(&mut self) {
        if !self.renamed {
            drop(self.out.take());
            let _ = std::fs::remove_file(&self.temp_path);
        }
    }
}

/// Creates `.NAME.tmpXXXXXXXX` next to `path` (never overwriting an existing file).
fn create_temp_beside(path: &Path) -> Result<(File, PathBuf), GgufError> {
    let io = |source| GgufError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file_name = path.file_name().ok_or_else(|| {
        GgufError::Write(format!("{}: output path has no file name", path.display()))
    })?;
    let dir = path.parent().unwrap_or(Path::new(""));
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ ((std::process::id() as u64) << 32);
    for _ in 0..100 {
        let n = seed.wrapping_add(
            TEMP_COUNTER
                .fetch_add(1, Ordering::Relaxed)
                .wrapping_mul(0x9e37_79b9),
        );
        let mut name = std::ffi::OsString::from(".");
        name.push(file_name);
        name.push(format!(".tmp{:08x}", n as u32));
        let temp = dir.join(name);
        match OpenOptions::new().write(true).create_new(true).open(&temp) {
            Ok(f) => return Ok((f, temp)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io(e)),
        }
    }
    Err(io(std::io::Error::new(
        std::io::ErrorKind::AlreadyExists,
        "no free temporary file name",
    )))
}

/// Validates keys and `general.alignment`; returns the alignment to use.
fn check_metadata(metadata: &[(String, MetaValue)]) -> Result<u64, GgufError> {
    let mut seen = std::collections::HashSet::new();
    let mut alignment = DEFAULT_ALIGNMENT;
    for (key, value) in metadata {
        if !seen.insert(key.as_str()) {
            return Err(GgufError::Write(format!("duplicate metadata key {key}")));
        }
        if key == "general.alignment" {
            alignment = match value {
                MetaValue::U32(a) if a.is_power_of_two() => *a as u64,
                other => {
                    return Err(GgufError::Write(format!(
                        "general.alignment must be a u32 power of two, got {other:?}"
                    )))
                }
            };
        }
    }
    Ok(alignment)
}

/// Validates names and dims; returns each tensor's byte size.
fn check_tensors(tensors: &[TensorSpec]) -> Result<Vec<u64>, GgufError> {
    let mut seen = std::collections::HashSet::new();
    let mut sizes = Vec::with_capacity(tensors.len());
    for t in tensors {
        if t.name.len() > MAX_TENSOR_NAME_LEN {
            return Err(GgufError::Write(format!(
                "tensor name {:?} is {} bytes (max {MAX_TENSOR_NAME_LEN})",
                t.name,
                t.name.len()
            )));
        }
        if !seen.insert(t.name.as_str()) {
            return Err(GgufError::Write(format!(
                "duplicate tensor name {}",
                t.name
            )));
        }
        if t.dims.len() > MAX_DIMS {
            return Err(GgufError::Write(format!(
                "tensor {}: {} dimensions (max {MAX_DIMS})",
                t.name,
                t.dims.len()
            )));
        }
        sizes.push(t.size()?);
    }
    Ok(sizes)
}

fn padding(n: u64, alignment: u64) -> u64 {
    (alignment - n % alignment) % alignment
}

fn padded(n: u64, alignment: u64) -> u64 {
    n + padding(n, alignment)
}

fn encode_string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn encode_value(out: &mut Vec<u8>, value: &MetaValue) {
    out.extend(value.meta_type().id().to_le_bytes());
    match value {
        MetaValue::U8(v) => out.push(*v),
        MetaValue::I8(v) => out.push(*v as u8),
        MetaValue::U16(v) => out.extend(v.to_le_bytes()),
        MetaValue::I16(v) => out.extend(v.to_le_bytes()),
        MetaValue::U32(v) => out.extend(v.to_le_bytes()),
        MetaValue::I32(v) => out.extend(v.to_le_bytes()),
        MetaValue::F32(v) => out.extend(v.to_le_bytes()),
        MetaValue::Bool(v) => out.push(*v as u8),
        MetaValue::String(s) => encode_string(out, s),
        MetaValue::U64(v) => out.extend(v.to_le_bytes()),
        MetaValue::I64(v) => out.extend(v.to_le_bytes()),
        MetaValue::F64(v) => out.extend(v.to_le_bytes()),
        MetaValue::Array(a) => encode_array(out, a),
    }
}

fn encode_array(out: &mut Vec<u8>, array: &MetaArray) {
    out.extend(array.elem_type().id().to_le_bytes());
    out.extend((array.len() as u64).to_le_bytes());
    macro_rules! each {
        ($v:expr) => {
            for x in $v {
                out.extend(x.to_le_bytes());
            }
        };
    }
    match array {
        MetaArray::U8(v) => out.extend(v),
        MetaArray::I8(v) => out.extend(v.iter().map(|&x| x as u8)),
        MetaArray::U16(v) => each!(v),
        MetaArray::I16(v) => each!(v),
        MetaArray::U32(v) => each!(v),
        MetaArray::I32(v) => each!(v),
        MetaArray::F32(v) => each!(v),
        MetaArray::Bool(v) => out.extend(v.iter().map(|&x| x as u8)),
        MetaArray::String(v) => {
            for s in v {
                encode_string(out, s);
            }
        }
        MetaArray::U64(v) => each!(v),
        MetaArray::I64(v) => each!(v),
        MetaArray::F64(v) => each!(v),
    }
}
