#!/usr/bin/env bash
# The prepared GPU check (issue 23): `bench doctor --device gpu`, then a small GPU sweep, everything
# written under OUTDIR. It proves on a real GPU what the CPU tests cannot: every ok cell of torch and
# JAX carries device_seconds and peak_device_bytes, the doctor passes, and the run folder and report
# are written.
#
#   bash scripts/gpu_check.sh OUTDIR          (from the repository root, on a machine with an NVIDIA GPU)
#
# Needs Python with torch (CUDA build) and/or jax with its CUDA plugin, flax, optax, and the suite's
# dependencies; it runs from the source tree (no pip install of the suite). Wheels found in .whl/ are
# installed first into /tmp/site, for a machine that cannot download: this workplace's lent GPU machine
# (Python 3.12, torch 2.11 CUDA 13, JAX 0.11.2 with its CUDA 13 plugin) lacks pydantic, pydantic-core,
# annotated-types and typing-inspection (carried with typing-extensions, which pydantic needs >= 4.14.1),
# and it has no TensorFlow or Keras, so TensorFlow's GPU path cannot be checked there (the doctor lists
# tensorflow as not installed, and the sweep is torch and jax).
#
# On the lent machine: the device tool sends the session's checkout (/work/main), not a helper's
# worktree, so merge this branch into main first; then, in /work/main (.whl is ignored through
# .git/info/exclude), download the five wheels with the command of /work/.library/device/README.md,
# "Notes" (pydantic==2.13.4 pydantic-core==2.46.4 annotated-types==0.7.0 typing-inspection==0.4.2
# typing-extensions==4.15.0, --python-version 3.12), and call
#   run(command="bash scripts/gpu_check.sh $OUT/gpu", carry=[".whl"], timeout_s=600)
# At most 8 files come back from $OUT, 2 folders deep: OUTDIR holds nvidia-smi.txt, doctor.txt (the
# doctor's table), sweep.log, summary.txt (scripts/gpu_summary.py) and run.tar.gz (the run folder:
# results.jsonl, environment.json, report.html, CSVs, figures). Unpack it into
# docs/results/<gpu-name>-<date>/ to commit it.
#
# Budget, one H100, under 8 minutes. The sweep: jax and torch, mlp and cnn, adam, relu, --modes
# best,eager (torch on a GPU: compiled, compiled-cudagraphs, eager; jax: jit, eager), fp32 and bf16,
# 3 repeats: 2 models x 2 precisions x 3 repeats x (3 torch + 2 jax modes) = 60 cells (36 torch, 24
# jax), quick profile, windows of at least 0.1 s within a 1 s budget. Estimate: torch's 8 cold
# compiles (2 models x 2 precisions x 2 compiled modes; inductor with 16 compile workers) ~20 s each
# = 160 s, their 16 warm repeats (inductor's cache) ~4 s = 64 s, 12 eager cells ~3 s = 36 s; jax's 24
# cells each in a fresh worker (its peak memory cannot be reset) ~3 s start + ~3 s = 144 s; one worker
# start for torch ~5 s; the GPU probes and matmul peaks ~20 s; the report ~20 s: ~450 s. The doctor
# (~30 s) comes first. These compile and start-up times are estimates (no GPU was lent when this was
# written), so the sweep is stopped at SWEEP_SECONDS, 360 by default (SIGTERM: the driver keeps the
# finished cells and still writes the report, within the 60 s grace before a KILL), and the script ends
# inside 8 minutes whatever the compile times are: jax runs first and cells run repeat by repeat, so a cut
# run keeps both frameworks and whole repeats, summary.txt counts what ran, and
# `python3 -m bench run --resume /tmp/gpu-check-run` finishes the rest on the same machine.
set -u -o pipefail

out=${1:?usage: bash scripts/gpu_check.sh OUTDIR}
SWEEP_SECONDS=${SWEEP_SECONDS:-360}
mkdir -p "$out"
started=$(date +%s)

if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 COLUMNS=200

nvidia-smi > "$out/nvidia-smi.txt" 2>&1
python3 -m bench doctor --device gpu 2>&1 | tee "$out/doctor.txt"
doctor=${PIPESTATUS[0]}
echo "doctor exit $doctor after $(( $(date +%s) - started )) s"

run=/tmp/gpu-check-run
rm -rf "$run"
timeout --signal=TERM --kill-after=60 "$SWEEP_SECONDS" \
    python3 -m bench run --backend jax,torch --models mlp,cnn --optimizers adam --activations relu \
    --modes best,eager --precision fp32,bf16 --repeats 3 --device gpu --min-window 0.1 --window-budget 1 \
    --cell-timeout 180 --out "$run" 2>&1 | tee "$out/sweep.log"
sweep=${PIPESTATUS[0]}
echo "sweep exit $sweep after $(( $(date +%s) - started )) s" | tee -a "$out/sweep.log"

python3 scripts/gpu_summary.py "$run" 2>&1 | tee "$out/summary.txt"
summary=${PIPESTATUS[0]}
tar -czf "$out/run.tar.gz" -C "$(dirname "$run")" "$(basename "$run")"
echo "doctor $doctor, sweep $sweep, summary $summary; $(( $(date +%s) - started )) s in all" | tee -a "$out/summary.txt"
[ "$doctor" -eq 0 ] && [ "$summary" -eq 0 ]
