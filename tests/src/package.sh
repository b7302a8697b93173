#!/bin/sh
# The Debian package's life on a host, for tests/tests/package.rs: install, use, upgrade,
# remove, purge. Runs in the server's network namespace (its veth end renamed eth0, the
# shipped config's interface) and in a private mount namespace where /usr, /etc, /var and
# /run are overlays (upper layers in SCRATCH/ovl) and /sys/fs/bpf is a fresh bpffs, so nothing
# reaches the machine, and what the package leaves behind is what the upper layers hold at the
# end (the test compares them with the machine's files).
# Usage: package.sh DEB IFACE SCRATCH. Each check prints "ok: ..."; the first failure exits.
set -eu
deb=$1 iface=$2 t=$3
fail() { echo "FAILED: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }

mkdir -p "$t/ovl"
for d in usr etc var run; do
  mkdir -p "$t/ovl/$d-up" "$t/ovl/$d-work"
  mount -t overlay overlay -o "lowerdir=/$d,upperdir=$t/ovl/$d-up,workdir=$t/ovl/$d-work" "/$d"
done
mount -t bpf bpf /sys/fs/bpf
# Never the host's service manager, even if a script bypassed its own check.
for d in /run/systemd /run/dbus; do
  if [ -d "$d" ]; then mount -t tmpfs tmpfs "$d"; fi
done
ip link set "$iface" down
ip link set "$iface" name eth0
ip link set eth0 up
ip link set lo up
xdp_on() { ip -d link show dev eth0 | grep -q 'prog/xdp'; }

# Install.
dpkg -i "$deb" > "$t/dpkg-i.log" 2>&1 || { cat "$t/dpkg-i.log" >&2; fail "dpkg -i"; }
[ "$(command -v portcullis)" = /usr/bin/portcullis ] || fail "portcullis not in /usr/bin"
version=$(portcullis --version)
echo "$version" | grep -Eq '^portcullis [0-9]+\.[0-9]+\.[0-9]+' || fail "--version: $version"
ok "installed: $version"
getent group portcullis > /dev/null || fail "no portcullis group"
[ "$(stat -c %a /var/lib/portcullis)" = 700 ] || fail "/var/lib/portcullis not 0700"
ok "group portcullis and /var/lib/portcullis (0700)"
dpkg-query -W -f='${Conffiles}\n' portcullis | grep -q '/etc/portcullis/portcullis.toml' \
  || fail "the config is not a conffile"
zcat /usr/share/man/man1/portcullis.1.gz | grep -q '^\.TH' || fail "man page"
for f in /usr/share/bash-completion/completions/portcullis \
         /usr/share/zsh/vendor-completions/_portcullis \
         /usr/share/fish/vendor_completions.d/portcullis.fish \
         /usr/share/portcullis/grafana/portcullis.json \
         /usr/share/doc/portcullis/copyright; do
  [ -s "$f" ] || fail "missing $f"
done
ok "conffile, man page, completions, dashboard, copyright"
portcullis agent --config /etc/portcullis/portcullis.toml --check-config > "$t/check.log" 2>&1 \
  || { cat "$t/check.log" >&2; fail "--check-config on the shipped config"; }
grep -q '^# configuration OK' "$t/check.log" || fail "check-config verdict"
ok "agent --check-config on the shipped config"
for u in portcullis.service portcullis.socket; do
  systemd-analyze verify --man=no "/usr/lib/systemd/system/$u" > "$t/verify.log" 2>&1 \
    || { cat "$t/verify.log" >&2; fail "systemd-analyze verify $u"; }
  [ ! -s "$t/verify.log" ] || { cat "$t/verify.log" >&2; fail "systemd-analyze verify $u warns"; }
done
grep -q '^ExecStart=/usr/bin/portcullis agent' /usr/lib/systemd/system/portcullis.service \
  || fail "the unit does not run /usr/bin/portcullis"
ok "systemd-analyze verify: service and socket"
systemd-analyze security --offline=true /usr/lib/systemd/system/portcullis.service \
  | tail -1 | tee "$t/security.log"
grep -Eq 'exposure level for portcullis.service: [0-9.]+ (OK|SAFE)' "$t/security.log" \
  || fail "systemd-analyze security: not OK or better"
ok "systemd-analyze security"
# Enabled as the README says, `systemctl enable` (its link must not outlive a purge).
mkdir -p /etc/systemd/system/multi-user.target.wants
ln -s /usr/lib/systemd/system/portcullis.service /etc/systemd/system/multi-user.target.wants/

# Run it as the unit would, deny a client, check the filter is on.
portcullis agent --config /etc/portcullis/portcullis.toml > "$t/agent.log" 2>&1 &
agent=$!
i=0
until portcullis status > /dev/null 2>&1; do
  i=$((i + 1)); [ $i -lt 200 ] || { cat "$t/agent.log" >&2; fail "agent not ready"; }
  kill -0 $agent 2> /dev/null || { cat "$t/agent.log" >&2; fail "agent exited"; }
  sleep 0.1
done
portcullis deny add ip 198.18.0.99 > /dev/null
xdp_on || fail "no XDP on eth0 with the agent running"
ok "agent from the package enforces on eth0"

# Upgrade (the same build again): an edited conffile is kept, the filter and lists stay.
echo "# edited by the operator" >> /etc/portcullis/portcullis.toml
dpkg -i --force-confold "$deb" > "$t/dpkg-up.log" 2>&1 || { cat "$t/dpkg-up.log" >&2; fail "upgrade"; }
grep -q '^# edited by the operator' /etc/portcullis/portcullis.toml || fail "upgrade lost the edit"
xdp_on || fail "the upgrade detached the filter"
portcullis deny list | grep -q 198.18.0.99 || fail "the upgrade lost the deny list"
ok "upgrade keeps the edited config, the lists and the filter"
kill -TERM $agent
wait $agent || fail "agent exit status $?"
xdp_on || fail "stopping the agent detached the filter"

# Remove: the binary goes, the config, the lists and enforcement stay.
dpkg -r portcullis > "$t/dpkg-r.log" 2>&1 || { cat "$t/dpkg-r.log" >&2; fail "dpkg -r"; }
[ ! -e /usr/bin/portcullis ] || fail "binary left after remove"
[ -f /etc/portcullis/portcullis.toml ] && [ -f /var/lib/portcullis/portcullis.db ] \
  || fail "remove took the config or the lists"
xdp_on || fail "remove detached the filter"
ok "remove keeps config, lists and enforcement"

# Purge: everything goes, the filter first.
dpkg -P portcullis > "$t/dpkg-p.log" 2>&1 || { cat "$t/dpkg-p.log" >&2; fail "dpkg -P"; }
! xdp_on || fail "XDP still on eth0 after purge"
[ ! -e /sys/fs/bpf/portcullis ] || fail "pins left after purge"
! getent group portcullis > /dev/null || fail "group left after purge"
for p in /etc/portcullis /var/lib/portcullis /var/log/portcullis /run/portcullis; do
  [ ! -e "$p" ] || fail "$p left after purge"
done
ok "purge detaches the filter and removes pins, state, config and group"
