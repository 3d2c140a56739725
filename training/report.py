"""A training run's report: one self-contained HTML page with its figures embedded as PNGs.

It shows what a run did and what it reached: the losses and the validation figures of every
epoch, each modality's mean fusion weight in each KG, and where the test pairs' gold targets
ranked. Training writes it into the checkpoint (``report.html``); ``mimea report`` draws it
again from a checkpoint's ``history.json``, ``metrics.json`` and embeddings. Figures are drawn
on matplotlib ``Figure`` objects (the Agg renderer), never through pyplot's global state.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from mimea.model.checkpoint import HISTORY_FILE, Checkpoint, CheckpointError

LOSS_KEYS = ("total", "joint", "modal", "ot", "kl")
# Upper bounds of the rank histogram's buckets: 1, 2-3, 4-10, 11-30, 31-100, ...
RANK_BUCKETS = (1, 3, 10, 30, 100, 300, 1000)
DPI = 110


@dataclass(frozen=True)
class RunRecord:
    """What the report draws, as a checkpoint stores it (or training holds it in memory).

    ``fusion_weights`` and ``mask`` are ``[N, M]`` (M = len(modalities)), ``kgs`` ``[N]``
    (1 or 2); ``history`` and ``metrics`` are the contents of history.json and metrics.json.
    """

    history: Mapping[str, Any]
    metrics: Mapping[str, Any]
    modalities: Sequence[str]
    fusion_weights: torch.Tensor
    mask: torch.Tensor
    kgs: torch.Tensor
    title: str


def checkpoint_record(checkpoint: Checkpoint) -> RunRecord:
    """The run record of a loaded checkpoint (CheckpointError when it stores no history)."""
    if checkpoint.history is None:
        raise CheckpointError(f"checkpoint {checkpoint.path} has no {HISTORY_FILE} (written "
                              f"before training recorded its history); train it again to get "
                              f"a report")
    embeddings = checkpoint.embeddings
    return RunRecord(history=checkpoint.history, metrics=checkpoint.metrics,
                     modalities=checkpoint.modalities, fusion_weights=embeddings.fusion_weights,
                     mask=embeddings.mask, kgs=torch.as_tensor(checkpoint.entities.kgs),
                     title=str(checkpoint.config.get("data", {}).get("path", checkpoint.path)))


def render_report(record: RunRecord) -> str:
    """The report page of ``record`` (CheckpointError naming what is missing from its
    history)."""
    epochs = _epochs(record.history)
    ranks = _test_ranks(record.history)
    sections = [
        f"<h1>MIMEA training run: {_text(record.title)}</h1>",
        _summary(record, epochs),
        "<h2>Training</h2>",
        _image(_training_figure(epochs, record.history.get("best_epoch")),
               "loss and validation figures per epoch"),
        "<h2>Fusion weights</h2>",
        "<p>Mean weight of each modality in the joint embedding, over each KG's entities "
        "(an entity without a modality gives it no weight).</p>",
        _image(_fusion_figure(record), "mean fusion weight per modality and KG"),
        "<h2>Test ranks</h2>",
        f"<p>Rank of each test pair's gold target ({_text(ranks['ranking'])} ranking, "
        f"{_text(ranks['direction'].replace('_', ' '))}), among the test targets.</p>",
        _image(_rank_figure(np.asarray(ranks["ranks"], dtype=np.int64)),
               "histogram of the test pairs' gold ranks"),
        "<h2>Test metrics</h2>", _metrics_table(record.metrics.get("test", {})),
    ]
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>MIMEA report: {_text(record.title)}</title>\n<style>{_STYLE}</style>\n"
            "</head>\n<body>\n" + "\n".join(sections) + "\n</body>\n</html>\n")


_STYLE = ("body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em;color:#222}"
          "table{border-collapse:collapse}td,th{padding:.2em .8em;text-align:right}"
          "th{border-bottom:1px solid #888}td:first-child,th:first-child{text-align:left}"
          "img{max-width:100%}")


def _epochs(history: Mapping[str, Any]) -> list[dict[str, float]]:
    epochs = history.get("epochs")
    if not isinstance(epochs, list) or not epochs or not all(
            isinstance(r, dict) and isinstance(r.get("epoch"), int | float) for r in epochs):
        raise CheckpointError(f"{HISTORY_FILE}: 'epochs' must be a non-empty list of records "
                              f"with an 'epoch' number")
    return epochs


def _test_ranks(history: Mapping[str, Any]) -> dict[str, Any]:
    ranks = history.get("test_ranks")
    if (not isinstance(ranks, dict) or not isinstance(ranks.get("ranks"), list)
            or not all(type(r) is int and r >= 1 for r in ranks["ranks"])
            or not isinstance(ranks.get("ranking"), str)
            or not isinstance(ranks.get("direction"), str)):
        raise CheckpointError(f"{HISTORY_FILE}: 'test_ranks' must hold 'ranking', 'direction' "
                              f"and 'ranks' (ranks from 1)")
    return ranks


def _summary(record: RunRecord, epochs: list[dict[str, float]]) -> str:
    metrics = record.metrics
    headline = metrics.get("headline", "sinkhorn")
    figures = metrics.get("test", {}).get(headline, {}).get("kg1_to_kg2")
    lines = [f"{len(epochs)} epochs, best epoch {record.history.get('best_epoch', '?')}"]
    if figures:
        lines.append(f"test Hits@1 {figures['hits1']:.4f}, Hits@10 {figures['hits10']:.4f}, "
                     f"MRR {figures['mrr']:.4f} ({headline} ranking, KG1 to KG2)")
    served = metrics.get("all_targets", {}).get("kg1_to_kg2")
    if served:
        lines.append(f"served ({metrics['all_targets'].get('ranking', headline)}, every KG2 "
                     f"entity a candidate): Hits@1 {served['hits1']:.4f}, MRR "
                     f"{served['mrr']:.4f}")
    if "train_s" in metrics:
        lines.append(f"training {metrics['train_s']:.1f} s")
    return "<ul>" + "".join(f"<li>{_text(line)}</li>" for line in lines) + "</ul>"


def _training_figure(epochs: list[dict[str, float]], best_epoch: object) -> Figure:
    figure = Figure(figsize=(10, 3.6), dpi=DPI, layout="constrained")
    losses, valid = figure.subplots(1, 2)
    x = [r["epoch"] for r in epochs]
    for key in LOSS_KEYS:
        values = [r.get(key) for r in epochs]
        if all(isinstance(v, int | float) and v > 0 for v in values):
            losses.plot(x, values, marker=".", label=key, linewidth=2 if key == "total" else 1)
    losses.set(title="loss per epoch", xlabel="epoch", yscale="log")
    losses.legend(fontsize="small")
    validated = [r for r in epochs if "valid_hits1" in r]
    if validated:
        vx = [r["epoch"] for r in validated]
        valid.plot(vx, [r["valid_hits1"] for r in validated], marker="o", label="Hits@1")
        if all("valid_mrr" in r for r in validated):
            valid.plot(vx, [r["valid_mrr"] for r in validated], marker="s", label="MRR")
        if isinstance(best_epoch, int | float):
            valid.axvline(best_epoch, color="grey", linestyle=":", label="selected")
        valid.legend(fontsize="small")
    else:
        valid.text(0.5, 0.5, "no validation pairs", ha="center", va="center",
                   transform=valid.transAxes)
    valid.set(title="validation (learned embedding, CSLS)", xlabel="epoch", ylim=(0, 1))
    return figure


def fusion_means(record: RunRecord) -> dict[int, list[float]]:
    """Each KG's mean fusion weight per modality (``{kg: [M]}``), over its entities (on the
    CPU: training hands over the tables on its device)."""
    weights = record.fusion_weights.detach().float().cpu() * record.mask.float().cpu()
    kgs = record.kgs.cpu()
    return {kg: weights[kgs == kg].mean(dim=0).tolist() for kg in (1, 2)}


def _fusion_figure(record: RunRecord) -> Figure:
    means = fusion_means(record)
    figure = Figure(figsize=(6, 3.2), dpi=DPI, layout="constrained")
    axes = figure.subplots()
    x = np.arange(len(record.modalities))
    for offset, kg in ((-0.2, 1), (0.2, 2)):
        bars = axes.bar(x + offset, means[kg], width=0.4, label=f"KG{kg}")
        axes.bar_label(bars, fmt="%.2f", fontsize="small")
    axes.set_xticks(x, list(record.modalities))
    axes.set(ylabel="mean weight", ylim=(0, 1))
    axes.legend(fontsize="small")
    return figure


def rank_buckets(ranks: np.ndarray) -> list[tuple[str, int]]:
    """``(label, count)`` of the ranks in each bucket of ``RANK_BUCKETS``, and beyond."""
    buckets, low = [], 1
    for high in RANK_BUCKETS:
        label = str(high) if low == high else f"{low}-{high}"
        buckets.append((label, int(((ranks >= low) & (ranks <= high)).sum())))
        low = high + 1
    buckets.append((f">{RANK_BUCKETS[-1]}", int((ranks >= low).sum())))
    return buckets


def _rank_figure(ranks: np.ndarray) -> Figure:
    buckets = rank_buckets(ranks)
    figure = Figure(figsize=(7, 3.2), dpi=DPI, layout="constrained")
    axes = figure.subplots()
    bars = axes.bar([label for label, _ in buckets], [count for _, count in buckets])
    share = [f"{count / max(len(ranks), 1):.0%}" for _, count in buckets]
    axes.bar_label(bars, labels=share, fontsize="small")
    axes.set(xlabel="gold rank", ylabel="test pairs",
             ylim=(0, 1.15 * max(count for _, count in buckets) + 1))
    return figure


def _metrics_table(test: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    rows = ["<tr><th>ranking</th><th>direction</th><th>Hits@1</th><th>Hits@10</th>"
            "<th>MRR</th><th>MR</th></tr>"]
    for ranking, directions in test.items():
        for direction, m in directions.items():
            rows.append(f"<tr><td>{_text(ranking)}</td><td>{_text(direction)}</td>"
                        f"<td>{m['hits1']:.4f}</td><td>{m['hits10']:.4f}</td>"
                        f"<td>{m['mrr']:.4f}</td><td>{m['mr']:.1f}</td></tr>")
    return "<table>" + "".join(rows) + "</table>"


def _image(figure: Figure, description: str) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<p><img alt="{_text(description)}" src="data:image/png;base64,{data}"></p>'


def _text(value: object) -> str:
    return html.escape(str(value))
