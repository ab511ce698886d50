"""The run's one error line: the first failing stage publishes it whole, and reading it never raises."""

import multiprocessing as mp

from ffpipe.pipeline.launch import publish_error, read_error


def _publish(path, rank, barrier):
    barrier.wait()  # every writer starts together, as surviving stages do when one peer dies
    publish_error(path, f"stage {rank}: " + "ü" * 2000 + f" peer closed {rank}")


def test_concurrent_writers_leave_one_whole_line(tmp_path):
    path = tmp_path / "error.txt"
    ctx = mp.get_context("fork")
    for _ in range(5):
        path.unlink(missing_ok=True)
        barrier = ctx.Barrier(4)
        procs = [ctx.Process(target=_publish, args=(path, rank, barrier)) for rank in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(30)
        line = read_error(path)
        rank = int(line.split(":")[0].split()[1])
        assert line == f"stage {rank}: " + "ü" * 2000 + f" peer closed {rank}"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["error.txt"]  # no private file left behind


def test_first_writer_wins(tmp_path):
    path = tmp_path / "error.txt"
    publish_error(path, "stage 1: first")
    publish_error(path, "stage 2: second")
    assert read_error(path) == "stage 1: first"


def test_undecodable_bytes_read_as_replacement_characters(tmp_path):
    path = tmp_path / "error.txt"
    path.write_bytes(b"stage 1: bad \x8f\xff byte\nsecond line\n")
    assert read_error(path) == "stage 1: bad \ufffd\ufffd byte"
    assert read_error(tmp_path / "missing.txt") == ""
