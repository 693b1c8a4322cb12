"""What an autobatch run did: per signature, calls / batches / mean batch size / time, and
every call that ran alone with the reason. ``str(profile)`` is a table."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

__all__ = ["Profile", "SignatureStats"]


@dataclass
class SignatureStats:
    """One signature: what it is, how often it was called and how it was batched."""

    name: str
    calls: int = 0
    batches: int = 0
    seconds: float = 0.0  # in its batched calls, gathering the inputs included
    alone: int = 0  # calls that ran one at a time (see Profile.unbatched for why)

    @property
    def mean_batch(self) -> float:
        return self.calls / self.batches if self.batches else 0.0


@dataclass
class Profile:
    """Filled by a run made with ``profile=True`` (see `Autobatched.profile`).

    total_s   wall time of the run; record_s  recording the calls (the user's code itself not
    included); flush_s  in flushes: kernel_s of it in batched calls (the gathers included),
    the rest is scheduling; rounds  flushes; demands  pauses for a concrete value;
    lane_groups  executions that ran several alike examples at once; splits  lane groups
    that split because their examples disagreed on a concrete value.
    """

    signatures: dict = field(default_factory=dict)
    unbatched: Counter = field(default_factory=Counter)  # (function, reason) -> calls
    total_s: float = 0.0
    record_s: float = 0.0
    flush_s: float = 0.0
    kernel_s: float = 0.0
    rounds: int = 0
    demands: int = 0
    lane_groups: int = 0
    splits: int = 0
    examples: int = 0

    def _stats(self, key, name_fn) -> SignatureStats:
        s = self.signatures.get(key)
        if s is None:
            s = self.signatures[key] = SignatureStats(name_fn())
        return s

    def add_batch(self, sig, node, size: int, seconds: float, alone_reason: str | None) -> None:
        s = self._stats(sig, lambda: describe(sig, node))
        s.calls += size
        s.seconds += seconds
        self.kernel_s += seconds
        if alone_reason is None:
            s.batches += 1
        else:
            s.alone += size
            s.batches += size
            self.unbatched[(s.name.split(" ")[0], alone_reason)] += size

    def add_fused(self, group, size: int, levels: int, seconds: float) -> None:
        cell = type(group.key.cell).__name__
        s = self._stats(group.site.sig, lambda: f"{cell} (fused level executor)")
        s.calls += size
        s.batches += 1
        s.seconds += seconds
        self.kernel_s += seconds

    @property
    def scheduling_s(self) -> float:
        return max(self.flush_s - self.kernel_s, 0.0)

    def table(self) -> str:
        """The profile as a fixed-width text table."""
        rows = sorted(self.signatures.values(), key=lambda s: -s.seconds)
        w = max([len(s.name) for s in rows] + [9])
        lines = [
            f"{'signature':<{w}}  {'calls':>7}  {'batches':>7}  {'mean':>7}  {'ms':>8}",
        ]
        for s in rows:
            lines.append(
                f"{s.name:<{w}}  {s.calls:>7}  {s.batches:>7}  {s.mean_batch:>7.1f}  "
                f"{s.seconds * 1e3:>8.1f}"
            )
        lines.append(
            f"{self.examples} examples ({self.lane_groups} lane groups, {self.splits} splits), "
            f"{self.rounds} flushes, {self.demands} value demands; "
            f"total {self.total_s * 1e3:.1f} ms = record {self.record_s * 1e3:.1f} ms + "
            f"flush {self.flush_s * 1e3:.1f} ms (kernels {self.kernel_s * 1e3:.1f}, "
            f"scheduling {self.scheduling_s * 1e3:.1f}) + the user's code"
        )
        if self.unbatched:
            lines.append("ran alone:")
            for (fn, why), n in self.unbatched.most_common():
                lines.append(f"  {n:>6} x {fn}: {why}")
        return "\n".join(lines)

    __str__ = table


def describe(sig, node) -> str:
    """A readable signature: function, rule/layout and the first call's argument shapes."""
    from .engine import name_of

    site = node.site
    metas = [str(m) for m in site.metas]
    if len(metas) > 4:
        metas = metas[:3] + [f"... {len(metas)} tensors"]
    grad = "" if sig[4] else ", no grad"
    return f"{name_of(site.fn)} [{site.rule.name}/{site.mode}] ({', '.join(metas)}){grad}"
