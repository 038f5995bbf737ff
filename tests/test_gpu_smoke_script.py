"""scripts/gpu-smoke.sh runs only where it can: on a machine without an NVIDIA GPU it says so and exits 2."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu-smoke.sh"


def test_the_gpu_smoke_script_is_valid_bash() -> None:
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0


def test_without_a_gpu_the_gpu_smoke_script_says_so_and_exits_2(tmp_path: Path) -> None:
    # A PATH with the tools the script needs before its GPU check, and no nvidia-smi.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("dirname", "mktemp"):
        found = shutil.which(tool)
        assert found is not None
        (bin_dir / tool).symlink_to(found)
    env = {**os.environ, "PATH": str(bin_dir)}
    got = subprocess.run([shutil.which("bash") or "/bin/bash", str(SCRIPT)], env=env, capture_output=True, text=True,
                         timeout=60)
    assert got.returncode == 2, got
    assert "needs an NVIDIA GPU" in got.stderr
