"""Print a gold pair that a trained checkpoint aligns, to show the model at work (README).

The pair is a test pair, which training never saw: the first in split.json's order that the
served ranking (the checkpoint's headline ranking, every entity of the other KG a candidate)
puts first, with every modality present on both sides. Printed as JSON, with its runner-up,
the score margin between them, the decided match probability (when the stored decisions pair
them too), and the share of test pairs the served ranking puts first.

    .venv/bin/python scripts/showcase.py demo/checkpoint
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from mimea.model.checkpoint import Checkpoint, load_checkpoint
from mimea.model.config import saved_config
from mimea.model.ranking import score_form
from mimea.model.similarity import normalise
from mimea.training.pipeline import split_rows


def served_scores(checkpoint: Checkpoint, sources: torch.Tensor) -> tuple[torch.Tensor,
                                                                           torch.Tensor]:
    """Scores ``[S, N2]`` of each KG1 row in ``sources`` against every KG2 entity, as the
    service ranks them, and the KG2 rows of the columns."""
    embeddings = checkpoint.embeddings
    if embeddings.csls_r is None or embeddings.sinkhorn_potential is None:
        raise SystemExit(f"{checkpoint.path} stores no ranking terms; train it again")
    config = saved_config(checkpoint.config["config"])
    kgs = torch.as_tensor(checkpoint.entities.kgs)
    keys = torch.nonzero(kgs == 2).squeeze(1)
    form = score_form(config.eval.headline, embeddings.csls_r[sources], embeddings.csls_r[keys],
                      embeddings.sinkhorn_potential[keys], config.eval.sinkhorn_reg)
    z = normalise(embeddings.joint)
    scores = form.scale * (z[sources] @ z[keys].T)
    for bias, axis in ((form.row_bias, 1), (form.col_bias, 0)):
        if bias is not None:
            scores += bias.unsqueeze(axis)
    return scores, keys


def showcase(checkpoint: Checkpoint) -> dict[str, Any]:
    """The showcase pair of ``checkpoint`` (see the module docstring)."""
    test = torch.as_tensor(split_rows(checkpoint, "test"))
    scores, keys = served_scores(checkpoint, test[:, 0])
    top2 = scores.topk(2, dim=1)
    right = keys[top2.indices[:, 0]] == test[:, 1]
    complete = checkpoint.embeddings.mask[test].all(dim=2).all(dim=1)
    chosen = torch.nonzero(right & complete).squeeze(1)
    if len(chosen) == 0:
        raise SystemExit(f"{checkpoint.path}: no test pair with every modality is ranked first")
    i = int(chosen[0])
    source, target, runner_up = int(test[i, 0]), int(test[i, 1]), int(keys[top2.indices[i, 1]])
    uris = checkpoint.entities.uris
    pair = {"kg1": uris[source], "kg2": uris[target], "runner_up": uris[runner_up],
            "margin": round(float(top2.values[i, 0] - top2.values[i, 1]), 3)}
    decisions = checkpoint.decisions
    if decisions is not None and int(decisions.counterpart[source]) == target:
        pair["match_probability"] = round(float(decisions.probability[source]), 3)
    return {"checkpoint": str(checkpoint.path), "model_version": checkpoint.model_version,
            "ranking": saved_config(checkpoint.config["config"]).eval.headline, **pair,
            "modalities": checkpoint.modalities,
            "test_pairs_ranked_first": round(float(right.float().mean()), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="checkpoint directory")
    args = parser.parse_args()
    print(json.dumps(showcase(load_checkpoint(args.checkpoint)), indent=2))


if __name__ == "__main__":
    main()
