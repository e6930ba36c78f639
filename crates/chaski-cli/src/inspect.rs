//! `chaski ping` and `chaski peers`.

use anyhow::Result;

use crate::cli::{PeersCommand, PingCommand};

/// `chaski ping`.
pub(crate) async fn ping(_cmd: PingCommand) -> Result<u8> {
    Err(crate::coded(
        crate::exit::FAILURE,
        "this command is not implemented yet",
    ))
}

/// `chaski peers`.
pub(crate) async fn peers(_cmd: PeersCommand) -> Result<u8> {
    Err(crate::coded(
        crate::exit::FAILURE,
        "this command is not implemented yet",
    ))
}
