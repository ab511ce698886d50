"""torchrun entry point: `torchrun --nproc-per-node P launch/train.py --config CFG --stages P [--set k=v ...]`.

The same flags as `ffpipe train`. Under torchrun every process runs one pipeline stage; run without torchrun
(`python launch/train.py --stages 4`) it starts the stage processes itself, like `ffpipe train`.
"""

import sys

from ffpipe.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
