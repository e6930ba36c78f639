//! Logs on standard error through `tracing`: human-readable or JSON lines, level from `-v`/`-q`
//! (or `RUST_LOG`, which wins).

use tracing_subscriber::EnvFilter;

use crate::cli::{Global, LogFormat};

/// Installs the global subscriber.
pub(crate) fn init(global: &Global) -> Result<(), String> {
    // The command's own target is `chaski`; the library crates (`chaski_streamer`, ...) log
    // their internals one level lower, so that the default output is the command's story.
    let level = match (global.quiet, global.verbose) {
        (true, _) => "error",
        (false, 0) => {
            "warn,chaski=info,chaski_streamer=warn,chaski_transport=warn,chaski_membership=warn"
        }
        (false, 1) => "info,chaski=debug",
        (false, _) => "debug,chaski=trace",
    };
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.is_empty() => {
            EnvFilter::try_new(&spec).map_err(|e| format!("RUST_LOG `{spec}`: {e}"))?
        }
        _ => EnvFilter::new(level),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(global.verbose > 0);
    let result = match global.log_format {
        LogFormat::Human => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
    };
    result.map_err(|e| format!("cannot install the logger: {e}"))
}
