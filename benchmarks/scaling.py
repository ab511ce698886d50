"""FF-pipeline scaling with stages, measured on this machine, and ffpipe.lab.sim checked against it (issue 5).

    python benchmarks/scaling.py [--quick] [--repeats N] [--train-subset N] [--out DIR]

The benchmark lives in `ffpipe.lab.bench.scaling` (its docstring describes the sweep) so that `ffpipe bench scaling`
runs the same code; results.md and the plots are `ffpipe.lab.bench.scaling_report.render` of results.json.
"""

import sys

from ffpipe.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "scaling", *sys.argv[1:]]))
