#!/usr/bin/env bash
# CI: builds the Debian package (packaging/build-deb.sh, release profile, reusing CARGO_TARGET_DIR), checks the
# release binary is under 40 MiB, installs the package with dpkg, checks what it installed, starts the service
# with loopback-only test settings, checks /healthz and /readyz, stops it and purges the package. Also checks
# that compose.yaml parses. Needs root (dpkg).
#
# With systemd as PID 1 the unit is started with systemctl. Without it (CI containers) the unit's ExecStart runs
# the way the unit says: as its User/Group, without privileges (setpriv: no new privileges, no capabilities), in
# its WorkingDirectory, with only its Environment= lines and its EnvironmentFile. The sandboxing options
# (ProtectSystem=, SystemCallFilter=, …) need systemd and are checked only by `systemd-analyze verify`.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "ci-deb.sh: run as root (it installs the package with dpkg)" >&2; exit 1; }

unit=/usr/lib/systemd/system/b24sense.service
envfile=/etc/b24sense/b24sense.env
fail() { echo "ci-deb.sh: $*" >&2; exit 1; }

echo "--- build"
deb=$(packaging/build-deb.sh | tail -n1)
[ -f "$deb" ] || fail "packaging/build-deb.sh did not produce a .deb"
bin_size=$(stat -c %s "${CARGO_TARGET_DIR:-target}/release/b24sense")
echo "$deb: $(stat -c %s "$deb") bytes; release binary $bin_size bytes"
[ "$bin_size" -lt $((40 * 1024 * 1024)) ] || fail "the release binary is $bin_size bytes, over 40 MiB: see [profile.release]"
dpkg-deb --info "$deb" | sed -n '/Package:/,$p'

echo "--- install"
if dpkg -s b24sense >/dev/null 2>&1; then dpkg --purge b24sense; fi
DEBIAN_FRONTEND=noninteractive dpkg -i "$deb"
[ -f "$unit" ] || unit=/lib/systemd/system/b24sense.service
for f in /usr/bin/b24sense /usr/share/man/man1/b24sense.1.gz /usr/share/man/man1/b24sense-serve.1.gz \
    /usr/share/bash-completion/completions/b24sense /usr/share/zsh/vendor-completions/_b24sense \
    /usr/share/fish/vendor_completions.d/b24sense.fish "$unit" "$envfile"; do
    [ -s "$f" ] || fail "the package did not install $f"
done
getent passwd b24sense >/dev/null || fail "postinst did not create the user b24sense"
[ "$(stat -c %a:%U "$envfile")" = 600:root ] || fail "$envfile is $(stat -c %a:%U "$envfile"), not 600:root"
grep -Eq '^B24SENSE_SECRET_KEY=[0-9a-f]{64}$' "$envfile" || fail "postinst did not put a secret key in $envfile"
[ "$(stat -c %U "/var/lib/b24sense")" = b24sense ] || fail "/var/lib/b24sense is not owned by b24sense"
zcat /usr/share/man/man1/b24sense-serve.1.gz | grep -q '^\.TH' || fail "b24sense-serve.1 is not a man page"

if command -v systemd-analyze >/dev/null; then
    echo "--- systemd-analyze verify"
    # Also checks that the Documentation= man page is installed, where man is.
    if command -v man >/dev/null; then systemd-analyze verify "$unit"; else systemd-analyze verify --man=no "$unit"; fi
else
    echo "--- systemd-analyze not installed: unit not verified"
fi

echo "--- start the service (loopback only, test settings)"
port=
for p in $(seq 18080 18179); do
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then port=$p; break; fi
done
[ -n "$port" ] || fail "no free port in 18080-18179"
# What an operator fills in; http:// public URL is refused (Bitrix24 needs https), so a placeholder https one.
sed -i -e "s|^B24SENSE_PUBLIC_URL=.*|B24SENSE_PUBLIC_URL=https://b24sense.ci.invalid/|" \
    -e "s|^B24SENSE_CLIENT_ID=.*|B24SENSE_CLIENT_ID=local.ci.1|" \
    -e "s|^B24SENSE_CLIENT_SECRET=.*|B24SENSE_CLIENT_SECRET=ci-client-secret|" \
    -e "s|^B24SENSE_LISTEN=.*|B24SENSE_LISTEN=127.0.0.1:$port|" "$envfile"

command -v curl >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl >/dev/null; }
get() { curl -fsS --max-time 5 "http://127.0.0.1:$port$1"; }
log=$(mktemp)
pid=
stop() {
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill -TERM "$pid"; fi
    if [ -d /run/systemd/system ]; then systemctl stop b24sense || true; fi
}
trap stop EXIT

if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl start b24sense
else
    # The unit's own settings, read from the installed file.
    key() { sed -n "s/^$1=//p" "$unit"; }
    user=$(key User) group=$(key Group) workdir=$(key WorkingDirectory)
    read -r -a exec_start <<<"$(key ExecStart)"
    mapfile -t envs < <(key Environment)
    mapfile -t file_envs < <(grep -E '^[A-Za-z_][A-Za-z0-9_]*=' "$(key EnvironmentFile)")
    [ -n "$user" ] && [ -n "$group" ] && [ "${#exec_start[@]}" -gt 0 ] || fail "cannot read User/Group/ExecStart from $unit"
    echo "as $user:$group in $workdir: ${exec_start[*]}"
    (cd "$workdir" && exec setpriv --reuid="$user" --regid="$group" --init-groups --no-new-privs \
        --inh-caps=-all --bounding-set=-all -- env -i PATH=/usr/bin:/bin \
        "${envs[@]}" "${file_envs[@]}" "${exec_start[@]}") >"$log" 2>&1 &
    pid=$!
fi

ok=
for _ in $(seq 1 60); do
    if [ "$(get /healthz 2>/dev/null)" = ok ]; then ok=1; break; fi
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then break; fi
    sleep 0.5
done
[ -n "$ok" ] || { cat "$log" >&2; fail "/healthz did not answer ok on 127.0.0.1:$port within 30 s"; }
echo "/healthz: ok"
get /readyz >/dev/null || { cat "$log" >&2; fail "/readyz failed: the service cannot use its database"; }
echo "/readyz: ok"
[ "$(stat -c %U /var/lib/b24sense/b24sense.db)" = b24sense ] ||
    fail "the ledger /var/lib/b24sense/b24sense.db was not created by the user b24sense"
grep -q ci-client-secret "$log" && fail "the client secret appears in the service's log"

echo "--- stop"
if [ -n "$pid" ]; then
    kill -TERM "$pid"
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && fail "the service did not stop within 20 s of SIGTERM"
    wait "$pid" && rc=0 || rc=$?
    [ "$rc" = 0 ] || { cat "$log" >&2; fail "the service exited with $rc after SIGTERM"; }
else
    systemctl stop b24sense
fi
pid=
echo "the service's first log lines:"; head -n 3 "$log"; rm -f "$log"

echo "--- purge"
dpkg --purge b24sense
[ ! -e /usr/bin/b24sense ] || fail "dpkg --purge left /usr/bin/b24sense"
[ ! -e "$envfile" ] || fail "dpkg --purge left $envfile"
rm -rf /var/lib/b24sense   # the ledger purge keeps on purpose; this one is the test's

echo "--- compose.yaml"
if python3 -c 'import yaml' 2>/dev/null; then
    python3 - <<'PY'
import yaml
doc = yaml.safe_load(open("compose.yaml"))
services = doc["services"]
assert {"b24sense", "postgres", "caddy"} <= set(services), sorted(services)
for name, s in services.items():
    assert "image" in s or "build" in s, f"service {name}: neither image nor build"
print("compose.yaml parses; services:", ", ".join(sorted(services)))
PY
else
    echo "compose.yaml NOT checked: python3 with PyYAML is not installed"
fi
echo "packaging checks passed"
