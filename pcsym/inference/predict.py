"""Inference on single shapes: one :func:`load_classifier` for every kind of model file.

* ``.npz`` numpy exports — and the shipped models, which ship one — run through
  :mod:`pcsym.inference.runtime` without importing torch or escnn (a cold ``classify`` in about half a second);
* ``.ts`` TorchScript exports run with plain torch;
* anything else is a checkpoint, rebuilt with escnn.

Each gives a :class:`Classifier`: the model config plus ``predict(points, normals, votes)`` (class
probabilities and the "unknown" score, :mod:`pcsym.training.unknown`), averaged over the same seeded
downsampling orders as ``evaluate --votes``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import numpy as np

from .. import seeds
from ..config import MAX_VERTICES, ModelConfig
from ..data.meshes import load_cloud
from ..data.transforms import to_z_up
from ..errors import PcsymError
from ..models.checkpoint import PRETRAINED, export_kind, load_model, resolve_checkpoint
from .runtime import NumpyClassifier, VOTE_ORDERS, energy, neighbour_similarity, softmax


class Classifier:
    """A loaded model of any kind: ``cfg`` (its :class:`~pcsym.config.ModelConfig`), :meth:`predict`
    and its "unknown" detector. ``net(pos, normals, vote)`` takes (1, N, 3) float32 arrays and gives
    (logits, pooled features or None)."""

    def __init__(self, cfg, net: Callable[[np.ndarray, np.ndarray, int], tuple], max_votes: int,
                 unknown_threshold: float | None = None, unknown: dict | None = None, unknown_bank=None):
        self.cfg, self._net, self.max_votes = cfg, net, max_votes
        self.unknown_bank = None
        if unknown is not None and unknown.get("score") == "energy":  # pcsym.training.unknown
            self.unknown_score, self.unknown_threshold = "energy", float(unknown["threshold"])
        elif unknown is not None and unknown_bank is not None:  # neighbour similarity (models before 2026-12-06)
            self.unknown_score, self.unknown_threshold = "neighbour-similarity", float(unknown["threshold"])
            self.unknown_k, self.unknown_bank = int(unknown["k"]), np.asarray(unknown_bank, dtype=np.float32)
        else:  # max probability, calibrated on validation (None: not calibrated)
            self.unknown_score, self.unknown_threshold = "max-probability", unknown_threshold

    @property
    def class_names(self) -> list[str]:
        return list(self.cfg.class_names)

    def predict(self, points: np.ndarray, normals: np.ndarray, votes: int = 1) -> tuple[np.ndarray, float | None]:
        """(class probabilities (C,), "unknown" score or None) of one cloud (N, 3) with its normals,
        both averaged over ``votes`` seeded downsampling orders (vote v: :func:`pcsym.geometry.graph.sampling_order`
        of vote v; models that sample farthest points have one order per cloud, so one vote)."""
        pts = np.asarray(points, dtype=np.float32)[None]
        nrm = np.asarray(normals, dtype=np.float32)[None]
        outs = [self._net(pts, nrm, v) for v in range(min(max(1, votes), self.max_votes))]
        probs = np.mean([softmax(logits)[0] for logits, _ in outs], axis=0)
        if self.unknown_score == "energy":
            score = float(np.mean([energy(logits)[0] for logits, _ in outs]))
        elif self.unknown_bank is not None:
            score = float(np.mean([neighbour_similarity(f, self.unknown_bank, self.unknown_k)[0] for _, f in outs]))
        else:
            score = None if self.unknown_threshold is None else float(probs.max())
        return probs, score

    def probabilities(self, points: np.ndarray, normals: np.ndarray, votes: int = 1) -> np.ndarray:
        """The class probabilities (C,) of :meth:`predict`."""
        return self.predict(points, normals, votes)[0]


def _torch_net(net, pooled: bool):
    """net(pts, nrm, vote) -> (logits, pooled features or None) of a checkpoint's model (``pooled``)
    or a TorchScript export (logits only)."""
    import torch

    def run(pts, nrm, vote):
        with torch.no_grad():
            out = net(torch.as_tensor(pts), torch.as_tensor(nrm), vote=vote, **({"pooled": True} if pooled else {}))
        logits, features = out if pooled else (out, None)
        return logits.float().numpy(), None if features is None else features.float().numpy()

    return run


def max_votes(cfg) -> int:
    """Distinct test-time votes of a model: the seeded random orders, or 1 for farthest-point sampling."""
    return 1 if cfg.sampling == "fps" else VOTE_ORDERS


def file_kind(path: Path) -> str:
    """"numpy" (an .npz export), "torchscript", "onnx" or "checkpoint", by the suffix or, under another
    name, by the contents: an export saved as ``model.bin`` loads as what it is."""
    return {"numpy": "numpy", "TorchScript": "torchscript", "ONNX": "onnx"}.get(export_kind(path), "checkpoint")


#: what ``--model`` takes, for messages
MODEL_FORMATS = (f"a shipped model name ({', '.join(PRETRAINED)}), a checkpoint .pt or run folder, or an "
                 "export: numpy .npz, TorchScript .ts or ONNX .onnx")


class OnnxNet:
    """A pcsym ONNX export run with onnxruntime (the optional extra ``pcsym[onnx]``): its config from the
    export's metadata; the seeded downsampling order applied before the network, as for TorchScript."""

    def __init__(self, path: Path, threads: int = 0):
        try:
            import onnxruntime as ort
        except ImportError:
            raise PcsymError("running an ONNX model needs onnxruntime: pip install 'pcsym[onnx]' (or classify "
                             "with the checkpoint or a numpy/TorchScript export)", path=path) from None
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise PcsymError(f"not a readable ONNX model ({first[:120]})", path=path) from None
        meta = self.session.get_modelmeta().custom_metadata_map.get("pcsym.json")
        if meta is None:
            raise PcsymError("ONNX model without pcsym metadata: only `pcsym export --format onnx` files run "
                             "here", path=path)
        meta = json.loads(meta)
        self.cfg = ModelConfig.from_dict(meta["model_config"])
        self.unknown_threshold = meta.get("unknown_threshold")
        self.unknown = meta.get("unknown")

    def __call__(self, pts: np.ndarray, nrm: np.ndarray, vote: int):
        import torch

        from .export import prepare_inputs

        p, n = prepare_inputs(torch.as_tensor(pts), torch.as_tensor(nrm), self.cfg, vote)
        return self.session.run(None, {"pos": p.numpy(), "normals": n.numpy()})[0], None


def load_classifier(name_or_path: str | os.PathLike, threads: int = 0) -> Classifier:
    """A shipped model name (``so3``, ``o2``), a numpy export, a TorchScript or ONNX export, a checkpoint
    or a run folder, loaded for inference."""
    p = resolve_checkpoint(name_or_path)
    fast = p.with_suffix(".npz") if str(name_or_path) in PRETRAINED else p
    kind = file_kind(fast) if fast.exists() else None
    if kind == "numpy":
        net = NumpyClassifier(fast)
        return Classifier(net.cfg, lambda pts, nrm, vote: net(pts, nrm, vote=vote, pooled=True), max_votes(net.cfg),
                          net.unknown_threshold, net.unknown, net.unknown_bank)
    if kind == "onnx":
        onnx_net = OnnxNet(p, threads)
        return Classifier(onnx_net.cfg, onnx_net, max_votes(onnx_net.cfg), onnx_net.unknown_threshold, onnx_net.unknown)
    import torch

    if threads:
        torch.set_num_threads(threads)
    if kind == "torchscript":
        from .export import ScriptedClassifier  # torch: only for TorchScript files (classify stays torch-free)

        net = ScriptedClassifier(p)
        return Classifier(net.cfg, _torch_net(net, pooled=False), max_votes(net.cfg), net.unknown_threshold, net.unknown)
    try:
        model, ckpt = load_model(p)
    except PcsymError as exc:
        if "not a readable checkpoint" in str(exc) or "not a pcsym checkpoint" in str(exc):
            raise PcsymError(f"not a model pcsym can run: --model takes {MODEL_FORMATS}", path=p) from None
        raise
    unknown = ckpt.get("unknown")
    return Classifier(model.cfg, _torch_net(model, pooled=True), max_votes(model.cfg), ckpt.get("unknown_threshold"),
                      unknown, None if unknown is None or "bank" not in unknown else unknown["bank"].float().numpy())


def read_input(path: str | os.PathLike, points: int, seed: int = 0, max_vertices: int = MAX_VERTICES,
               up_axis: str | None = None, estimated_normals: int = 0):
    """A file's cloud as the model takes it: ``points`` seeded surface samples (or cloud points) with
    normals, in pcsym's z-up convention. For a model trained on estimated normals
    (``estimated_normals`` = P > 0, :attr:`pcsym.config.ModelConfig.estimated_normals`) the normals are
    PCA estimates in a cloud of max(P, points) samples, of which the first ``points`` are kept, as in
    training. Raises PcsymError for a file that cannot be used."""
    pts, nrm = load_cloud(path, n_points=max(points, estimated_normals), rng=seeds.rng(seed),
                          max_vertices=max_vertices, estimate=estimated_normals > 0)
    return to_z_up(pts[:points], nrm[:points], up_axis)


def _read_safely(args) -> tuple:
    """``read_input`` for a worker process: (points, normals, None) or (None, None, error line)."""
    try:
        return (*read_input(*args), None)
    except PcsymError as exc:
        return None, None, str(exc)


def result_row(clf: Classifier, path, probs: np.ndarray, score: float | None, top_k: int, unknown: bool = True) -> dict:
    """A classified input: its top-k classes and, when the model has a calibrated detector (and
    ``unknown`` is on), ``"unknown"``: whether its ``score`` falls below the threshold."""
    top = np.argsort(-probs, kind="stable")[:top_k]
    row = {"file": str(path), "ok": True,
           "top": [{"class": clf.class_names[int(i)], "probability": round(float(probs[i]), 4)} for i in top]}
    if unknown and clf.unknown_threshold is not None and score is not None:
        row.update(unknown=bool(score < clf.unknown_threshold), score=round(score, 4),
                   threshold=round(float(clf.unknown_threshold), 4), unknown_score=clf.unknown_score)
    return row


def classify_file(clf: Classifier, path: str | os.PathLike, top_k: int = 5, votes: int = 1, seed: int = 0,
                  max_vertices: int = MAX_VERTICES, up_axis: str | None = None, unknown: bool = True) -> dict:
    """``{"file", "ok": True, "top": [{"class", "probability"}, ...]}`` for a readable mesh or cloud,
    ``{"file", "ok": False, "error"}`` for one that is not (its one-line reason)."""
    return next(classify_files(clf, [path], top_k, votes, seed, max_vertices, up_axis, unknown=unknown))


def classify_files(clf: Classifier, files, top_k: int = 5, votes: int = 1, seed: int = 0,
                   max_vertices: int = MAX_VERTICES, up_axis: str | None = None, workers: int = 0, unknown: bool = True):
    """Yield :func:`classify_file`'s result for each file, in order, as soon as it is known. With
    ``workers`` > 0 the files are read and sampled in that many processes (the model runs here)."""
    jobs = [(f, clf.cfg.points, seed, max_vertices, up_axis, clf.cfg.estimated_normals) for f in files]
    if workers > 0 and len(jobs) > 1:
        from concurrent.futures import ProcessPoolExecutor

        pool = ProcessPoolExecutor(max_workers=workers)
        inputs = pool.map(_read_safely, jobs, chunksize=1)
    else:
        pool, inputs = None, map(_read_safely, jobs)
    try:
        for (f, *_), (pts, nrm, error) in zip(jobs, inputs):
            if error is None:
                try:
                    yield result_row(clf, f, *clf.predict(pts, nrm, votes), top_k, unknown)
                    continue
                except PcsymError as exc:
                    error = str(exc)
            yield {"file": str(f), "ok": False, "error": error}
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


class ResultLog:
    """A JSON-lines results file: one object per input, flushed as soon as it is written, so an
    interrupted run loses nothing; ``resume`` skips the inputs the file already holds."""

    def __init__(self, path: str | os.PathLike, resume: bool = False, force: bool = False):
        self.path = Path(path)
        self.done: set[str] = set()
        self.failed: set[str] = set()  # inputs the file records as failed
        exists = self.check(self.path, resume, force)
        if exists and resume:
            self._load()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(self.path, "a" if resume else "w", encoding="utf-8")

    @staticmethod
    def check(path: Path, resume: bool, force: bool) -> bool:
        """Refuse a results file that is a folder, or exists without ``resume`` or ``force`` (the one
        overwrite rule); whether it exists (and is not empty)."""
        path = Path(path)
        if path.is_dir():
            raise PcsymError("--out is a directory, expected a .jsonl file", path=path)
        exists = path.exists() and path.stat().st_size > 0
        if exists and not (resume or force):
            raise PcsymError("results file exists; pass --resume to continue it or --force to overwrite it",
                             path=path)
        return exists

    def _load(self) -> None:
        data = self.path.read_bytes()
        keep = data if data.endswith(b"\n") else data[: data.rfind(b"\n") + 1]  # drop a torn last line
        if len(keep) != len(data):
            with open(self.path, "r+b") as fh:
                fh.truncate(len(keep))
        for line in keep.decode("utf-8", errors="replace").splitlines():
            try:
                row = json.loads(line)
                self.done.add(str(row["file"]))
                if not row.get("ok", False):
                    self.failed.add(str(row["file"]))
            except (ValueError, KeyError, TypeError):
                raise PcsymError("results file has a line that is not a pcsym result; not resuming it",
                                 path=self.path) from None

    def write(self, result: dict) -> None:
        self.fh.write(json.dumps(result) + "\n")
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()


def expand_inputs(inputs, extensions) -> list[Path]:
    """Files to classify: each file as given, each directory's supported files (recursively, sorted)."""
    files: list[Path] = []
    for p in map(Path, inputs):
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in extensions)
            if not found:
                raise PcsymError(f"directory contains no supported files ({', '.join(sorted(extensions))})", path=p)
            files += found
        else:
            files.append(p)
    return files
