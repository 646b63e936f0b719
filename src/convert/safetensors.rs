//! A small, validating safetensors reader over a memory map, and the checkpoint view that
//! joins the shards of a sharded Hugging Face checkpoint.
//!
//! File layout: an 8-byte little-endian header length `n`, `n` bytes of JSON mapping each
//! tensor name to `{dtype, shape, data_offsets: [begin, end]}` (offsets relative to the
//! byte after the header), then the data. Every entry is checked against the file size with
//! checked arithmetic when the file is opened, so later slicing cannot go out of bounds.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use serde_json::Value;

use crate::{Error, Result};

/// Headers larger than this are refused (real ones are a few hundred KiB).
const MAX_HEADER_LEN: u64 = 100 << 20;

/// Element types the converter reads. Others are recorded by name so the error can say
/// which tensor has which unsupported type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F16,
    BF16,
    Other(String),
}

impl Dtype {
    fn parse(s: &str) -> Dtype {
        match s {
            "F32" => Dtype::F32,
            "F16" => Dtype::F16,
            "BF16" => Dtype::BF16,
            other => Dtype::Other(other.to_string()),
        }
    }

    /// Bytes per element, or `None` for a type we do not know the size of.
    fn size(&self) -> Option<u64> {
        match self {
            Dtype::F32 => Some(4),
            Dtype::F16 | Dtype::BF16 => Some(2),
            Dtype::Other(s) => match s.as_str() {
                "F64" | "I64" | "U64" => Some(8),
                "I32" | "U32" => Some(4),
                "I16" | "U16" => Some(2),
                "I8" | "U8" | "BOOL" | "F8_E4M3" | "F8_E5M2" => Some(1),
                _ => None,
            },
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Dtype::F32 => "F32",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::Other(s) => s,
        }
    }
}

/// One tensor's header entry; `start..end` is the absolute byte range in the file.
#[derive(Clone, Debug)]
pub struct TensorEntry {
    pub dtype: Dtype,
    pub shape: Vec<u64>,
    pub start: usize,
    pub end: usize,
}

/// One memory-mapped safetensors file.
pub struct SafetensorsFile {
    path: PathBuf,
    map: Mmap,
    tensors: BTreeMap<String, TensorEntry>,
}

fn corrupt(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::Format(format!(
        "{}: corrupt safetensors file: {what}",
        path.display()
    ))
}

impl SafetensorsFile {
    pub fn open(path: &Path) -> Result<SafetensorsFile> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read-only; like every mmap reader we rely on nobody truncating
        // the checkpoint while we convert it (that would fault, not corrupt memory safety of
        // data we already validated).
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let tensors = parse_header(path, &map)?;
        Ok(SafetensorsFile {
            path: path.to_path_buf(),
            map,
            tensors,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file_size(&self) -> u64 {
        self.map.len() as u64
    }

    pub fn entry(&self, name: &str) -> Option<&TensorEntry> {
        self.tensors.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(|s| s.as_str())
    }

    /// The bytes of a tensor (validated at open).
    pub fn data(&self, entry: &TensorEntry) -> &[u8] {
        &self.map[entry.start..entry.end]
    }

    /// Tells the kernel that the whole pages inside `part` (a slice of this file's map,
    /// already consumed) are no longer needed, so the resident set stays near one window of
    /// one tensor instead of growing to the whole checkpoint. Best effort: slices of other
    /// memory and failures (e.g. a page size other than 4 KiB) are ignored.
    pub fn release(&self, part: &[u8]) {
        const PAGE: usize = 4096;
        let base = self.map.as_ptr() as usize;
        let start = part.as_ptr() as usize;
        if start < base || start + part.len() > base + self.map.len() {
            return;
        }
        let from = (start - base).div_ceil(PAGE) * PAGE;
        let to = (start - base + part.len()) / PAGE * PAGE;
        if to <= from {
            return;
        }
        #[cfg(unix)]
        {
            // SAFETY: MADV_DONTNEED on a read-only, file-backed shared mapping only drops
            // clean page-cache references; later reads fault the same bytes back in from the
            // file, so every slice into the map stays valid and unchanged.
            let _ = unsafe {
                self.map
                    .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, from, to - from)
            };
        }
    }
}

fn parse_header(path: &Path, map: &[u8]) -> Result<BTreeMap<String, TensorEntry>> {
    let file_len = map.len() as u64;
    if file_len < 8 {
        return Err(corrupt(
            path,
            format!("file is {file_len} bytes, shorter than the 8-byte header length"),
        ));
    }
    let header_len = u64::from_le_bytes(map[..8].try_into().expect("8 bytes"));
    if header_len > MAX_HEADER_LEN {
        return Err(corrupt(
            path,
            format!("header length {header_len} is larger than {MAX_HEADER_LEN}"),
        ));
    }
    let data_start = 8u64
        .checked_add(header_len)
        .filter(|&s| s <= file_len)
        .ok_or_else(|| {
            corrupt(
                path,
                format!("header length {header_len} runs past the end of the {file_len}-byte file"),
            )
        })?;
    let header: Value = serde_json::from_slice(&map[8..data_start as usize])
        .map_err(|e| corrupt(path, format!("header is not valid JSON: {e}")))?;
    let obj = header
        .as_object()
        .ok_or_else(|| corrupt(path, "header is not a JSON object"))?;
    let data_len = file_len - data_start;

    let mut tensors = BTreeMap::new();
    for (name, v) in obj {
        if name == "__metadata__" {
            continue;
        }
        let bad = |what: &str| corrupt(path, format!("tensor {name}: {what}"));
        let dtype = v
            .get("dtype")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("missing or non-string dtype"))?;
        let dtype = Dtype::parse(dtype);
        let shape: Vec<u64> = v
            .get("shape")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("missing shape"))?
            .iter()
            .map(|d| {
                d.as_u64()
                    .ok_or_else(|| bad("shape entry is not a non-negative integer"))
            })
            .collect::<Result<_>>()?;
        let offsets = v
            .get("data_offsets")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("missing data_offsets"))?;
        if offsets.len() != 2 {
            return Err(bad("data_offsets must have 2 entries"));
        }
        let begin = offsets[0]
            .as_u64()
            .ok_or_else(|| bad("data_offsets[0] is not an integer"))?;
        let end = offsets[1]
            .as_u64()
            .ok_or_else(|| bad("data_offsets[1] is not an integer"))?;
        if begin > end || end > data_len {
            return Err(bad(&format!(
                "data_offsets [{begin}, {end}] outside the {data_len}-byte data section"
            )));
        }
        let elem = dtype
            .size()
            .ok_or_else(|| bad(&format!("unknown dtype {}", dtype.name())))?;
        let bytes = shape
            .iter()
            .try_fold(elem, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| bad("shape size overflows"))?;
        if bytes != end - begin {
            return Err(bad(&format!(
                "shape {shape:?} of {} needs {bytes} bytes but data_offsets span {}",
                dtype.name(),
                end - begin
            )));
        }
        // Both fit in usize: they are at most the mapped length.
        let start = (data_start + begin) as usize;
        let end = (data_start + end) as usize;
        tensors.insert(
            name.clone(),
            TensorEntry {
                dtype,
                shape,
                start,
                end,
            },
        );
    }
    Ok(tensors)
}

/// All tensors of a Hugging Face checkpoint directory: `model.safetensors`, or the shards
/// listed in `model.safetensors.index.json`.
pub struct Checkpoint {
    files: Vec<SafetensorsFile>,
    /// Tensor name -> index into `files`.
    location: BTreeMap<String, usize>,
}

/// A tensor located in a checkpoint.
pub struct TensorRef<'a> {
    pub name: &'a str,
    pub file: &'a SafetensorsFile,
    pub entry: &'a TensorEntry,
}

impl<'a> TensorRef<'a> {
    pub fn data(&self) -> &'a [u8] {
        self.file.data(self.entry)
    }
}

impl Checkpoint {
    pub fn open(dir: &Path) -> Result<Checkpoint> {
        let index_path = dir.join("model.safetensors.index.json");
        if index_path.exists() {
            return Checkpoint::open_sharded(dir, &index_path);
        }
        let single = dir.join("model.safetensors");
        if !single.exists() {
            return Err(Error::Format(format!(
                "{}: no model.safetensors or model.safetensors.index.json",
                dir.display()
            )));
        }
        let file = SafetensorsFile::open(&single)?;
        let location = file.names().map(|n| (n.to_string(), 0)).collect();
        Ok(Checkpoint {
            files: vec![file],
            location,
        })
    }

    fn open_sharded(dir: &Path, index_path: &Path) -> Result<Checkpoint> {
        let text = std::fs::read(index_path).map_err(|e| Error::io(index_path, e))?;
        let bad = |what: String| Error::Format(format!("{}: {what}", index_path.display()));
        let index: Value =
            serde_json::from_slice(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let map = index
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| bad("missing weight_map object".into()))?;
        let mut files: Vec<SafetensorsFile> = Vec::new();
        let mut file_index: BTreeMap<String, usize> = BTreeMap::new();
        let mut location = BTreeMap::new();
        for (tensor, shard) in map {
            let shard = shard
                .as_str()
                .ok_or_else(|| bad(format!("weight_map[{tensor}] is not a string")))?;
            // Shards live beside the index; refuse paths that would leave the directory.
            if shard.is_empty() || shard.contains('/') || shard.contains('\\') || shard == ".." {
                return Err(bad(format!(
                    "weight_map[{tensor}] = {shard:?} is not a file name"
                )));
            }
            let idx = match file_index.get(shard) {
                Some(&i) => i,
                None => {
                    files.push(SafetensorsFile::open(&dir.join(shard))?);
                    file_index.insert(shard.to_string(), files.len() - 1);
                    files.len() - 1
                }
            };
            if files[idx].entry(tensor).is_none() {
                return Err(Error::Format(format!(
                    "{}: tensor {tensor} listed in the index is not in this shard",
                    files[idx].path().display()
                )));
            }
            location.insert(tensor.clone(), idx);
        }
        Ok(Checkpoint { files, location })
    }

    pub fn get(&self, name: &str) -> Option<TensorRef<'_>> {
        let (name, &idx) = self.location.get_key_value(name)?;
        let file = &self.files[idx];
        Some(TensorRef {
            name,
            file,
            entry: file.entry(name)?,
        })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.location.keys().map(|s| s.as_str())
    }

    /// Total size of the safetensors files.
    pub fn total_file_size(&self) -> u64 {
        self.files.iter().map(|f| f.file_size()).sum()
    }
}
