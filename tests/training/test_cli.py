"""Training subcommands of the ``mimea`` CLI (training/cli.py via mimea_cli.app)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from click.testing import Result
from typer.testing import CliRunner

from mimea.model.checkpoint import (
    EMBEDDINGS_FILE,
    ENTITIES_FILE,
    EmbeddingTables,
    load_checkpoint,
    write_checkpoint,
)
from mimea_cli import app

PairWriter = Callable[..., Path]
runner = CliRunner()


def invoke(*args: str | Path) -> Result:
    return runner.invoke(app, [str(a) for a in args])


def _train_args(data: Path, out: Path, overrides: list[str]) -> list[str | Path]:
    args: list[str | Path] = ["train", "--data", data, "--out", out, "--quiet"]
    for item in overrides:
        args += ["--set", item]
    return args


def assert_clean_failure(result: Result, *fragments: str) -> None:
    """Exit code 2 with an ``error:`` message holding every fragment, and no traceback."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert "error:" in result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)


@pytest.fixture(scope="module")
def cli_checkpoint(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint written by ``mimea train`` (a tiny run), shared by the module."""
    out = tmp_path_factory.mktemp("cli") / "checkpoint"
    result = invoke(*_train_args(synthetic_dir, out, ["model.hidden_dim=16",
                                                      "loss.negatives=64"]),
                    "--epochs", "2", "--device", "cpu", "--seed", "5")
    assert result.exit_code == 0, result.output
    assert f"checkpoint written to {out} (2 epochs" in result.stdout
    return out


def test_demo_data_writes_a_pair(tmp_path: Path) -> None:
    result = invoke("demo-data", "--out", tmp_path / "demo", "--entities", "60", "--seed", "2")
    assert result.exit_code == 0, result.output
    assert f"wrote {tmp_path / 'demo'}" in result.stdout
    for name in ("ent_ids_1", "ent_ids_2", "triples_1", "triples_2", "ill_ent_ids",
                 "visual_features.npz"):
        assert (tmp_path / "demo" / name).is_file(), name


def test_demo_data_dangling_share(tmp_path: Path) -> None:
    result = invoke("demo-data", "--out", tmp_path / "demo", "--entities", "400",
                    "--dangling", "0.2")
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "demo" / "synthetic.json").read_text(encoding="utf-8"))
    assert summary["summary"]["dangling_share"] == pytest.approx(0.2, abs=0.02)
    assert summary["spec"]["dangling"] == 0.2
    assert_clean_failure(invoke("demo-data", "--out", tmp_path / "other", "--dangling", "1.5"),
                         "dangling must be in [0, 1)")


def test_demo_data_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "notes.txt").write_text("keep", encoding="utf-8")
    assert_clean_failure(invoke("demo-data", "--out", tmp_path / "demo"), "not empty")
    assert (tmp_path / "demo" / "notes.txt").read_text(encoding="utf-8") == "keep"


def test_demo_data_rejects_a_tiny_world(tmp_path: Path) -> None:
    assert_clean_failure(invoke("demo-data", "--out", tmp_path / "demo", "--entities", "3"),
                         "num_entities")


@pytest.mark.slow
def test_train_writes_a_loadable_checkpoint(cli_checkpoint: Path) -> None:
    checkpoint = load_checkpoint(cli_checkpoint)
    assert checkpoint.config["config"]["training"]["epochs"] == 2
    assert checkpoint.config["config"]["training"]["seed"] == 5
    assert checkpoint.config["config"]["model"]["hidden_dim"] == 16
    assert checkpoint.metrics["epochs"] == 2


@pytest.mark.slow
def test_train_prints_a_metrics_table(synthetic_dir: Path, tmp_path: Path,
                                      tiny_overrides: list[str]) -> None:
    result = invoke(*_train_args(synthetic_dir, tmp_path / "ckpt", tiny_overrides))
    assert result.exit_code == 0, result.output
    assert "Hits@1" in result.stdout
    assert result.stdout.count("kg1_to_kg2") == 3  # cosine, csls and sinkhorn


@pytest.mark.slow
def test_evaluate_json(cli_checkpoint: Path) -> None:
    result = invoke("evaluate", "--checkpoint", cli_checkpoint, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    checkpoint = load_checkpoint(cli_checkpoint)
    assert report["model_version"] == checkpoint.model_version
    assert report["headline"] == "sinkhorn" and report["part"] == "test"
    assert report["pairs"] == len(checkpoint.split["test"])
    metrics = report["rankings"]
    assert set(metrics) == {"cosine", "csls", "sinkhorn"}
    for directions in metrics.values():
        assert set(directions) == {"kg1_to_kg2", "kg2_to_kg1"}
    stored = checkpoint.metrics
    assert metrics["csls"]["kg1_to_kg2"] == pytest.approx(stored["test"]["csls"]["kg1_to_kg2"])
    for direction in ("kg1_to_kg2", "kg2_to_kg1"):
        assert report["all_targets"][direction] == pytest.approx(
            stored["all_targets"][direction])
    assert set(report["seconds"]) == {"load", "rankings", "all_targets", "other", "total"}


@pytest.mark.slow
def test_evaluate_table(cli_checkpoint: Path) -> None:
    result = invoke("evaluate", "--checkpoint", cli_checkpoint, "--part", "valid")
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("model ") and "valid pairs, headline ranking sinkhorn" in lines[0]
    assert lines[1].split()[:3] == ["ranking", "direction", "Hits@1"]
    assert len(lines) == 9  # summary, header, 3 rankings x 2 directions, timings
    test = invoke("evaluate", "--checkpoint", cli_checkpoint).stdout.strip().splitlines()
    assert test[-2].startswith("served (sinkhorn, every KG2 entity a candidate): Hits@1 ")


def test_missing_data_folder(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_pair"
    result = invoke("train", "--data", missing, "--out", tmp_path / "ckpt", "--quiet")
    assert_clean_failure(result, str(missing), "does not exist")
    assert not (tmp_path / "ckpt").exists()


@pytest.mark.parametrize("name", ["triples_1", "ent_ids_2"])
def test_missing_data_file_is_named(name: str, write_pair: PairWriter, tmp_path: Path) -> None:
    root = write_pair(**{name: None})
    assert_clean_failure(invoke("train", "--data", root, "--out", tmp_path / "ckpt", "--quiet"),
                         name)


def test_malformed_triples_line_names_file_and_line(write_pair: PairWriter,
                                                    tmp_path: Path) -> None:
    root = write_pair(triples_1="0\t0\t1\n1\tnot-a-relation\t2\n")
    result = invoke("train", "--data", root, "--out", tmp_path / "ckpt", "--quiet")
    assert_clean_failure(result, f"{root / 'triples_1'}:2:")


@pytest.mark.parametrize(("override", "fragment"), [
    ("training.lr", "section.key=value"),
    ("model.hiden_dim=32", "hiden_dim"),
    ("training.lr=-1", "lr"),
    ("training.epochs=many", "epochs"),
])
def test_bad_override(override: str, fragment: str, synthetic_dir: Path, tmp_path: Path) -> None:
    result = invoke("train", "--data", synthetic_dir, "--out", tmp_path / "ckpt", "--quiet",
                    "--set", override)
    assert_clean_failure(result, fragment)
    assert not (tmp_path / "ckpt").exists()


def test_bad_config_file_is_named(synthetic_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "run.ini"
    config.write_text("[training]\n", encoding="utf-8")
    result = invoke("train", "--data", synthetic_dir, "--out", tmp_path / "ckpt", "--config",
                    config)
    assert_clean_failure(result, str(config))


def _break(checkpoint: Path, how: str) -> Path:
    if how == "missing_dir":
        return checkpoint.parent / "nowhere"
    if how == "missing_entities":
        (checkpoint / ENTITIES_FILE).unlink()
    elif how == "truncated_embeddings":
        path = checkpoint / EMBEDDINGS_FILE
        path.write_bytes(path.read_bytes()[:100])
    return checkpoint


@pytest.mark.parametrize(("how", "fragment"), [
    ("missing_dir", "does not exist"),
    ("missing_entities", ENTITIES_FILE),
    ("truncated_embeddings", EMBEDDINGS_FILE),
])
def test_evaluate_broken_checkpoint(how: str, fragment: str, cli_checkpoint: Path,
                                    tmp_path: Path) -> None:
    copy = tmp_path / "checkpoint"
    shutil.copytree(cli_checkpoint, copy)
    assert_clean_failure(invoke("evaluate", "--checkpoint", _break(copy, how)), fragment)


def test_evaluate_unknown_part(cli_checkpoint: Path) -> None:
    result = invoke("evaluate", "--checkpoint", cli_checkpoint, "--part", "holdout")
    assert_clean_failure(result, "holdout")


def _rewritten(source: Path, out: Path, *, split: dict | None = None,
               joint: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Path:
    """``source`` written anew (a valid manifest) with its split or joint embedding changed."""
    ckpt = load_checkpoint(source, with_weights=True)
    emb = ckpt.embeddings
    tables = EmbeddingTables(joint=joint(emb.joint.clone()) if joint else emb.joint,
                             modalities=emb.modalities, fusion_weights=emb.fusion_weights,
                             mask=emb.mask)
    config = {k: v for k, v in ckpt.config.items()
              if k not in ("format_version", "model_version", "embedding_dims", "files",
                           "decisions")}
    write_checkpoint(out, config=config, weights=ckpt.weights, embeddings=tables,
                     entities=ckpt.entities, split=split or ckpt.split, metrics=ckpt.metrics)
    return out


def _with_nan(joint: torch.Tensor) -> torch.Tensor:
    joint[3, 0] = float("nan")
    return joint


@pytest.mark.parametrize(("change", "fragments"), [
    ({"test": [[999999, 0]]}, ["split.json", "999999", "not in entities.tsv"]),
    ({"test": None}, ["split.json", "'test' must be a list"]),
    ({"test": [[1, 2, 3]]}, ["split.json", "test pair 0"]),
    ({"test": "swap"}, ["split.json", "of KG2 in column 1"]),
])
def test_evaluate_bad_split_is_one_line(change: dict, fragments: list[str], cli_checkpoint: Path,
                                        tmp_path: Path) -> None:
    split = dict(load_checkpoint(cli_checkpoint).split)
    if change["test"] == "swap":
        split["test"] = [[b, a] for a, b in split["test"]]
    else:
        split.update(change)
    result = invoke("evaluate", "--checkpoint", _rewritten(cli_checkpoint, tmp_path / "c",
                                                           split=split))
    assert_clean_failure(result, *fragments)
    assert len(result.stderr.strip().splitlines()) == 1


def test_evaluate_refuses_a_nan_embedding(cli_checkpoint: Path, tmp_path: Path) -> None:
    # A NaN once made every rank 1 and printed Hits@1 = MRR = 1.0 with exit status 0.
    try:
        broken = _rewritten(cli_checkpoint, tmp_path / "c", joint=_with_nan)
    except ValueError as exc:  # refused as early as writing: as good
        assert "NaN" in str(exc)
        return
    result = invoke("evaluate", "--checkpoint", broken)
    assert_clean_failure(result, "NaN")
    assert "1.0000" not in result.output


def test_evaluate_collapsed_embedding_scores_zero(cli_checkpoint: Path, tmp_path: Path) -> None:
    collapsed = _rewritten(cli_checkpoint, tmp_path / "c", joint=torch.ones_like)
    result = invoke("evaluate", "--checkpoint", collapsed, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    for ranking in report["rankings"].values():
        assert ranking["kg1_to_kg2"]["hits1"] == 0.0
    assert report["all_targets"]["kg1_to_kg2"]["hits1"] == 0.0
