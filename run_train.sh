#!/bin/sh
# Post-train GOT on GPUS processes with Paddle's distributed launcher; logs go to <output_dir>/logs.
#
#   sh run_train.sh                                           # stage 2 on every visible GPU
#   CONFIG=configs/stage3.yaml sh run_train.sh                # stage 3 (vision encoder frozen)
#   sh run_train.sh --learning_rate 1e-5 --max_steps 100      # any argument goes through to tools/train.py
#   GPUS=2 CONFIG=configs/tiny_cpu.yaml sh run_train.sh --meta_path data/synth_tiny/meta.json
#                                                             # no GPU: 2 CPU processes over gloo
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

if [ "$VISIBLE_GPUS" -gt 0 ]; then
    DEVICES=$(seq -s, 0 $((GPUS - 1)))
    set -- --devices "$DEVICES" --log_dir "$LOG_DIR" tools/train.py --config "$CONFIG" "$@"
else
    set -- --nproc_per_node "$GPUS" --log_dir "$LOG_DIR" tools/train.py --config "$CONFIG" "$@"
fi
echo "run_train.sh: $GPUS process(es), config $CONFIG, logs in $LOG_DIR" >&2
exec "$PYTHON" -m paddle.distributed.launch "$@"
