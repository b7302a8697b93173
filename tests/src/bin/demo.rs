//! `cargo xtask demo`: Portcullis's main job in one minute. Makes a throwaway pair of network
//! namespaces joined by veth, attaches the XDP filter to the server side, denies one client,
//! and shows its pings lost while an unlisted client's are answered. Everything it creates is
//! removed at the end, also on error.

use anyhow::Context as _;
use portcullis::cidr::Cidr;
use portcullis::kernel::{self, AttachMode, Filter, List, LoadOptions};
use portcullis_common::{counter, NEVER};
use portcullis_tests::netns::{in_netns, NetnsPair, CLIENT_V4, SERVER_V4};
use portcullis_tests::PinDir;

fn main() -> anyhow::Result<()> {
    if !portcullis_tests::privileged("demo") {
        anyhow::bail!("the demo attaches XDP and creates namespaces: run it as root");
    }
    let pair = NetnsPair::new().context("creating namespaces")?;
    let pins = PinDir::new();
    println!("== namespaces {} (server {SERVER_V4}) and {} (clients {}, {})", pair.server, pair.client, CLIENT_V4[0], CLIENT_V4[1]);
    let mut filter = Filter::load(&LoadOptions { pin_dir: Some(pins.0.clone()), ..LoadOptions::default() })?;
    let iface = pair.server_if.clone();
    let attached = in_netns(&pair.server, || filter.attach(&iface, AttachMode::Native))??;
    println!("== XDP filter attached to {} ({:?} mode), link pinned under {}", attached.iface, attached.mode, pins.0.display());

    let [bad, good, _] = CLIENT_V4;
    let show = |who: &str, src: &str| -> anyhow::Result<()> {
        let got = pair.ping(src, SERVER_V4, 4)?;
        let verdict = if got == 0 { "LOST (dropped by XDP)" } else { "answered" };
        println!("   ping from {who:<9} {src}: {got}/4 {verdict}");
        Ok(())
    };
    println!("== before any entry");
    show("client A", bad)?;
    show("client B", good)?;

    let denied: Cidr = bad.parse()?;
    filter.insert(List::Deny, denied, NEVER)?;
    println!("== deny add ip {denied}");
    show("client A", bad)?;
    show("client B", good)?;

    let c = filter.counters()?;
    println!("== kernel counters");
    for (i, name) in counter::NAMES.iter().enumerate() {
        println!("   {name:<20} {:>6} packets {:>8} bytes", c[i].packets, c[i].bytes);
    }

    filter.remove(List::Deny, denied)?;
    println!("== deny remove ip {denied}");
    show("client A", bad)?;

    drop(filter);
    kernel::detach(&pins.0, &pair.server_if)?;
    println!("== detached; namespaces and pins removed");
    Ok(())
}
