"""Lab tooling around the engine: the simulator (`sim`), the benchmarks (`bench`) and the analyses of trained
runs (`analysis`). The engine never imports this package; `ffpipe.cli` imports its commands lazily."""
