"""Search over one KG's entities as targets, by any served ranking.

Each KG's index holds that KG's L2-normalised joint vectors (float32, on the serving device:
the service's one float32 copy of them) and its key-bias columns (``service.rankings``). A
search for ranking column c returns the keys with the largest ``<q, x> + bias[:, c]``
(cosine: no bias), which for one source is exactly the ranking's order.

``flat`` scans every key with a matrix product and a top-k, on the serving device. On a CPU it
can scan a compressed copy instead (``precision``): bfloat16 (vectors and bias columns, half the
float32 vectors' memory) or int8 (the vectors with a step per key, a quarter; the bias is added
in float32). A flat scan is bound by memory traffic, which the copy halves or quarters, and CPUs
with bfloat16 or VNNI instructions compute on it natively. Its shortlist of k +
``RESCORE_EXTRA`` is rescored in float32, so the scores are exact, and a true neighbour is
missed only if more than ``RESCORE_EXTRA`` others come within the copy's rounding error of it
(on the zh_en checkpoint, at most 0.0023 of a cosine for bfloat16 and 0.0020 for int8; the
serving bench counts the queries whose top 50 differ, none).

``hnsw`` and ``ivf`` are approximate FAISS indexes over the vectors with the bias columns
appended (a second float32 copy, inside FAISS). IVF moves to the GPU when faiss was built with
GPU support and sees one; HNSW has no GPU implementation and stays on the CPU.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Literal

import faiss
import numpy as np
import torch

from mimea.model.similarity import IVF_TRAIN_PER_LIST

logger = logging.getLogger(__name__)

IndexKind = Literal["flat", "hnsw", "ivf"]
Precision = Literal["auto", "float32", "bfloat16", "int8"]
GPU_MAX_K = 2048  # faiss GPU k-selection limit
EXACT_BLOCK = 1024  # queries per scan: bounds the [block, n] score matrix
RESCORE_EXTRA = 64  # shortlist of a compressed scan beyond the k asked for
RESCORE_FLOATS = 1 << 24  # bounds the gathered shortlist vectors (64 MB) of one rescoring step


@dataclass
class KGIndex:
    """One KG's vectors ``[n, d]`` and key-bias columns ``[n, b]``, searchable by ranking."""

    vectors: torch.Tensor
    biases: torch.Tensor
    kind: IndexKind
    coarse: torch.Tensor | None = None  # CPU flat: the compressed copy, scanned first
    steps: torch.Tensor | None = None  # int8 copy: each key's quantisation step
    ann: Any = None  # hnsw / ivf: the FAISS index over [vectors | biases]
    on_gpu: bool = False  # the search runs on a GPU
    hnsw_ef_search: int = 0
    gpu_resources: Any = None

    @property
    def size(self) -> int:
        return len(self.vectors)

    @property
    def precision(self) -> str:
        """What a search scans: the float32 vectors, or their bfloat16 or int8 copy."""
        if self.coarse is None:
            return "float32"
        return "int8" if self.steps is not None else "bfloat16"

    @property
    def nbytes(self) -> int:
        """Memory the index holds: vectors, bias columns, and its compressed copy or FAISS
        index."""
        tensors = [t for t in (self.vectors, self.biases, self.coarse, self.steps)
                   if t is not None]
        ann = faiss.serialize_index(faiss.index_gpu_to_cpu(self.ann) if self.on_gpu else self.ann
                                    ).nbytes if self.ann is not None else 0
        return sum(t.numel() * t.element_size() for t in tensors) + int(ann)

    @property
    def max_k(self) -> int:
        return min(self.size, GPU_MAX_K) if self.on_gpu and self.ann is not None else self.size

    def search(self, queries: torch.Tensor, k: int,
               column: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` best keys for each query by ``<q, x> + biases[:, column]`` (cosine when
        ``column`` is None), best first: ``(cosine [Q, k], ids [Q, k])`` on the CPU. Ids are
        positions in this KG; an approximate index may return -1 (cosine NaN) for missing."""
        k = max(1, min(k, self.max_k))
        if self.ann is not None:
            return self._approximate(queries, k, column)
        queries = queries.to(self.vectors.device, torch.float32)
        top = self._shortlisted if self.coarse is not None else self._exact
        parts = [top(queries[lo:lo + EXACT_BLOCK], k, column)
                 for lo in range(0, len(queries), EXACT_BLOCK)]
        return (torch.cat([c for c, _ in parts]).cpu(), torch.cat([i for _, i in parts]).cpu())

    def rows(self, positions: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``vectors[positions]``; on the CPU by numpy, in one thread: torch gathers in
        parallel, and each parallel step waits for all its threads, which a busy server seldom
        has free at once (such small steps cost more than the scan on 2 loaded cores)."""
        if self.vectors.device.type == "cpu":
            return torch.from_numpy(self.vectors.numpy()[np.asarray(positions)])
        return self.vectors[torch.as_tensor(positions, device=self.vectors.device)]

    def keyed(self, cosine: torch.Tensor, column: int | None,
              ids: torch.Tensor | None = None) -> torch.Tensor:
        """``cosine`` to keys ``ids`` (to every key, in order, when None) plus their bias in
        ``column``: the scores a search ranks by."""
        if column is None:
            return cosine
        bias = self.biases[:, column]
        return cosine + (bias if ids is None else bias[ids])

    def _exact(self, q: torch.Tensor, k: int,
               column: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        cosine = q @ self.vectors.T
        ids = torch.topk(self.keyed(cosine, column), k, dim=1).indices
        return cosine.gather(1, ids), ids

    def _coarse_scores(self, q: torch.Tensor, column: int | None) -> torch.Tensor:
        """Every key's score ``[Q, n]`` from the compressed copy: bfloat16 carries the bias
        columns; int8 dot products are scaled back and the bias is added in float32."""
        assert self.coarse is not None
        if self.steps is None:
            return augment(q, self.biases.shape[1], column, torch.bfloat16) @ self.coarse.T
        codes, step = quantise(q)
        dots = torch._int_mm(codes, self.coarse.T)
        if column is None:
            return dots * self.steps  # the query's step changes no order
        return torch.addcmul(self.biases[:, column], dots, self.steps, value=step)

    def _shortlisted(self, q: torch.Tensor, k: int,
                     column: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Scan the compressed copy for k + RESCORE_EXTRA keys, then rescore them in
        float32."""
        shortlist = torch.topk(self._coarse_scores(q, column),
                               min(k + RESCORE_EXTRA, self.size), dim=1).indices
        step = max(1, RESCORE_FLOATS // (shortlist.shape[1] * self.vectors.shape[1]))
        cosine = torch.cat([torch.einsum("bd,bsd->bs", q[lo:lo + step],
                                         self.rows(shortlist[lo:lo + step]))
                            for lo in range(0, len(q), step)])
        best = torch.topk(self.keyed(cosine, column, shortlist), k, dim=1).indices
        return cosine.gather(1, best), shortlist.gather(1, best)

    def _approximate(self, queries: torch.Tensor, k: int,
                     column: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.kind == "hnsw":
            self.ann.hnsw.efSearch = max(self.hnsw_ef_search, k)
        q = augment(queries.to("cpu", torch.float32), self.biases.shape[1], column)
        keyed, ids = self.ann.search(np.ascontiguousarray(q.numpy()), k)
        ids_t = torch.from_numpy(ids)
        cosine = torch.from_numpy(keyed)
        if column is not None:
            cosine = cosine - self.biases[:, column].cpu()[ids_t.clamp(min=0)]
        return cosine.masked_fill(ids_t < 0, math.nan), ids_t


def augment(queries: torch.Tensor, columns: int, column: int | None,
            dtype: torch.dtype | None = None) -> torch.Tensor:
    """Queries ``[Q, d + columns]`` (in ``dtype``): 1 in the bias column of their ranking, 0 in
    the others."""
    dim = queries.shape[1]
    out = queries.new_empty(len(queries), dim + columns, dtype=dtype or queries.dtype)
    out[:, :dim] = queries
    out[:, dim:] = 0.0
    if column is not None:
        out[:, dim + column] = 1.0
    return out


def quantise(x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """int8 codes of CPU rows ``x`` with one step for all of them (``x ~ step * codes``), in
    numpy: one thread, as for :meth:`KGIndex.rows`."""
    values = x.numpy()
    step = float(np.abs(values).max()) / 127 or 1.0
    return torch.from_numpy(np.rint(values / step).astype(np.int8)), step


def _int8_copy(vectors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 codes of ``vectors`` with a step per row, and the steps (float32)."""
    steps = vectors.abs().amax(dim=1).clamp_min(1e-12) / 127
    codes = torch.empty(vectors.shape, dtype=torch.int8)
    for lo in range(0, len(vectors), EXACT_BLOCK):  # bounds the float32 temporaries
        part = vectors[lo:lo + EXACT_BLOCK] / steps[lo:lo + EXACT_BLOCK, None]
        codes[lo:lo + EXACT_BLOCK] = part.round_()
    return codes, steps


def build_index(vectors: torch.Tensor, biases: torch.Tensor, *, kind: IndexKind = "flat",
                precision: Precision = "float32", use_gpu: bool = False, hnsw_m: int = 32,
                hnsw_ef_search: int = 128, ivf_nlist: int | None = None,
                ivf_nprobe: int = 16) -> KGIndex:
    """An index over ``vectors [n, d]`` (L2-normalised, on the serving device) with key-bias
    columns ``biases [n, b]``.

    ``precision`` is that of a CPU flat scan; ``auto`` takes the fastest copy the CPU runs
    natively (:func:`native_precision`). Other indexes ignore it.
    """
    biases = biases.to(vectors.device, torch.float32)
    if kind == "flat":
        on_cpu = vectors.device.type == "cpu"
        if precision == "auto":
            precision = native_precision() if on_cpu else "float32"
        coarse = steps = None
        if precision == "bfloat16" and on_cpu:
            coarse = torch.empty(len(vectors), vectors.shape[1] + biases.shape[1],
                                 dtype=torch.bfloat16)
            coarse[:, :vectors.shape[1]] = vectors
            coarse[:, vectors.shape[1]:] = biases
        elif precision == "int8" and on_cpu:
            coarse, steps = _int8_copy(vectors)
        return KGIndex(vectors=vectors, biases=biases, kind=kind, coarse=coarse, steps=steps,
                       on_gpu=not on_cpu)
    keys = torch.cat([vectors.cpu(), biases.cpu()], dim=1).numpy()
    n, dim = keys.shape
    if kind == "hnsw":
        ann: Any = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        ann.hnsw.efConstruction = max(40, 2 * hnsw_m)
        ann.hnsw.efSearch = hnsw_ef_search
    elif kind == "ivf":
        # k-means wants roughly 39+ points per centroid; small graphs get few lists.
        nlist = max(1, min(ivf_nlist or int(4 * math.sqrt(n)), n // 39 or 1))
        quantizer = faiss.IndexFlatIP(dim)
        ann = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        # k-means on a seeded subsample: on every key of 1M it takes minutes, and 64 keys a
        # list place the centroids as well for retrieval.
        ann.cp.max_points_per_centroid = IVF_TRAIN_PER_LIST
        ann.train(keys)
        ann.nprobe = min(nlist, ivf_nprobe)
    else:  # pragma: no cover - Settings restricts the choice
        raise ValueError(f"unknown index kind {kind!r}")
    ann.add(keys)
    resources = None
    if use_gpu and kind == "ivf" and gpu_count() > 0:
        resources = faiss.StandardGpuResources()
        ann = faiss.index_cpu_to_gpu(resources, 0, ann)
    elif use_gpu and kind == "hnsw":
        logger.info("HNSW has no FAISS GPU implementation; the index stays on the CPU")
    return KGIndex(vectors=vectors, biases=biases, kind=kind, ann=ann,
                   on_gpu=resources is not None, hnsw_ef_search=hnsw_ef_search,
                   gpu_resources=resources)


def native_precision() -> Precision:
    """The CPU flat scan ``auto`` picks: int8 where the CPU has VNNI dot products, else
    bfloat16 where torch runs it natively, else float32."""
    if fast_int8():
        return "int8"
    return "bfloat16" if fast_bfloat16() else "float32"


def fast_int8() -> bool:
    """Whether torch has int8 matmuls with VNNI dot products here (AVX-512 VNNI or AMX)."""
    supported = getattr(torch.cpu, "_is_vnni_supported", None)
    return hasattr(torch, "_int_mm") and supported is not None and bool(supported())


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
