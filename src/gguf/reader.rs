//! Validating GGUF reader over a memory map.
//!
//! Every field is bounds-checked and every size computed with checked arithmetic before it is
//! used; counts and lengths are compared with the bytes that remain before anything is
//! allocated, so no input can make the reader allocate more than a small multiple of the file
//! size, read out of bounds, or panic. Errors name the byte offset of the offending field.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use super::{GgufError, MetaArray, MetaType, MetaValue, DEFAULT_ALIGNMENT, GGUF_MAGIC};
use rgemma_quant::GgmlType;

/// ggml's GGML_MAX_DIMS.
pub const MAX_DIMS: usize = 4;
/// ggml's GGML_MAX_NAME (64, including the NUL terminator): names are at most 63 bytes.
pub const MAX_TENSOR_NAME_LEN: usize = 63;

/// One tensor's record. `dims` are in GGUF order (innermost first, `ne[0]` first).
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub ty: GgmlType,
    pub dims: Vec<u64>,
    /// Offset relative to the start of the data section.
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
}

impl TensorInfo {
    /// The shape in numpy order (outermost first).
    pub fn shape(&self) -> Vec<u64> {
        self.dims.iter().rev().copied().collect()
    }

    /// Total number of elements (validated to fit in i64 for infos read from a file;
    /// saturates for hand-made ones).
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().fold(1u64, |n, &d| n.saturating_mul(d))
    }
}

/// Bytes of a tensor of type `ty` with GGUF-order `dims`, or a reason why there is no such
/// tensor (ne[0] not a whole number of blocks, element count or byte size overflowing i64).
pub fn tensor_size(ty: GgmlType, dims: &[u64]) -> Result<u64, String> {
    let mut n_elements: u64 = 1;
    for &d in dims {
        n_elements = n_elements
            .checked_mul(d)
            .filter(|&n| n <= i64::MAX as u64)
            .ok_or_else(|| format!("dims {dims:?}: element count overflows"))?;
    }
    let ne0 = dims.first().copied().unwrap_or(1);
    let block = ty.block_size() as u64;
    if ne0 % block != 0 {
        return Err(format!(
            "ne[0] = {ne0} is not a multiple of the {ty} block size {block}"
        ));
    }
    let row = ty
        .row_size(ne0)
        .ok_or_else(|| format!("dims {dims:?}: byte size overflows"))?;
    let rows: u64 = dims.iter().skip(1).product(); // no overflow: bounded by n_elements
    row.checked_mul(rows)
        .filter(|&n| n <= i64::MAX as u64)
        .ok_or_else(|| format!("dims {dims:?}: byte size overflows"))
}

/// The file's bytes: a read-only memory map, or an owned buffer.
enum Storage {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mapped(m) => m,
            Storage::Owned(v) => v,
        }
    }
}

/// A parsed, validated GGUF file whose tensor data stays in the memory map.
pub struct GgufFile {
    storage: Storage,
    version: u32,
    alignment: u64,
    metadata: Vec<(String, MetaValue)>,
    key_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    data_start: u64,
}

impl GgufFile {
    /// Memory-maps and validates `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile, GgufError> {
        let path = path.as_ref();
        let io = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len == 0 {
            // Mapping zero bytes fails on some platforms; the parser reports the truncation.
            return GgufFile::from_bytes(Vec::new());
        }
        // SAFETY: the map is read-only. Like every mmap-based model loader (ggml, candle) we
        // rely on nobody truncating or rewriting the file while it is mapped; the parser
        // validates the contents once, after which they are only read through bounds-checked
        // slices.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        GgufFile::parse(Storage::Mapped(map))
    }

    /// Parses and validates an in-memory file (tests, fuzzing).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<GgufFile, GgufError> {
        GgufFile::parse(Storage::Owned(bytes))
    }

    fn parse(storage: Storage) -> Result<GgufFile, GgufError> {
        let parsed = Parser::new(storage.bytes()).parse_file()?;
        Ok(GgufFile {
            storage,
            version: parsed.version,
            alignment: parsed.alignment,
            metadata: parsed.metadata,
            key_index: parsed.key_index,
            tensors: parsed.tensors,
            tensor_index: parsed.tensor_index,
            data_start: parsed.data_start,
        })
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute byte offset of the data section (tensor offsets are relative to it).
    pub fn data_start(&self) -> u64 {
        self.data_start
    }

    /// Size of the whole file in bytes.
    pub fn file_size(&self) -> u64 {
        self.storage.bytes().len() as u64
    }

    /// Metadata in file order.
    pub fn metadata(&self) -> &[(String, MetaValue)] {
        &self.metadata
    }

    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.key_index.get(key).map(|&i| &self.metadata[i].1)
    }

    fn require(&self, key: &str) -> Result<&MetaValue, GgufError> {
        self.get(key)
            .ok_or_else(|| GgufError::MissingKey(key.to_string()))
    }

    fn integer(&self, key: &str, expected: &str, max: u64) -> Result<u64, GgufError> {
        let value = self.require(key)?;
        let wrong = |found: String| GgufError::WrongType {
            key: key.to_string(),
            expected: expected.to_string(),
            found,
        };
        let n = value.as_integer().ok_or_else(|| wrong(value.type_name()))?;
        if n < 0 || n > max as i128 {
            return Err(wrong(format!("{} {n} (out of range)", value.type_name())));
        }
        Ok(n as u64)
    }

    /// Any integer type whose value fits in u32.
    pub fn get_u32(&self, key: &str) -> Result<u32, GgufError> {
        self.integer(key, "u32", u32::MAX as u64).map(|n| n as u32)
    }

    /// Any integer type whose value fits in u64.
    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        self.integer(key, "u64", u64::MAX)
    }

    /// F32 (or F64 that is converted).
    pub fn get_f32(&self, key: &str) -> Result<f32, GgufError> {
        match self.require(key)? {
            MetaValue::F32(v) => Ok(*v),
            MetaValue::F64(v) => Ok(*v as f32),
            other => Err(self.wrong_type(key, "f32", other)),
        }
    }

    pub fn get_bool(&self, key: &str) -> Result<bool, GgufError> {
        match self.require(key)? {
            MetaValue::Bool(v) => Ok(*v),
            other => Err(self.wrong_type(key, "bool", other)),
        }
    }

    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        match self.require(key)? {
            MetaValue::String(s) => Ok(s),
            other => Err(self.wrong_type(key, "string", other)),
        }
    }

    pub fn get_str_array(&self, key: &str) -> Result<&[String], GgufError> {
        match self.require(key)? {
            MetaValue::Array(MetaArray::String(v)) => Ok(v),
            other => Err(self.wrong_type(key, "array of string", other)),
        }
    }

    fn wrong_type(&self, key: &str, expected: &str, found: &MetaValue) -> GgufError {
        GgufError::WrongType {
            key: key.to_string(),
            expected: expected.to_string(),
            found: found.type_name(),
        }
    }

    /// Tensor infos in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// Tells the OS that the tensor's mapped pages are not needed now (`madvise(DONTNEED)`),
    /// so that they stop counting as this process's resident memory (after load-time
    /// repacking, for instance). The bytes stay readable: a later access maps them again
    /// from the file. A no-op for in-memory files and on platforms without `madvise`.
    pub fn release_pages(&self, info: &TensorInfo) {
        #[cfg(unix)]
        if let Storage::Mapped(map) = &self.storage {
            let data = self.tensor_data(info);
            if data.is_empty() {
                return;
            }
            let start = data.as_ptr() as usize - map.as_ptr() as usize;
            // SAFETY: the map is a read-only shared mapping of a file nobody rewrites (the
            // invariant of `open`); dropping its pages changes no contents, as every later
            // read faults them back in from the file. Errors (e.g. an unaligned range on
            // an exotic platform) only mean the pages stay resident.
            let _ = unsafe {
                map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, data.len())
            };
        }
        #[cfg(not(unix))]
        let _ = info;
    }

    /// The tensor's bytes (validated to lie inside the data section when the file was opened).
    /// An info that does not belong to this file and points outside it gives an empty slice.
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        let range = self
            .data_start
            .checked_add(info.offset)
            .and_then(|start| Some((start, start.checked_add(info.size)?)))
            .and_then(|(s, e)| Some((usize::try_from(s).ok()?, usize::try_from(e).ok()?)));
        range
            .and_then(|(s, e)| self.storage.bytes().get(s..e))
            .unwrap_or(&[])
    }
}

/// What the parser produces (the storage is attached by [`GgufFile::parse`]).
struct Parsed {
    version: u32,
    alignment: u64,
    metadata: Vec<(String, MetaValue)>,
    key_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    data_start: u64,
}

/// Smallest encoding of a metadata KV pair: empty key (8) + type (4) + a 1-byte value.
const MIN_KV_BYTES: u64 = 8 + 4 + 1;
/// Smallest encoding of a tensor info: empty name (8) + n_dims (4) + type (4) + offset (8).
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 4 + 4 + 8;

/// A bounds-checked little-endian cursor.
struct Parser<'a> {
    buf: &'a [u8],
    pos: usize,
}

fn malformed(offset: usize, what: impl Into<String>) -> GgufError {
    GgufError::Malformed {
        offset: offset as u64,
        what: what.into(),
    }
}

impl<'a> Parser<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Parser { buf, pos: 0 }
    }

    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], GgufError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| {
                malformed(
                    self.pos,
                    format!(
                        "truncated {what}: needs {n} bytes, {} left",
                        self.remaining()
                    ),
                )
            })?;
        let bytes = &self.buf[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    fn u8(&mut self, what: &str) -> Result<u8, GgufError> {
        Ok(self.array::<1>(what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16, GgufError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }
    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count or length that must be satisfiable by the remaining bytes, given that each unit
    /// takes at least `min_unit_bytes`. Checked before anything is allocated.
    fn count(&mut self, what: &str, min_unit_bytes: u64) -> Result<usize, GgufError> {
        let at = self.pos;
        let n = self.u64(what)?;
        let needed = n.checked_mul(min_unit_bytes);
        match needed {
            Some(needed) if needed <= self.remaining() => Ok(n as usize),
            _ => Err(malformed(
                at,
                format!(
                    "{what} {n} needs at least {} bytes but only {} remain",
                    needed.map_or("more than 2^64".to_string(), |b| b.to_string()),
                    self.remaining()
                ),
            )),
        }
    }

    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let at = self.pos;
        let len = self.count(&format!("{what} length"), 1)?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|e| malformed(at, format!("{what} is not valid UTF-8: {e}")))
    }

    fn bool(&mut self, what: &str) -> Result<bool, GgufError> {
        let at = self.pos;
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(malformed(
                at,
                format!("{what}: bool byte is {b}, must be 0 or 1"),
            )),
        }
    }

    fn meta_type(&mut self, what: &str) -> Result<MetaType, GgufError> {
        let at = self.pos;
        let id = self.u32(what)?;
        MetaType::from_id(id)
            .ok_or_else(|| malformed(at, format!("unknown metadata value type {id} ({what})")))
    }

    fn value(&mut self, ty: MetaType, key: &str) -> Result<MetaValue, GgufError> {
        let what = format!("key {key}");
        let key = what.as_str();
        Ok(match ty {
            MetaType::U8 => MetaValue::U8(self.u8(key)?),
            MetaType::I8 => MetaValue::I8(self.u8(key)? as i8),
            MetaType::U16 => MetaValue::U16(self.u16(key)?),
            MetaType::I16 => MetaValue::I16(self.u16(key)? as i16),
            MetaType::U32 => MetaValue::U32(self.u32(key)?),
            MetaType::I32 => MetaValue::I32(self.u32(key)? as i32),
            MetaType::F32 => MetaValue::F32(f32::from_bits(self.u32(key)?)),
            MetaType::Bool => MetaValue::Bool(self.bool(key)?),
            MetaType::String => MetaValue::String(self.string(key)?),
            MetaType::U64 => MetaValue::U64(self.u64(key)?),
            MetaType::I64 => MetaValue::I64(self.u64(key)? as i64),
            MetaType::F64 => MetaValue::F64(f64::from_bits(self.u64(key)?)),
            MetaType::Array => MetaValue::Array(self.meta_array(key)?),
        })
    }

    fn meta_array(&mut self, key: &str) -> Result<MetaArray, GgufError> {
        let type_at = self.pos;
        let elem = self.meta_type(&format!("element type of {key}"))?;
        if elem == MetaType::Array {
            return Err(malformed(
                type_at,
                format!("{key}: nested arrays are not supported"),
            ));
        }
        // Strings take at least their 8-byte length.
        let min = elem.fixed_size().unwrap_or(8) as u64;
        let n = self.count(&format!("{key}: array length"), min)?;
        let what = format!("element of {key}");
        macro_rules! fixed {
            ($variant:ident, $read:ident, $conv:expr) => {{
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push($conv(self.$read(&what)?));
                }
                MetaArray::$variant(v)
            }};
        }
        Ok(match elem {
            MetaType::U8 => MetaArray::U8(self.take(n, &what)?.to_vec()),
            MetaType::I8 => MetaArray::I8(self.take(n, &what)?.iter().map(|&b| b as i8).collect()),
            MetaType::U16 => fixed!(U16, u16, |x| x),
            MetaType::I16 => fixed!(I16, u16, |x: u16| x as i16),
            MetaType::U32 => fixed!(U32, u32, |x| x),
            MetaType::I32 => fixed!(I32, u32, |x: u32| x as i32),
            MetaType::F32 => fixed!(F32, u32, f32::from_bits),
            MetaType::U64 => fixed!(U64, u64, |x| x),
            MetaType::I64 => fixed!(I64, u64, |x: u64| x as i64),
            MetaType::F64 => fixed!(F64, u64, f64::from_bits),
            MetaType::Bool => fixed!(Bool, bool, |x| x),
            MetaType::String => fixed!(String, string, |x| x),
            MetaType::Array => unreachable!("rejected above"),
        })
    }

    fn header(&mut self) -> Result<u32, GgufError> {
        let magic = self.u32("magic")?;
        if magic != GGUF_MAGIC {
            if magic == GGUF_MAGIC.swap_bytes() {
                return Err(malformed(0, "big-endian GGUF is not supported"));
            }
            return Err(malformed(
                0,
                format!("bad magic {:02x?}: not a GGUF file", magic.to_le_bytes()),
            ));
        }
        let version = self.u32("version")?;
        match version {
            2 | 3 => Ok(version),
            // A byte-swapped version has its low 16 bits zero (gguf-py and ggml detect it so).
            v if v & 0xffff == 0 && (1..=3).contains(&v.swap_bytes()) => {
                Err(malformed(4, "big-endian GGUF is not supported"))
            }
            1 => Err(malformed(
                4,
                "GGUF version 1 is not supported (only 2 and 3)",
            )),
            v => Err(malformed(
                4,
                format!("unsupported GGUF version {v} (only 2 and 3)"),
            )),
        }
    }

    fn parse_file(mut self) -> Result<Parsed, GgufError> {
        let version = self.header()?;
        let n_tensors = self.count("tensor count", MIN_TENSOR_INFO_BYTES)?;
        let n_kv = self.count("metadata count", MIN_KV_BYTES)?;

        let mut metadata = Vec::with_capacity(n_kv);
        let mut key_index = HashMap::with_capacity(n_kv);
        let mut alignment = DEFAULT_ALIGNMENT;
        for _ in 0..n_kv {
            let key_at = self.pos;
            let key = self.string("metadata key")?;
            let ty = self.meta_type(&format!("type of key {key}"))?;
            let value_at = self.pos;
            let value = self.value(ty, &key)?;
            if key == "general.alignment" {
                alignment = match value {
                    MetaValue::U32(a) if a.is_power_of_two() => a as u64,
                    MetaValue::U32(a) => {
                        return Err(malformed(
                            value_at,
                            format!("general.alignment {a} is not a power of two"),
                        ))
                    }
                    ref other => {
                        return Err(malformed(
                            value_at,
                            format!("general.alignment must be u32, found {}", other.type_name()),
                        ))
                    }
                };
            }
            if key_index.insert(key.clone(), metadata.len()).is_some() {
                return Err(malformed(key_at, format!("duplicate metadata key {key}")));
            }
            metadata.push((key, value));
        }

        let mut infos = Vec::with_capacity(n_tensors);
        let mut tensor_index = HashMap::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            infos.push(self.tensor_info(&mut tensor_index, infos.len())?);
        }

        // The data section starts at the next multiple of the alignment.
        let end_of_infos = self.pos as u64;
        let data_start = end_of_infos
            .checked_next_multiple_of(alignment)
            .ok_or_else(|| malformed(self.pos, "data section offset overflows"))?;
        let file_len = self.buf.len() as u64;
        for (info, at) in &infos {
            // Writers (ggml, gguf-py, ours) pad every tensor, the last one included, and ggml's
            // non-mmap loader reads the padded total; requiring the padding too means that any
            // truncation of a file is detected.
            let padded_end = info
                .size
                .checked_next_multiple_of(alignment)
                .and_then(|padded| data_start.checked_add(info.offset)?.checked_add(padded));
            if padded_end.is_none_or(|end| end > file_len) {
                return Err(malformed(
                    *at,
                    format!(
                        "tensor {}: data at {} + {} ({} bytes, padded to {alignment}) extends past the end of the file ({} bytes)",
                        info.name, data_start, info.offset, info.size, file_len
                    ),
                ));
            }
            if info.offset % alignment != 0 {
                return Err(malformed(
                    *at,
                    format!(
                        "tensor {}: offset {} is not a multiple of the alignment {alignment}",
                        info.name, info.offset
                    ),
                ));
            }
        }
        check_overlaps(&infos)?;

        Ok(Parsed {
            version,
            alignment,
            metadata,
            key_index,
            tensors: infos.into_iter().map(|(info, _)| info).collect(),
            tensor_index,
            data_start,
        })
    }

    /// Parses one tensor info; returns it with the file offset of its `offset` field.
    fn tensor_info(
        &mut self,
        names: &mut HashMap<String, usize>,
        index: usize,
    ) -> Result<(TensorInfo, usize), GgufError> {
        let name_at = self.pos;
        let name = self.string("tensor name")?;
        if name.len() > MAX_TENSOR_NAME_LEN {
            return Err(malformed(
                name_at,
                format!(
                    "tensor name {name:?} is {} bytes (max {MAX_TENSOR_NAME_LEN})",
                    name.len()
                ),
            ));
        }
        if names.insert(name.clone(), index).is_some() {
            return Err(malformed(name_at, format!("duplicate tensor name {name}")));
        }
        let dims_at = self.pos;
        let n_dims = self.u32("n_dims")? as usize;
        if n_dims > MAX_DIMS {
            return Err(malformed(
                dims_at,
                format!("tensor {name}: {n_dims} dimensions (max {MAX_DIMS})"),
            ));
        }
        let mut dims = Vec::with_capacity(n_dims);
        for _ in 0..n_dims {
            dims.push(self.u64("tensor dimension")?);
        }
        let type_at = self.pos;
        let type_id = self.u32("tensor type")?;
        let ty = GgmlType::from_id(type_id).ok_or_else(|| {
            malformed(
                type_at,
                format!("tensor {name}: unknown ggml type id {type_id}"),
            )
        })?;
        let size = tensor_size(ty, &dims)
            .map_err(|why| malformed(dims_at, format!("tensor {name} ({ty}): {why}")))?;
        let offset_at = self.pos;
        let offset = self.u64("tensor offset")?;
        Ok((
            TensorInfo {
                name,
                ty,
                dims,
                offset,
                size,
            },
            offset_at,
        ))
    }
}

/// Rejects tensors whose byte ranges intersect (zero-size tensors occupy nothing).
fn check_overlaps(infos: &[(TensorInfo, usize)]) -> Result<(), GgufError> {
    let mut by_offset: Vec<&(TensorInfo, usize)> =
        infos.iter().filter(|(i, _)| i.size > 0).collect();
    by_offset.sort_by_key(|(i, _)| i.offset);
    for pair in by_offset.windows(2) {
        let (a, _) = pair[0];
        let (b, b_at) = pair[1];
        // Ranges are known to be in the file, so offset + size does not overflow.
        if b.offset < a.offset + a.size {
            return Err(malformed(
                *b_at,
                format!(
                    "tensor {} (offset {}) overlaps tensor {} (offset {}, {} bytes)",
                    b.name, b.offset, a.name, a.offset, a.size
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_sizes() {
        assert_eq!(tensor_size(GgmlType::F32, &[3, 2]), Ok(24));
        assert_eq!(tensor_size(GgmlType::Q4K, &[512, 3]), Ok(864));
        assert_eq!(tensor_size(GgmlType::F32, &[]), Ok(4));
        assert!(tensor_size(GgmlType::Q8_0, &[33]).is_err());
        assert!(tensor_size(GgmlType::F32, &[1 << 32, 1 << 32]).is_err());
        assert!(tensor_size(GgmlType::F64, &[1 << 61]).is_err());
    }

    #[test]
    fn huge_counts_are_refused_before_allocating() {
        let mut f = b"GGUF".to_vec();
        f.extend(3u32.to_le_bytes());
        f.extend(u64::MAX.to_le_bytes());
        f.extend(0u64.to_le_bytes());
        let err = GgufFile::from_bytes(f).err().unwrap().to_string();
        assert!(err.starts_with("at byte 8: tensor count"), "{err}");
    }
}
