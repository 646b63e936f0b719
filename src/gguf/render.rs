//! Human-readable and JSON descriptions of a GGUF file (what `rg-gguf info` prints).
//!
//! JSON layout: `{"version": 3, "alignment": 32, "data_offset": N, "metadata": {KEY: VALUE},
//! "metadata_types": {KEY: "u32" | "array of string" | ...}, "tensors": [{"name", "type",
//! "shape" (numpy order), "offset" (relative to the data section, as stored), "size"}]}`.
//! Arrays are written in full. Floats are written in their shortest round-trip form (f32 as
//! f32); NaN and infinities, which JSON cannot express, become `null`.

use std::collections::BTreeMap;
use std::io::{self, Write};

use super::{GgufFile, MetaArray, MetaValue};
use rgemma_quant::GgmlType;

/// How many array elements text mode shows before abbreviating.
const TEXT_ARRAY_ITEMS: usize = 8;
/// How many characters of a string text mode shows before abbreviating.
const TEXT_STRING_CHARS: usize = 100;

fn json_err(e: serde_json::Error) -> io::Error {
    io::Error::other(e)
}

fn json_str(w: &mut dyn Write, s: &str) -> io::Result<()> {
    serde_json::to_writer(w, s).map_err(json_err)
}

fn json_f32(w: &mut dyn Write, x: f32) -> io::Result<()> {
    serde_json::to_writer(w, &x).map_err(json_err)
}

fn json_f64(w: &mut dyn Write, x: f64) -> io::Result<()> {
    serde_json::to_writer(w, &x).map_err(json_err)
}

/// Writes `items` as a JSON array, each through `one`.
fn json_list<T>(
    w: &mut dyn Write,
    items: &[T],
    mut one: impl FnMut(&mut dyn Write, &T) -> io::Result<()>,
) -> io::Result<()> {
    w.write_all(b"[")?;
    for (i, x) in items.iter().enumerate() {
        if i > 0 {
            w.write_all(b",")?;
        }
        one(w, x)?;
    }
    w.write_all(b"]")
}

fn json_value(w: &mut dyn Write, v: &MetaValue) -> io::Result<()> {
    match v {
        MetaValue::U8(x) => write!(w, "{x}"),
        MetaValue::I8(x) => write!(w, "{x}"),
        MetaValue::U16(x) => write!(w, "{x}"),
        MetaValue::I16(x) => write!(w, "{x}"),
        MetaValue::U32(x) => write!(w, "{x}"),
        MetaValue::I32(x) => write!(w, "{x}"),
        MetaValue::U64(x) => write!(w, "{x}"),
        MetaValue::I64(x) => write!(w, "{x}"),
        MetaValue::F32(x) => json_f32(w, *x),
        MetaValue::F64(x) => json_f64(w, *x),
        MetaValue::Bool(x) => write!(w, "{x}"),
        MetaValue::String(s) => json_str(w, s),
        MetaValue::Array(a) => match a {
            MetaArray::U8(v) => json_list(w, v, |w, x| write!(w, "{x}")),
            MetaArray::I8(v) => json_list(w, v, |w, x| write!(w, "{x}")),
            MetaArray::U16(v) => json_list(w, v, |w, x| write!(w, "{x}")),
            MetaArray::I16(v) => json_list(w, v, |w, x| write!(w, "{x}")),
            MetaArray::U32(v) => json_list(w, v, |w, x| write!(w, "{x}")),
            MetaArray::I32(v) => json_list(w, v, |w, x| write!(w, "{x}")),
            MetaArray::U64(v) => json_list(w, v, |w, x| write!(w, "{x}")),
            MetaArray::I64(v) => json_list(w, v, |w, x| write!(w, "{x}")),
            MetaArray::F32(v) => json_list(w, v, |w, x| json_f32(w, *x)),
            MetaArray::F64(v) => json_list(w, v, |w, x| json_f64(w, *x)),
            MetaArray::Bool(v) => json_list(w, v, |w, x| write!(w, "{x}")),
            MetaArray::String(v) => json_list(w, v, |w, x| json_str(w, x)),
        },
    }
}

/// Writes the whole file description as one JSON object (arrays complete), then a newline.
pub fn write_info_json(file: &GgufFile, w: &mut dyn Write) -> io::Result<()> {
    write!(
        w,
        "{{\"version\":{},\"alignment\":{},\"data_offset\":{},\"metadata\":{{",
        file.version(),
        file.alignment(),
        file.data_start()
    )?;
    for (i, (key, value)) in file.metadata().iter().enumerate() {
        if i > 0 {
            w.write_all(b",")?;
        }
        json_str(w, key)?;
        w.write_all(b":")?;
        json_value(w, value)?;
    }
    w.write_all(b"},\"metadata_types\":{")?;
    for (i, (key, value)) in file.metadata().iter().enumerate() {
        if i > 0 {
            w.write_all(b",")?;
        }
        json_str(w, key)?;
        w.write_all(b":")?;
        json_str(w, &value.type_name())?;
    }
    w.write_all(b"},\"tensors\":")?;
    json_list(w, file.tensors(), |w, t| {
        w.write_all(b"{\"name\":")?;
        json_str(w, &t.name)?;
        write!(w, ",\"type\":\"{}\",\"shape\":", t.ty.name())?;
        json_list(w, &t.shape(), |w, d| write!(w, "{d}"))?;
        write!(w, ",\"offset\":{},\"size\":{}}}", t.offset, t.size)
    })?;
    w.write_all(b"}\n")
}

/// A string for text mode: escaped, cut after [`TEXT_STRING_CHARS`] characters.
fn text_str(s: &str) -> String {
    let n_chars = s.chars().count();
    if n_chars <= TEXT_STRING_CHARS {
        format!("{s:?}")
    } else {
        let head: String = s.chars().take(TEXT_STRING_CHARS).collect();
        format!("{head:?}... ({} bytes)", s.len())
    }
}

/// Formats up to [`TEXT_ARRAY_ITEMS`] elements, then the count.
fn text_list<T>(items: &[T], one: impl Fn(&T) -> String) -> String {
    let shown: Vec<String> = items.iter().take(TEXT_ARRAY_ITEMS).map(one).collect();
    if items.len() > TEXT_ARRAY_ITEMS {
        format!("[{}, ... ({} elements)]", shown.join(", "), items.len())
    } else {
        format!("[{}]", shown.join(", "))
    }
}

/// A value for text mode, long strings and arrays abbreviated.
pub fn text_value(v: &MetaValue) -> String {
    match v {
        MetaValue::U8(x) => x.to_string(),
        MetaValue::I8(x) => x.to_string(),
        MetaValue::U16(x) => x.to_string(),
        MetaValue::I16(x) => x.to_string(),
        MetaValue::U32(x) => x.to_string(),
        MetaValue::I32(x) => x.to_string(),
        MetaValue::U64(x) => x.to_string(),
        MetaValue::I64(x) => x.to_string(),
        MetaValue::F32(x) => format!("{x:?}"),
        MetaValue::F64(x) => format!("{x:?}"),
        MetaValue::Bool(x) => x.to_string(),
        MetaValue::String(s) => text_str(s),
        MetaValue::Array(a) => match a {
            MetaArray::U8(v) => text_list(v, |x| x.to_string()),
            MetaArray::I8(v) => text_list(v, |x| x.to_string()),
            MetaArray::U16(v) => text_list(v, |x| x.to_string()),
            MetaArray::I16(v) => text_list(v, |x| x.to_string()),
            MetaArray::U32(v) => text_list(v, |x| x.to_string()),
            MetaArray::I32(v) => text_list(v, |x| x.to_string()),
            MetaArray::U64(v) => text_list(v, |x| x.to_string()),
            MetaArray::I64(v) => text_list(v, |x| x.to_string()),
            MetaArray::F32(v) => text_list(v, |x| format!("{x:?}")),
            MetaArray::F64(v) => text_list(v, |x| format!("{x:?}")),
            MetaArray::Bool(v) => text_list(v, |x| x.to_string()),
            MetaArray::String(v) => text_list(v, |x| text_str(x)),
        },
    }
}

/// Writes the text report: header line, metadata, tensors, totals by type.
pub fn write_info_text(file: &GgufFile, w: &mut dyn Write) -> io::Result<()> {
    writeln!(
        w,
        "GGUF v{}, alignment {}, {} metadata keys, {} tensors, data at byte {}, file {} bytes",
        file.version(),
        file.alignment(),
        file.metadata().len(),
        file.tensors().len(),
        file.data_start(),
        file.file_size()
    )?;
    writeln!(w, "\nmetadata:")?;
    for (key, value) in file.metadata() {
        let ty = match value {
            MetaValue::Array(a) => format!("{}[{}]", a.elem_type().name(), a.len()),
            other => other.type_name(),
        };
        writeln!(w, "  {key:<44} {ty:<14} {}", text_value(value))?;
    }
    writeln!(w, "\ntensors:")?;
    writeln!(
        w,
        "  {:<40} {:<8} {:<22} {:>12} {:>12}",
        "name", "type", "shape", "offset", "bytes"
    )?;
    // Totals: type -> (tensors, elements, bytes). Element counts of a validated file fit in
    // i64, but their sum over tensors need not: saturate.
    let mut totals: BTreeMap<u32, (GgmlType, u64, u64, u64)> = BTreeMap::new();
    for t in file.tensors() {
        let shape: Vec<String> = t.shape().iter().map(|d| d.to_string()).collect();
        writeln!(
            w,
            "  {:<40} {:<8} {:<22} {:>12} {:>12}",
            t.name,
            t.ty.name(),
            format!("[{}]", shape.join(", ")),
            t.offset,
            t.size
        )?;
        let e = totals.entry(t.ty.id()).or_insert((t.ty, 0, 0, 0));
        e.1 += 1;
        e.2 = e.2.saturating_add(t.n_elements());
        e.3 = e.3.saturating_add(t.size);
    }
    writeln!(w, "\ntotals by type:")?;
    let (mut n, mut elems, mut bytes) = (0u64, 0u64, 0u64);
    for (ty, count, e, b) in totals.values() {
        writeln!(
            w,
            "  {:<8} {count:>6} tensors {e:>14} elements {b:>14} bytes",
            ty.name()
        )?;
        n += count;
        elems = elems.saturating_add(*e);
        bytes = bytes.saturating_add(*b);
    }
    writeln!(
        w,
        "  {:<8} {n:>6} tensors {elems:>14} elements {bytes:>14} bytes",
        "all"
    )
}
