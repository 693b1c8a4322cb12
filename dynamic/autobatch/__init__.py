"""Autobatching: write the model for ONE example in plain PyTorch, run it over a batch.

    from dynamic.autobatch import autobatch

    @autobatch
    def tree_loss(tree):                      # plain Python for one example: recursion,
        ...                                   # loops, `if`/`while` on tensor values
        return loss

    losses = tree_loss.map(trees)             # list of per-example results (tensors)
    torch.stack(losses).mean().backward()     # ordinary autograd
    tree_loss(trees[0])                       # one example, eagerly (plain PyTorch)

Calls with the same signature (the module or function, its parameters, per-example shapes,
dtype, device, non-tensor arguments, grad mode) across all examples, and within one, run as
one batched call; calls that cannot be batched run alone, still correct, and are counted.

Options (to `autobatch(...)` and per call to `map`):
  policy   "agenda" (DyNet's, the default: it measured faster) or "depth" (TF Fold's)
  fused    dispatch the library's ChildSumCell / NaryCell calls over trees to the fused level
           executor (default True)
  check    run every example alone too and compare values and gradients (MismatchError)
  profile  keep a `Profile` of the last run in ``.profile`` (print it for a table)
  lanes    run alike examples (tensors of equal shapes, equal plain values) as one lane
           group, split when they disagree on a concrete value (default True)
  rowwise  extra nn.Module types to batch as one call whose every tensor argument has the
           batch as dim 0 (by default, a module that is not a known row-wise torch module or
           a library cell is traced op by op)

See docs/autobatch.md for the design, the rules and the measurements.
"""

from __future__ import annotations

import functools
import time

from .check import MismatchError, check_results
from .engine import POLICIES, AutobatchError, run_class
from .profile import Profile, SignatureStats

__all__ = [
    "POLICIES",
    "AutobatchError",
    "Autobatched",
    "MismatchError",
    "Profile",
    "SignatureStats",
    "autobatch",
]

DEFAULT_POLICY = "agenda"
_CACHE_LIMIT = 20000  # call sites, signatures and composites remembered per function: a
# memory bound, not a tuning knob (SST needs a few hundred; a new site costs one plan)


class Autobatched:
    """A per-example function that can also run over a batch (see the module docstring)."""

    def __init__(
        self,
        fn,
        *,
        policy: str = DEFAULT_POLICY,
        fused: bool = True,
        check: bool = False,
        profile: bool = False,
        rowwise: tuple = (),
        lanes: bool = True,
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.policy = policy
        self.fused = fused
        self.check = check
        self.want_profile = profile
        self.rowwise = tuple(rowwise)
        self.lanes = lanes
        self.profile: Profile | None = None
        # signature -> output structure; keeps the first call of a signature from pausing
        # in every later run. Holds references to modules and shared weights, nothing else.
        self._cache: dict = {}

    def __call__(self, *args, **kwargs):
        """The function itself, on one example, eagerly."""
        return self.fn(*args, **kwargs)

    def map(
        self, examples, *, policy=None, fused=None, check=None, profile=None, lanes=None
    ) -> list:
        """``[fn(e) for e in examples]``, batched. Tensors in the results (also inside tuples,
        lists and dicts) are ordinary tensors in the autograd graph."""
        examples = list(examples)
        if not examples:
            return []
        if sum(len(v) for v in self._cache.values()) > _CACHE_LIMIT:
            self._cache.clear()
        want = self.want_profile if profile is None else profile
        prof = Profile() if want else None
        run = run_class()(
            self.fn,
            examples,
            policy=self.policy if policy is None else policy,
            fused=self.fused if fused is None else fused,
            rowwise=self.rowwise,
            cache=self._cache,
            profile=prof,
            lanes=self.lanes if lanes is None else lanes,
        )
        t0 = time.perf_counter()
        results = run.execute()
        if prof is not None:
            prof.total_s = time.perf_counter() - t0
            prof.examples = len(examples)
            self.profile = prof
        if self.check if check is None else check:
            check_results(self.fn, examples, results, run.names())
        return results


def autobatch(fn=None, **options):
    """``@autobatch`` or ``@autobatch(policy=..., ...)``: an `Autobatched` function."""
    if fn is None:
        return lambda f: Autobatched(f, **options)
    return Autobatched(fn, **options)
