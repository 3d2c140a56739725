"""Deployment files: docker-compose.yml, the Dockerfiles, the Makefile and the CI entry point.

These are checked statically (no Docker engine is needed). ``docker-compose config`` validates
the compose file when the binary is present; in CI (``CI`` set) its absence is a failure.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
API_DOCKERFILE = ROOT / "docker" / "api.Dockerfile"
TRAIN_DOCKERFILE = ROOT / "docker" / "train.Dockerfile"
CI_RUN = ROOT / ".ci" / "run"
MAKEFILE = ROOT / "Makefile"
IN_CI = bool(os.environ.get("CI"))

API_SERVICES = ("api", "api-cpu")


def _require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed"
        if IN_CI:
            pytest.fail(f"{message}; .ci/run must install it")
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def _environment(service: dict[str, Any]) -> dict[str, str | None]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (item.split("=", 1) for item in env)
        return {p[0]: (p[1] if len(p) == 2 else None) for p in pairs}
    return {k: (None if v is None else str(v)) for k, v in env.items()}


def _volume(entry: str | dict[str, Any]) -> tuple[str, str, bool]:
    """(source, target, read_only) for a short- or long-syntax volume entry."""
    if isinstance(entry, dict):
        return str(entry.get("source", "")), str(entry["target"]), bool(entry.get("read_only"))
    parts = re.sub(r"\$\{[^}]*\}", "$VAR", entry).split(":")
    if len(parts) == 1:
        return "", parts[0], False
    mode = parts[2] if len(parts) > 2 else "rw"
    return parts[0], parts[1], "ro" in mode.split(",")


def _gpu_devices(service: dict[str, Any]) -> list[dict[str, Any]]:
    deploy = service.get("deploy") or {}
    reservations = (deploy.get("resources") or {}).get("reservations") or {}
    return list(reservations.get("devices") or [])


def _healthcheck_text(service: dict[str, Any]) -> str:
    test = service["healthcheck"]["test"]
    return " ".join(test) if isinstance(test, list) else str(test)


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with continuation lines joined and comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in dockerfile.read_text(encoding="utf-8").splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or not stripped:
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    if pending:
        lines.append(pending)
    result = []
    for line in lines:
        keyword, _, rest = line.partition(" ")
        result.append((keyword.upper(), rest.strip()))
    return result


def _exec_form(arguments: str) -> list[str]:
    value = yaml.safe_load(arguments)
    assert isinstance(value, list), f"expected the exec (JSON array) form, got {arguments!r}"
    return [str(v) for v in value]


# docker-compose.yml


def test_compose_declares_the_services(services: dict[str, Any]) -> None:
    assert {"redis", "api", "api-cpu", "train"} <= set(services)


def test_redis_service(compose: dict[str, Any], services: dict[str, Any]) -> None:
    redis = services["redis"]
    assert redis["image"] == "redis:7-alpine"
    sources = [_volume(v)[0] for v in redis["volumes"]]
    assert any(s in (compose.get("volumes") or {}) for s in sources), "redis data: named volume"
    assert "redis-cli ping" in _healthcheck_text(redis)
    assert "profiles" not in redis


@pytest.mark.parametrize("name", API_SERVICES)
def test_api_service(name: str, compose: dict[str, Any], services: dict[str, Any]) -> None:
    api = services[name]
    assert api["build"]["dockerfile"] == "docker/api.Dockerfile"
    assert "8000:8000" in [str(p) for p in api["ports"]]
    assert api["depends_on"]["redis"]["condition"] == "service_healthy"
    env = _environment(api)
    assert env["MIMEA_REDIS_URL"] == "redis://redis:6379/0"
    assert env["MIMEA_CHECKPOINT"] == "/checkpoints/current"
    mounts = {_volume(v)[1]: _volume(v) for v in api["volumes"]}
    source, _, read_only = mounts["/checkpoints"]
    assert read_only, "the API must mount the checkpoints read-only"
    assert source in (compose.get("volumes") or {}), "checkpoints must be a declared named volume"
    health = _healthcheck_text(api)
    assert "/health" in health and "8000" in health


def test_api_reserves_one_nvidia_gpu(services: dict[str, Any]) -> None:
    devices = _gpu_devices(services["api"])
    assert len(devices) == 1
    device = devices[0]
    assert device["driver"] == "nvidia"
    assert int(device["count"]) == 1
    assert "gpu" in device["capabilities"]
    assert "profiles" not in services["api"], "the GPU API is the default service"


def test_cpu_api_drops_the_gpu_reservation(services: dict[str, Any]) -> None:
    api_cpu = services["api-cpu"]
    assert _gpu_devices(api_cpu) == []
    assert "cpu" in api_cpu["profiles"]
    args = api_cpu["build"]["args"]
    assert args["FAISS"] == "cpu"
    assert args["TORCH_INDEX_URL"].endswith("/whl/cpu")
    assert args["BASE_IMAGE"].startswith("python:3.11")


def test_train_service(compose: dict[str, Any], services: dict[str, Any]) -> None:
    train = services["train"]
    assert "train" in train["profiles"]
    assert train["build"]["dockerfile"] == "docker/train.Dockerfile"
    assert not _gpu_devices(train)
    mounts = {_volume(v)[1]: _volume(v) for v in train["volumes"]}
    assert mounts["/data"][2], "training data is mounted read-only"
    source, _, read_only = mounts["/checkpoints"]
    assert not read_only, "training writes the checkpoint volume"
    assert source == _volume(services["api"]["volumes"][0])[0] == "checkpoints"
    command = train["command"]
    command = shlex.split(command) if isinstance(command, str) else command
    assert command[command.index("--out") + 1] == "/checkpoints/current"
    assert command[command.index("--data") + 1] == "/data"


def test_named_volumes_declared(compose: dict[str, Any], services: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    for name, service in services.items():
        for entry in service.get("volumes", []):
            source = _volume(entry)[0]
            if source and not source.startswith(("/", ".", "$", "~")):
                assert source in declared, f"{name}: volume {source!r} is not declared"


def test_docker_compose_config_validates() -> None:
    binary = _require_tool("docker-compose")
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    for args in (["config", "-q"], ["--profile", "train", "--profile", "cpu", "config", "-q"]):
        result = subprocess.run([binary, "-f", str(COMPOSE_FILE), *args], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 0, result.stderr


# Dockerfiles


@pytest.mark.parametrize("dockerfile", [API_DOCKERFILE, TRAIN_DOCKERFILE], ids=["api", "train"])
def test_dockerfile_runs_as_non_root(dockerfile: Path) -> None:
    users = [args for keyword, args in _instructions(dockerfile) if keyword == "USER"]
    assert users, f"{dockerfile.name} has no USER"
    assert users[-1].split(":")[0] not in {"root", "0"}


def test_api_dockerfile() -> None:
    instructions = _instructions(API_DOCKERFILE)
    keywords = [k for k, _ in instructions]
    assert keywords.index("ARG") < keywords.index("FROM"), "BASE_IMAGE is a build arg"
    base = next(a for k, a in instructions if k == "ARG" and a.startswith("BASE_IMAGE="))
    assert "nvidia/cuda" in base and "runtime" in base
    assert any(k == "EXPOSE" and "8000" in a.split() for k, a in instructions)
    health = [a for k, a in instructions if k == "HEALTHCHECK"]
    assert len(health) == 1 and "/health" in health[0]
    entrypoint = _exec_form(next(a for k, a in instructions if k == "ENTRYPOINT"))
    assert entrypoint == ["mimea", "serve", "--checkpoint", "/checkpoints/current",
                          "--host", "0.0.0.0", "--port", "8000"]


def test_train_dockerfile_is_cpu_only() -> None:
    instructions = _instructions(TRAIN_DOCKERFILE)
    assert next(a for k, a in instructions if k == "FROM").startswith("python:3.11")
    text = TRAIN_DOCKERFILE.read_text(encoding="utf-8")
    assert "download.pytorch.org/whl/cpu" in text
    assert "--faiss cpu" in text
    assert _exec_form(next(a for k, a in instructions if k == "ENTRYPOINT")) == ["mimea", "train"]


def test_dockerignore_keeps_local_state_out() -> None:
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    rules = [line for line in lines if line and not line.startswith("#")]
    assert rules[0] == "*", "the build context is an allow-list"
    for private in (".venv", "demo", ".git", "checkpoints"):
        assert f"!{private}" not in rules


def test_requirements_helper_swaps_faiss(tmp_path: Path) -> None:
    script = ROOT / "docker" / "requirements.py"
    pyproject = ROOT / "pyproject.toml"

    def run(*args: str) -> list[str]:
        out = subprocess.run([sys.executable, str(script), str(pyproject), *args], check=True,
                             capture_output=True, text=True, timeout=60).stdout
        return out.split()

    names = [re.split(r"[=<>\[ ]", r, maxsplit=1)[0].lower() for r in run("--faiss", "gpu")]
    assert "faiss-cpu" not in names and "faiss-gpu-cu12" in names
    assert "faiss-cpu" in [re.split(r"[=<>\[ ]", r, maxsplit=1)[0] for r in run()]
    assert run("--only", "torch") == [r for r in run() if r.startswith("torch==")]
    assert not any(r.startswith("torch==") for r in run("--exclude", "torch"))


# CI entry point and Makefile


def test_ci_run_is_an_executable_bash_script_calling_make_test() -> None:
    assert os.access(CI_RUN, os.X_OK), ".ci/run must be executable"
    text = CI_RUN.read_text(encoding="utf-8")
    assert text.startswith("#!/usr/bin/env bash") or text.startswith("#!/bin/bash")
    assert "set -euo pipefail" in text
    assert re.search(r"^make test\b", text, re.MULTILINE)
    assert re.search(r"^export CI=", text, re.MULTILINE)
    subprocess.run(["bash", "-n", str(CI_RUN)], check=True, timeout=30)


def _make(*args: str, cwd: Path = ROOT) -> str:
    """The output of ``make ARGS`` in ``cwd`` (``-n``: the commands it would run)."""
    result = subprocess.run([_require_tool("make"), "--no-print-directory", "-C", str(cwd),
                             *args], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _commands(dry_run: str) -> list[str]:
    """The lines of a dry run, continuation lines joined and spaces collapsed."""
    return [" ".join(line.split()) for line in dry_run.replace("\\\n", " ").splitlines()]


def test_make_help_lists_targets_that_run() -> None:
    listed = [line.split()[1] for line in _make("help").splitlines()
              if line.startswith("make ")]
    assert {"test", "serve", "demo", "lint", "bench", "clean"} <= set(listed)
    for target in listed:
        _make("-n", target)


def test_make_test_lints_then_runs_every_test_with_redis() -> None:
    commands = _commands(_make("-n", "test"))
    assert any("redis-server" in c for c in commands)  # started when none answers
    lint = commands.index(".venv/bin/ruff check .")
    (pytest_at,) = [i for i, c in enumerate(commands) if c.startswith(".venv/bin/pytest")]
    assert lint < pytest_at
    # The command collects the tests marked slow too: no marker filter, there or in addopts.
    collected = subprocess.run(
        [*shlex.split(commands[pytest_at]), "--collect-only",
         "tests/bench/test_serve_bench.py"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert collected.returncode == 0, collected.stdout[-2000:] + collected.stderr[-2000:]
    assert "test_quick_bench_writes_schema_with_no_errors" in collected.stdout
    assert "deselected" not in collected.stdout


def test_make_serve_serves_the_demo_checkpoint_without_redis() -> None:
    commands = _commands(_make("-n", "serve"))
    assert ("env -u MIMEA_REDIS_URL .venv/bin/mimea serve --checkpoint demo/checkpoint "
            "--host 127.0.0.1 --port 8000") in commands


def test_make_bench_runs_the_accuracy_and_serving_benchmarks() -> None:
    commands = _commands(_make("-n", "bench"))
    assert ".venv/bin/python -m bench.accuracy" in commands
    assert ".venv/bin/python -m bench.serve" in commands


def test_make_clean_keeps_the_environment_and_distclean_removes_it(tmp_path: Path) -> None:
    shutil.copy(MAKEFILE, tmp_path / "Makefile")
    made = [tmp_path / "demo" / "checkpoint", tmp_path / ".pytest_cache",
            tmp_path / "model" / "__pycache__", tmp_path / ".venv" / "bin"]
    for folder in made:
        folder.mkdir(parents=True)
    _make("clean", cwd=tmp_path)
    assert [f.exists() for f in made] == [False, False, False, True]
    assert (tmp_path / "model").is_dir()
    _make("distclean", cwd=tmp_path)
    assert not (tmp_path / ".venv").exists() and (tmp_path / "Makefile").exists()
