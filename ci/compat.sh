#!/usr/bin/env bash
# The transformers/peft compatibility matrix, run by hand (not in CI): docs/compat.md has its last results.
#
#   ci/compat.sh [ROW ...]      rows: 5.6 5.19 newest 4.57 (default: all, in that order)
#
# Each row gets its own venv (python3 -m venv) under $COMPAT_DIR (default /tmp/tracer-compat), kept between
# runs (FRESH=1 rebuilds it): torch==2.13.0 first (the CPU build on this machine's disk; a bare `torch` would
# pull a multi-GB CUDA build), then the row's transformers and peft, setup.cfg's other install_requires,
# pytest, and the package itself with --no-deps (the [test] extra is left out: trl and deepspeed pin
# transformers themselves and none of the tests run here needs them). Then, timed:
#   pip check   the row's versions inside setup.cfg's declared ranges (an "out" row is expected outside)
#   trace       bin/trace samples/sample.wav --repeats 1 --warmup 0: exit 0 and no REFUTED claim
#   tests       python3 -m pytest -q $TESTS (the family checkpoints, confirmation, gradient causes)
# SWIFT=1 also installs ms-swift ($SWIFT_PIN, its requirements held to the row's torch/transformers/peft by
# the constraints file) into the 5.19 row, ms-swift 4.6's ceiling, and adds tests/test_swift.py (TracerCallback
# in ms-swift's own Seq2SeqTrainer) to that row's tests; the other rows are unchanged.
# A "pass" row must pass all three; an "out" row is one setup.cfg excludes (docs/compat.md says why): it is
# run to show that it still fails, and its failure does not fail the script. Prints a table; exits 1 when a
# "pass" row fails (or an "out" row unexpectedly passes everything: widen setup.cfg after a look).
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
COMPAT_DIR=${COMPAT_DIR:-/tmp/tracer-compat}
TESTS=${TESTS:-tests/test_family_checkpoints.py tests/test_confirmation.py tests/test_causes.py}
TORCH=torch==2.13.0
SWIFT_PIN=ms-swift==4.6.0

# name  transformers  peft  expect   why this row
ROWS=(
  "5.6    5.6.0   0.18.1 pass"  # LLaMA-Factory 0.9.5's ceiling: transformers<=5.6.0, peft<=0.18.1
  "5.19   5.19.0  0.20.0 pass"  # ms-swift 4.6's ceiling: transformers<5.20, peft<0.21
  "newest 5.24.0  0.21.2 pass"  # the newest on PyPI on 2026-12-01: the default CI row
  "4.57   4.57.6  0.17.1 out"   # the last transformers 4.x, with a peft of its time
)

wanted=("$@")
mkdir -p "$COMPAT_DIR/logs"
cd "$ROOT" || exit 2

# setup.cfg's install_requires but torch, transformers and peft (pinned per row)
mapfile -t REQUIRES < <(python3 - <<'EOF'
import configparser, re
cfg = configparser.ConfigParser()
cfg.read("setup.cfg")
for line in cfg["options"]["install_requires"].splitlines():
    line = line.split("#", 1)[0].strip()
    if line and re.split(r"[<>=!~ \[;]", line, maxsplit=1)[0].lower() not in ("torch", "transformers", "peft"):
        print(line)
EOF
)

seconds() { echo $(( $(date +%s) - $1 )); }

run_row() {  # name transformers peft -> sets INSTALL CHECK TRACE TEST (cells) and OK (0/1)
  local name=$1 tf=$2 peft=$3 venv="$COMPAT_DIR/venv-$1" log="$COMPAT_DIR/logs/$1" t0
  OK=1
  t0=$(date +%s)
  [ "${FRESH:-0}" = 1 ] && rm -rf "$venv"
  : >"$log-install.log"
  if [ ! -x "$venv/bin/python3" ] && ! python3 -m venv "$venv" >>"$log-install.log" 2>&1; then
    INSTALL="venv failed"; OK=0; return
  fi
  local py="$venv/bin/python3"
  local tests=$TESTS swift=0
  [ "${SWIFT:-0}" = 1 ] && [ "$name" = 5.19 ] && { swift=1; tests="$tests tests/test_swift.py"; }
  printf '%s\n' "$TORCH" "transformers==$tf" "peft==$peft" >"$venv/constraints.txt"
  if ! { "$py" -m pip install -q "$TORCH" &&
         "$py" -m pip install -q -c "$venv/constraints.txt" "transformers==$tf" "peft==$peft" "${REQUIRES[@]}" "pytest>=7" &&
         { [ "$swift" = 0 ] || "$py" -m pip install -q -c "$venv/constraints.txt" "$SWIFT_PIN"; } &&
         "$py" -m pip install -q --no-deps -e "$ROOT"; } >>"$log-install.log" 2>&1; then
    INSTALL="failed ($(seconds "$t0") s)"; CHECK=-; TRACE=-; TEST=-; OK=0; return
  fi
  local got
  got=$("$py" -c "import torch, transformers as t, peft; print(torch.__version__.split('+')[0], t.__version__, peft.__version__)" \
        2>>"$log-install.log")
  INSTALL="$(seconds "$t0") s"
  [ "$got" = "${TORCH#torch==} $tf $peft" ] || { INSTALL="got $got"; OK=0; }

  if "$py" -m pip check >"$log-check.log" 2>&1; then CHECK=ok; else CHECK="fails"; OK=0; fi

  t0=$(date +%s)
  "$py" bin/trace samples/sample.wav --repeats 1 --warmup 0 >"$log-trace.log" 2>&1
  local rc=$? refuted
  refuted=$(grep -c "REFUTED" "$log-trace.log")
  if [ "$rc" != 0 ]; then TRACE="exit $rc ($(seconds "$t0") s)"; OK=0
  elif [ "$refuted" != 0 ]; then TRACE="$refuted refuted ($(seconds "$t0") s)"; OK=0
  else TRACE="ok ($(seconds "$t0") s)"; fi

  t0=$(date +%s)
  # shellcheck disable=SC2086
  "$py" -m pytest -q -p no:cacheprovider $tests >"$log-tests.log" 2>&1
  rc=$?
  TEST="$(tail -n 1 "$log-tests.log" | sed -e 's/=//g' -e 's/^ *//' -e 's/ in [0-9.]*s.*//') ($(seconds "$t0") s)"
  [ "$rc" = 0 ] || OK=0
}

table=("row|transformers|peft|install|pip check|trace|tests|result")
failed=0
for row in "${ROWS[@]}"; do
  read -r name tf peft expect <<<"$row"
  if [ ${#wanted[@]} -gt 0 ] && [[ ! " ${wanted[*]} " =~ " $name " ]]; then continue; fi
  echo "== $name: transformers $tf, peft $peft (logs: $COMPAT_DIR/logs/$name-*.log)" >&2
  INSTALL=-; CHECK=-; TRACE=-; TEST=-
  run_row "$name" "$tf" "$peft"
  if [ "$expect" = pass ]; then
    if [ "$OK" = 1 ]; then result=PASS; else result=FAIL; failed=1; fi
  else
    if [ "$OK" = 1 ]; then result="PASSES (declared out: widen setup.cfg?)"; failed=1; else result="out, as declared"; fi
  fi
  table+=("$name|$tf|$peft|$INSTALL|$CHECK|$TRACE|$TEST|$result")
done

# newer releases than the newest row: a row to add, and setup.cfg's upper bounds to widen once it passes
newest_row=$(printf '%s\n' "${ROWS[@]}" | awk '$1 == "newest" {print $2, $3}')
for pkg in transformers peft; do
  latest=$(python3 -m pip index versions "$pkg" 2>/dev/null | sed -n "s/^$pkg (\(.*\))$/\1/p")
  case $pkg in transformers) tested=${newest_row% *} ;; peft) tested=${newest_row#* } ;; esac
  if [ -n "$latest" ] && [ "$latest" != "$tested" ]; then
    echo "note: PyPI's newest $pkg is $latest, the newest row tests $tested" >&2
  fi
done

echo
printf '%s\n' "${table[@]}" | column -t -s '|'
exit "$failed"
