#!/bin/sh
# Post-train GOT on GPUS processes with Paddle's distributed launcher; logs go to <output_dir>/logs.
#
#   sh run_train.sh                                           # stage 2 on every visible GPU
#   CONFIG=configs/stage3.yaml sh run_train.sh                # stage 3 (vision encoder frozen)
#   sh run_train.sh --learning_rate 1e-5 --max_steps 100      # any argument goes through to tools/train.py
#   GPUS=2 CONFIG=configs/tiny_cpu.yaml sh run_train.sh --meta_path data/synth_tiny/meta.json
#                                                             # no GPU: 2 CPU processes over gloo
#   NNODES=2 MASTER=10.0.0.1:8090 sh run_train.sh             # on each of 2 machines (NODE_RANK=0/1 optional)
set -e
cd "$(dirname "$0")"
CONFIG=${CONFIG:-configs/stage2.yaml}
PYTHON=${PYTHON:-python}

VISIBLE_GPUS=$(nvidia-smi -L 2>/dev/null | wc -l || true)
GPUS=${GPUS:-$VISIBLE_GPUS}
[ "${GPUS:-0}" -gt 0 ] || GPUS=1

# The output directory as tools/train.py will see it: the last --output_dir given, else the config's.
OUTPUT_DIR=$("$PYTHON" - "$CONFIG" "$@" <<'PY'
import sys, yaml
config, args = sys.argv[1], sys.argv[2:]
output_dir = (yaml.safe_load(open(config)) or {}).get("output_dir", "output")
for flag, value in zip(args, args[1:]):
    if flag == "--output_dir":
        output_dir = value
print(output_dir)
PY
)
LOG_DIR=${LOG_DIR:-$OUTPUT_DIR/logs}

NNODES=${NNODES:-1}
NODE_ARGS=""
if [ "$NNODES" -gt 1 ]; then
    [ -n "${MASTER:-}" ] || { echo "run_train.sh: NNODES=$NNODES needs MASTER=host:port (the first machine)" >&2; exit 2; }
    NODE_ARGS="--nnodes $NNODES --master $MASTER ${NODE_RANK:+--rank $NODE_RANK}"
fi

if [ "$VISIBLE_GPUS" -gt 0 ]; then
    DEVICES=$(seq -s, 0 $((GPUS - 1)))
    set -- $NODE_ARGS --devices "$DEVICES" --log_dir "$LOG_DIR" tools/train.py --config "$CONFIG" "$@"
else
    set -- $NODE_ARGS --nproc_per_node "$GPUS" --log_dir "$LOG_DIR" tools/train.py --config "$CONFIG" "$@"
fi
echo "run_train.sh: $GPUS process(es) on each of $NNODES machine(s), config $CONFIG, logs in $LOG_DIR" >&2

# The launcher shows rank 0's log as it runs; its own settings dump, Paddle's glog INFO lines and, on failure, its
# repeat of a worker's log tail are left out (everything stays in $LOG_DIR). Then one line per rank that failed.
export GLOG_minloglevel="${GLOG_minloglevel:-1}"
export PYTHONWARNINGS="${PYTHONWARNINGS:+$PYTHONWARNINGS,}ignore:No ccache found:UserWarning"
STATUS_FILE=$(mktemp)
{ STATUS=0; "$PYTHON" -m paddle.distributed.launch --log_level WARNING "$@" 2>&1 || STATUS=$?; echo "$STATUS" > "$STATUS_FILE"; } |
    awk '/^LAUNCH ERROR/ { quiet = 1 } !quiet { print; fflush() }' >&2
STATUS=$(cat "$STATUS_FILE")
rm -f "$STATUS_FILE"
if [ "$STATUS" -ne 0 ]; then
    RANK0_ERROR=$(grep '^error: ' "$LOG_DIR/workerlog.0" 2>/dev/null | tail -n 1)
    for LOG in "$LOG_DIR"/workerlog.*; do
        RANK_ERROR=$(grep '^error: ' "$LOG" 2>/dev/null | tail -n 1)
        if [ "${LOG##*.}" != 0 ] && [ -n "$RANK_ERROR" ] && [ "$RANK_ERROR" != "$RANK0_ERROR" ]; then
            echo "rank ${LOG##*.}: $RANK_ERROR" >&2
        fi
    done
    if [ "$STATUS" -gt 128 ]; then  # the launcher passes on a worker's -N (killed by signal N) as 256 - N
        SIGNAL=$((256 - STATUS))
        echo "run_train.sh: a training process was killed by signal $SIGNAL (SIG$(kill -l "$SIGNAL" 2>/dev/null));" \
             "the last lines of each log:" >&2
        for LOG in "$LOG_DIR"/workerlog.*; do
            tr '\r' '\n' < "$LOG" 2>/dev/null | grep -v '^[[:space:]]*$' | tail -n 5 | sed "s|^|  ${LOG##*/}: |" >&2
        done
    fi
    echo "run_train.sh: training failed; the logs are in $LOG_DIR" >&2
    exit "$STATUS"
fi
