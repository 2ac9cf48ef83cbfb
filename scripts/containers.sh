#!/bin/bash
# The container lane: builds and runs docker-compose.yml under podman on a fresh Debian
# machine (as root), through examples/ci/compose-ci.sh, and checks that nothing is left.
#
#   1. installs Debian's podman, runc, mmdebstrap (and netavark, aardvark-dns, iptables for
#      the compose network) and podman-compose from PyPI in .venv-containers (Debian's 1.0.3
#      lacks --profile); kzbridge's own .venv through scripts/setup.sh when it is missing
#   2. probes and adjusts, each only when needed (and says so):
#      - base image: debian:bookworm-slim not present and not pullable -> mmdebstrap
#        --variant=minbase bookworm from this host's apt sources (as apt itself lists them),
#        podman import
#      - runtime: a trivial container fails -> a containers.conf of the lane's own
#        (runc, nofile from the host's hard limit, nproc, base_hosts_file none), through
#        CONTAINERS_CONF; the machine's configuration is never written
#      - pip in the image build cannot verify PyPI with public roots (TLS-intercepting
#        proxy) -> the host's CA bundle is mounted into builds (never copied into an image)
#      - ports: EPMD and distribution published on free ports (KZBRIDGE_EPMD_PORT, ...)
#   3. runs examples/ci/compose-ci.sh (build, up, wait, traces from the host and from the
#      tools container, the example pytest suite, down)
#   4. compares the machine with before: containers (build containers too), pods, networks,
#      volumes, /etc/hosts, listening ports, iptables rules, links, network namespaces,
#      processes; fails if anything remains (and removes what it can)
# Prints "lane: STEP N.Ns" per step and a last line "lane: passed ..." or "lane: FAILED ...".
# KZBRIDGE_CONTAINERS_REPORT=FILE also writes the outcome as JSON (tests/test_containers.py).
# Images built stay in podman's local storage (the next run reuses their layers).
set -u
cd "$(dirname "$0")/.." || exit 1
root=$PWD
PODMAN_COMPOSE_VERSION=1.6.0
BASE_IMAGE=docker.io/library/debian:bookworm-slim
report=${KZBRIDGE_CONTAINERS_REPORT:-}
lane_t0=$(date +%s.%N)

say() { printf 'lane: %s\n' "$*"; }
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
timings=""       # "step seconds" lines, for the report
adjustments=""   # one line per adjustment made
record() { timings="$timings$1 $2"$'\n'; }
adjust() { adjustments="$adjustments$1"$'\n'; say "adjustment: $1"; }
finish() {  # finish OK|FAILED REASON
  local outcome=$1 reason=${2:-} total
  total=$(elapsed "$lane_t0")
  record total "$total"
  if [ -n "$report" ]; then
    OUTCOME=$outcome REASON=$reason TIMINGS=$timings ADJUSTMENTS=$adjustments LEFTOVERS=${leftovers:-} \
      PROJECT=${project:-} TRACES=${trace_summary:-} python3 - "$report" <<'EOF'
import json, os, sys
timings = {}
for line in os.environ["TIMINGS"].splitlines():
    name, seconds = line.rsplit(" ", 1)
    timings[name] = float(seconds)
report = {
    "outcome": os.environ["OUTCOME"],
    "reason": os.environ["REASON"],
    "project": os.environ["PROJECT"],
    "timings": timings,
    "adjustments": [a for a in os.environ["ADJUSTMENTS"].splitlines() if a],
    "leftovers": [a for a in os.environ["LEFTOVERS"].splitlines() if a],
    "traces": [t for t in os.environ["TRACES"].splitlines() if t],
}
with open(sys.argv[1], "w") as f:
    json.dump(report, f, indent=1)
EOF
  fi
  if [ "$outcome" = OK ]; then
    say "passed in ${total}s"
    exit 0
  fi
  say "FAILED: $reason (after ${total}s)"
  exit 1
}
timed() {  # timed NAME COMMAND...
  local name=$1 t0 rc
  shift
  t0=$(date +%s.%N)
  "$@"
  rc=$?
  record "$name" "$(elapsed "$t0")"
  say "$name $(elapsed "$t0")s$([ "$rc" -eq 0 ] || echo " FAILED (exit $rc)")"
  return "$rc"
}

[ "$(id -u)" = 0 ] || finish FAILED "the container lane runs as root (rootful podman, apt-get)"

# One lane at a time on a machine: the leftover check compares the whole machine with before.
exec 9> /run/lock/kzbridge-containers.lock
flock -w 300 9 || finish FAILED "another container lane held /run/lock/kzbridge-containers.lock for 300s"

work=$(mktemp -d "${TMPDIR:-/tmp}/kzbridge-containers.XXXXXX")
chmod 755 "$work"
trap 'rm -rf "$work"' EXIT

# ---------------------------------------------------------------- 1. install
install_packages() {
  local missing="" p
  for p in podman runc mmdebstrap netavark aardvark-dns iptables; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing="$missing $p"
  done
  [ -n "$missing" ] || return 0
  say "installing from Debian:$missing"
  export DEBIAN_FRONTEND=noninteractive
  # shellcheck disable=SC2086  # one word per package
  apt-get -o DPkg::Lock::Timeout=300 update -qq \
    && apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends $missing > "$work/apt.log" 2>&1 \
    || { tail -20 "$work/apt.log" >&2; return 1; }
}
install_compose() {
  local venv=$root/.venv-containers
  if [ "$("$venv/bin/podman-compose" --version 2>/dev/null | sed -n 's/^podman-compose version //p')" = "$PODMAN_COMPOSE_VERSION" ]; then
    return 0
  fi
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv" || return 1
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "podman-compose==$PODMAN_COMPOSE_VERSION"
}
install_kzbridge() {
  [ -x .venv/bin/kzbridge ] && .venv/bin/python -c 'import pytest, kzbridge' 2>/dev/null && return 0
  sh scripts/setup.sh --test
}
timed install-packages install_packages || finish FAILED "apt-get could not install podman and its tools"
timed install-podman-compose install_compose || finish FAILED "pip could not install podman-compose==$PODMAN_COMPOSE_VERSION"
timed install-kzbridge install_kzbridge || finish FAILED "scripts/setup.sh --test failed"
COMPOSE_BIN=$root/.venv-containers/bin/podman-compose
say "$(podman --version), podman-compose $PODMAN_COMPOSE_VERSION, $(runc --version | head -1)"

# ---------------------------------------------------------------- 2. probes and adjustments
# Base image. A pull that cannot work (no registry reachable) fails within seconds.
host_sources() {  # the host's Debian sources, as apt resolves them, for bookworm's main
  local codename
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  mkdir -p "$work/lists/partial"
  apt-get indextargets -o Dir::State::Lists="$work/lists" --no-release-info \
      --format '$(REPO_URI) $(RELEASE) $(COMPONENT)' 'Created-By: Packages' 'Target-Of: deb' \
    | CODENAME=$codename python3 -c '
import os, re, sys
codename = os.environ["CODENAME"]
names = "|".join(re.escape(n) for n in (codename, "stable") if n)
seen = []
for line in sys.stdin:
    uri, suite, component = line.split()
    m = re.fullmatch(rf"(?:{names})(-updates|-security|/updates)?", suite)
    if component != "main" or not names or not m:
        continue
    pocket = {None: "", "/updates": "-security"}.get(m.group(1), m.group(1))
    entry = f"deb {uri} bookworm{pocket} main"
    if entry not in seen:
        seen.append(entry)
print("\n".join(seen))
'
}
build_base_image() {
  local t0
  host_sources > "$work/host-sources.list" || return 1
  if ! [ -s "$work/host-sources.list" ]; then
    echo "no Debian source for $(. /etc/os-release && echo "$VERSION_CODENAME") main in this host's apt configuration" >&2
    return 1
  fi
  say "mmdebstrap from this host's apt sources: $(paste -sd ';' "$work/host-sources.list")"
  grep -q ' https://' "$work/host-sources.list" && set -- --include=ca-certificates
  t0=$(date +%s.%N)
  # Like the official slim image: no documentation, manual pages or translations; dpkg
  # without fsync and apt without translation indexes (in the image's builds too).
  mmdebstrap --quiet --variant=minbase --mode=root --format=tar "$@" --dpkgopt=force-unsafe-io \
      --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
      --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
      --dpkgopt='path-exclude=/usr/share/locale/*' \
      --customize-hook='printf "Acquire::Languages \"none\";\n" > "$1/etc/apt/apt.conf.d/docker-no-languages"' \
      bookworm "$work/base.tar" "$work/host-sources.list" 2> "$work/mmdebstrap.log" \
    || { tail -20 "$work/mmdebstrap.log" >&2; return 1; }
  record mmdebstrap "$(elapsed "$t0")"
  t0=$(date +%s.%N)
  podman import --quiet --change 'CMD ["bash"]' "$work/base.tar" "$BASE_IMAGE" > /dev/null || return 1
  record podman-import "$(elapsed "$t0")"
  rm -f "$work/base.tar"
}
base_image() {
  if podman image exists "$BASE_IMAGE" 2>/dev/null; then
    say "$BASE_IMAGE is present"
    return 0
  fi
  if timeout 60 podman pull --quiet "$BASE_IMAGE" > "$work/pull.log" 2>&1; then
    say "$BASE_IMAGE pulled"
    return 0
  fi
  adjust "base image $BASE_IMAGE cannot be pulled ($(grep -m1 -o 'Error: .*' "$work/pull.log" | cut -c1-160)): built with mmdebstrap --variant=minbase bookworm from the host's apt sources and podman import"
  build_base_image
}
timed base-image base_image || finish FAILED "no $BASE_IMAGE: cannot pull it and mmdebstrap failed"

# Runtime: a trivial container, with the machine's configuration as it is.
probe_runtime() {
  podman run --rm --pull never --network none "$BASE_IMAGE" true > "$work/probe.log" 2>&1
}
runtime() {
  if probe_runtime; then
    say "containers run with this machine's podman configuration"
    return 0
  fi
  local why hard
  why=$(grep -v 'CNI config' "$work/probe.log" | head -3 | tr '\n' ' ' | cut -c1-300)
  hard=$(ulimit -Hn)
  [ "$hard" = unlimited ] && hard=1048576
  cat > "$work/containers.conf" <<EOF
# Written by scripts/containers.sh for this run only (CONTAINERS_CONF): this machine's
# podman could not start a container with its own configuration.
[containers]
default_ulimits = ["nofile=$hard:$hard", "nproc=32768:32768"]
base_hosts_file = "none"

[engine]
runtime = "runc"

[network]
network_backend = "netavark"
EOF
  export CONTAINERS_CONF=$work/containers.conf
  adjust "a container would not start ($why): CONTAINERS_CONF=$work/containers.conf with runtime runc, default_ulimits nofile=$hard:$hard (the host's hard limit) and nproc=32768:32768, base_hosts_file none"
  if ! probe_runtime; then
    echo "with the lane's containers.conf too: $(grep -v 'CNI config' "$work/probe.log" | head -3 | tr '\n' ' ')" >&2
    return 1
  fi
}
timed runtime-probe runtime || finish FAILED "podman cannot start a container on this machine, even with runc and the ulimits set: $(grep -v 'CNI config' "$work/probe.log" | head -3 | tr '\n' ' ')"

# pip inside the image build: does PyPI verify with public roots only (pip's own bundle)?
ca_probe() {
  "$root/.venv-containers/bin/python" - <<'EOF'
import socket, ssl, sys
from pip._vendor import certifi
bundle = certifi.where()
if bundle.startswith("/etc/"):  # a distribution's pip that uses the system store: cannot tell
    sys.exit(1)
try:
    with socket.create_connection(("pypi.org", 443), timeout=10) as s:
        ssl.create_default_context(cafile=bundle).wrap_socket(s, server_hostname="pypi.org").close()
except ssl.SSLCertVerificationError as exc:
    print(exc.verify_message, file=sys.stderr)
    sys.exit(1)
except OSError as exc:  # unreachable: the build will say so itself
    print(f"pypi.org unreachable from here ({exc}); no CA mount", file=sys.stderr)
sys.exit(0)
EOF
}
host_ca=""
for f in "${PIP_CERT:-}" "${SSL_CERT_FILE:-}" /etc/ssl/certs/ca-certificates.crt; do
  [ -n "$f" ] && [ -f "$f" ] && { host_ca=$f; break; }
done
build_args=""
t0=$(date +%s.%N)
if ca_probe 2> "$work/ca.log"; then
  say "PyPI verifies with public roots: no CA mount"
elif [ -n "$host_ca" ]; then
  build_args="--podman-build-args=--volume=$host_ca:/run/host-ca.crt:ro"
  adjust "PyPI does not verify with public roots ($(head -1 "$work/ca.log")): the host's CA bundle $host_ca is mounted into image builds at /run/host-ca.crt"
else
  say "PyPI does not verify with public roots and this host has no CA bundle: the kzbridge image build will likely fail"
fi
record ca-probe "$(elapsed "$t0")"

# Ports: EPMD and two distribution ports, free on every address.
read -r epmd_port dist_min dist_max < <(python3 - <<'EOF'
import random, socket
def free(port):
    for family, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        s = socket.socket(family, socket.SOCK_STREAM)
        try:
            s.bind((addr, port))
        except OSError as exc:
            if family == socket.AF_INET6 and exc.errno == 97:  # no IPv6 here
                continue
            return False
        finally:
            s.close()
    return True
for _ in range(200):
    base = random.randrange(20000, 32000)
    if all(free(p) for p in (base, base + 1, base + 2)):
        print(base, base + 1, base + 2)
        break
EOF
)
[ -n "${dist_max:-}" ] || finish FAILED "found no three free consecutive ports in 20000-32000"
say "ports: EPMD $epmd_port, distribution $dist_min-$dist_max (published on the host, 4369 left alone)"
project=kzbridge-lane-$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')

# ---------------------------------------------------------------- snapshots of the machine
snapshot() {  # snapshot DIR
  local d=$1 fam table
  mkdir -p "$d"
  podman ps -a --external --format '{{.ID}} {{.Names}} {{.Image}}' > "$d/containers" 2>/dev/null
  podman pod ls --format '{{.Name}}' > "$d/pods" 2>/dev/null
  podman network ls --format '{{.Name}}' > "$d/networks" 2>/dev/null
  podman volume ls --format '{{.Name}}' > "$d/volumes" 2>/dev/null
  sha256sum /etc/hosts > "$d/etc-hosts"
  ip -o link show | awk -F': ' '{ print $2 }' | sed 's/@.*//' | sort > "$d/links"
  ls /run/netns 2>/dev/null | sort > "$d/netns"
  for fam in iptables ip6tables; do
    for table in filter nat; do
      "$fam" -t "$table" -S 2>/dev/null > "$d/$fam-$table"
    done
  done
  sysctl -n net.ipv4.ip_forward > "$d/ip_forward"
  ps -eo args= | grep -E 'aardvark-dns|conmon|kazoo_apps@kazoo|netavark|buildah' | grep -v grep | sort > "$d/processes"
}
snapshot "$work/before"

# ---------------------------------------------------------------- 3. the CI recipe
trace_dir=$work/traces
t0=$(date +%s.%N)
COMPOSE="$COMPOSE_BIN${build_args:+ $build_args}" PROJECT=$project PATH="$root/.venv/bin:$PATH" \
  PYTHON=$root/.venv/bin/python KZBRIDGE=$root/.venv/bin/kzbridge TRACE_DIR=$trace_dir \
  KZBRIDGE_EPMD_PORT=$epmd_port KZBRIDGE_DIST_PORT_MIN=$dist_min KZBRIDGE_DIST_PORT_MAX=$dist_max \
  AFTER_PYTEST="$root/.venv/bin/python $root/scripts/lane_failing_test.py" \
  sh examples/ci/compose-ci.sh < /dev/null 2>&1 | tee "$work/compose-ci.log" | grep -v 'CNI config file'
ci_rc=${PIPESTATUS[0]}
record compose-ci "$(elapsed "$t0")"
while read -r _ step seconds _; do
  case "$seconds" in *s) record "$step" "${seconds%s}" ;; esac
done < <(grep -E '^compose-ci: [a-z-]+ [0-9.]+s' "$work/compose-ci.log")
trace_summary=$(grep -E '^compose-ci: .*: [0-9]+ lines' "$work/compose-ci.log" | sed 's/^compose-ci: //')

# ---------------------------------------------------------------- 4. nothing left behind
t0=$(date +%s.%N)
snapshot "$work/after"
leftovers=""
left() { leftovers="$leftovers$1"$'\n'; }
for what in containers pods networks volumes links netns; do
  extra=$(comm -13 <(sort "$work/before/$what") <(sort "$work/after/$what"))
  [ -z "$extra" ] || left "$what: $(echo "$extra" | paste -sd ',')"
done
cmp -s "$work/before/etc-hosts" "$work/after/etc-hosts" || left "/etc/hosts changed"
# Processes: aardvark-dns exits after the network goes, and init reaps it a little later.
for _ in $(seq 20); do
  extra=$(comm -13 <(sort "$work/before/processes") <(sort "$work/after/processes") | grep -v '<defunct>$')
  [ -n "$extra" ] || break
  sleep 0.5
  ps -eo args= | grep -E 'aardvark-dns|conmon|kazoo_apps@kazoo|netavark|buildah' | grep -v grep | sort > "$work/after/processes"
done
[ -z "$extra" ] || left "processes: $(echo "$extra" | paste -sd ';' | cut -c1-300)"
zombies=$(comm -13 <(sort "$work/before/processes") <(sort "$work/after/processes") | grep '<defunct>$')
[ -z "$zombies" ] || say "exited, not yet reaped by init (nothing runs): $(echo "$zombies" | paste -sd ' ')"
for p in "$epmd_port" "$dist_min" "$dist_max"; do
  python3 -c 'import socket,sys; s=socket.socket(); s.bind(("0.0.0.0", int(sys.argv[1]))); s.close()' "$p" 2>/dev/null \
    || left "port $p still bound"
done
# netavark leaves its base chains (NETAVARK_FORWARD, NETAVARK-HOSTPORT-*) and the jumps to
# them after the last network goes: when this run created them, and no container runs, they
# are removed again. Any other new rule (a network's chain, a port's DNAT) is a leftover.
netavark_base='^-N NETAVARK_FORWARD$|^-N NETAVARK-HOSTPORT-(DNAT|MASQ|SETMARK)$|^-A FORWARD .*-j NETAVARK_FORWARD$|^-A (PREROUTING|OUTPUT) -m addrtype --dst-type LOCAL -j NETAVARK-HOSTPORT-DNAT$|^-A POSTROUTING -j NETAVARK-HOSTPORT-MASQ$|^-A NETAVARK-HOSTPORT-MASQ .*--mark 0x2000/0x2000 -j MASQUERADE$|^-A NETAVARK-HOSTPORT-SETMARK -j MARK --set-xmark 0x2000/0x2000$'
for fam in iptables ip6tables; do
  for table in filter nat; do
    new=$(comm -13 <(sort "$work/before/$fam-$table") <(sort "$work/after/$fam-$table"))
    [ -n "$new" ] || continue
    if [ -z "$(grep -v -E "$netavark_base" <<< "$new")" ] && [ -z "$(podman ps -q 2>/dev/null)" ]; then
      while read -r rule; do  # the rules as iptables -S prints them (quoted comments): eval
        eval "$fam -t $table -D ${rule#-A }"
      done < <(grep '^-A ' <<< "$new")
      for chain in $(grep '^-N ' <<< "$new" | awk '{ print $2 }'); do
        "$fam" -t "$table" -F "$chain" && "$fam" -t "$table" -X "$chain"
      done
      "$fam" -t "$table" -S 2>/dev/null > "$work/after/$fam-$table"
      new=$(comm -13 <(sort "$work/before/$fam-$table") <(sort "$work/after/$fam-$table"))
      [ -n "$new" ] || { say "removed netavark's base chains from $fam $table (this run created them)"; continue; }
    fi
    left "$fam $table rules: $(echo "$new" | paste -sd ';' | cut -c1-300)"
  done
done
if [ "$(cat "$work/before/ip_forward")" != "$(cat "$work/after/ip_forward")" ]; then
  sysctl -q -w "net.ipv4.ip_forward=$(cat "$work/before/ip_forward")" \
    && say "net.ipv4.ip_forward set back to $(cat "$work/before/ip_forward") (netavark had turned it on)" \
    || left "net.ipv4.ip_forward changed by netavark"
fi
if [ -n "$leftovers" ]; then  # remove what can be removed, so the next run starts clean
  podman ps -a -q --filter "label=io.podman.compose.project=$project" 2>/dev/null | xargs -r podman rm -f -t 0 > /dev/null 2>&1
  podman pod rm -f "pod_$project" > /dev/null 2>&1
  podman network rm -f "${project}_default" > /dev/null 2>&1
fi
record leftover-check "$(elapsed "$t0")"
say "leftover-check $(elapsed "$t0")s"

[ -z "$leftovers" ] || { printf '%s' "$leftovers" | sed 's/^/lane: left behind: /'; }
[ "$ci_rc" -eq 0 ] || finish FAILED "examples/ci/compose-ci.sh failed ($(grep -E '^compose-ci: failed' "$work/compose-ci.log" | tail -1 | sed 's/^compose-ci: //'))"
[ -z "$leftovers" ] || finish FAILED "left behind: $(printf '%s' "$leftovers" | paste -sd ';')"
finish OK
