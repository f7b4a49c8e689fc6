"""The NVTabular contender's own virtual environment, driven from the main venv (stdlib only).

NVTabular 23.08 needs old pins (bench/envs/nvtabular.txt) that cannot share gpupre's venv, so it
lives in bench/.venv-nvtabular and bench/nvtabular_contender.py runs there as a subprocess.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
VENV = BENCH / ".venv-nvtabular"
REQUIREMENTS = BENCH / "envs" / "nvtabular.txt"
SCRIPT = BENCH / "nvtabular_contender.py"
STAMP = BENCH / ".venv-nvtabular.stamp"
TAIL = 4000


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(f"{what} failed (exit {proc.returncode}):\n{proc.stdout[-TAIL:]}")


def _base_python() -> str:
    """Python 3.11, which the pins need (numba 0.57 and numpy 1.24 stop there)."""
    if sys.version_info[:2] == (3, 11):
        return sys.executable
    found = shutil.which("python3.11")
    if not found:
        raise RuntimeError("the NVTabular venv needs Python 3.11 (python3.11 not found on PATH)")
    return found


def ensure_env() -> str:
    """Create bench/.venv-nvtabular with the pinned requirements unless it is already current.

    A stamp file beside the venv holds the requirements file's sha256; a changed file rebuilds the
    venv from scratch. Returns the venv's python; raises RuntimeError with pip's output tail.
    """
    python = VENV / "bin" / "python"
    key = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    with open(REQUIREMENTS) as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if python.exists() and STAMP.exists() and STAMP.read_text().strip() == key:
            return str(python)
        STAMP.unlink(missing_ok=True)
        _run([_base_python(), "-m", "venv", "--clear", str(VENV)], "creating the NVTabular venv")
        pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--no-input"]
        _run([*pip, "-r", str(REQUIREMENTS)], "pip install -r bench/envs/nvtabular.txt")
        STAMP.write_text(key + "\n")
    return str(python)


def run_contender(spec: dict, timeout: float = 900) -> dict:
    """Run bench/nvtabular_contender.py on `spec` in the NVTabular venv; return its JSON result.

    Raises RuntimeError with the script's stderr when it fails, times out or prints no JSON.
    """
    python = ensure_env()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    with tempfile.TemporaryDirectory(prefix="nvtabular-spec-") as tmp:
        path = Path(tmp) / "spec.json"
        path.write_text(json.dumps(spec))
        try:
            proc = subprocess.run(
                # -P: bench/ is not put on sys.path, where bench/distributed.py would shadow the
                # `distributed` package that dask and merlin import
                [python, "-P", str(SCRIPT), str(path)],
                capture_output=True,
                text=True,
                timeout=timeout,
                env=env,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            stderr = (
                exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
            )
            raise RuntimeError(f"NVTabular contender timed out after {timeout}s:\n{stderr[-TAIL:]}") from None
    if proc.returncode:
        raise RuntimeError(f"NVTabular contender failed (exit {proc.returncode}):\n{proc.stderr[-TAIL:]}")
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise RuntimeError(
            f"NVTabular contender printed no JSON:\n{proc.stdout[-TAIL:]}\n{proc.stderr[-TAIL:]}"
        ) from None


def measure(spec: dict, timeout: float = 900) -> dict:
    """`run_contender`, with a failure reported as {"error": first and last line} (unmeasured, never met)."""
    try:
        return run_contender(spec, timeout=timeout)
    except RuntimeError as e:
        lines = str(e).strip().splitlines()
        return {"error": lines[0] + (f" ... {lines[-1]}" if len(lines) > 1 else "")}
