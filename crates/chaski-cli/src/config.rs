//! Node settings from three sources, merged in order of precedence: a TOML file (`--config`),
//! then command-line flags, then `CHASKI_*` environment variables.
//!
//! The keys mirror [`chaski::NodeBuilder`] one for one; `chaski.example.toml` documents each
//! with its default. Every error names the key (or variable) at fault and what it accepts.

use std::{net::Ipv4Addr, path::Path, time::Duration};

use chaski::{NodeBuilder, Overflow};
use serde::{Deserialize, Deserializer};

/// A settings error: the file or a variable is malformed. Always a usage error (exit code 2).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has a wrong key or value.
    #[error("config file {path}, line {line}: {message}")]
    File {
        /// The file.
        path: String,
        /// The line of the error (1-based).
        line: usize,
        /// What is wrong, naming the key.
        message: String,
    },
    /// An environment variable has a wrong value.
    #[error("environment variable {var}: {message}")]
    Env {
        /// The variable.
        var: String,
        /// What is wrong.
        message: String,
    },
    /// The `transport_*` settings break one of the transport's rules.
    #[error("transport settings: {0}")]
    Transport(String),
    /// The identity file could not be read or made.
    #[error("{0}")]
    Identity(String),
    /// The network's credentials (key, CA, deny list) are missing, unreadable or inconsistent.
    #[error("{0}")]
    Network(String),
}

/// The prefix of the environment variables that override settings: `CHASKI_` and the key in
/// upper case (`CHASKI_MAX_CONNECTIONS=8`). Lists are comma-separated.
pub(crate) const ENV_PREFIX: &str = "CHASKI_";

/// A duration written with a unit: `250ms`, `1s`, `1.5s`, `2m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HumanDuration(pub(crate) Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<HumanDuration, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_duration(&text)
            .map(HumanDuration)
            .map_err(serde::de::Error::custom)
    }
}

/// Parses `250ms`, `1s`, `1.5s` or `2m`.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("expected a duration such as `250ms`, `1s` or `2m`, got `{text}`");
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let millis_per_unit: u64 = match unit.trim() {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        _ => return Err(bad()),
    };
    if let Ok(whole) = number.parse::<u64>() {
        let millis = whole.checked_mul(millis_per_unit).ok_or_else(bad)?;
        return Ok(Duration::from_millis(millis));
    }
    let number: f64 = number.parse().map_err(|_| bad())?;
    Duration::try_from_secs_f64(number * millis_per_unit as f64 / 1e3).map_err(|_| bad())
}

/// A secret setting (a network key): `Debug` does not show it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub(crate) struct Secret(pub(crate) String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// A stream overflow policy as written in the file: `block`, `drop-oldest` or `drop-newest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum OverflowSetting {
    /// [`Overflow::Block`].
    Block,
    /// [`Overflow::DropOldest`].
    DropOldest,
    /// [`Overflow::DropNewest`].
    DropNewest,
}

/// What an environment variable's value is parsed as.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Text,
    List,
    Bool,
    Int,
}

macro_rules! settings {
    ($($(#[$doc:meta])* $key:ident: $ty:ty => $kind:ident,)*) => {
        /// Node settings, each unset (`None`) unless a source gave it. The keys of the file.
        #[derive(Debug, Clone, Default, PartialEq, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub(crate) struct Settings {
            $($(#[$doc])* pub(crate) $key: Option<$ty>,)*
        }

        impl Settings {
            /// Every key with the kind of value its variable holds.
            const KEYS: &'static [(&'static str, Kind)] = &[$((stringify!($key), Kind::$kind),)*];

            /// Takes every setting that `over` sets.
            pub(crate) fn overlay(&mut self, over: Settings) {
                $(if over.$key.is_some() { self.$key = over.$key; })*
            }
        }
    };
}

settings! {
    /// [`NodeBuilder::name`].
    name: String => Text,
    /// [`NodeBuilder::listen`].
    listen: String => Text,
    /// [`NodeBuilder::subscribe`].
    subscribe: Vec<String> => List,
    /// [`NodeBuilder::seeds`].
    seeds: Vec<String> => List,
    /// [`NodeBuilder::relay`].
    relay: bool => Bool,
    /// [`NodeBuilder::max_connections`].
    max_connections: usize => Int,
    /// [`NodeBuilder::disconnect_unneeded`].
    disconnect_unneeded: bool => Bool,
    /// [`NodeBuilder::status_from_anywhere`].
    status_from_anywhere: bool => Bool,
    /// [`NodeBuilder::lan_discovery`].
    lan_discovery: bool => Bool,
    /// [`NodeBuilder::lan_port`].
    lan_port: u16 => Int,
    /// [`NodeBuilder::lan_group`].
    lan_group: Ipv4Addr => Text,
    /// [`NodeBuilder::network_id`].
    network_id: String => Text,
    /// A key file for [`NodeBuilder::identity`], made (mode 0600) if missing: the node keeps
    /// its id across restarts. Unset or empty: a fresh key, a new id, at every start.
    identity: String => Text,
    /// [`NodeBuilder::insecure_plaintext`]: plain TCP, no TLS. Insecure.
    insecure_plaintext: bool => Bool,
    /// [`NodeBuilder::network_key`]: a network closed to the holders of this secret.
    network_key: Secret => Text,
    /// As `network_key`, read from a private file (mode 0600).
    network_key_file: String => Text,
    /// [`NodeBuilder::network`] closed by a CA: the CA's certificate file (PEM); the node's
    /// `identity` must be one the CA issued (`chaski ca issue`).
    ca: String => Text,
    /// Node ids refused even with valid credentials (a deny list, for revoked members).
    deny: Vec<String> => List,
    /// [`NodeBuilder::ping_interval`].
    ping_interval: HumanDuration => Text,
    /// [`NodeBuilder::peer_timeout`].
    peer_timeout: HumanDuration => Text,
    /// [`NodeBuilder::reconnect_backoff`], first delay.
    reconnect_initial: HumanDuration => Text,
    /// [`NodeBuilder::reconnect_backoff`], cap.
    reconnect_max: HumanDuration => Text,
    /// [`NodeBuilder::reconnect_attempts`].
    reconnect_attempts: u32 => Int,
    /// [`NodeBuilder::gap_timeout`].
    gap_timeout: HumanDuration => Text,
    /// [`NodeBuilder::message_cache`], messages (default 65536).
    cache_messages: usize => Int,
    /// [`NodeBuilder::message_cache`], bytes (default 67108864).
    cache_bytes: usize => Int,
    /// [`NodeBuilder::message_cache`], age (default 30s).
    cache_age: HumanDuration => Text,
    /// [`NodeBuilder::best_effort`].
    best_effort: Vec<String> => List,
    /// [`NodeBuilder::stream_capacity`].
    stream_capacity: usize => Int,
    /// [`NodeBuilder::stream_overflow`].
    stream_overflow: OverflowSetting => Text,
    /// [`NodeBuilder::command_capacity`].
    command_capacity: usize => Int,
    /// [`NodeBuilder::event_capacity`].
    event_capacity: usize => Int,
    /// [`NodeBuilder::transport`]: `transport::ConfigBuilder::max_inbound`.
    transport_max_inbound: usize => Int,
    /// `transport::ConfigBuilder::max_outbound`.
    transport_max_outbound: usize => Int,
    /// `transport::ConfigBuilder::handshake_timeout`.
    transport_handshake_timeout: HumanDuration => Text,
    /// `transport::ConfigBuilder::connect_timeout`.
    transport_connect_timeout: HumanDuration => Text,
    /// `transport::ConfigBuilder::send_queue`.
    transport_send_queue: usize => Int,
    /// `transport::ConfigBuilder::event_queue`.
    transport_event_queue: usize => Int,
    /// `transport::ConfigBuilder::read_buffer`.
    transport_read_buffer: usize => Int,
    /// `transport::ConfigBuilder::max_write_batch`.
    transport_max_write_batch: usize => Int,
    /// `transport::ConfigBuilder::max_frame_len`.
    transport_max_frame_len: usize => Int,
    /// `transport::ConfigBuilder::max_datagram_len`.
    transport_max_datagram_len: usize => Int,
    /// `transport::ConfigBuilder::linger`.
    transport_linger: HumanDuration => Text,
    /// `transport::ConfigBuilder::udp`.
    transport_udp: bool => Bool,
    /// `transport::ConfigBuilder::send_queue_bytes`.
    transport_send_queue_bytes: usize => Int,
    /// `transport::ConfigBuilder::max_inbound_per_ip`.
    transport_max_inbound_per_ip: usize => Int,
    /// `transport::ConfigBuilder::max_handshakes_per_ip`.
    transport_max_handshakes_per_ip: usize => Int,
    /// `transport::ConfigBuilder::tcp_user_timeout` ("0s": the system default).
    transport_tcp_user_timeout: HumanDuration => Text,
    /// `transport::ConfigBuilder::tcp_keepalive` ("0s": off).
    transport_tcp_keepalive: HumanDuration => Text,
}

impl Settings {
    /// Reads a TOML file.
    pub(crate) fn from_file(path: &Path) -> Result<Settings, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        Settings::from_toml(&text, &shown)
    }

    /// Parses the text of a TOML file (`path` is for messages).
    pub(crate) fn from_toml(text: &str, path: &str) -> Result<Settings, ConfigError> {
        toml::from_str(text).map_err(|err| ConfigError::File {
            path: path.to_owned(),
            line: err
                .span()
                .map_or(1, |span| text[..span.start].matches('\n').count() + 1),
            message: err.message().replace('\n', " "),
        })
    }

    /// Reads the `CHASKI_*` variables that name a key, with `var` to look one up.
    pub(crate) fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Settings, ConfigError> {
        let mut settings = Settings::default();
        for (key, kind) in Settings::KEYS {
            let name = format!("{ENV_PREFIX}{}", key.to_ascii_uppercase());
            let Some(raw) = var(&name) else { continue };
            let error = |message: String| ConfigError::Env {
                var: name.clone(),
                message,
            };
            let value = match kind {
                Kind::Text => toml::Value::String(raw.clone()),
                Kind::List => toml::Value::Array(
                    raw.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(|s| toml::Value::String(s.to_owned()))
                        .collect(),
                ),
                Kind::Bool => toml::Value::Boolean(
                    parse_bool(&raw)
                        .ok_or_else(|| error(format!("expected true or false, got `{raw}`")))?,
                ),
                Kind::Int => toml::Value::Integer(
                    raw.trim()
                        .parse()
                        .map_err(|_| error(format!("expected a whole number, got `{raw}`")))?,
                ),
            };
            let mut table = toml::Table::new();
            table.insert((*key).to_owned(), value);
            let one: Settings = toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| error(e.message().replace('\n', " ")))?;
            settings.overlay(one);
        }
        Ok(settings)
    }

    /// The identity file's identity (made if missing), if one is set.
    pub(crate) fn identity(&self) -> Result<Option<chaski::Identity>, ConfigError> {
        let Some(path) = self.identity.as_ref().filter(|p| !p.is_empty()) else {
            return Ok(None);
        };
        let (identity, created) = chaski::Identity::load_or_create(Path::new(path))
            .map_err(|e| ConfigError::Identity(e.to_string()))?;
        if created {
            tracing::info!(path = %path, node = %identity.node_id(), "identity created");
        }
        Ok(Some(identity))
    }

    /// The closed network the credentials name (a network key, or a CA), with the deny list;
    /// `None` for an open network.
    pub(crate) fn network(&self) -> Result<Option<chaski::transport::Network>, ConfigError> {
        use chaski::transport::{Network, NetworkKey};
        let set = |v: &Option<String>| v.clone().filter(|v| !v.trim().is_empty());
        let failed =
            |what: &str, e: chaski::IdentityError| ConfigError::Network(format!("{what}: {e}"));
        let key = match (
            self.network_key.as_ref().filter(|k| !k.0.trim().is_empty()),
            set(&self.network_key_file),
        ) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::Network(
                    "network_key and network_key_file are both set: give one".to_owned(),
                ));
            }
            (Some(key), None) => {
                Some(NetworkKey::from_text(&key.0).map_err(|e| failed("network key", e))?)
            }
            (None, Some(path)) => Some(
                NetworkKey::load(Path::new(&path)).map_err(|e| failed("network key file", e))?,
            ),
            (None, None) => None,
        };
        let network = match (key, set(&self.ca)) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::Network(
                    "a network is closed by a network key or by a CA, not both".to_owned(),
                ));
            }
            (Some(key), None) => Network::from_key(&key).map_err(|e| failed("network key", e))?,
            (None, Some(ca)) => {
                Network::load_ca(Path::new(&ca)).map_err(|e| failed("network CA", e))?
            }
            (None, None) => {
                if self.deny.as_ref().is_some_and(|d| !d.is_empty()) {
                    return Err(ConfigError::Network(
                        "deny needs a closed network (network_key or ca)".to_owned(),
                    ));
                }
                return Ok(None);
            }
        };
        let mut denied = Vec::new();
        for id in self.deny.iter().flatten() {
            denied.push(id.parse::<chaski::NodeId>().map_err(|e| {
                ConfigError::Network(format!("deny: `{id}` is not a node id: {e}"))
            })?);
        }
        Ok(Some(network.deny(denied)))
    }

    /// The security of a tool that reaches a node as a peer would (`chaski peers`): the
    /// identity file's key or a fresh one, in the network the credentials name.
    pub(crate) fn tool_security(
        &self,
    ) -> Result<(chaski::NodeId, chaski::transport::Security), ConfigError> {
        use chaski::transport::Security;
        let identity = match self.identity()? {
            Some(identity) => identity,
            None => {
                chaski::Identity::generate().map_err(|e| ConfigError::Identity(e.to_string()))?
            }
        };
        let network = self.network()?;
        let security = match (self.insecure_plaintext.unwrap_or(false), network) {
            (true, Some(_)) => {
                return Err(ConfigError::Network(
                    "a closed network needs TLS: drop insecure_plaintext".to_owned(),
                ));
            }
            (true, None) => Security::InsecurePlaintext,
            (false, Some(network)) => Security::closed(&identity, &network)
                .map_err(|e| ConfigError::Network(e.to_string()))?,
            (false, None) => {
                Security::tls(&identity).map_err(|e| ConfigError::Network(e.to_string()))?
            }
        };
        Ok((identity.node_id(), security))
    }

    /// The transport's settings: its defaults with the `transport_*` keys over them.
    fn transport(&self) -> Result<chaski::transport::Config, ConfigError> {
        let mut t = chaski::transport::Config::builder();
        if let Some(v) = self.transport_max_inbound {
            t = t.max_inbound(v);
        }
        if let Some(v) = self.transport_max_outbound {
            t = t.max_outbound(v);
        }
        if let Some(v) = self.transport_handshake_timeout {
            t = t.handshake_timeout(v.0);
        }
        if let Some(v) = self.transport_connect_timeout {
            t = t.connect_timeout(v.0);
        }
        if let Some(v) = self.transport_send_queue {
            t = t.send_queue(v);
        }
        if let Some(v) = self.transport_event_queue {
            t = t.event_queue(v);
        }
        if let Some(v) = self.transport_read_buffer {
            t = t.read_buffer(v);
        }
        if let Some(v) = self.transport_max_write_batch {
            t = t.max_write_batch(v);
        }
        if let Some(v) = self.transport_max_frame_len {
            t = t.max_frame_len(v);
        }
        if let Some(v) = self.transport_max_datagram_len {
            t = t.max_datagram_len(v);
        }
        if let Some(v) = self.transport_linger {
            t = t.linger(v.0);
        }
        if let Some(v) = self.transport_udp {
            t = t.udp(v);
        }
        if let Some(v) = self.transport_send_queue_bytes {
            t = t.send_queue_bytes(v);
        }
        if let Some(v) = self.transport_max_inbound_per_ip {
            t = t.max_inbound_per_ip(v);
        }
        if let Some(v) = self.transport_max_handshakes_per_ip {
            t = t.max_handshakes_per_ip(v);
        }
        if let Some(v) = self.transport_tcp_user_timeout {
            t = t.tcp_user_timeout((!v.0.is_zero()).then_some(v.0));
        }
        if let Some(v) = self.transport_tcp_keepalive {
            t = t.tcp_keepalive((!v.0.is_zero()).then_some(v.0));
        }
        t.build().map_err(|e| ConfigError::Transport(e.to_string()))
    }

    /// A builder with these settings over the builder's defaults.
    pub(crate) fn builder(&self) -> Result<NodeBuilder, ConfigError> {
        let mut b = NodeBuilder::new().transport(self.transport()?);
        if let Some(v) = &self.name {
            b = b.name(v);
        }
        if let Some(v) = &self.listen {
            b = b.listen(v);
        }
        if let Some(v) = &self.subscribe {
            b = b.subscribe(v);
        }
        if let Some(v) = &self.seeds {
            b = b.seeds(v);
        }
        if let Some(v) = self.relay {
            b = b.relay(v);
        }
        if let Some(v) = self.max_connections {
            b = b.max_connections(v);
        }
        if let Some(v) = self.disconnect_unneeded {
            b = b.disconnect_unneeded(v);
        }
        if let Some(v) = self.status_from_anywhere {
            b = b.status_from_anywhere(v);
        }
        if let Some(v) = self.lan_discovery {
            b = b.lan_discovery(v);
        }
        if let Some(v) = self.lan_port {
            b = b.lan_port(v);
        }
        if let Some(v) = self.lan_group {
            b = b.lan_group(v);
        }
        if let Some(v) = &self.network_id {
            b = b.network_id(v);
        }
        if let Some(identity) = self.identity()? {
            b = b.identity(identity);
        }
        if let Some(v) = self.insecure_plaintext {
            b = b.insecure_plaintext(v);
        }
        if let Some(network) = self.network()? {
            b = b.network(network);
        }
        if let Some(v) = self.ping_interval {
            b = b.ping_interval(v.0);
        }
        if let Some(v) = self.peer_timeout {
            b = b.peer_timeout(v.0);
        }
        if self.reconnect_initial.is_some() || self.reconnect_max.is_some() {
            let initial = self
                .reconnect_initial
                .map_or(Duration::from_millis(100), |d| d.0);
            let max = self.reconnect_max.map_or(Duration::from_secs(5), |d| d.0);
            b = b.reconnect_backoff(initial, max);
        }
        if let Some(v) = self.reconnect_attempts {
            b = b.reconnect_attempts(v);
        }
        if let Some(v) = self.gap_timeout {
            b = b.gap_timeout(v.0);
        }
        if self.cache_messages.is_some() || self.cache_bytes.is_some() || self.cache_age.is_some() {
            b = b.message_cache(
                self.cache_messages.unwrap_or(65_536),
                self.cache_bytes.unwrap_or(64 << 20),
                self.cache_age.map_or(Duration::from_secs(30), |d| d.0),
            );
        }
        if let Some(v) = &self.best_effort {
            b = b.best_effort(v);
        }
        if let Some(v) = self.stream_capacity {
            b = b.stream_capacity(v);
        }
        if let Some(v) = self.stream_overflow {
            b = b.stream_overflow(match v {
                OverflowSetting::Block => Overflow::Block,
                OverflowSetting::DropOldest => Overflow::DropOldest,
                OverflowSetting::DropNewest => Overflow::DropNewest,
            });
        }
        if let Some(v) = self.command_capacity {
            b = b.command_capacity(v);
        }
        if let Some(v) = self.event_capacity {
            b = b.event_capacity(v);
        }
        Ok(b)
    }
}

fn parse_bool(raw: &str) -> Option<bool> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_file_sets_every_key_to_its_default() {
        let text = include_str!("../chaski.example.toml");
        // Uncomment every `# key = value` line: the example must then parse and set every key.
        let uncommented: String = text
            .lines()
            .map(|line| match line.strip_prefix("# ") {
                Some(rest) if rest.contains(" = ") && !rest.starts_with(' ') => rest,
                _ => line,
            })
            .collect::<Vec<_>>()
            .join("\n");
        let settings = Settings::from_toml(&uncommented, "example").unwrap();
        let defaults = NodeBuilder::new();
        let built = settings.builder().unwrap();
        // Debug output compares every builder field; the name is the only key without a default.
        let strip_name = |b: NodeBuilder| format!("{b:?}").replace("Some(\"my-node\")", "None");
        assert_eq!(strip_name(built), format!("{defaults:?}"));
        for (key, _) in Settings::KEYS {
            assert!(
                uncommented
                    .lines()
                    .any(|l| l.starts_with(&format!("{key} = "))),
                "the example file does not document `{key}`"
            );
        }
    }

    #[test]
    fn wrong_keys_and_values_name_the_key_and_the_allowed_values() {
        let err = Settings::from_toml("relay = true\nmax_conections = 3\n", "f.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2"), "{err}");
        assert!(
            err.contains("max_conections") && err.contains("max_connections"),
            "{err}"
        );
        let err = Settings::from_toml("stream_overflow = \"drop\"", "f.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("drop-oldest") && err.contains("block"),
            "{err}"
        );
        let err = Settings::from_toml("ping_interval = \"fast\"", "f.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("250ms"), "{err}");
    }

    #[test]
    fn transport_settings_reach_the_node_and_are_checked() {
        let settings =
            Settings::from_toml("transport_send_queue = 64\ntransport_linger = \"2s\"", "t")
                .unwrap();
        let built = format!("{:?}", settings.builder().unwrap());
        assert!(built.contains("send_queue: 64"), "{built}");
        assert!(built.contains("linger: 2s"), "{built}");
        let zero = Settings::from_toml("transport_send_queue = 0", "t").unwrap();
        let err = zero.builder().unwrap_err().to_string();
        assert!(
            err.starts_with("transport settings:") && err.contains("send_queue"),
            "{err}"
        );
        let env = Settings::from_env(|k| (k == "CHASKI_TRANSPORT_UDP").then(|| "false".to_owned()))
            .unwrap();
        assert_eq!(env.transport_udp, Some(false));
    }

    #[test]
    fn environment_values_are_parsed_by_the_kind_of_their_key() {
        let env = |name: &str| match name {
            "CHASKI_SUBSCRIBE" => Some("a, b,".to_owned()),
            "CHASKI_RELAY" => Some("yes".to_owned()),
            "CHASKI_MAX_CONNECTIONS" => Some("7".to_owned()),
            "CHASKI_PEER_TIMEOUT" => Some("1.5s".to_owned()),
            _ => None,
        };
        let settings = Settings::from_env(env).unwrap();
        assert_eq!(
            settings.subscribe,
            Some(vec!["a".to_owned(), "b".to_owned()])
        );
        assert_eq!(settings.relay, Some(true));
        assert_eq!(settings.max_connections, Some(7));
        assert_eq!(
            settings.peer_timeout,
            Some(HumanDuration(Duration::from_millis(1500)))
        );
        let err = Settings::from_env(|n| (n == "CHASKI_RELAY").then(|| "maybe".to_owned()))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("CHASKI_RELAY") && err.contains("true or false"),
            "{err}"
        );
    }

    #[test]
    fn later_sources_override_earlier_ones() {
        let mut settings = Settings::from_toml("name = \"file\"\nrelay = true", "f").unwrap();
        settings.overlay(Settings {
            name: Some("flag".to_owned()),
            ..Settings::default()
        });
        assert_eq!(settings.name.as_deref(), Some("flag"));
        assert_eq!(settings.relay, Some(true));
    }
}
