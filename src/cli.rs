//! What the command-line programs share: a bug ends in one `error: internal error ...` line
//! instead of a backtrace, and a bad flag in one line that points to `--help`.

use std::process::ExitCode;

/// Replaces the panic message with one line on stderr (with the source location).
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown".into());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()));
        eprintln!("error: internal error{}: {msg}", at.unwrap_or_default());
    }));
}

/// Parses the process's arguments; `Err` holds the exit code once `--help` / `--version`
/// has been printed (success) or a one-line error (exit 1).
pub fn parse_args<A: clap::Parser>() -> Result<A, ExitCode> {
    A::try_parse().map_err(|e| {
        use clap::error::ErrorKind;
        if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
            print!("{e}");
            return ExitCode::SUCCESS;
        }
        let text = e.to_string();
        let line = text.lines().next().unwrap_or("bad arguments");
        eprintln!("{} (see --help)", line.trim());
        ExitCode::from(1)
    })
}
