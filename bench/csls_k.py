"""Choose CSLS's k and the label settings on validation pairs ranked as the test pairs are.

The validation of model selection ranks a few hundred pairs, so its hubness terms see a few
hundred sources: fine to compare epochs, not to choose ``eval.csls_k``. Here each validation
source is ranked against every unlabelled KG2 entity, the hubness terms taken over every
unlabelled entity of both KGs, with the labels propagated from the training pairs alone (the
validation pairs must not seed their own labels). The test column ranks the checkpoint's
learned embedding with labels propagated from the training and validation pairs, as the final
embedding carries them.

The propagated labels have no parameter to fit, so their settings (``model.propagation_weight``,
``_dim``, ``_hops``, ``_hub_damping``) can be chosen on a trained checkpoint too: model
selection ranks the learned embedding alone, so they change nothing it picked.

With ``--sinkhorn-reg``, each setting is also ranked by the Sinkhorn ranking at each of those
entropies (the plan over the same pools; ``eval.sinkhorn_reg``): two plans of about 15,000 ×
15,000 entities per entropy, minutes each on one thread.

    python -m bench.csls_k --checkpoint CKPT [--data ../shared/data/dbp15k/zh_en] [--k 1 2 3 5 10]
        [--weight 0.5 0.7] [--dim 128 256] [--hops 2 3] [--damping 0.25 0.5]
        [--sinkhorn-reg 0.001 0.002 0.005]
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import torch

from mimea.model.checkpoint import load_checkpoint
from mimea.model.config import saved_config
from mimea.model.propagation import with_propagation
from mimea.training.evaluation import evaluate_pairs, pooled_metrics
from mimea.training.pipeline import learned_columns, prepare, unlabelled_rows
from mimea.training.trainer import propagate

ROOT = Path(__file__).resolve().parents[1]

DATA = ROOT.parent / "shared" / "data" / "dbp15k" / "zh_en"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--k", type=int, nargs="+", default=[1, 2, 3, 4, 5, 7, 10])
    parser.add_argument("--weight", type=float, nargs="+",
                        help="label weights (default: the checkpoint's)")
    parser.add_argument("--dim", type=int, nargs="+",
                        help="label sizes per view and hop (default: the checkpoint's)")
    parser.add_argument("--hops", type=int, nargs="+",
                        help="propagation steps (default: the checkpoint's)")
    parser.add_argument("--damping", type=float, nargs="+",
                        help="hub damping exponents (default: the checkpoint's)")
    parser.add_argument("--sinkhorn-reg", type=float, nargs="*", default=[],
                        help="also rank by the Sinkhorn plan at these entropies")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "csls_k.json")
    args = parser.parse_args()
    if not args.data.is_dir():
        print(f"skipped: no dataset at {args.data}")
        return 0
    checkpoint = load_checkpoint(args.checkpoint)
    config = saved_config(checkpoint.config["config"])
    prepared = prepare(args.data, config)
    split, data = prepared.split, prepared.data
    if data.ids[split.test].tolist() != checkpoint.split["test"]:
        print(f"error: {args.checkpoint} was not trained on this split of {args.data}")
        return 2
    learned = learned_columns(checkpoint.embeddings.joint, config.model)
    train, valid = torch.as_tensor(split.train), torch.as_tensor(split.valid)
    test = torch.as_tensor(split.test)
    free_kg1, free_kg2 = unlabelled_rows(data, split)
    rows = []
    own = config.model
    for dim, hops, damping in itertools.product(
            args.dim or [own.propagation_dim], args.hops or [own.propagation_hops],
            args.damping or [own.propagation_hub_damping]):
        labels = config.model_copy(update={"model": own.model_copy(update={
            "propagation_dim": dim, "propagation_hops": hops,
            "propagation_hub_damping": damping})})
        valid_labels = propagate(labels, prepared.inputs, train)
        test_labels = propagate(labels, prepared.inputs, torch.cat([train, valid]))
        for weight in args.weight or [own.propagation_weight]:
            valid_joint = with_propagation(learned, valid_labels, weight)
            test_joint = with_propagation(learned, test_labels, weight)
            for k in args.k:
                pooled = pooled_metrics(valid_joint, valid, free_kg2, free_kg1, k=k)
                tested = evaluate_pairs(test_joint, test, method="csls", k=k)["kg1_to_kg2"]
                setting = {"k": k, "weight": weight, "dim": dim, "hops": hops,
                           "damping": damping}
                rows.append({**setting, "valid": pooled, "test": tested})
                _print(setting, "csls", pooled, tested)
                for reg in args.sinkhorn_reg:
                    pooled = pooled_metrics(valid_joint, valid, free_kg2, free_kg1, k=k,
                                            method="sinkhorn", sinkhorn_reg=reg)
                    tested = evaluate_pairs(test_joint, test, method="sinkhorn", k=k,
                                            sinkhorn_reg=reg, pools=(free_kg1, free_kg2)
                                            )["kg1_to_kg2"]
                    rows.append({**setting, "sinkhorn_reg": reg, "valid": pooled,
                                 "test": tested})
                    _print(setting, f"sinkhorn reg={reg:g}", pooled, tested)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"checkpoint": str(args.checkpoint), "data": str(args.data),
                                    "valid_pairs": len(valid), "rows": rows}, indent=2) + "\n")
    return 0


def _print(setting: dict[str, float], ranking: str, valid: dict[str, float],
           test: dict[str, float]) -> None:
    print(f"dim={setting['dim']:>4} hops={setting['hops']} damping={setting['damping']:.2f} "
          f"weight={setting['weight']:.2f} k={setting['k']:>3} {ranking}  "
          f"valid Hits@1 {valid['hits1']:.4f} MRR {valid['mrr']:.4f}   "
          f"test Hits@1 {test['hits1']:.4f} MRR {test['mrr']:.4f} MR {test['mr']:.1f}",
          flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
