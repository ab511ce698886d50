"""Experiments and analysis on top of run directories: sweeps (`sweep`, `grid`), their aggregate tables and
figures (`report`, `figures`), layer training dynamics (`dynamics`, seed 003), class activation maps (`cam`,
seed 000 §3.3) and t-SNE of block activity (`tsne`, seed 004). Everything reads what runs wrote (`runs`) or
their checkpoints (`probe`), so sequential and pipelined runs are analysed alike. CLI: `cli.add_parser`.
"""
