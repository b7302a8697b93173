//! Every filesystem path Portcullis uses by default, in one place.

/// Where maps and links are pinned: enforcement continues while the agent restarts.
pub const PIN_DIR: &str = "/sys/fs/bpf/portcullis";
