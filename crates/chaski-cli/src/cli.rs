//! The command line: every command and flag (clap), and the dispatch to the code that runs it.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{Settings, parse_duration};

const AFTER_HELP: &str = "\
Settings: `node`, `pub`, `sub` and `ping` read a TOML file (--config; see chaski.example.toml),
overridden by flags, overridden by CHASKI_* environment variables (CHASKI_SEEDS=host:port).

Exit codes: 0 success, 1 failure at run time, 2 usage or configuration error, 3 address error
(cannot resolve, bind or connect), 4 timed out, 130 interrupted.

Examples:
  chaski demo
  chaski node --name hub --listen 127.0.0.1:7420 --relay
  chaski sub news --seed 127.0.0.1:7420
  chaski pub news \"hello\" --seed 127.0.0.1:7420
  chaski ping 127.0.0.1:7420 --count 3
  chaski peers 127.0.0.1:7420 --format dot | dot -Tsvg > overlay.svg";

/// Chaski: peer-to-peer publish/subscribe from the shell.
#[derive(Debug, Parser)]
#[command(name = "chaski", version, about, after_help = AFTER_HELP, propagate_version = true)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: Global,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Flags of every command.
#[derive(Debug, Args)]
pub(crate) struct Global {
    /// More detail: debug logs and the full error (-vv: trace logs).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub(crate) verbose: u8,
    /// Errors only in the logs.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub(crate) quiet: bool,
    /// The format of the logs on standard error.
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true)]
    pub(crate) log_format: LogFormat,
}

/// The format of the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run a node until Ctrl-C or SIGTERM, logging membership events.
    #[command(after_help = "Examples:
  chaski node --name hub --listen 127.0.0.1:7420 --relay --no-lan-discovery
  chaski node --config node.toml --subscribe news --seed 127.0.0.1:7420
  CHASKI_MAX_CONNECTIONS=8 chaski node --config node.toml")]
    Node(NodeCommand),
    /// Publish a message, each line of standard input, or generated messages.
    #[command(after_help = "Examples:
  chaski pub news \"hello\" --seed 127.0.0.1:7420
  tail -f app.log | chaski pub logs --seed 127.0.0.1:7420
  chaski pub bench --count 10000 --size 256 --rate 1000 --seed 127.0.0.1:7420

The command waits (--wait) until it is paired with a subscriber of the topic, publishes, then
exits once every message is handed to the network and its connections are closed cleanly.")]
    Pub(PubCommand),
    /// Print the messages published on topics.
    #[command(after_help = "Examples:
  chaski sub news --seed 127.0.0.1:7420
  chaski sub news alerts --format json --count 10 --seed 127.0.0.1:7420")]
    Sub(SubCommand),
    /// Measure round trips to a node, like the system `ping`.
    #[command(after_help = "Examples:
  chaski ping 127.0.0.1:7420
  chaski ping hub --count 5 --interval 200ms      # a name, found by LAN discovery or --seed")]
    Ping(PingCommand),
    /// Ask a running node for its peer table.
    #[command(after_help = "Examples:
  chaski peers 127.0.0.1:7420
  chaski peers 127.0.0.1:7420 --format json
  chaski peers 127.0.0.1:7420 --format dot | dot -Tsvg > overlay.svg")]
    Peers(PeersCommand),
    /// A small network on loopback in this process: discovery, pairing, messages, a node killed
    /// and restarted, then a summary (about 16 s).
    #[command(after_help = "Examples:
  chaski demo
  chaski demo --duration 30s")]
    Demo(DemoCommand),
    /// The node benchmark: messages per second and round trips beside a raw TCP baseline.
    #[command(after_help = "Examples:
  chaski bench
  chaski bench --sizes 64,1024 --processes one --runs 3
  chaski bench --quick --json > results.jsonl

Build it with --release (cargo run --release -p chaski-cli -- bench); `cargo xtask bench node`
runs it that way. Progress goes to standard error.")]
    Bench(BenchCommand),
    /// A network CA: make one, and issue node identities signed by it.
    #[command(after_help = "A closed network with a CA:
  chaski ca init --dir ca
  chaski ca issue hub --dir ca            # writes ca/hub.key, prints the node's id
  chaski node --identity ca/hub.key --ca ca/ca.crt --listen 127.0.0.1:7420")]
    Ca(CaCommand),
    /// Make a network key: a secret that closes a network to those who hold it.
    #[command(after_help = "A closed network with a shared key:
  chaski network-key --out team.key
  chaski node --network-key-file team.key --listen 127.0.0.1:7420
  chaski sub news --network-key-file team.key --seed 127.0.0.1:7420")]
    NetworkKey(NetworkKeyCommand),
}

/// Which variants of the throughput measurement to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Processes {
    /// Both nodes in this process.
    One,
    /// The subscriber in a child process.
    Two,
    /// One, then two.
    Both,
}

/// Which connection security the benchmark measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum BenchSecurity {
    /// Plain TCP (insecure plaintext).
    Plaintext,
    /// TLS 1.3, the default of every node.
    Tls,
    /// Both, side by side.
    Both,
}

/// `chaski bench`.
#[derive(Debug, Args)]
pub(crate) struct BenchCommand {
    /// Payload sizes in bytes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "8,64,1024,65536,1048576")]
    pub(crate) sizes: Vec<usize>,
    /// Processes: one, two, or both variants.
    #[arg(long, value_enum, default_value_t = Processes::Both)]
    pub(crate) processes: Processes,
    /// Connection security: plaintext, tls, or both side by side.
    #[arg(long, value_enum, default_value_t = BenchSecurity::Both)]
    pub(crate) security: BenchSecurity,
    /// Runs per measurement (the median is reported). Default: 5, or 1 with --quick.
    #[arg(long, value_name = "N")]
    pub(crate) runs: Option<usize>,
    /// A short smoke run (also CHASKI_BENCH_QUICK=1).
    #[arg(long)]
    pub(crate) quick: bool,
    /// One JSON object per measurement on standard output.
    #[arg(long)]
    pub(crate) json: bool,
    /// Internal: be the subscriber process of the two-process variant.
    #[arg(long, hide = true, value_name = "ADDR")]
    pub(crate) child: Option<String>,
    /// Internal: the child runs with insecure plaintext.
    #[arg(long, hide = true)]
    pub(crate) child_plaintext: bool,
}

/// How a command joins the network: the node settings.
#[derive(Debug, Args)]
pub(crate) struct JoinArgs {
    /// A TOML file of node settings (see chaski.example.toml).
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// The node's name.
    #[arg(long)]
    pub(crate) name: Option<String>,
    /// The address to listen on (host:port; port 0 picks one).
    #[arg(long, value_name = "ADDR")]
    pub(crate) listen: Option<String>,
    /// A node to connect to at start (host:port); repeatable.
    #[arg(long = "seed", value_name = "ADDR")]
    pub(crate) seeds: Vec<String>,
    /// Direct connections to keep per topic (at least 2).
    #[arg(long, value_name = "N")]
    pub(crate) max_connections: Option<usize>,
    /// Do not look for peers on the LAN.
    #[arg(long)]
    pub(crate) no_lan_discovery: bool,
    /// The UDP port of LAN discovery.
    #[arg(long, value_name = "PORT")]
    pub(crate) lan_port: Option<u16>,
    /// The network to join (nodes of other networks are ignored).
    #[arg(long, value_name = "ID")]
    pub(crate) network_id: Option<String>,
    #[command(flatten)]
    pub(crate) credentials: Credentials,
}

/// Who the command is, and which closed network it belongs to.
#[derive(Debug, Args)]
pub(crate) struct Credentials {
    /// The node's key file (made, mode 0600, if missing): the same id at every start. In a
    /// network closed by a CA, the identity `chaski ca issue` made.
    #[arg(long, value_name = "FILE")]
    pub(crate) identity: Option<String>,
    /// A network closed to the holders of KEY (better: CHASKI_NETWORK_KEY or
    /// --network-key-file, which other users cannot see in the process list).
    #[arg(long, value_name = "KEY")]
    pub(crate) network_key: Option<String>,
    /// A network closed to the holders of the key in FILE (mode 0600).
    #[arg(long, value_name = "FILE", conflicts_with = "network_key")]
    pub(crate) network_key_file: Option<String>,
    /// A network closed by the CA whose certificate is FILE (with --identity from `chaski ca
    /// issue`).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["network_key", "network_key_file"])]
    pub(crate) ca: Option<String>,
    /// A node id to refuse even with valid credentials (revoked); repeatable.
    #[arg(long = "deny", value_name = "NODE_ID")]
    pub(crate) deny: Vec<String>,
    /// INSECURE: plain TCP instead of TLS (no encryption, no authentication). For benchmarks
    /// and fully trusted links; TLS nodes refuse it.
    #[arg(long, conflicts_with_all = ["network_key", "network_key_file", "ca"])]
    pub(crate) insecure_plaintext: bool,
}

impl Credentials {
    /// The settings these flags set.
    pub(crate) fn settings(&self) -> Settings {
        Settings {
            identity: self.identity.clone(),
            network_key: self.network_key.clone().map(crate::config::Secret),
            network_key_file: self.network_key_file.clone(),
            ca: self.ca.clone(),
            deny: (!self.deny.is_empty()).then(|| self.deny.clone()),
            insecure_plaintext: self.insecure_plaintext.then_some(true),
            ..Settings::default()
        }
    }
}

impl JoinArgs {
    /// The settings: file, then flags, then environment.
    pub(crate) fn settings(&self, extra: Settings) -> Result<Settings> {
        let mut settings = match &self.config {
            Some(path) => Settings::from_file(path)?,
            None => Settings::default(),
        };
        let mut flags = Settings {
            name: self.name.clone(),
            listen: self.listen.clone(),
            seeds: (!self.seeds.is_empty()).then(|| self.seeds.clone()),
            max_connections: self.max_connections,
            lan_discovery: self.no_lan_discovery.then_some(false),
            lan_port: self.lan_port,
            network_id: self.network_id.clone(),
            ..Settings::default()
        };
        flags.overlay(self.credentials.settings());
        flags.overlay(extra);
        settings.overlay(flags);
        settings.overlay(Settings::from_env(|name| std::env::var(name).ok())?);
        Ok(settings)
    }
}

/// `chaski node`.
#[derive(Debug, Args)]
pub(crate) struct NodeCommand {
    #[command(flatten)]
    pub(crate) join: JoinArgs,
    /// A topic to subscribe to; repeatable.
    #[arg(long = "subscribe", value_name = "TOPIC")]
    pub(crate) subscribe: Vec<String>,
    /// Be a relay: accept every topic and forward between nodes not paired directly.
    #[arg(long)]
    pub(crate) relay: bool,
}

/// `chaski pub`.
#[derive(Debug, Args)]
pub(crate) struct PubCommand {
    /// The topic.
    pub(crate) topic: String,
    /// The message; without it, each line of standard input (or --count generated messages).
    pub(crate) message: Option<String>,
    /// Publish N messages: MESSAGE N times, or N generated ones of --size bytes.
    #[arg(long, value_name = "N")]
    pub(crate) count: Option<u64>,
    /// The size of generated messages in bytes.
    #[arg(long, value_name = "B", default_value_t = 64)]
    pub(crate) size: usize,
    /// Messages per second (0: as fast as the network takes them).
    #[arg(long, value_name = "R", default_value_t = 0.0)]
    pub(crate) rate: f64,
    /// How long to wait for a subscriber of the topic before giving up (exit code 4).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub(crate) wait: std::time::Duration,
    #[command(flatten)]
    pub(crate) join: JoinArgs,
}

/// How `sub` prints messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum SubFormat {
    /// `topic publisher: payload`, one line per message.
    Text,
    /// One JSON object per line.
    Json,
    /// The payload bytes only, as they came.
    Raw,
}

/// `chaski sub`.
#[derive(Debug, Args)]
pub(crate) struct SubCommand {
    /// The topics.
    #[arg(required = true)]
    pub(crate) topics: Vec<String>,
    /// How to print each message.
    #[arg(long, value_enum, default_value_t = SubFormat::Text)]
    pub(crate) format: SubFormat,
    /// Stop after N messages.
    #[arg(long, value_name = "N")]
    pub(crate) count: Option<u64>,
    #[command(flatten)]
    pub(crate) join: JoinArgs,
}

/// `chaski ping`.
#[derive(Debug, Args)]
pub(crate) struct PingCommand {
    /// The node: an address (host:port) or a name (found by LAN discovery or through --seed).
    pub(crate) target: String,
    /// Stop after N round trips (0: until Ctrl-C).
    #[arg(short, long, value_name = "N", default_value_t = 5)]
    pub(crate) count: u64,
    /// The time between pings.
    #[arg(short, long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub(crate) interval: std::time::Duration,
    /// Padding in bytes carried each way.
    #[arg(short, long, value_name = "B", default_value_t = 0)]
    pub(crate) size: u32,
    /// How long to wait for each answer, and to find the node.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub(crate) timeout: std::time::Duration,
    #[command(flatten)]
    pub(crate) join: JoinArgs,
}

/// How `peers` prints the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum PeersFormat {
    /// Aligned columns.
    Table,
    /// One JSON document.
    Json,
    /// A Graphviz graph of the node and its peers.
    Dot,
}

/// `chaski peers`.
#[derive(Debug, Args)]
pub(crate) struct PeersCommand {
    /// The node's address (host:port).
    pub(crate) addr: String,
    /// The output format.
    #[arg(long, value_enum, default_value_t = PeersFormat::Table)]
    pub(crate) format: PeersFormat,
    /// How long to wait for the answer.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub(crate) timeout: std::time::Duration,
    /// The node's network id, if not the default network.
    #[arg(long, value_name = "ID")]
    pub(crate) network_id: Option<String>,
    /// The node's network: this tool joins it as a node would (CHASKI_* variables override
    /// the flags, as for every command).
    #[command(flatten)]
    pub(crate) credentials: Credentials,
}

/// `chaski ca`.
#[derive(Debug, Args)]
pub(crate) struct CaCommand {
    #[command(subcommand)]
    pub(crate) action: CaAction,
}

/// What `chaski ca` does.
#[derive(Debug, Subcommand)]
pub(crate) enum CaAction {
    /// Make a network CA: DIR/ca.key (secret, mode 0600) and DIR/ca.crt (every node needs it).
    Init {
        /// The directory of the CA's files (made if missing).
        #[arg(long, value_name = "DIR", default_value = ".")]
        dir: PathBuf,
        /// The CA's name, in its certificate.
        #[arg(long, default_value = "chaski network CA")]
        name: String,
    },
    /// Make a node identity signed by the CA: NAME.key (mode 0600) holds the node's key, its
    /// certificate and the network's beacon key; start the node with --identity NAME.key
    /// --ca ca.crt. Prints the node's id.
    Issue {
        /// The node's name, in its certificate.
        name: String,
        /// The directory of the CA's files.
        #[arg(long, value_name = "DIR", default_value = ".")]
        dir: PathBuf,
        /// Where to write the identity (default: NAME.key in the CA's directory).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// How long the certificate is valid.
        #[arg(long, value_name = "DURATION", default_value = "365d", value_parser = parse_days)]
        valid_for: std::time::Duration,
    },
}

/// `chaski network-key`.
#[derive(Debug, Args)]
pub(crate) struct NetworkKeyCommand {
    /// Write the key to FILE (mode 0600) instead of standard output.
    #[arg(long, value_name = "FILE")]
    pub(crate) out: Option<PathBuf>,
}

/// Parses `30d`, or any duration `parse_duration` takes.
fn parse_days(text: &str) -> Result<std::time::Duration, String> {
    match text.trim().strip_suffix('d') {
        Some(days) => days
            .parse::<u64>()
            .map(|d| std::time::Duration::from_secs(d * 24 * 3600))
            .map_err(|_| format!("expected a number of days such as `30d`, got `{text}`")),
        None => parse_duration(text),
    }
}

/// `chaski demo`.
#[derive(Debug, Args)]
pub(crate) struct DemoCommand {
    /// How long the demo runs (at least 8s).
    #[arg(long, value_name = "DURATION", default_value = "16s", value_parser = parse_duration)]
    pub(crate) duration: std::time::Duration,
}

/// Runs the command; the exit code on success.
pub(crate) async fn dispatch(cli: Cli) -> Result<u8> {
    crate::run::install_signals().map_err(|e| anyhow::anyhow!("cannot handle signals: {e}"))?;
    match cli.command {
        Command::Node(cmd) => crate::run::node(cmd).await,
        Command::Pub(cmd) => crate::run::publish(cmd).await,
        Command::Sub(cmd) => crate::run::subscribe(cmd).await,
        Command::Ping(cmd) => crate::inspect::ping(cmd).await,
        Command::Peers(cmd) => crate::inspect::peers(cmd).await,
        Command::Demo(cmd) => crate::demo::run(cmd).await,
        Command::Bench(cmd) => crate::bench::run(cmd).await,
        Command::Ca(cmd) => crate::credentials::ca(cmd),
        Command::NetworkKey(cmd) => crate::credentials::network_key(cmd),
    }
}
