"""Data parallelism inside one process: a batch split into shards that run side by side on threads.

On a small CPU one batch on n intra-op threads wastes much of the machine (the model's ops are small
and torch splits them poorly); n shards of the batch, each on one thread, run 1.2-1.5x faster on two
cores (benchmarks/README.md). The maths is the single-batch maths:

- the random draws (sampling order, dropout) and the classifier head run once, on the whole batch,
  in the calling thread, so a run consumes the same random numbers as an unsharded one;
- only the equivariant trunk runs per shard; its batch norms take the statistics of the whole batch
  (:func:`moments`: one differentiable all-reduce per norm), and only shard 0 updates the running
  averages;
- each shard's trunk gradients are returned (not accumulated into ``.grad`` concurrently) and summed
  in shard order, so results are reproducible for a shard count; they equal the unsharded ones up to
  float summation order.

Used by :mod:`pcsym.training.train` (``--shards``) for training steps and the norms' re-estimation.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import torch

_local = threading.local()

#: seconds a shard waits for the others at an all-reduce before the step fails (a bug, not a load)
TIMEOUT = 600.0


class ShardError(RuntimeError):
    pass


class _Exchange:
    """Keyed all-reduce of tensors across the n shards of one run: every shard posts its tensor under
    a key and gets the sum of all n, added in shard order (the same bits on every shard)."""

    def __init__(self, n: int):
        self.n = n
        self.cond = threading.Condition()
        self.slots: dict = {}
        self.broken: str | None = None

    def sum(self, rank: int, key, t: torch.Tensor) -> torch.Tensor:
        with self.cond:
            slot = self.slots.setdefault(key, {"parts": [None] * self.n, "taken": 0})
            slot["parts"][rank] = t
            self.cond.notify_all()
            if not self.cond.wait_for(lambda: self.broken or all(p is not None for p in slot["parts"]), TIMEOUT):
                self.broken = f"shard {rank} waited {TIMEOUT:.0f} s for the others at {key}"
                self.cond.notify_all()
            if self.broken:
                raise ShardError(self.broken)
            total = slot["parts"][0]
            for part in slot["parts"][1:]:
                total = total + part
            slot["taken"] += 1
            if slot["taken"] == self.n:
                del self.slots[key]
            return total

    def abort(self, why: str) -> None:
        with self.cond:
            self.broken = self.broken or why
            self.cond.notify_all()


class _Shard:
    """The calling thread's place in a sharded run."""

    def __init__(self, rank: int, exchange: _Exchange):
        self.rank, self.exchange, self.calls = rank, exchange, 0


def current() -> _Shard | None:
    """The shard the calling thread is running, or None outside a sharded run."""
    return getattr(_local, "shard", None)


def updates_running_stats() -> bool:
    """Whether a batch norm called from this thread updates its running averages (shard 0 does)."""
    shard = current()
    return shard is None or shard.rank == 0


class _AllSum(torch.autograd.Function):
    """The sum of a tensor over all shards; its gradient is the sum of the shards' gradients (every
    shard uses the total)."""

    @staticmethod
    def forward(ctx, t: torch.Tensor, shard: _Shard, key):
        ctx.shard, ctx.key = shard, key
        return shard.exchange.sum(shard.rank, ("forward", key), t)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return ctx.shard.exchange.sum(ctx.shard.rank, ("backward", ctx.key), grad.contiguous()), None, None


def moments(x: torch.Tensor, P: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch-norm statistics of the whole batch from this shard's rows ``x`` (rows, C): the mean
    projected by ``P`` (None: zero) and the mean square about it, per channel, in x's dtype. One
    all-reduce of float64 sums (sum x, sum x^2, rows), so the one-pass variance loses nothing."""
    shard = current()
    shard.calls += 1  # every shard runs the same code, so the n-th call is the same norm on each
    xd = x.double()
    c = x.shape[1]
    total = _AllSum.apply(torch.cat([xd.sum(0), xd.pow(2).sum(0), xd.new_full((1,), x.shape[0])]), shard,
                          shard.calls)
    m, m2 = total[:c] / total[-1], total[c:2 * c] / total[-1]
    mean = m @ P.double() if P is not None else torch.zeros_like(m)
    return mean.to(x.dtype), (m2 - 2 * mean * m + mean * mean).to(x.dtype)  # E[(x - mean)^2]


class Shards:
    """n worker threads for sharded steps; use as a context manager (torch at one intra-op thread
    inside it, restored after)."""

    def __init__(self, n: int):
        self.n = max(1, int(n))
        self.pool: ThreadPoolExecutor | None = None

    def __enter__(self) -> "Shards":
        if self.n > 1:
            self._threads = torch.get_num_threads()
            torch.set_num_threads(1)
            self.pool = ThreadPoolExecutor(self.n, thread_name_prefix="pcsym-shard")
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)
            self.pool = None
            torch.set_num_threads(self._threads)

    def run(self, fn, parts: list, exchange: _Exchange, grad: bool) -> list:
        """``fn(part)`` for each part on its own thread as shard i of ``exchange``; the results in
        order. A failing shard stops the others (at their next all-reduce) and its error is raised."""

        def one(rank, part):
            _local.shard = _Shard(rank, exchange)
            try:
                with torch.set_grad_enabled(grad):
                    return fn(part)
            except BaseException as exc:
                exchange.abort(f"shard {rank} failed: {exc}")
                raise
            finally:
                _local.shard = None

        futures = [self.pool.submit(one, r, p) for r, p in enumerate(parts)]
        errors = []
        results = []
        for f in futures:
            try:
                results.append(f.result())
            except BaseException as exc:
                errors.append(exc)
        if errors:  # the first cause, not a neighbour's "stopped by shard i"
            raise next((e for e in errors if not isinstance(e, ShardError)), errors[0])
        return results

    def parts(self, batch: int) -> list[slice]:
        """Contiguous, near-equal slices of a batch (at most one shard per cloud)."""
        n = min(self.n, batch)
        edges = [batch * i // n for i in range(n + 1)]
        return [slice(a, b) for a, b in zip(edges[:-1], edges[1:])]


def _split(slices, *tensors):
    return [tuple(None if t is None else t[s] for t in tensors) for s in slices]


def _trunk(model, shards: Shards, pos, normals, exchange, grad: bool) -> list:
    """Each shard's pooled trunk features; the random part of the sampling order is drawn here, for the
    whole batch (the same numbers an unsharded forward draws), the rest (e.g. FPS) per shard."""
    draw = model.draw_order(pos)
    parts = _split(shards.parts(pos.shape[0]), pos, normals, draw)
    return shards.run(lambda p: model.pooled_features(*model.prepare(p[0], p[1], draw=p[2])), parts, exchange, grad)


def forward(model, shards: Shards, pos: torch.Tensor, normals: torch.Tensor | None):
    """Logits of ``model`` (an EquivariantClassifier) for a batch, its trunk sharded; no gradients
    (the norms' re-estimation)."""
    if shards.pool is None:
        return model(pos, normals)
    with torch.no_grad():
        feats = _trunk(model, shards, pos, normals, _Exchange(len(shards.parts(pos.shape[0]))), False)
        return model.head(torch.cat(feats))


def forward_backward(model, shards: Shards, pos: torch.Tensor, normals: torch.Tensor | None, target: torch.Tensor,
                     loss_fn) -> tuple[torch.Tensor, torch.Tensor]:
    """One training step's forward and backward: (logits, loss), gradients in ``.grad`` as
    ``loss_fn(model(pos, normals), target).backward()`` would leave them (up to summation order)."""
    if shards.pool is None:
        logits = model(pos, normals)
        loss = loss_fn(logits, target)
        loss.backward()
        return logits, loss
    trunk = [p for p in model.blocks.parameters() if p.requires_grad]
    n = len(shards.parts(pos.shape[0]))
    exchange = _Exchange(n)
    feats = _trunk(model, shards, pos, normals, exchange, bool(trunk))
    leaves = [f.detach().requires_grad_(bool(trunk)) for f in feats]
    logits = model.head(torch.cat(leaves))  # dropout and the head's norm: whole batch, this thread
    loss = loss_fn(logits, target)
    loss.backward()
    if trunk:
        grads = shards.run(lambda i: torch.autograd.grad(feats[i], trunk, leaves[i].grad, allow_unused=True),
                           list(range(n)), exchange, True)
        for k, p in enumerate(trunk):
            total = None
            for g in grads:
                if g[k] is not None:
                    total = g[k] if total is None else total + g[k]
            if total is not None:
                p.grad = total if p.grad is None else p.grad + total
    return logits, loss
