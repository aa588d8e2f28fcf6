"""The README's code runs as written, and every `liteq` command it names exists."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT


def test_the_readmes_python_runs_as_written(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.DOTALL)
    assert len(blocks) >= 2, "the README shows the minimal use and a task"
    # As a module of the application, as a user's would be (a task's function must live in
    # an importable module for a worker to find it).
    (tmp_path / "readme_example.py").write_text("\n".join(blocks))
    result = subprocess.run(
        [sys.executable, "-c", "import readme_example"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"Sample job {i}" for i in range(10)]
    assert (tmp_path / "jobs.sqlite").exists()
