//! The off switch and back: `detach` takes the filter off in the kernel itself (so it works
//! with the agent stopped, wedged or running), then tells a running agent; `attach` asks
//! the agent to put it back.

use super::*;

/// `portcullis detach [--iface I]`.
pub(super) fn detach(
    cli: &Cli,
    iface: Option<&str>,
    pin_dir: &std::path::Path,
) -> anyhow::Result<()> {
    let ifaces: Vec<String> = match iface {
        Some(i) => vec![i.to_owned()],
        None => std::fs::read_dir(pin_dir)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| {
                        e.file_name()
                            .to_str()
                            .and_then(|n| n.strip_prefix("link_"))
                            .map(str::to_owned)
                    })
                    .collect()
            })
            .unwrap_or_default(),
    };
    if ifaces.is_empty() {
        println!(
            "nothing attached (no pinned links under {})",
            pin_dir.display()
        );
    }
    for i in &ifaces {
        if crate::kernel::detach(pin_dir, i)? {
            println!("detached from {i}");
        } else {
            println!("{i}: not attached");
        }
    }
    // A running agent records it (status shows the interface detached) and stays off it
    // until `portcullis attach`; it would notice within a second anyway.
    if let Ok(mut client) = Client::connect(&cli.socket) {
        // The filter is already off: a wedged agent must not hold the operator up.
        let told = client
            .set_timeout(std::time::Duration::from_secs(3))
            .and_then(|()| {
                client.call(&Request::Detach {
                    iface: iface.map(str::to_owned),
                })
            });
        if let Err(e) = told.map_err(anyhow::Error::from).and_then(unwrap) {
            eprintln!("warning: detached, but the running agent could not be told: {e:#}");
        }
    }
    Ok(())
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
    for a in r.as_array().into_iter().flatten() {
        println!(
            "attached to {} (XDP {})",
            a["iface"].as_str().unwrap_or("?"),
            a["xdp_mode"].as_str().unwrap_or("?")
        );
    }
    Ok(())
}
