"""torchrun entry point of the BP baseline: `torchrun --nproc-per-node N launch/train_bp.py --config CFG
[--set k=v ...] [--out DIR] [--max-steps N]` trains with N data-parallel processes (DDP). Without torchrun
(`python launch/train_bp.py ...`) it trains in this one process. The same flags as `ffpipe train-bp`.
"""

import sys

from ffpipe.cli import main

if __name__ == "__main__":
    sys.exit(main(["train-bp", *sys.argv[1:]]))
