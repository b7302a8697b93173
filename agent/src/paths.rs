//! Every default filesystem path and address Portcullis uses, in one place.

/// Where maps and links are pinned: enforcement continues while the agent restarts.
pub const PIN_DIR: &str = "/sys/fs/bpf/portcullis";
/// The agent's configuration file.
pub const CONFIG: &str = "/etc/portcullis/portcullis.toml";
/// The durable lists (systemd `StateDirectory=portcullis`).
pub const STATE_DIR: &str = "/var/lib/portcullis";
/// The control socket (systemd `RuntimeDirectory=portcullis`).
pub const CONTROL_SOCKET: &str = "/run/portcullis/control.sock";
/// Prometheus metrics.
pub const METRICS_ADDR: &str = "127.0.0.1:9469";
