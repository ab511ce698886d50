"""The pipeline engine: one stage per process, messages between neighbouring stages.

`wire` moves messages between two processes and knows nothing about Forward-Forward; what a stage does
when (the schedule) lives apart from it, so either can change without touching the other.
"""
