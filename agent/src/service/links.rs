//! The interfaces the filter runs on, as the agent and `status` see them: attached at start
//! (the configured interfaces) or by `portcullis attach`; detached by `portcullis detach`,
//! which the agent notices and respects: it does not re-attach until told.

use std::collections::BTreeMap;

use super::{Service, ServiceError};
use crate::kernel::{self, AttachMode, Attached};

/// An interface name as the kernel allows it (it becomes part of a pin's file name).
fn valid_iface(name: &str) -> Result<(), ServiceError> {
    if name.is_empty()
        || name.len() > 15
        || name.contains(['/', '\0'])
        || name == "."
        || name == ".."
    {
        return Err(ServiceError::BadRequest(format!(
            "{name:?} is not an interface name"
        )));
    }
    Ok(())
}

/// One interface the agent has put the filter on.
#[derive(Clone, Debug)]
pub struct Interface {
    /// How it was attached.
    pub attached: Attached,
    /// Taken off since (by `portcullis detach` or outside the agent).
    pub detached: bool,
}

/// The interfaces by name.
pub(super) type Interfaces = BTreeMap<String, Interface>;

impl Service {
    /// Attaches the filter to `only`, or to every configured interface, in `mode` (default:
    /// the configured mode). A link pinned by an earlier agent is reused when it is attached
    /// there in that mode; otherwise it is replaced. All or nothing: when one interface
    /// fails, the ones this call attached afresh are detached again (reused links stay).
    pub fn attach(
        &mut self,
        only: Option<&str>,
        mode: Option<AttachMode>,
    ) -> Result<Vec<Attached>, ServiceError> {
        let names = match only {
            Some(i) => vec![i.to_owned()],
            None => self.config.interfaces.clone(),
        };
        // A mode the operator names is applied even over a generic link; the configured one
        // keeps a generic link a native request fell back to.
        let switch_mode = mode.is_some();
        let mode = mode.unwrap_or(self.config.xdp_mode);
        names.iter().try_for_each(|n| valid_iface(n))?;
        let Some(filter) = self.filter.as_mut() else {
            return Err(ServiceError::BadRequest(
                "this agent runs without the kernel filter".into(),
            ));
        };
        let mut done = Vec::new();
        for iface in names {
            let a = match filter.attach_as(&iface, mode, switch_mode) {
                Ok(a) => a,
                Err(e) => {
                    let fresh: Vec<&str> = done
                        .iter()
                        .filter(|a: &&Attached| !a.reused_link && !a.replaced)
                        .map(|a| a.iface.as_str())
                        .collect();
                    undo_fresh(filter.pin_dir(), &fresh);
                    for i in fresh {
                        self.interfaces.remove(i);
                    }
                    self.board.set_interfaces(&self.interfaces);
                    return Err(e.into());
                }
            };
            if let Some(reason) = &a.fell_back {
                tracing::warn!(
                    iface,
                    "native XDP refused ({reason}); attached in generic mode, which is slower"
                );
            }
            tracing::info!(iface, mode = ?a.mode, reused_pinned_link = a.reused_link, "XDP filter attached");
            self.interfaces.insert(
                iface,
                Interface {
                    attached: a.clone(),
                    detached: false,
                },
            );
            done.push(a);
        }
        self.board.set_interfaces(&self.interfaces);
        Ok(done)
    }

    /// Takes the filter off `only`, or off every interface it is on; returns their names.
    /// The kernel detaches the link for every holder, so this holds whatever else has it open.
    pub fn detach(&mut self, only: Option<&str>) -> Result<Vec<String>, ServiceError> {
        let names: Vec<String> = match only {
            Some(i) => vec![i.to_owned()],
            None => self.interfaces.keys().cloned().collect(),
        };
        names.iter().try_for_each(|n| valid_iface(n))?;
        if let Some(dir) = self.filter.as_ref().and_then(|f| f.pin_dir()) {
            for iface in &names {
                kernel::detach(dir, iface)?;
            }
        }
        for iface in &names {
            if let Some(i) = self.interfaces.get_mut(iface)
                && !i.detached
            {
                i.detached = true;
                tracing::warn!(
                    iface,
                    "XDP filter detached; `portcullis attach` puts it back"
                );
            }
        }
        self.board.set_interfaces(&self.interfaces);
        Ok(names)
    }

    /// Notices interfaces whose link was detached behind the agent's back (`portcullis
    /// detach` without an agent reachable, `bpftool link detach`); returns their names.
    pub fn check_links(&mut self) -> Vec<String> {
        let Some(dir) = self.filter.as_ref().and_then(|f| f.pin_dir()) else {
            return Vec::new();
        };
        let mut gone = Vec::new();
        for (iface, i) in self.interfaces.iter_mut().filter(|(_, i)| !i.detached) {
            match kernel::link_attached(dir, iface) {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(
                        iface,
                        "the XDP filter was detached outside the agent; not re-attaching until `portcullis attach`"
                    );
                    i.detached = true;
                    gone.push(iface.clone());
                }
                Err(e) => tracing::warn!(iface, "cannot check the XDP link: {e}"),
            }
        }
        if !gone.is_empty() {
            self.board.set_interfaces(&self.interfaces);
        }
        gone
    }
}

/// Takes the filter off interfaces it was put on by a start or an attach that then failed:
/// a failed start must not leave half of itself attached. (Links reused from an earlier
/// agent are not passed here: they were enforcing before and go on.)
pub fn undo_fresh(pin_dir: Option<&std::path::Path>, ifaces: &[&str]) {
    let Some(dir) = pin_dir else { return };
    for iface in ifaces {
        match kernel::detach(dir, iface) {
            Ok(_) => tracing::warn!(
                iface,
                "took the XDP filter off again: it was attached by a start or attach that failed"
            ),
            Err(e) => tracing::error!(iface, "could not take the XDP filter off again: {e}"),
        }
    }
}

impl Service {
    /// The interfaces this agent attached afresh (not reused from an earlier agent).
    pub fn fresh_interfaces(&self) -> Vec<String> {
        self.interfaces
            .values()
            .filter(|i| !i.attached.reused_link && !i.attached.replaced && !i.detached)
            .map(|i| i.attached.iface.clone())
            .collect()
    }
}
