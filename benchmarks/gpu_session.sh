#!/usr/bin/env bash
# One device call on a lent GPU machine (about 9 minutes, everything under $OUT):
#   1. python -m pytest -m gpu (the tests that need CUDA);
#   2. experiment=space_invaders_dqn (the course's 1M steps) through the real
#      pipelines.train, sized for the node (workers, envs, acting on the learner), into an
#      MLflow store in /tmp; its best model played on the course's evaluation protocol
#      (pipelines.evaluate); benchmarks.atari_result writes the JSON, the learning curve
#      and the best model (its video is recorded afterwards where ffmpeg is);
#   3. benchmarks.pong_dqn_throughput in both acting modes (env steps/s, updates/s).
# Each step has its own time limit, so a slow one cannot starve the rest; the log of each
# comes back (8 files at most: session.log, pytest_gpu.log, space_invaders_train.log,
# throughput.log, space_invaders_dqn.{json,png}, space_invaders_dqn_best_model.tar.gz,
# pong_dqn_throughput.json). The machine's Python has PyTorch but not Ray, MLflow, Hydra,
# gymnasium or ale-py: benchmarks/gpu_bundle.sh packs them into .whl/site.tar.xz, which
# the call carries (carry [".whl"]) and this script unpacks first. Rehearse on a CPU
# machine with tiny counts:
#   OUT=/tmp/gpu-rehearsal PY=.venv/bin/python SI_STEPS=3000 SI_STARTS=1000 WORKERS=1 \
#     ENVS=2 GPUS_PER_TRIAL=0 TP_STEPS=1000 TP_STARTS=1000 benchmarks/gpu_session.sh
set -uo pipefail
: "${OUT:?set OUT to the folder whose files come back}"
PY=${PY:-python3}
SI_STEPS=${SI_STEPS:-1000000}       # Space Invaders env steps (the course's 1M)
SI_STARTS=${SI_STARTS:-100000}      # its learning_starts (the course's)
WORKERS=${WORKERS:-14}              # rollout workers: the node's cores less the learner's
ENVS=${ENVS:-8}                     # envs per worker
ACTING=${ACTING:-learner}           # algo.acting
GPUS_PER_TRIAL=${GPUS_PER_TRIAL:-1}
TP_STEPS=${TP_STEPS:-20000}         # throughput: learning steps, and sampling-only first
TP_STARTS=${TP_STARTS:-10000}
T_TESTS=${T_TESTS:-100} T_TRAIN=${T_TRAIN:-330} T_TP=${T_TP:-110}
export PYTHONUNBUFFERED=1 RAY_DEDUP_LOGS=0 MPLBACKEND=Agg RLPIPE_BENCHMARK_RESULTS="$OUT"
# The steps run in a folder of their own: the checkout stays importable from there.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$OUT/session.log"; }
FAILED=()
# ended STEP STATUS [WHAT]: the step's exit line; the script goes on past a failed step
# and exits 1 at the end, naming each one that failed.
ended() { log "$1: exit $2${3:+ $3}"; [ "$2" -eq 0 ] || FAILED+=("$1"); }

if [ -f .whl/site.tar.xz ]; then
  log "unpacking the carried packages (.whl/site.tar.xz) onto PYTHONPATH"
  mkdir -p /tmp/site && tar -xJf .whl/site.tar.xz -C /tmp/site
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
{ nvidia-smi || true; nproc; } >>"$OUT/session.log" 2>&1
log "machine: as above"
VERSIONS=$("$PY" -c 'import torch, ray, mlflow, gymnasium, ale_py;
print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "ray", ray.__version__,
      "mlflow", mlflow.__version__, "gymnasium", gymnasium.__version__)' 2>>"$OUT/session.log")
ended imports $? "($VERSIONS)"

log "1. pytest -m gpu"
timeout "$T_TESTS" "$PY" -m pytest -m gpu -q -p no:cacheprovider \
  >"$OUT/pytest_gpu.log" 2>&1
ended "pytest -m gpu" $? "($(tail -1 "$OUT/pytest_gpu.log"))"

log "2. space_invaders_dqn, $SI_STEPS steps, $WORKERS x $ENVS envs, acting=$ACTING"
STORE=/tmp/gpu-session && rm -rf "$STORE" && mkdir -p "$STORE"
TRAIN=("$PY" -m pipelines.train experiment=space_invaders_dqn "algo.total_steps=$SI_STEPS"
  "algo.learning_starts=$SI_STARTS" "algo.num_rollout_workers=$WORKERS"
  "algo.envs_per_worker=$ENVS" "algo.acting=$ACTING" "cluster.gpus_per_trial=$GPUS_PER_TRIAL"
  "cluster.num_cpus=$((WORKERS + 1))" "cluster.storage_path=$STORE/ray_results"
  "tracking.uri=sqlite:///$STORE/mlflow.db" tracking.experiment=space_invaders_dqn)
(cd "$STORE" && timeout "$T_TRAIN" "${TRAIN[@]}") >"$OUT/space_invaders_train.log" 2>&1
ended train $? "($(grep -c 'env steps' "$OUT/space_invaders_train.log") status lines)"
RUN=$(cd "$STORE" && "$PY" -c "
from mlflow import MlflowClient
c = MlflowClient('sqlite:///$STORE/mlflow.db')
e = c.get_experiment_by_name('space_invaders_dqn')
print(c.search_runs([e.experiment_id], order_by=['attributes.start_time DESC'])[0].info.run_id)
" 2>>"$OUT/session.log")
ended run $? "(${RUN:-no run})"
if [ -n "$RUN" ]; then
  (cd "$STORE" && timeout 120 "$PY" -m pipelines.evaluate "evaluate.run_id=$RUN" \
    "tracking.uri=sqlite:///$STORE/mlflow.db" \
    tracking.experiment=space_invaders_dqn) >"$STORE/evaluation.json" \
    2>>"$OUT/session.log"
  ended evaluate $? "$(tail -1 "$STORE/evaluation.json")"
  (cd "$STORE" && "$PY" -m benchmarks.atari_result --uri "sqlite:///$STORE/mlflow.db" \
    --experiment space_invaders_dqn --evaluation "$STORE/evaluation.json" \
    --train-command "python -m pipelines.train ${TRAIN[*]:3}" --name space_invaders_dqn \
    --out "$OUT") >>"$OUT/session.log" 2>&1
  ended atari_result $?
fi

log "3. pong_dqn_throughput, acting cpu and learner"
timeout "$T_TP" "$PY" -m benchmarks.pong_dqn_throughput --workers "$WORKERS" \
  --envs-per-worker "$ENVS" --acting cpu,learner --steps "$TP_STEPS" \
  --learning-starts "$TP_STARTS" >"$OUT/throughput.log" 2>&1
ended throughput $?
if [ ${#FAILED[@]} -gt 0 ]; then
  log "done; failed: ${FAILED[*]}"
  exit 1
fi
log "done"
