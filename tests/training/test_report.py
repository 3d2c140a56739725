"""A training run's report page (training/report.py)."""

from __future__ import annotations

import base64
from html.parser import HTMLParser
from typing import Any

import numpy as np
import pytest
import torch

from mimea.model.checkpoint import CheckpointError
from mimea.training.report import RunRecord, fusion_means, rank_buckets, render_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
VOID = {"meta", "img", "br", "hr", "link", "input"}


class _Page(HTMLParser):
    """Collects the images and checks that every element is closed in order."""

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.images: list[dict[str, str | None]] = []
        self.doctype = False

    def handle_decl(self, decl: str) -> None:
        self.doctype = decl.lower() == "doctype html"

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.images.append(dict(attrs))
        if tag not in VOID:
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.open and self.open[-1] == tag, (tag, self.open)
        self.open.pop()


def parse_page(page: str) -> _Page:
    """The parsed page, checked to be a complete HTML document."""
    parser = _Page()
    parser.feed(page)
    parser.close()
    assert parser.doctype and parser.open == []
    return parser


def embedded_pngs(page: str) -> list[bytes]:
    """The PNG images of a page, each checked to be embedded as base64 data."""
    images = []
    for attrs in parse_page(page).images:
        source = attrs["src"] or ""
        assert source.startswith("data:image/png;base64,"), source[:40]
        images.append(base64.b64decode(source.split(",", 1)[1], validate=True))
    return images


def _history(**changes: Any) -> dict[str, Any]:
    history = {"epochs": [{"epoch": 1.0, "lr": 0.01, "total": 9.0, "joint": 5.0, "modal": 4.0},
                          {"epoch": 2.0, "lr": 0.005, "total": 7.0, "joint": 4.0, "modal": 3.0,
                           "valid_hits1": 0.5, "valid_mrr": 0.6}],
               "best_epoch": 2,
               "test_ranks": {"ranking": "sinkhorn", "direction": "kg1_to_kg2",
                              "ranks": [1, 1, 2, 5, 40, 2000]}}
    return {**history, **changes}


def _record(history: dict[str, Any] | None = None) -> RunRecord:
    kgs = torch.tensor([1, 1, 2, 2])
    mask = torch.tensor([[True, True], [True, False], [True, True], [True, True]])
    weights = torch.tensor([[0.5, 0.5], [1.0, 0.0], [0.75, 0.25], [0.25, 0.75]])
    test = {"sinkhorn": {"kg1_to_kg2": {"hits1": 0.33, "hits10": 0.67, "mrr": 0.45, "mr": 341.5}}}
    return RunRecord(history=history or _history(), metrics={"headline": "sinkhorn", "test": test},
                     modalities=["structure", "visual"], fusion_weights=weights, mask=mask,
                     kgs=kgs, title="pair <&> folder")


def test_page_embeds_three_png_figures() -> None:
    page = render_report(_record())
    images = embedded_pngs(page)
    assert len(images) == 3
    assert all(image.startswith(PNG_SIGNATURE) for image in images)
    assert "pair &lt;&amp;&gt; folder" in page  # text is escaped
    assert "0.3300" in page and "sinkhorn" in page


def test_page_without_validation_still_draws() -> None:
    epochs = [{"epoch": 1.0, "total": 3.0}, {"epoch": 2.0, "total": 2.0}]
    assert len(embedded_pngs(render_report(_record(_history(epochs=epochs))))) == 3


@pytest.mark.parametrize(("change", "fragment"), [
    ({"epochs": []}, "'epochs'"),
    ({"epochs": [{"loss": 1.0}]}, "'epochs'"),
    ({"test_ranks": None}, "'test_ranks'"),
    ({"test_ranks": {"ranking": "csls", "direction": "kg1_to_kg2", "ranks": [0, 3]}},
     "'test_ranks'"),
])
def test_a_broken_history_is_named(change: dict[str, Any], fragment: str) -> None:
    with pytest.raises(CheckpointError, match=fragment):
        render_report(_record(_history(**change)))


def test_rank_buckets_cover_every_rank() -> None:
    ranks = np.array([1, 1, 2, 3, 4, 10, 11, 100, 101, 1000, 1001, 50_000])
    buckets = rank_buckets(ranks)
    assert [label for label, _ in buckets] == ["1", "2-3", "4-10", "11-30", "31-100",
                                               "101-300", "301-1000", ">1000"]
    assert [count for _, count in buckets] == [2, 2, 2, 1, 1, 1, 1, 2]


def test_fusion_means_average_each_kg_with_missing_modalities_at_zero() -> None:
    means = fusion_means(_record())
    assert means[1] == pytest.approx([0.75, 0.25])
    assert means[2] == pytest.approx([0.5, 0.5])
