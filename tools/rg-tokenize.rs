//! `rg-tokenize`: tokenize text with the tokenizer of any GGUF file (like llama-tokenize).
//! Only the metadata is read; no model is loaded, whatever the file's architecture.
//!
//! ```text
//! rg-tokenize -m model.gguf -p "Hello world"          # one `id -> 'text'` per line
//! rg-tokenize -m model.gguf -f prompt.txt --ids      # [2, 9259, 1902]
//! ```

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgGroup, Parser};
use rgemma::gguf::GgufFile;
use rgemma::tokenizer::Tokenizer;

#[derive(Parser, Debug)]
#[command(
    name = "rg-tokenize",
    version,
    about = "Tokenize text with the tokenizer stored in a GGUF file"
)]
#[command(group(ArgGroup::new("input").required(true).args(["prompt", "file"])))]
struct Args {
    /// GGUF file whose tokenizer to use.
    #[arg(short = 'm', long = "model", value_name = "FILE")]
    model: PathBuf,
    /// The text to tokenize.
    #[arg(short = 'p', long = "prompt", value_name = "TEXT")]
    prompt: Option<String>,
    /// Read the text to tokenize from a file (UTF-8).
    #[arg(short = 'f', long = "file", value_name = "TEXTFILE")]
    file: Option<PathBuf>,
    /// Print only the ids, as a JSON list.
    #[arg(long)]
    ids: bool,
    /// Do not prepend the BOS token.
    #[arg(long)]
    no_bos: bool,
    /// Tokenize control pieces written in the text (`<start_of_turn>`) as plain text.
    #[arg(long)]
    no_parse_special: bool,
}

fn run(args: &Args) -> Result<(), String> {
    let text = match (&args.prompt, &args.file) {
        (Some(prompt), _) => prompt.clone(),
        (None, Some(path)) => {
            let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            String::from_utf8(bytes)
                .map_err(|e| format!("{}: not UTF-8 text ({e})", path.display()))?
        }
        (None, None) => return Err("give the text with -p TEXT or -f TEXTFILE".into()),
    };
    // The reader's errors name the path already.
    let file = GgufFile::open(&args.model).map_err(|e| e.to_string())?;
    let tokenizer = Tokenizer::from_gguf(&file)
        .map_err(|e| format!("{}: {e}", args.model.display()))?
        .ok_or_else(|| {
            format!(
                "{}: the file has no tokenizer metadata",
                args.model.display()
            )
        })?;
    let ids = tokenizer
        .encode(&text, !args.no_bos, !args.no_parse_special)
        .map_err(|e| e.to_string())?;

    let mut out = String::new();
    if args.ids {
        let list: Vec<String> = ids.iter().map(u32::to_string).collect();
        out.push('[');
        out.push_str(&list.join(", "));
        out.push_str("]\n");
    } else {
        for &id in &ids {
            let bytes = tokenizer.token_bytes(id).unwrap_or_default();
            // A byte-fallback token may hold part of a character: show its piece (`<0xE2>`).
            let text = match std::str::from_utf8(&bytes) {
                Ok(text) => text,
                Err(_) => tokenizer.piece(id).unwrap_or_default(),
            };
            out.push_str(&format!("{id:6} -> '{text}'\n"));
        }
    }
    std::io::stdout()
        .lock()
        .write_all(out.as_bytes())
        .map_err(|e| format!("writing the output: {e}"))
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) if !e.use_stderr() => {
            // --help, --version
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // clap's message spans several lines (the problem, usage, hints); keep the
            // problem, on one line.
            let rendered = e.to_string();
            let problem = rendered.split("\n\nUsage:").next().unwrap_or_default();
            let problem: Vec<&str> = problem.split_whitespace().collect();
            let problem = problem.join(" ");
            eprintln!(
                "rg-tokenize: {} (see --help)",
                problem.trim_start_matches("error: ")
            );
            return ExitCode::FAILURE;
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("rg-tokenize: {}", msg.replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}
