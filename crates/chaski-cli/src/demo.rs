//! `chaski demo`.

use anyhow::Result;

use crate::cli::DemoCommand;

/// Runs the demo.
pub(crate) async fn run(_cmd: DemoCommand) -> Result<u8> {
    Err(crate::coded(
        crate::exit::FAILURE,
        "this command is not implemented yet",
    ))
}
