"""bench/gpu_check.sh: on this CPU-only machine, its fallback runs every step on the CPU."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a GPU is present: the "
                    "script then installs the gpu extra, which a test must not do")
def test_gpu_check_falls_back_to_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHON": sys.executable})
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["gpu"] is False and report["device"] == "cpu"
    assert report["agreement_tests"]["exit_code"] == 0
    assert report["service"]["index_on_gpu"] is False
    assert report["service"]["single_query_ms_median"] > 0
    assert any(line.startswith("sinkhorn") for line in report["train_output"])
