//! `rg-quantize INPUT OUTPUT TYPE`: Hugging Face RecurrentGemma checkpoint (or rgemma GGUF)
//! -> rgemma GGUF of preset TYPE. Prints one line per tensor and a summary, like
//! llama-quantize. Exit code 1 on any error, with nothing left at OUTPUT.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use rgemma::convert::{convert, ConvertOptions, FileType, Progress};

#[derive(Parser)]
#[command(
    name = "rg-quantize",
    about = "Convert a Hugging Face RecurrentGemma checkpoint (or requantize an rgemma GGUF) to GGUF",
    after_help = "TYPE (case-insensitive): F32 F16 BF16 Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 Q2_K Q3_K_S Q3_K_M Q3_K_L Q4_K_S Q4_K_M Q5_K_S Q5_K_M Q6_K"
)]
struct Args {
    /// HF checkpoint directory (config.json + safetensors) or an rgemma GGUF file.
    input: PathBuf,
    /// Output GGUF file.
    output: PathBuf,
    /// Target preset.
    #[arg(value_name = "TYPE")]
    file_type: String,
    /// Worker threads (default: all cores).
    #[arg(long, short = 't')]
    threads: Option<usize>,
    /// Overwrite OUTPUT if it exists.
    #[arg(long)]
    force: bool,
    /// Allow requantizing a GGUF whose tensors are already quantized (loses precision).
    #[arg(long)]
    allow_requantize: bool,
    /// general.name (default: the checkpoint directory's name).
    #[arg(long)]
    name: Option<String>,
    /// Importance matrix (rg-imatrix, or llama.cpp's GGUF or .dat imatrix) for the weighted
    /// quantizers of Q4_0, Q4_1, Q5_0, Q5_1 and the K-quants.
    #[arg(long, value_name = "FILE")]
    imatrix: Option<PathBuf>,
    /// Print only warnings and errors.
    #[arg(long, short = 'q')]
    quiet: bool,
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let Some(file_type) = FileType::parse(&args.file_type) else {
        eprintln!(
            "rg-quantize: error: unknown TYPE {:?} (expected one of: {})",
            args.file_type,
            {
                FileType::ALL
                    .iter()
                    .map(|f| f.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        );
        return ExitCode::FAILURE;
    };
    if args.threads == Some(0) {
        eprintln!("rg-quantize: error: --threads must be at least 1");
        return ExitCode::FAILURE;
    }
    let mut opts = ConvertOptions::new(&args.input, &args.output, file_type);
    opts.threads = args.threads;
    opts.force = args.force;
    opts.allow_requantize = args.allow_requantize;
    opts.name = args.name.clone();
    opts.imatrix = args.imatrix.clone();

    let quiet = args.quiet;
    let mut on_progress = |p: Progress| match p {
        Progress::Warning(w) => eprintln!("rg-quantize: warning: {w}"),
        Progress::Tensor(t) if !quiet => {
            let shape: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
            let width = t.count.to_string().len();
            println!(
                "[{:>w$}/{}] {:<36} [{:>18}] {:>5} -> {:<5} {:>10.3} MiB -> {:>10.3} MiB",
                t.index,
                t.count,
                t.name,
                shape.join(", "),
                t.src_type.name(),
                t.dst_type.name(),
                mib(t.src_bytes),
                mib(t.dst_bytes),
                w = width
            );
        }
        Progress::Tensor(_) => {}
    };
    match convert(&opts, &mut on_progress) {
        Ok(s) => {
            if !quiet {
                println!(
                    "rg-quantize: {} tensors, {:.2} M parameters: input {:.2} MiB -> output {:.2} MiB ({} {:.3} bits per weight) in {:.2} s",
                    s.n_tensors,
                    s.n_elements as f64 / 1e6,
                    mib(s.input_bytes),
                    mib(s.output_bytes),
                    file_type,
                    s.bits_per_weight,
                    s.seconds
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("rg-quantize: error: {e}");
            ExitCode::FAILURE
        }
    }
}
