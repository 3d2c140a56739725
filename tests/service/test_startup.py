"""A bad checkpoint stops start-up with one clear message; the service never starts half-loaded."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import typer
from fastapi.testclient import TestClient
from pydantic import ValidationError
from typer.testing import CliRunner

from mimea.model.checkpoint import CheckpointError, load_checkpoint, write_checkpoint
from mimea.service.cli import register
from mimea.service.errors import StartupError
from mimea.service.main import create_app
from mimea.service.rankings import evaluated_csls_k
from mimea.service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def _missing_file(path: Path) -> None:
    (path / "metrics.json").unlink()


def _truncated_embeddings(path: Path) -> None:
    target = path / "embeddings.safetensors"
    target.write_bytes(target.read_bytes()[:1000])


def _entities_row_dropped(path: Path) -> None:
    target = path / "entities.tsv"
    lines = target.read_text(encoding="utf-8").splitlines(keepends=True)
    target.write_text("".join(lines[:-1]), encoding="utf-8")


def _garbage_config(path: Path) -> None:
    (path / "config.json").write_text("{not json", encoding="utf-8")


BREAKAGES: dict[str, tuple[Callable[[Path], None], str]] = {  # breakage, message pattern
    "missing file": (_missing_file, "missing metrics.json"),
    "truncated safetensors": (_truncated_embeddings,
                              r"not a readable safetensors file|embeddings\.safetensors is 1000 "
                              r"bytes"),
    "shapes vs entities.tsv": (_entities_row_dropped,
                               r"but the entity table has 619 rows|entities\.tsv is \d+ bytes"),
    "unreadable config": (_garbage_config, "not readable JSON"),
}


@pytest.fixture(params=sorted(BREAKAGES))
def broken(request: pytest.FixtureRequest, synthetic, tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "broken"
    shutil.copytree(synthetic.path, path)
    breakage, message = BREAKAGES[request.param]
    breakage(path)
    return path, message


def test_broken_checkpoint_stops_lifespan(broken: tuple[Path, str],
                                          make_settings: Callable[..., Settings]) -> None:
    path, message = broken
    app = create_app(make_settings(checkpoint=path))
    with pytest.raises(CheckpointError, match=message), TestClient(app):
        pass
    assert app.state.service is None


def test_non_finite_embeddings_stop_startup(synthetic, tmp_path: Path,
                                            make_settings: Callable[..., Settings]) -> None:
    ckpt = load_checkpoint(synthetic.path)
    ckpt.embeddings.joint[5, 0] = float("nan")
    path = tmp_path / "nan"
    config = {k: v for k, v in ckpt.config.items()
              if k not in ("format_version", "model_version", "embedding_dims")}
    write_checkpoint(path, config=config, weights={"w": torch.zeros(1)},
                     embeddings=ckpt.embeddings, entities=ckpt.entities, split=ckpt.split,
                     metrics=ckpt.metrics)
    with pytest.raises(CheckpointError, match="'joint' holds NaN"), \
            TestClient(create_app(make_settings(checkpoint=path))):
        pass


def test_missing_directory_and_unset_checkpoint(tmp_path: Path,
                                                make_settings: Callable[..., Settings]) -> None:
    with pytest.raises(CheckpointError, match="does not exist"), \
            TestClient(create_app(make_settings(checkpoint=tmp_path / "nope"))):
        pass
    with pytest.raises(StartupError, match="MIMEA_CHECKPOINT"), \
            TestClient(create_app(make_settings(checkpoint=None))):
        pass


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_requested_without_gpu_stops_startup(make_settings: Callable[..., Settings]) -> None:
    with pytest.raises(StartupError, match="cuda"), \
            TestClient(create_app(make_settings(device="cuda"))):
        pass


def test_settings_read_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MIMEA_CHECKPOINT", str(tmp_path))
    monkeypatch.setenv("MIMEA_REDIS_URL", "")
    monkeypatch.setenv("MIMEA_CACHE_TTL_S", "60")
    monkeypatch.setenv("MIMEA_INDEX", "hnsw")
    monkeypatch.setenv("MIMEA_API_KEY", "k")
    monkeypatch.setenv("MIMEA_LOG_LEVEL", "debug")
    settings = Settings()
    assert settings.checkpoint == tmp_path and settings.redis_url is None
    assert settings.cache_ttl_s == 60 and settings.index == "hnsw"
    assert settings.api_key is not None and settings.api_key.get_secret_value() == "k"
    assert settings.log_level == "DEBUG"
    assert Settings(index="flat").index == "flat"  # explicit values (CLI options) win
    with pytest.raises(ValueError, match="redis_url"):
        Settings(redis_url="http://localhost")


def _cli() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """Root."""

    register(app)
    return app


def test_cli_serve_bad_checkpoint_exits_2_with_one_line(broken: tuple[Path, str]) -> None:
    path, message = broken
    result = CliRunner().invoke(_cli(), ["serve", "--checkpoint", str(path)])
    assert result.exit_code == 2  # a bad checkpoint is bad input
    assert result.output.count("\n") == 1 and result.output.startswith("error: ")
    assert "cannot start the service" in result.output and re.search(message, result.output)


@pytest.mark.parametrize("env,expected", [
    ({"MIMEA_API_KEY": " "}, "api_key: Value error, api_key is blank"),
    ({"MIMEA_API_KEY": "\t"}, "api_key: Value error, api_key is blank"),
    ({"MIMEA_API_KEY": "key\n"}, "surrounding whitespace"),
    ({"MIMEA_REDIS_URL": "redis://127.0.0.1:99999"}, "redis_url: Value error, redis_url is not "
                                                     "a valid Redis URL: Port out of range"),
    ({"MIMEA_REDIS_URL": "http://localhost"}, "redis_url must start with redis://"),
    ({"MIMEA_MAX_BODY_BYTES": "-1"}, "max_body_bytes: Input should be greater than or equal"),
])
def test_cli_bad_settings_exit_2_with_one_line(synthetic, env: dict[str, str],
                                               expected: str) -> None:
    result = CliRunner().invoke(_cli(), ["serve", "--checkpoint", str(synthetic.path)],
                                env=env)
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and result.output.startswith("error: invalid settings")
    assert expected in result.output
    assert "password" not in result.output and "input_value" not in result.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cli_runtime_failure_exits_1(synthetic) -> None:
    result = CliRunner().invoke(_cli(), ["serve", "--checkpoint", str(synthetic.path),
                                         "--device", "cuda"])
    assert result.exit_code == 1
    assert result.output.startswith("error: cannot start the service") and "cuda" in \
        result.output


def test_cli_port_in_use_exits_1_before_loading(synthetic,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    loaded: list[Settings] = []
    monkeypatch.setattr("mimea.service.aligner.Aligner.load",
                        lambda settings: loaded.append(settings))
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = CliRunner().invoke(_cli(), ["serve", "--checkpoint", str(synthetic.path),
                                             "--port", str(port)])
    assert result.exit_code == 1 and not loaded
    assert result.output.count("\n") == 1
    assert result.output.startswith(f"error: cannot listen on 127.0.0.1:{port}")


@pytest.mark.parametrize("value", ["", " ", "\t\n"])
def test_api_key_empty_is_unset_but_blank_is_refused(value: str) -> None:
    if value == "":
        assert Settings(api_key=value).api_key is None
    else:
        with pytest.raises(ValidationError, match="api_key is blank"):
            Settings(api_key=value)


def test_cli_rejects_invalid_options(synthetic) -> None:
    result = CliRunner().invoke(_cli(), ["serve", "--checkpoint", str(synthetic.path),
                                         "--index", "annoy"])
    assert result.exit_code == 2


def test_cli_choices_reach_the_settings(synthetic, monkeypatch: pytest.MonkeyPatch) -> None:
    """The options take the settings' own values (any case for the log level)."""
    seen: list[Settings] = []

    def load(settings: Settings) -> None:
        seen.append(settings)
        raise CheckpointError("stop before serving")

    monkeypatch.setattr("mimea.service.aligner.Aligner.load", load)
    result = CliRunner().invoke(_cli(), ["serve", "--checkpoint", str(synthetic.path),
                                         "--index", "ivf", "--device", "cpu",
                                         "--log-level", "warning"])
    assert result.exit_code == 2 and "stop before serving" in result.output
    assert (seen[0].index, seen[0].device, seen[0].log_level) == ("ivf", "cpu", "WARNING")
    assert CliRunner().invoke(_cli(), ["serve", "--log-level", "loud"]).exit_code == 2


@pytest.mark.parametrize("args,env,expected", [
    (["--checkpoint", "absent"], {}, "does not exist"),
    (["--checkpoint", "absent", "--redis-url", "redis://127.0.0.1:99999"], {},
     "Port out of range"),
    (["--checkpoint", "absent"], {"MIMEA_API_KEY": "  "}, "api_key is blank"),
])
def test_serve_subprocess_fails_with_one_line_and_exit_2(tmp_path: Path, args: list[str],
                                                         env: dict[str, str],
                                                         expected: str) -> None:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    proc = subprocess.run([sys.executable, "-m", "mimea.service.cli", "serve", *args],
                          capture_output=True, text=True, env=full_env, cwd=tmp_path,
                          timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: "), proc.stderr
    assert expected in proc.stderr and "Traceback" not in proc.stderr


def _rewritten(source: Path, path: Path, eval_section: dict | None) -> Path:
    """A copy of checkpoint ``source`` whose config's eval section is ``eval_section`` (none
    at all when None)."""
    ckpt = load_checkpoint(source)
    config = {k: v for k, v in ckpt.config.items()
              if k not in ("format_version", "model_version", "embedding_dims", "files")}
    config.pop("config", None)
    if eval_section is not None:
        config["config"] = {"eval": eval_section}
    write_checkpoint(path, config=config, weights={"w": torch.zeros(1)},
                     embeddings=ckpt.embeddings, entities=ckpt.entities, split=ckpt.split,
                     metrics=ckpt.metrics)
    return path


def test_csls_k_follows_the_checkpoint_unless_set(legacy, tmp_path: Path,
                                                  make_settings: Callable[..., Settings]) -> None:
    # The service ranks with the k the checkpoint's metrics were computed with; a checkpoint
    # that names none gets CSLS's usual 10; a setting overrides both.
    k3 = _rewritten(legacy.path, tmp_path / "k3", {"csls_k": 3})
    unnamed = _rewritten(legacy.path, tmp_path / "unnamed", None)
    for checkpoint, overrides, expected in [(unnamed, {}, 10), (k3, {}, 3),
                                            (k3, {"csls_k": 5}, 5)]:
        with TestClient(create_app(make_settings(checkpoint=checkpoint, **overrides))) as client:
            assert client.get("/model").json()["csls_k"] == expected


def test_csls_k_setting_keeps_the_plan_terms(synthetic,
                                             make_settings: Callable[..., Settings]) -> None:
    """Another k gives CSLS terms computed at load; the Sinkhorn ranking keeps the stored
    terms its plan was built on."""
    emb = load_checkpoint(synthetic.path).embeddings
    joint = torch.nn.functional.normalize(emb.joint.double(), dim=1)
    cos = joint[:300] @ joint[300:].T
    r5 = torch.cat([cos.topk(5, dim=1).values.mean(1), cos.T.topk(5, dim=1).values.mean(1)])
    source = "/m/0abc000"  # row 0
    answers = {}
    for k in (None, 5):
        with TestClient(create_app(make_settings(csls_k=k))) as client:
            assert client.get("/model").json()["available_metrics"][-1] == "sinkhorn"
            answers[k] = client.get(f"/candidates/{source}", params={"k": 5}).json()
            csls = client.get(f"/candidates/{source}",
                              params={"k": 5, "metric": "csls"}).json()["candidates"]
            row_of = client.app.state.aligner.directory.row_of  # type: ignore[attr-defined]
    for c in csls:
        expected = 2 * c["cosine"] - r5[0].item() - r5[row_of[c["entity"]]].item()
        assert c["csls"] == pytest.approx(expected, abs=1e-5)
    assert [c["entity"] for c in answers[5]["candidates"]] == \
        [c["entity"] for c in answers[None]["candidates"]]
    assert [c["probability"] for c in answers[5]["candidates"]] == pytest.approx(
        [c["probability"] for c in answers[None]["candidates"]], rel=1e-6)


@pytest.mark.parametrize("headline,terms,expected", [
    ("sinkhorn", True, "sinkhorn"), ("csls", True, "csls"), ("cosine", True, "cosine"),
    ("cosine", False, "cosine"), ("sinkhorn", False, "csls"), (None, False, "csls")])
def test_default_metric_is_the_headline_when_served(synthetic, legacy, tmp_path: Path,
                                                     make_settings: Callable[..., Settings],
                                                     headline: str | None, terms: bool,
                                                     expected: str) -> None:
    section = {"csls_k": 10} if headline is None else {"csls_k": 10, "headline": headline}
    path = _rewritten(synthetic.path if terms else legacy.path, tmp_path / "c", section)
    with TestClient(create_app(make_settings(checkpoint=path))) as client:
        assert client.get("/model").json()["default_metric"] == expected
        assert client.get("/candidates/%2Fm%2F0abc000").json()["metric"] == expected


@pytest.mark.parametrize("section,message", [
    ({"headline": "euclid"}, r"eval\.headline must be one of cosine, csls, sinkhorn"),
    ({"sinkhorn_reg": 0}, r"eval\.sinkhorn_reg must be a positive number"),
    ({"sinkhorn_reg": "x"}, r"eval\.sinkhorn_reg must be a positive number")])
def test_bad_ranking_config_stops_startup(synthetic, tmp_path: Path, section: dict,
                                          message: str,
                                          make_settings: Callable[..., Settings]) -> None:
    path = _rewritten(synthetic.path, tmp_path / "bad", {"csls_k": 10, **section})
    with pytest.raises(CheckpointError, match=message), \
            TestClient(create_app(make_settings(checkpoint=path))):
        pass


@pytest.mark.parametrize("value", [0, -1, 101, 10**9, "10", 2.5, True, None])
def test_out_of_range_checkpoint_csls_k_is_refused(value: object) -> None:
    """A checkpoint's eval.csls_k of 10^9 took 30 s to load; now it is a CheckpointError."""
    with pytest.raises(CheckpointError, match=r"eval\.csls_k must be an integer from 1 to 100"):
        evaluated_csls_k({"config": {"eval": {"csls_k": value}}})


@pytest.mark.parametrize("config,expected", [({}, 10), ({"config": {"eval": {}}}, 10),
                                             ({"config": {"eval": {"csls_k": 1}}}, 1),
                                             ({"config": {"eval": {"csls_k": 100}}}, 100)])
def test_checkpoint_csls_k_in_range_is_used(config: dict, expected: int) -> None:
    assert evaluated_csls_k(config) == expected
