"""How much alignment signal the attribute names carry on their own, with no training.

Ranks the DBP15K zh_en test pairs (30% seeds, seed 42: the split every accuracy run uses) by
the cosine of the two entities' attribute bags, and by bags extended with their one- and
two-hop neighbourhoods' bags, and prints Hits@1 / Hits@10 / MRR for each.

    python -m bench.attribute_signal [--data ../shared/data/dbp15k/zh_en]
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from mimea.training.data import load_kg_pair
from mimea.training.evaluation import gold_ranks, ranking_metrics
from mimea.training.features import local_name
from mimea.training.split import split_pairs

ROOT = Path(__file__).resolve().parents[1]

DATA = ROOT.parent / "shared" / "data" / "dbp15k" / "zh_en"


def unit_rows(matrix: sp.spmatrix) -> sp.csr_matrix:
    matrix = sp.csr_matrix(matrix, dtype=np.float32)
    norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1)).ravel())
    norms[norms == 0] = 1.0
    return sp.csr_matrix(sp.diags(1.0 / norms) @ matrix)


def bags(names: list[list[str]], vocabulary: list[str], frequency: Counter[str],
         idf: bool) -> sp.csr_matrix:
    """Binary (or IDF-weighted, from ``frequency``) bags of attribute names, unit rows."""
    column = {name: i for i, name in enumerate(vocabulary)}
    rows, cols, values = [], [], []
    for row, row_names in enumerate(names):
        for name in row_names:
            if name in column:
                rows.append(row)
                cols.append(column[name])
                values.append(np.log(len(names) / frequency[name]) if idf else 1.0)
    return unit_rows(sp.csr_matrix((values, (rows, cols)), shape=(len(names), len(vocabulary))))


def metrics(features: sp.csr_matrix, test: np.ndarray) -> dict[str, float]:
    sim = torch.from_numpy((features[test[:, 0]] @ features[test[:, 1]].T).toarray())
    return ranking_metrics(gold_ranks(sim))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args()
    if not args.data.is_dir():
        print(f"skipping: {args.data} not found (the probe needs the shared data folder)")
        return 0
    data = load_kg_pair(args.data)
    test = split_pairs(data.gold, train_ratio=0.3, valid_fraction=0.1, seed=42).test
    names = [list(dict.fromkeys(local_name(a) for a in row)) for row in data.attributes]
    frequency = Counter(name for row in names for name in row)
    vocabulary = sorted(frequency, key=lambda name: (-frequency[name], name))
    heads, _, tails = data.triples.T
    adjacency = sp.csr_matrix((np.ones(2 * len(heads)), (np.r_[heads, tails], np.r_[tails, heads])),
                              shape=(data.num_entities,) * 2)
    adjacency.data[:] = 1.0
    degree = np.asarray(adjacency.sum(axis=1)).ravel()
    mean_of_neighbours = sp.diags(1.0 / np.maximum(degree, 1.0)) @ adjacency
    everything = bags(names, vocabulary, frequency, idf=False)
    hop1 = unit_rows(mean_of_neighbours @ everything)
    hop2 = unit_rows(mean_of_neighbours @ hop1)
    variants = {
        "top 1,000 names": bags(names, vocabulary[:1000], frequency, idf=False),
        "top 1,000 names, IDF-weighted": bags(names, vocabulary[:1000], frequency, idf=True),
        f"all {len(vocabulary):,} names": everything,
        "all names + 1- and 2-hop neighbourhood bags": unit_rows(sp.hstack([everything, hop1,
                                                                           hop2])),
    }
    print("| attribute bags (no training) | Hits@1 | Hits@10 | MRR |\n|---|---|---|---|")
    for label, features in variants.items():
        m = metrics(features, test)
        print(f"| {label} | {m['hits1']:.3f} | {m['hits10']:.3f} | {m['mrr']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
