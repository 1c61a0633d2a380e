"""``inference.run_to_end`` / ``map_yields`` (drive a generator to its return value) and ``io.atomic.open_new``
(outputs never overwrite)."""

from __future__ import annotations

import pytest

from napari_lidnet.inference import Cancelled, map_yields, run_to_end
from napari_lidnet.io.atomic import check_new, open_new


def _count(n: int, closed: list[bool]):
    try:
        for i in range(n):
            yield i + 1, n
        return "done"
    finally:
        closed.append(True)


def test_run_to_end_returns_reports_and_cancels():
    closed: list[bool] = []
    seen: list[tuple[int, int]] = []
    assert run_to_end(_count(3, closed), lambda d, t: seen.append((d, t))) == "done"
    assert seen == [(1, 3), (2, 3), (3, 3)] and closed == [True]
    assert run_to_end(iter_plain()) == 7  # no progress: any items
    closed.clear()
    seen.clear()
    with pytest.raises(Cancelled, match="after 2 of 5 slices"):
        run_to_end(_count(5, closed), lambda d, t: seen.append((d, t)), lambda: len(seen) == 2)
    assert closed == [True]  # the cancelled generator was closed


def iter_plain():
    yield "a"
    yield None
    return 7


def test_map_yields_maps_items_returns_value_and_closes():
    closed: list[bool] = []

    def outer():
        result = yield from map_yields(_count(2, closed), lambda item: f"{item[0]}/{item[1]}")
        return result.upper()

    gen = outer()
    assert run_to_end(gen) == "DONE" and closed == [True]
    gen = outer()
    assert next(gen) == "1/2"
    gen.close()  # closing the outer generator closes the inner one
    assert closed == [True, True]


def test_open_new_refuses_existing(tmp_path):
    path = tmp_path / "out.csv"
    assert check_new(path) == path
    with open_new(path, newline="") as fh:
        fh.write("a\n")
    message = "out.csv already exists; outputs never overwrite: choose a new name"
    with pytest.raises(FileExistsError, match=message):
        check_new(path)
    with pytest.raises(FileExistsError, match=message), open_new(str(path)):
        pass
    assert path.read_text() == "a\n"
    link = tmp_path / "dangling.csv"
    link.symlink_to(tmp_path / "nowhere")  # exists() is False, the name is taken all the same: refused
    with pytest.raises(FileExistsError, match="dangling.csv already exists"), open_new(link) as fh:
        fh.write("b\n")
    assert link.is_symlink() and not (tmp_path / "nowhere").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling.csv", "out.csv"]  # no temporary file left


def test_write_atomically_replaces_whole_and_leaves_nothing_when_it_cannot(tmp_path):
    from napari_lidnet.io.atomic import write_atomically

    target = tmp_path / "cache.npy"
    write_atomically(target, b"one")
    write_atomically(target, b"two")
    assert target.read_bytes() == b"two" and [p.name for p in tmp_path.iterdir()] == ["cache.npy"]
    (tmp_path / "dir.npy").mkdir()  # a folder where the file goes: the rename fails
    (tmp_path / "dir.npy" / "x").write_text("x")
    with pytest.raises(OSError):
        write_atomically(tmp_path / "dir.npy", b"three")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache.npy", "dir.npy"]  # no temporary file left
