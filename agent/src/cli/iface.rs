//! The off switch and back: `detach` takes the filter off in the kernel itself (so it works
//! with the agent stopped, wedged or running), then tells a running agent; `attach` asks
//! the agent to put it back.

use super::*;

/// `portcullis detach [--iface I]`. Goes on past a failure (during an incident every
/// interface it can take the filter off counts), and fails only when nothing was confirmed.
pub(super) fn detach(
    cli: &Cli,
    iface: Option<&str>,
    pin_dir: &std::path::Path,
) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    let ifaces: Vec<String> = match iface {
        Some(i) => vec![i.to_owned()],
        None => pinned_links(pin_dir).unwrap_or_else(|e| {
            problems.push(e);
            Vec::new()
        }),
    };
    let mut confirmed = 0;
    let mut agent_answered = false;
    for i in &ifaces {
        match crate::kernel::detach(pin_dir, i) {
            Ok(true) => {
                println!("detached from {i}");
                confirmed += 1;
            }
            Ok(false) => println!(
                "{i}: not attached (no pinned link under {})",
                pin_dir.display()
            ),
            Err(e) => problems.push(format!("{i}: {e}")),
        }
    }
    // A running agent records it (status shows the interface detached) and stays off it
    // until `portcullis attach`; it detaches with its own rights what this user could not.
    if let Ok(mut client) = Client::connect(&cli.socket) {
        // The filter may already be off: a wedged agent must not hold the operator up.
        let told = client
            .set_timeout(std::time::Duration::from_secs(3))
            .and_then(|()| {
                client.call(&Request::Detach {
                    iface: iface.map(str::to_owned),
                })
            });
        match told.map_err(anyhow::Error::from).and_then(unwrap) {
            Ok(answer) => {
                agent_answered = true;
                match decode::<crate::control::answer::Detached>(answer) {
                    Ok(r) => {
                        for name in &r.detached {
                            if !ifaces.contains(name) || !problems.is_empty() {
                                println!("detached from {} (by the agent)", printable(name));
                            }
                            confirmed += 1;
                        }
                    }
                    // It did what it was asked; only its list of interfaces is unreadable.
                    Err(e) => {
                        println!(
                            "the agent detached, but its answer could not be read ({e}): see `portcullis status`"
                        );
                        confirmed += 1;
                    }
                }
            }
            Err(e) => problems.push(format!("the running agent could not be told: {e:#}")),
        }
    }
    for p in &problems {
        eprintln!("warning: {p}");
    }
    if confirmed == 0 {
        // The running agent's answer is authoritative: it has nothing to detach.
        if !problems.is_empty() && !agent_answered {
            bail!("nothing was detached: {}", problems.join("; "));
        }
        println!(
            "nothing attached (no pinned links under {})",
            pin_dir.display()
        );
    }
    Ok(())
}

/// The interfaces with a link pinned under `pin_dir` (none when it does not exist).
fn pinned_links(pin_dir: &std::path::Path) -> Result<Vec<String>, String> {
    match std::fs::read_dir(pin_dir) {
        Ok(rd) => Ok(rd
            .flatten()
            .filter_map(|e| {
                let name = e.file_name();
                name.to_str()?.strip_prefix("link_").map(str::to_owned)
            })
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(format!("reading {}: {e} (run as root)", pin_dir.display())),
    }
}

/// `portcullis attach [--iface I] [--xdp-mode M]`.
pub(super) fn attach(
    cli: &Cli,
    iface: Option<&str>,
    xdp_mode: Option<XdpMode>,
) -> anyhow::Result<()> {
    let r = call(
        cli,
        &Request::Attach {
            iface: iface.map(str::to_owned),
            xdp_mode,
        },
    )
    .context(
        "attach goes through the running agent (or restart it with the interface configured)",
    )?;
    let r: Vec<crate::control::answer::Attachment> =
        decode(r).context("the agent attached, but its answer could not be read: see `status`")?;
    for a in &r {
        println!(
            "attached to {} (XDP {})",
            printable(&a.iface),
            a.xdp_mode.as_str()
        );
    }
    Ok(())
}
