"""The README's Python example runs as written and prints what the README says it prints."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## From Python"


def _section() -> str:
    text = README.read_text()
    start = text.index(SECTION)
    return text[start : text.index("\n## ", start + 1)]


def test_the_python_example_runs_and_prints_what_the_readme_says(tmp_path: Path, monkeypatch) -> None:
    section = _section()
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    numbers = r"PSNR ([\d.]+) -> ([\d.]+) dB, SSIM ([\d.]+) -> ([\d.]+)"
    got = [float(v) for v in re.search(numbers, printed.getvalue()).groups()]
    said = [float(v) for v in re.search(numbers, section).groups()]
    assert got[1] > got[0] + 3 and got[3] > got[2]  # the denoiser helps on the noise-free reference
    assert got == pytest.approx(said, abs=0.05), (got, said)  # CPUs with bfloat16 may round a little differently
    assert sorted(p.name for p in tmp_path.iterdir()) == ["boxes.csv", "denoised.nii.gz"]
