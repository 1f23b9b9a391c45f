# Sourced by scripts/demo and scripts/test: create or reuse .venv and install the project into it.
# One environment serves both: the stamp records pyproject.toml's hash and the extras installed,
# and a command whose extras are already there (the demo needs none) installs nothing. So
# alternating ./scripts/demo and ./scripts/test never reinstalls; pyproject.toml changing does.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PROCTHROTTLE_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
WANT="${1:-}"  # comma-separated extras this command needs
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
fi
stamp="$VENV/.procthrottle-installed"
hash="$(sha256sum < "$ROOT/pyproject.toml" | cut -c1-16)"
read -r old_hash old_extras 2>/dev/null < "$stamp" || { old_hash=""; old_extras=""; }
[ "$old_hash" = "$hash" ] || old_extras=""
# the union of what is installed and what is wanted, sorted, without duplicates
extras="$(printf '%s\n' ${old_extras//,/ } ${WANT//,/ } | sed '/^$/d' | sort -u | paste -sd, -)"
if [ "$old_hash" != "$hash" ] || [ "$extras" != "$old_extras" ]; then
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$ROOT${extras:+[$extras]}"
    echo "$hash $extras" > "$stamp"
fi
export PATH="$VENV/bin:$PATH"
cd "$ROOT"
