"""Score readouts: per-block and per-range accuracy, and the range that validation data picks."""

import pytest
import torch

from ffpipe.ff.head import Tally, select_range, with_selected_ranges
from ffpipe.ff.packet import Packet


def overlay_packet(scores: torch.Tensor, y: torch.Tensor) -> Packet:
    return Packet("overlay", torch.zeros(len(y), 1), y, scores=scores)


def test_every_range_is_scored_and_the_readout_is_the_readout_blocks_range():
    y = torch.tensor([0, 1])
    # block 0 gets both right, block 1 both wrong, block 2 only sample 1; sums decide the ranges
    scores = torch.tensor([
        [[3.0, 0.0], [0.0, 3.0]],
        [[0.0, 2.0], [2.0, 0.0]],
        [[0.0, 5.0], [0.0, 5.0]],
    ])
    tally = Tally(["goodness"], readout_blocks=[1, 2])
    tally.add(overlay_packet(scores, y))
    result = tally.result()
    assert result["goodness_blocks"] == [1.0, 0.0, 0.5]
    # 0..1: [3,2] -> 0 right, [2,3] -> 1 right; 1..2: [0,7] wrong, [2,5] right; 0..2: [3,7] wrong, [2,8] right
    assert result["goodness_ranges"] == [[1.0, 1.0, 0.5], [None, 0.0, 0.5], [None, None, 0.5]]
    assert result["goodness"] == 0.5  # blocks 1..2 (head.exclude_first)


def test_select_range_takes_the_best_then_the_longest_then_the_earliest():
    assert select_range([[0.5, 0.9, 0.7], [None, 0.2, 0.8], [None, None, 0.9]]) == (0, 1)
    assert select_range([[0.9, 0.9], [None, 0.9]]) == (0, 1)  # a tie: the longer range
    assert select_range([[0.9, 0.1], [None, 0.9]]) == (0, 0)  # equal length: the earlier start


def test_test_result_gets_the_range_validation_chose():
    val = {"goodness_ranges": [[0.5, 0.9], [None, 0.8]]}
    test = {"goodness": 0.7, "goodness_ranges": [[0.6, 0.7], [None, 0.75]]}
    out = with_selected_ranges(test, val)
    assert out["goodness_selected"] == 0.7 and out["goodness_selected_range"] == [0, 1]
    assert with_selected_ranges(test, None) == test


@pytest.mark.parametrize("blocks", [1, 4])
def test_ranges_table_shape(blocks):
    tally = Tally(["goodness"], readout_blocks=[0])
    tally.add(overlay_packet(torch.rand(blocks, 5, 3), torch.randint(0, 3, (5,))))
    ranges = tally.result()["goodness_ranges"]
    assert len(ranges) == blocks and all(len(row) == blocks for row in ranges)
