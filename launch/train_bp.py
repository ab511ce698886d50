"""torchrun entry point of the BP baseline: `torchrun --nproc-per-node N launch/train_bp.py --config CFG
[--set k=v ...] [--out DIR] [--max-steps N]` trains with N data-parallel processes (DDP). Without torchrun
(`python launch/train_bp.py ...`) it trains in this one process.
"""

import sys

from ffpipe.baselines.command import main

if __name__ == "__main__":
    sys.exit(main())
