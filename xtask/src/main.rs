//! Chaski's build tasks, run as `cargo xtask <task>` (the alias lives in `.cargo/config.toml`).
//!
//! * `codegen [--check]`: compile `proto/` into `crates/chaski-wire/src/generated/`, or check that
//!   the committed output is fresh.
//! * `ci`: everything CI runs: format, lints, codegen check, tests, docs.
//! * `bench [NAME...]`: the benchmarks (`wire`, ...; all of them when no name is given).

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::Instant,
};

use anyhow::{Context, Result, bail};

mod codegen;

const USAGE: &str = "\
usage: cargo xtask <task>

tasks:
  codegen [--check]   compile proto/ into crates/chaski-wire/src/generated/ (--check: fail if stale)
  ci                  fmt --check, clippy -D warnings, codegen --check, tests, docs
  bench [NAME...]     run benchmarks; names: wire, transport, membership, node (default: all)
";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = env::args().skip(1).collect();
    let (task, rest) = match args.split_first() {
        Some((task, rest)) => (task.as_str(), rest),
        None => {
            eprint!("{USAGE}");
            bail!("no task given");
        }
    };
    match task {
        "codegen" => match rest {
            [] => codegen::write(&project_root()),
            [flag] if flag == "--check" => codegen::check(&project_root()),
            _ => bail!("codegen takes only `--check`\n{USAGE}"),
        },
        "ci" => {
            if !rest.is_empty() {
                bail!("ci takes no arguments");
            }
            ci()
        }
        "bench" => bench(rest),
        "help" | "--help" | "-h" => {
            print!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown task `{other}`\n{USAGE}"),
    }
}

/// The workspace root (the parent of this crate's directory).
fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

fn cargo() -> Command {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(project_root());
    cmd
}

/// Runs `cmd`, echoing it first; fails when it exits non-zero.
fn run_step(name: &str, mut cmd: Command) -> Result<()> {
    eprintln!("\n==> {name}: {cmd:?}");
    let start = Instant::now();
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{name}`"))?;
    if !status.success() {
        bail!("`{name}` failed ({status})");
    }
    eprintln!("==> {name}: ok in {:.1} s", start.elapsed().as_secs_f64());
    Ok(())
}

fn ci() -> Result<()> {
    let start = Instant::now();

    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--", "--check"]);
    run_step("fmt", fmt)?;

    let mut clippy = cargo();
    clippy.args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--locked",
        "--",
        "-D",
        "warnings",
    ]);
    run_step("clippy", clippy)?;

    eprintln!("\n==> codegen --check");
    codegen::check(&project_root())?;
    eprintln!("==> codegen --check: ok");

    let mut test = cargo();
    test.args(["test", "--workspace", "--locked"]);
    run_step("test", test)?;

    let mut doc = cargo();
    doc.args(["doc", "--workspace", "--no-deps", "--locked"])
        .env("RUSTDOCFLAGS", "-Dwarnings");
    run_step("doc", doc)?;

    eprintln!(
        "\nci: all steps passed in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A benchmark: its name for `cargo xtask bench NAME`, the package and the bench target.
struct Bench {
    name: &'static str,
    package: &'static str,
    target: &'static str,
}

const BENCHES: &[Bench] = &[
    Bench {
        name: "wire",
        package: "chaski-wire",
        target: "wire",
    },
    Bench {
        name: "membership",
        package: "chaski-testkit",
        target: "membership",
    },
    Bench {
        name: "transport",
        package: "chaski-transport",
        target: "transport",
    },
    // `chaski bench` (the CLI runs the node benchmark; see `bench` below).
    Bench {
        name: "node",
        package: "chaski-cli",
        target: "chaski",
    },
];

fn bench(names: &[String]) -> Result<()> {
    let selected: Vec<&Bench> = if names.is_empty() {
        BENCHES.iter().collect()
    } else {
        names
            .iter()
            .map(|name| {
                BENCHES.iter().find(|b| b.name == name).with_context(|| {
                    let known: Vec<_> = BENCHES.iter().map(|b| b.name).collect();
                    format!("unknown benchmark `{name}`; known: {}", known.join(", "))
                })
            })
            .collect::<Result<_>>()?
    };
    for b in selected {
        let mut cmd = cargo();
        if b.package == "chaski-cli" {
            // The node benchmark is `chaski bench`, optimised as `cargo bench` would be.
            cmd.args([
                "run",
                "--release",
                "--locked",
                "-p",
                b.package,
                "--bin",
                b.target,
            ]);
            cmd.args(["--", "bench"]);
        } else {
            cmd.args(["bench", "--locked", "-p", b.package, "--bench", b.target]);
        }
        run_step(&format!("bench {}", b.name), cmd)?;
    }
    Ok(())
}
