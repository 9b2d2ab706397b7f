#!/usr/bin/env bash
# Full-tier smoke on a lent GPU machine WITHOUT internet (one H100): one prepared run.
# A GPU machine WITH internet needs none of this: `make gpu-smoke MODELS=~/models` (zpatch verify
# --device cuda --models DIR) checks out, applies, fetches the real model files and runs them.
# Here only the working tree travels, so the patched checkout must travel too. Make it first
# where the upstreams are reachable, and carry it (build/ is git-ignored):
#   .venv/bin/zpatch checkout --apply build/gpu/ComfyUI
# Usage: bench/gpu_smoke.sh [CHECKOUT]   (default build/gpu/ComfyUI; results in ${OUT:-bench/results/gpu})
# MODELS=DIR: the real files there (zpatch models fetch DIR, carried too) instead of synthetic ones.
# DEVICE=cpu TIER=tiny rehearses the same steps on a CPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
checkout=${1:-build/gpu/ComfyUI}
out=${OUT:-bench/results/gpu}
device=${DEVICE:-cuda}
tier=${TIER:-full}
mkdir -p "$out"
# A carried checkout may belong to another uid there; let git read it anyway (throwaway machine).
export GIT_CONFIG_COUNT=1 GIT_CONFIG_KEY_0=safe.directory GIT_CONFIG_VALUE_0='*'

echo "== GPU"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi | tee "$out/nvidia-smi.txt" || { echo "error: nvidia-smi failed" >&2; exit 3; }
  gpu=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)
elif [ "$device" = cuda ]; then
  echo "error: no nvidia-smi: not a GPU machine" >&2; exit 3
else gpu="none ($device rehearsal)"; fi

echo "== Python"  # the first candidate whose torch sees the device; absolute: the harness runs elsewhere
py=""
for cand in "${ZPATCH_SMOKE_PYTHON:-}" .venv/bin/python python3; do
  [ -n "$cand" ] || continue
  p=$(command -v "$cand") || continue
  [[ $p = /* ]] || p=$repo/$p
  if err=$("$p" -c "import sys, torch
if '$device' == 'cuda' and not torch.cuda.is_available(): sys.exit('torch.cuda.is_available() is False')" 2>&1)
  then py=$p; break; fi
  echo "  $cand: no torch with $device: ${err##*$'\n'}" >&2
done
if [ -z "$py" ]; then
  echo "error: no python with torch + $device (tried \$ZPATCH_SMOKE_PYTHON, .venv/bin/python, python3);" \
       "this machine has no internet, so it must already have one: set ZPATCH_SMOKE_PYTHON" >&2
  exit 3
fi
"$py" -c 'import click, unidiff, filelock' || {
  echo "error: $py lacks zpatch's own packages (click, unidiff, filelock)" >&2; exit 3; }
"$py" -c 'import sys, torch; print(" ", sys.argv[1], "torch", torch.__version__, "cuda", torch.version.cuda)' "$py"
# zpatch from this tree under that python (a carried .venv would not fit; timeout needs a program)
export PYTHONPATH=$repo${PYTHONPATH:+:$PYTHONPATH}
zpatch=("$py" -c 'import sys; sys.argv[0] = "zpatch"; from zimage_patcher.cli import main; main()')

echo "== Checkout"
for d in comfy custom_nodes/ComfyUI-GGUF custom_nodes/ComfyUI-ZImage-Fix; do
  [ -d "$checkout/$d" ] && continue
  echo "error: no $checkout/$d: not a patched ComfyUI checkout. Make it where the upstreams are" \
       "reachable (this machine cannot reach them) and carry it here: zpatch checkout --apply $checkout" >&2
  exit 4
done
# Informational: a partial mirror's missing file shows as a foreign change (exit 1) but is harmless.
"${zpatch[@]}" status "$checkout" | tee "$out/status.txt" || echo "  (zpatch status exited $?)"

echo "== Smoke"
args=(smoke "$checkout" --device "$device" --tier "$tier" --python "$py" --json --out "$out/smoke")
[ -n "${MODELS:-}" ] && args+=(--models "$MODELS")   # with --tier full: the real graph on those files
echo "  zpatch ${args[*]}"
t0=$(date +%s%N); rc=0
timeout 420 "${zpatch[@]}" "${args[@]}" >"$out/smoke.json" 2> >(tee "$out/smoke.stderr" >&2) || rc=$?
wall=$(( ($(date +%s%N) - t0) / 1000000 ))
echo "$wall" >"$out/wall_ms.txt"
line=$("$py" - "$out/smoke.json" <<'EOF' || true
import json, sys
d = json.load(open(sys.argv[1])); r = d.get("report") or d.get("details") or {}
t = r.get("timings") or {}
print(f"ok={d.get('ok')} total={t.get('total')}s peak_gpu_mb={r.get('peak_gpu_mb')} "
      f"peak_rss_mb={r.get('peak_rss_mb')} {d.get('error') or d.get('message') or ''}".strip())
EOF
)
[ "$rc" = 124 ] && line="timed out after 420 s"
cat >"$out/gpu_smoke.md" <<EOF
# GPU smoke ($(date -u +%Y-%m-%dT%H:%MZ))

- GPU: $gpu
- Python: $py
- Command: \`timeout 420 zpatch ${args[*]}\` (zpatch = this tree under the Python above)
- Exit status: $rc; wall time: $((wall / 1000)).$(printf %03d $((wall % 1000))) s
- Result: ${line:-no JSON report (see smoke.stderr)}

Files: smoke.json (zpatch --json), smoke/ (PNGs, smoke-report.json, smoke.log), nvidia-smi.txt, status.txt.
EOF
cat "$out/gpu_smoke.md"
exit "$rc"
