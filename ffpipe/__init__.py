"""ffpipe: Forward-Forward networks trained layer-parallel, as a pipeline of stages."""
