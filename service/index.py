"""FAISS inner-product indexes over L2-normalised embeddings (cosine = inner product).

One index per KG. ``flat`` is exact; ``hnsw`` and ``ivf`` are approximate options for large
graphs. On the CPU, a flat index can scan a bfloat16 copy of its vectors (``precision``; the
copy costs half again the vectors' memory): half the memory traffic of the float32 scan, which
bounds a flat search, and native bfloat16 dot products where the CPU has them. Its shortlist is
then rescored in float32, so the scores returned are exact, and a true neighbour is missed only
if more than ``RESCORE_EXTRA`` others come within bfloat16's rounding error (under 0.01 of a
cosine) of it. Indexes move to the GPU when faiss was built with GPU support, sees a GPU, and
the device is not ``cpu`` (HNSW has no GPU implementation and stays on the CPU).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Literal

import faiss
import numpy as np
import torch

logger = logging.getLogger(__name__)

IndexKind = Literal["flat", "hnsw", "ivf"]
Precision = Literal["auto", "float32", "bfloat16"]
GPU_MAX_K = 2048  # faiss GPU k-selection limit
IVF_TRAIN_PER_LIST = 64
EXACT_BLOCK = 1024
RESCORE_EXTRA = 64  # shortlist of a bfloat16 scan beyond the k asked for
RESCORE_FLOATS = 1 << 24  # bounds the gathered shortlist vectors (64 MB) of one rescoring step


@dataclass
class KGIndex:
    """A searchable index over one KG's rows; ``max_k`` bounds one search's result count."""

    index: Any
    size: int
    kind: IndexKind
    on_gpu: bool
    ivf_nprobe: int = 1
    hnsw_ef_search: int = 0
    gpu_resources: Any = None
    exact: torch.Tensor | None = None  # CPU flat: the vectors, searched by matmul + top-k
    coarse: torch.Tensor | None = None  # their bfloat16 copy, scanned first when set

    @property
    def precision(self) -> str:
        """What a search scans: the vectors in float32, or their bfloat16 copy."""
        return "bfloat16" if self.coarse is not None else "float32"

    @property
    def max_k(self) -> int:
        return min(self.size, GPU_MAX_K) if self.on_gpu else self.size

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Return (scores, local ids) of shape [nq, k]; ids may be -1 for approximate indexes."""
        k = max(1, min(k, self.max_k))
        if self.exact is not None:
            # faiss-cpu's flat search handles batches below its BLAS threshold (and, measured,
            # up to ~64 queries) one query at a time: 32 queries cost 32 full scans (~90 ms on
            # 19.5k x 900), where one matmul + top-k takes ~13 ms. Micro-batched serving sends
            # exactly such batches, so CPU flat search goes through torch. Same exact result.
            q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
            scores = np.empty((len(q), k), dtype=np.float32)
            ids = np.empty((len(q), k), dtype=np.int64)
            for lo in range(0, len(q), EXACT_BLOCK):  # bounds the [block, n] score matrix
                top_scores, top_ids = self._flat_top(q[lo:lo + EXACT_BLOCK], k)
                scores[lo:lo + EXACT_BLOCK] = top_scores.numpy()
                ids[lo:lo + EXACT_BLOCK] = top_ids.numpy()
            return scores, ids
        if self.kind == "hnsw":
            self.index.hnsw.efSearch = max(self.hnsw_ef_search, k)
        scores, ids = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return scores, ids

    def _flat_top(self, q: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact top-``k`` (scores, ids) of float32 queries over the CPU flat vectors."""
        assert self.exact is not None
        if self.coarse is None:
            top = torch.topk(q @ self.exact.T, k, dim=1)
            return top.values, top.indices
        shortlist = torch.topk(q.to(torch.bfloat16) @ self.coarse.T,
                               min(k + RESCORE_EXTRA, self.size), dim=1).indices
        step = max(1, RESCORE_FLOATS // (shortlist.shape[1] * self.exact.shape[1]))
        rescored = torch.cat([torch.einsum("bd,bsd->bs", q[lo:lo + step],
                                           self.exact[shortlist[lo:lo + step]])
                              for lo in range(0, len(q), step)])
        top = torch.topk(rescored, k, dim=1)
        return top.values, shortlist.gather(1, top.indices)


def build_index(vectors: np.ndarray, *, kind: IndexKind = "flat", use_gpu: bool = False,
                hnsw_m: int = 32, hnsw_ef_search: int = 128, ivf_nlist: int | None = None,
                ivf_nprobe: int = 16, precision: Precision = "float32") -> KGIndex:
    """Build an inner-product index over ``vectors`` [n, d] (already L2-normalised).

    ``precision`` is that of the CPU flat scan (see the module docstring); ``auto`` takes
    bfloat16 where :func:`fast_bfloat16` says so. Other indexes ignore it.
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    nprobe = 1
    if kind == "flat":
        index: Any = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = max(40, 2 * hnsw_m)
        index.hnsw.efSearch = hnsw_ef_search
    elif kind == "ivf":
        # k-means wants roughly 39+ points per centroid; small graphs get few lists.
        nlist = ivf_nlist or int(4 * math.sqrt(n))
        nlist = max(1, min(nlist, n // 39 or 1))
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(_training_sample(vectors, nlist))
        nprobe = min(nlist, ivf_nprobe)
        index.nprobe = nprobe
    else:  # pragma: no cover - Settings restricts the choice
        raise ValueError(f"unknown index kind {kind!r}")
    index.add(vectors)
    resources = None
    on_gpu = False
    if use_gpu and kind != "hnsw" and gpu_count() > 0:
        resources = faiss.StandardGpuResources()
        index = faiss.index_cpu_to_gpu(resources, 0, index)
        on_gpu = True
    elif use_gpu and kind == "hnsw":
        logger.info("HNSW has no FAISS GPU implementation; the index stays on the CPU")
    exact = torch.from_numpy(vectors) if kind == "flat" and not on_gpu else None
    if precision == "auto":
        precision = "bfloat16" if fast_bfloat16() else "float32"
    coarse = (exact.to(torch.bfloat16) if exact is not None and precision == "bfloat16"
              else None)
    return KGIndex(index=index, size=n, kind=kind, on_gpu=on_gpu, ivf_nprobe=nprobe,
                   hnsw_ef_search=hnsw_ef_search, gpu_resources=resources, exact=exact,
                   coarse=coarse)


def _training_sample(vectors: np.ndarray, nlist: int) -> np.ndarray:
    """At most ``IVF_TRAIN_PER_LIST`` points per list for k-means (seeded).

    k-means costs n * nlist * d per iteration: on all of 1M vectors it takes minutes, while
    64 points per centroid place the centroids as well for retrieval and train in seconds.
    """
    limit = IVF_TRAIN_PER_LIST * nlist
    if len(vectors) <= limit:
        return vectors
    picked = np.random.default_rng(0).choice(len(vectors), size=limit, replace=False)
    return vectors[np.sort(picked)]


def fast_bfloat16() -> bool:
    """Whether torch runs bfloat16 matmuls natively here (oneDNN on an AVX-512 or AMX CPU).

    Elsewhere they are emulated, slower than float32, so ``auto`` keeps float32.
    """
    supported = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(supported()) if supported is not None else False
    except RuntimeError:
        return False


def gpu_count() -> int:
    """Number of GPUs faiss can use (0 for faiss-cpu builds)."""
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


def set_threads(threads: int) -> None:
    """Bound FAISS's and torch's threads for the calling thread (OpenMP settings are per thread).

    The serving default is every core (see ``Settings.threads``); lower it when other
    processes need the cores.
    """
    faiss.omp_set_num_threads(threads)
    torch.set_num_threads(threads)
