//! `rg-gguf`: inspect GGUF files. (Skeleton: implemented in the foundation issue.)
fn main() {
    eprintln!("rg-gguf: not implemented yet");
    std::process::exit(1);
}
