"""Benchmarks that start real runs and measure them: `ffpipe bench throughput|scaling|simulate`.

`runner` starts runs and reads their metrics; each benchmark module measures one question and writes
`results.json`; its `*_report` module turns that JSON into results.md and the plots (`ffpipe report DIR`).
"""
