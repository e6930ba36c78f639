//! `chaski ca` (a network CA and the node identities it issues) and `chaski network-key` (a
//! shared network secret). Secret files are written with mode 0600 and never replaced.

use std::path::Path;

use anyhow::{Context, Result};
use chaski::{CertificateAuthority, Identity, NetworkKey};

use crate::{
    cli::{CaAction, CaCommand, NetworkKeyCommand},
    coded, exit,
};

/// The CA's files in its directory.
const CA_KEY: &str = "ca.key";
const CA_CERT: &str = "ca.crt";

/// `chaski ca`.
pub(crate) fn ca(cmd: CaCommand) -> Result<u8> {
    match cmd.action {
        CaAction::Init { dir, name } => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot make directory {}", dir.display()))?;
            let (key, cert) = (dir.join(CA_KEY), dir.join(CA_CERT));
            for path in [&key, &cert] {
                if path.exists() {
                    return Err(coded(
                        exit::USAGE,
                        format!("{} exists: a CA is already there", path.display()),
                    ));
                }
            }
            let ca = CertificateAuthority::generate(&name).context("cannot make the CA")?;
            ca.write_new(&key, &cert)?;
            eprintln!(
                "made CA `{name}`: {} (secret, mode 0600) and {} (give it to every node)",
                key.display(),
                cert.display()
            );
            Ok(0)
        }
        CaAction::Issue {
            name,
            dir,
            out,
            valid_for,
        } => {
            let ca = CertificateAuthority::load(&dir.join(CA_KEY), &dir.join(CA_CERT))
                .context("cannot read the CA (make one with `chaski ca init`)")?;
            let out = out.unwrap_or_else(|| dir.join(format!("{name}.key")));
            if out.exists() {
                return Err(coded(
                    exit::USAGE,
                    format!("{} exists: not replaced", out.display()),
                ));
            }
            let identity = ca
                .issue(&Identity::generate()?, &name, valid_for)
                .context("cannot issue the identity")?;
            identity.write_new(&out)?;
            println!("{}", identity.node_id());
            eprintln!(
                "issued `{name}` (node {}) for {} days: {} (secret, mode 0600); start it with \
                 --identity {} --ca {}",
                identity.node_id(),
                valid_for.as_secs() / 86_400,
                out.display(),
                out.display(),
                dir.join(CA_CERT).display(),
            );
            Ok(0)
        }
    }
}

/// `chaski network-key`.
pub(crate) fn network_key(cmd: NetworkKeyCommand) -> Result<u8> {
    let key = NetworkKey::generate()?;
    match cmd.out.as_deref() {
        Some(path) => {
            write_key(&key, path)?;
            eprintln!(
                "wrote a new network key to {} (mode 0600); give it to every member",
                path.display()
            );
        }
        None => println!("{}", key.expose()),
    }
    Ok(0)
}

fn write_key(key: &NetworkKey, path: &Path) -> Result<()> {
    if path.exists() {
        return Err(coded(
            exit::USAGE,
            format!("{} exists: not replaced", path.display()),
        ));
    }
    Ok(key.write_new(path)?)
}
