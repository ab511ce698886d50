"""The Forward-Forward algorithm, with no processes and no files: what one stage computes.

- `blocks`: FF layers (linear, conv) and their activations; `norm`: the one normalization between blocks;
- `objectives`: the local goodness losses (bce, symba, hinge, group_ce), peer normalization, FGFF weights;
- `labels/`: how a label enters an image (one-hot, Fourier waves) and which wrong labels make negatives;
- `packet`: what crosses a stage boundary, and the source that builds it from data at stage 0;
- `stage`: a contiguous run of blocks with their optimizers and head slices (compute / apply / evaluate);
- `head`: the linear head's slices, the readouts and their tally; `partition`: blocks into stages;
- `optim`: optimizers and the per-epoch learning-rate schedule.
The sequential runner and the pipeline worker (`ffpipe.run`, `ffpipe.pipeline`) call these same objects.
"""
