//! Upgrades without a gap. When the pinned maps no longer fit this build (a new map layout,
//! or a changed `[capacity]`), they are moved aside instead of refused: the interfaces' links
//! keep running the old program on the old maps while the new agent creates fresh maps and
//! fills them from the store; attaching then replaces the program in each link atomically,
//! and the set-aside pins are removed.

use super::*;

/// Prefix of the directories old maps are moved into.
const STALE: &str = "stale-";

/// What must match for a pinned map to be reused: type, key and value sizes, entries, flags
/// (`entries` given, or the map's own).
fn shape(info: &aya::maps::MapInfo, entries: Option<u32>) -> String {
    format!(
        "{:?} key {} value {} entries {} flags {:#x}",
        info.map_type().ok(),
        info.key_size(),
        info.value_size(),
        entries.unwrap_or(info.max_entries()),
        info.map_flags()
    )
}

/// The configured size of the maps `[capacity]` sizes.
fn sized(name: &str, c: &Capacity) -> Option<u32> {
    match name {
        map_name::V4_HOSTS => Some(c.v4_hosts),
        map_name::V4_NETS => Some(c.v4_nets),
        map_name::V6_HOSTS => Some(c.v6_hosts),
        map_name::V6_PREFIXES => Some(c.v6_prefixes),
        _ => None,
    }
}

impl Filter {
    /// Moves the map pins under `dir` that this build cannot reuse with `capacity` into
    /// `dir/stale-<time>/`, and returns that directory; `None` when the pins fit (or there
    /// are none). The pins of links stay: enforcement goes on on the old maps meanwhile.
    pub fn set_aside_stale_maps(
        dir: &Path,
        capacity: Capacity,
    ) -> Result<Option<PathBuf>, KernelError> {
        let pinned: Vec<&str> = map_name::ALL
            .iter()
            .copied()
            .filter(|n| dir.join(n).exists())
            .collect();
        if pinned.is_empty() {
            return Ok(None);
        }
        // This build's maps, private to this process and as small as they go (hash maps are
        // preallocated: full-size copies would cost hundreds of MB at every start), to
        // compare with; the sized maps' entries come from `capacity`.
        let tiny = Capacity {
            v4_hosts: 1,
            v4_nets: 1,
            v6_hosts: 1,
            v6_prefixes: 1,
        };
        let fresh = Self::load(&LoadOptions {
            pin_dir: None,
            capacity: tiny,
            object: Object::Production,
        })?;
        let mut changed = Vec::new();
        for name in &pinned {
            let old = MapData::from_pin(dir.join(name))
                .and_then(|m| m.info())
                .map_err(map_err("reading pinned", name))?;
            let new = data(fresh.map(name))
                .info()
                .map_err(map_err("reading info of", name))?;
            let want = shape(&new, sized(name, &capacity));
            if shape(&old, None) != want {
                changed.push(format!("{name}: {} -> {want}", shape(&old, None)));
            }
        }
        if changed.is_empty() {
            return Ok(None);
        }
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let aside = dir.join(format!("{STALE}{stamp}"));
        let perr = |source| KernelError::PinDir {
            path: aside.clone(),
            source,
        };
        std::fs::create_dir(&aside).map_err(perr)?;
        for name in &pinned {
            std::fs::rename(dir.join(name), aside.join(name)).map_err(perr)?;
        }
        tracing::warn!(
            aside = %aside.display(),
            changed = ?changed,
            "the pinned maps do not fit this build: moved aside; the links keep enforcing on them until the new program, on new maps filled from the store, replaces the old one"
        );
        Ok(Some(aside))
    }

    /// Finishes an upgrade once the links of `attached` run this program: every other link
    /// pinned here (an interface the configuration no longer lists) is moved to this program
    /// too, so no link keeps enforcing on maps that no longer change; then the set-aside map
    /// pins are removed.
    pub fn finish_upgrade(&mut self, attached: &[String]) {
        let Some(dir) = self.pin_dir.clone() else {
            return;
        };
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        let names: Vec<String> = entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        if !names.iter().any(|n| n.starts_with(STALE)) {
            return;
        }
        for iface in names
            .iter()
            .filter_map(|n| n.strip_prefix("link_"))
            .filter(|i| !attached.iter().any(|a| a == i))
        {
            match self.swap_program(&attach::link_pin(&dir, iface)) {
                Ok(()) => tracing::warn!(
                    iface,
                    "this pinned link is not in the configuration; it now runs the new program on the new maps (`portcullis detach --iface {iface}` takes it off)"
                ),
                Err(e) => tracing::error!(
                    iface,
                    "this pinned link is not in the configuration and still runs the previous program on maps that no longer change ({e}): `portcullis detach --iface {iface}`"
                ),
            }
        }
        for e in names
            .iter()
            .filter(|n| n.starts_with(STALE))
            .map(|n| dir.join(n))
        {
            match std::fs::remove_dir_all(&e) {
                Ok(()) => tracing::info!(path = %e.display(), "old maps unpinned"),
                Err(err) => tracing::warn!(path = %e.display(), "cannot unpin old maps: {err}"),
            }
        }
    }
}
