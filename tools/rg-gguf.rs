//! `rg-gguf`: inspect GGUF files.
//!
//! - `rg-gguf info FILE [--json]`: version, alignment, metadata (type and value), tensors
//!   (name, type, numpy-order shape, offset), totals by type. `--json` prints one object with
//!   complete arrays (layout in `rgemma::gguf::render`).
//! - `rg-gguf dump FILE TENSOR --out OUT.npy`: the tensor dequantized to float32 as a .npy
//!   file with the numpy-order shape.
//!
//! Any failure prints one line `rg-gguf: ...` (naming the byte offset for malformed files)
//! and exits with status 1.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use rgemma::gguf::{render, GgufFile, TensorInfo};

#[derive(Parser)]
#[command(name = "rg-gguf", version, about = "Inspect GGUF files")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the header, metadata and tensor table.
    Info {
        file: PathBuf,
        /// One JSON object with complete arrays instead of the text report.
        #[arg(long)]
        json: bool,
    },
    /// Write one tensor, dequantized to float32, as a .npy file.
    Dump {
        file: PathBuf,
        tensor: String,
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info { file, json } => info(&file, json),
        Command::Dump { file, tensor, out } => dump(&file, &tensor, &out),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("rg-gguf: {message}");
            ExitCode::from(1)
        }
    }
}

fn open(path: &Path) -> Result<GgufFile, String> {
    GgufFile::open(path).map_err(|e| match e {
        // Io errors already name the path.
        rgemma::gguf::GgufError::Io { .. } => e.to_string(),
        _ => format!("{}: {e}", path.display()),
    })
}

fn info(path: &Path, json: bool) -> Result<(), String> {
    let file = open(path)?;
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let written = if json {
        render::write_info_json(&file, &mut out)
    } else {
        render::write_info_text(&file, &mut out)
    };
    match written.and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        // `rg-gguf info f | head` is not an error.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(format!("writing output: {e}")),
    }
}

/// How many elements to dequantize per call (a whole number of rows).
const DUMP_CHUNK_ELEMENTS: u64 = 1 << 20;

fn dump(path: &Path, name: &str, out_path: &Path) -> Result<(), String> {
    let file = open(path)?;
    let info = file
        .tensor(name)
        .ok_or_else(|| format!("{}: no tensor named {name:?}", path.display()))?;
    let result = write_npy(&file, info, out_path);
    if result.is_err() {
        // Leave no partial .npy behind.
        let _ = std::fs::remove_file(out_path);
    }
    result
}

fn write_npy(file: &GgufFile, info: &TensorInfo, out_path: &Path) -> Result<(), String> {
    let io_err = |e: io::Error| format!("{}: {e}", out_path.display());
    let data = file.tensor_data(info);
    let ne0 = info.dims.first().copied().unwrap_or(1);
    let n_rows = info.n_elements().checked_div(ne0).unwrap_or(0);
    // `size` was validated as row_size(ne0) * rows when the file was opened.
    let row_bytes = info.size.checked_div(n_rows).unwrap_or(0);
    let rows_per_chunk = (DUMP_CHUNK_ELEMENTS / ne0.max(1)).max(1);

    let mut out = BufWriter::new(File::create(out_path).map_err(io_err)?);
    out.write_all(&npy_header(&info.shape())).map_err(io_err)?;
    let mut values: Vec<f32> = Vec::new();
    let mut bytes: Vec<u8> = Vec::new();
    let mut row = 0u64;
    while row < n_rows {
        let rows = rows_per_chunk.min(n_rows - row);
        let (start, len) = ((row * row_bytes) as usize, (rows * row_bytes) as usize);
        let src = data
            .get(start..start + len)
            .ok_or("tensor data out of range")?;
        values.clear();
        values.resize((rows * ne0) as usize, 0.0);
        rgemma::quant::dequantize_row(info.ty, src, &mut values)
            .map_err(|e| format!("tensor {}: {e}", info.name))?;
        bytes.clear();
        bytes.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        out.write_all(&bytes).map_err(io_err)?;
        row += rows;
    }
    out.into_inner()
        .map_err(|e| io_err(e.into_error()))?
        .sync_all()
        .map_err(io_err)
}

/// A .npy v1.0 header for little-endian float32 C-order data of `shape`, padded with spaces
/// and a final newline so that the data starts at a multiple of 64 bytes (as numpy writes).
fn npy_header(shape: &[u64]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_text = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_text}, }}");
    let unpadded = 6 + 2 + 2 + dict.len() + 1;
    dict.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    dict.push('\n');
    let mut header = b"\x93NUMPY\x01\x00".to_vec();
    header.extend((dict.len() as u16).to_le_bytes());
    header.extend(dict.as_bytes());
    header
}
