#!/usr/bin/env bash
# Prints the path of a Python >= 3.12: on PATH first, then in pyenv's versions folder.
set -u
ok() { "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1; }
for name in python3.14 python3.13 python3.12 python3; do
  if command -v "$name" >/dev/null 2>&1 && ok "$name"; then
    "$name" -c 'import sys; print(sys.executable)'
    exit 0
  fi
done
root="${PYENV_ROOT:-$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")}"
for py in $(ls -d "$root"/versions/3.1[2-9]*/bin/python3 2>/dev/null | sort -rV); do
  if ok "$py"; then echo "$py"; exit 0; fi
done
cat >&2 <<'MSG'
holdgate needs Python >= 3.12 and found none (looked for python3.14/3.13/3.12/python3 on PATH
and in pyenv's versions folder). Install one, e.g. `pyenv install 3.12` or your OS package
`python3.12`, then run the command again.
MSG
exit 1
