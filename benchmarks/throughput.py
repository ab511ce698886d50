"""FF pipeline vs DDP-BP throughput, memory and time to accuracy: the script form of `ffpipe bench throughput`.

    python benchmarks/throughput.py [--quick] [--workers 2] [--repeats 3] [--models mlp,cnn,deepcnn] [--no-tta]
                                    [--out DIR]

writes results.json, results.md and PNG plots into DIR (default benchmarks/results/throughput/, quick:
benchmarks/results/throughput_quick/). What is measured and how: `ffpipe/bench/throughput.py`.
"""

import sys

from ffpipe.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "throughput", *sys.argv[1:]]))
