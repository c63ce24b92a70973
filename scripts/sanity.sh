#!/usr/bin/env bash
# Run `ansible-test sanity` on a clean copy of the collection, without docker.
#
#   scripts/sanity.sh [extra ansible-test sanity args, e.g. --test pylint]
#
# * The copy lives at build/sanity/ansible_collections/<namespace>/<name>: ansible-test needs that
#   layout, and the repo root is the collection root. Only files git knows about (tracked, plus
#   untracked ones that .gitignore does not exclude) are copied, so .venv/, build/ and other stray
#   files never leak into the test.
# * ANSIBLE_TEST_CONTENT_ROOT pins the content root to the copy: without it ansible-test walks up,
#   finds the repo's .git, asks git for the files of build/sanity (ignored) and tests nothing.
# * Tests run for Python 3.11 only (the Debian 12 python the modules run with); each sanity test
#   gets a virtualenv under ~/.ansible/test/venv with pinned tools from PyPI, cached across runs.
# * ansible-test bootstraps pip in those virtualenvs with a get-pip.py it downloads from
#   ci-files.testing.ansible.com, which is not reachable here; scripts/ansible_test_get_pip.py is
#   put in its cache instead (ensurepip + pip from PyPI).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$REPO/.venv}"
PY="$VENV/bin/python"
SANITY_PYTHON="${SANITY_PYTHON:-3.11}"

[[ -x "$VENV/bin/ansible-test" ]] || { echo "sanity: $VENV/bin/ansible-test missing; run scripts/install-deps.sh" >&2; exit 1; }

read -r NAMESPACE NAME < <("$PY" -c '
import sys, yaml
g = yaml.safe_load(open(sys.argv[1]))
print(g["namespace"], g["name"])' "$REPO/galaxy.yml")
DEST="$REPO/build/sanity/ansible_collections/$NAMESPACE/$NAME"

# 1. a fresh copy of the collection
rm -rf "$REPO/build/sanity"
mkdir -p "$DEST"
if git -C "$REPO" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  (cd "$REPO" && git ls-files -z --cached --others --exclude-standard \
     | while IFS= read -r -d '' f; do [[ -e "$f" || -L "$f" ]] && printf '%s\0' "$f"; done \
     | rsync -a --from0 --files-from=- ./ "$DEST/")
else
  rsync -a --exclude=/.git --exclude=/.venv --exclude=/build --exclude=/tests/output \
    --exclude=__pycache__ --exclude=.pytest_cache --exclude='*.pyc' "$REPO/" "$DEST/"
fi
echo "sanity: copied $(find "$DEST" -type f | wc -l) files to ${DEST#"$REPO"/}"

# 2. the offline get-pip stand-in, under the name ansible-test looks for
PIP_VERSION="$("$PY" - <<'PYEOF'
import re
from pathlib import Path
import ansible_test
src = Path(ansible_test.__file__).parent / "_internal" / "python_requirements.py"
m = re.search(r"default_packages = dict\(\s*pip='([0-9.]+)'", src.read_text())
print(m.group(1) if m else "")
PYEOF
)"
[[ -n "$PIP_VERSION" ]] || { echo "sanity: cannot tell which pip ansible-test bootstraps" >&2; exit 1; }
CACHE="$HOME/.ansible/test/cache"
mkdir -p "$CACHE"
GET_PIP="$CACHE/get_pip_${PIP_VERSION//./_}.py"
# Keep a real get-pip.py that ansible-test once downloaded; replace a missing or older stand-in.
if [[ ! -s "$GET_PIP" ]] || grep -q 'Offline stand-in for the get-pip.py' "$GET_PIP"; then
  cmp -s "$REPO/scripts/ansible_test_get_pip.py" "$GET_PIP" || cp "$REPO/scripts/ansible_test_get_pip.py" "$GET_PIP"
fi

# 3. run
cd "$DEST"
export ANSIBLE_TEST_CONTENT_ROOT="$DEST"
export PATH="$VENV/bin:$PATH"
set -x
exec "$VENV/bin/ansible-test" sanity --python "$SANITY_PYTHON" --python-interpreter "$PY" \
  --color no "$@"
