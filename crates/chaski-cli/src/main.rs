//! The `chaski` command: run a Chaski node from the shell, publish and subscribe, ping a node,
//! look at a node's peer table, and watch the demo.
//!
//! ```text
//! chaski demo                                   # a network on loopback, live, ~16 s
//! chaski node --name hub --listen 127.0.0.1:7420 --relay
//! chaski sub news --seed 127.0.0.1:7420         # prints what is published on `news`
//! chaski pub news "hello" --seed 127.0.0.1:7420
//! chaski ping 127.0.0.1:7420                    # round trips, like the system `ping`
//! chaski peers 127.0.0.1:7420 --format dot | dot -Tsvg > overlay.svg
//! ```
//!
//! # Settings
//!
//! `node`, `pub`, `sub` and `ping` join the network the same way, from a TOML file (`--config`,
//! keys as `chaski::NodeBuilder`, documented in `chaski.example.toml`), overridden by flags,
//! overridden by `CHASKI_*` environment variables (`CHASKI_SEEDS=127.0.0.1:7420`).
//!
//! # Exit codes
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | failure at run time (the network failed, a peer misbehaved) |
//! | 2 | usage or configuration error (flag, file, environment variable, setting) |
//! | 3 | address error: cannot resolve, cannot bind (port in use), cannot connect |
//! | 4 | timed out: no subscriber, peer or answer in time |
//! | 130 | interrupted (Ctrl-C or SIGTERM) before the work was done |
//!
//! Errors are one line on standard error (`chaski: error: ...`); `-v` adds the details and debug
//! logs, `--log-format json` makes the logs machine-readable.

mod bench;
mod cli;
mod config;
mod credentials;
mod demo;
mod inspect;
mod logging;
mod run;

use std::process::ExitCode;

use clap::Parser;

use crate::{cli::Cli, config::ConfigError};

/// The exit codes scripts can rely on (see the crate docs).
pub(crate) mod exit {
    /// Failure at run time.
    pub(crate) const FAILURE: u8 = 1;
    /// Usage or configuration error.
    pub(crate) const USAGE: u8 = 2;
    /// Address error.
    pub(crate) const ADDRESS: u8 = 3;
    /// Timed out.
    pub(crate) const TIMEOUT: u8 = 4;
    /// Interrupted.
    pub(crate) const INTERRUPTED: u8 = 130;
}

/// An error with the exit code it must end the process with.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub(crate) struct Coded {
    /// The exit code.
    pub(crate) code: u8,
    /// What went wrong, one line.
    pub(crate) message: String,
}

/// An error that ends the process with `code`.
pub(crate) fn coded(code: u8, message: impl Into<String>) -> anyhow::Error {
    Coded {
        code,
        message: message.into(),
    }
    .into()
}

/// The exit code of an error: the first error in its chain that says.
fn exit_code(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if let Some(coded) = cause.downcast_ref::<Coded>() {
            return coded.code;
        }
        if cause.downcast_ref::<ConfigError>().is_some() {
            return exit::USAGE;
        }
        if let Some(err) = cause.downcast_ref::<chaski::Error>() {
            return match err {
                chaski::Error::Config(_) | chaski::Error::InvalidTopic(_) => exit::USAGE,
                chaski::Error::InvalidAddress { .. }
                | chaski::Error::Bind { .. }
                | chaski::Error::Connect { .. } => exit::ADDRESS,
                chaski::Error::Timeout(_) => exit::TIMEOUT,
                _ => exit::FAILURE,
            };
        }
    }
    exit::FAILURE
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let verbose = cli.global.verbose;
    if let Err(err) = logging::init(&cli.global) {
        eprintln!("chaski: error: {err}");
        return ExitCode::from(exit::USAGE);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("chaski: error: cannot start the runtime: {err}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    let result = runtime.block_on(cli::dispatch(cli));
    // Do not wait for tasks that are still winding down (a peer that does not answer a goodbye).
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            let line = format!("{err:#}").replace('\n', " ");
            eprintln!("chaski: error: {line}");
            if verbose > 0 {
                eprintln!("details: {err:?}");
            }
            ExitCode::from(exit_code(&err))
        }
    }
}
