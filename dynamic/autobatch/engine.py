"""The engine: run a per-example function over many examples, batching their calls.

Each example runs in its own greenlet. Calls of batchable modules and torch functions do not
compute anything: they record a `Node` and hand back `Lazy` outputs at once, so an example
written as a recursion over its tree records its whole graph without ever pausing. An example
pauses (switches back to the scheduler) only when it needs a concrete value: ``bool(t)``,
``t.item()``, or the output structure of a signature seen for the first time. When every
example is paused or finished, the scheduler *flushes*: it runs every pending node, grouped
by signature into batched calls, in an order set by the policy, then resumes the paused
examples.

Why greenlets: the user's code stays plain Python (no ``yield``/``await``), a switch costs
~0.5 us, and an example that never asks for a value never switches at all; threads would cost
a context switch and a lock per pause, and a pure lazy graph (DyNet-style) cannot run ``if`` on
a tensor. See docs/autobatch.md.

The recording path is the hot loop (~20k calls per 512 SST trees), so everything that depends
only on a call's *site* - the function, the argument structure, the per-example shapes, grad
mode - is computed once and cached in a `Site`: the rule, the layout, the signature, the
output shapes. A recorded call then costs a dictionary lookup and a few attribute writes.

Policies (which ready group to run next):
  "agenda"  DyNet's: the signature whose pending nodes have the lowest average depth, all its
            ready nodes at once (ops that usually come late wait to be batched together).
  "depth"   TensorFlow Fold's: all nodes of one depth (longest path from the inputs), by
            signature, depth after depth.
"""

from __future__ import annotations

import operator
import time
import traceback
from functools import partial

import torch
from greenlet import greenlet
from torch import Tensor

from . import fused, native, state, values
from .fused import FuseKey, Fuser, Group, site_key
from .gather import FLAT, STACK
from .lanes import (
    INPUT,
    Split,
    group_example,
    lane_groups,
    member_results,
    stacked_rows,
    stored_group,
)
from .nodes import Node, Site
from .rules import ELEMENTWISE, VMAP, VMAP_RULE, Cat0, function_rule, module_rule
from .spec import LEAF, SEQ, flatten_call, flatten_out, rebuild, unflatten_out
from .values import (
    _IMMUTABLE,
    Lazy,
    Meta,
    _row_alias,
    alias_row,
    alias_rows,
    alias_squeeze0,
    alias_unsqueeze0,
    meta_of,
    tensor_meta,
)

__all__ = ["POLICIES", "AutobatchError", "Node", "Run", "Site", "run_class"]

POLICIES = ("agenda", "depth")
_CAT = {torch.cat, torch.concat, torch.concatenate}
_STACK = {torch.stack}
_TORCH_STACK, _TORCH_CAT = state._torch_stack, state._torch_cat  # (torch.stack is hooked in runs)
_GETITEM = {operator.getitem, Tensor.__getitem__}
_UNSQUEEZE = {torch.unsqueeze, Tensor.unsqueeze}
_SQUEEZE = {torch.squeeze, Tensor.squeeze}
_POS = [(tuple([LEAF] * n), None) for n in range(9)]  # specs of all-tensor positional calls
_grad_enabled = torch.is_grad_enabled


class AutobatchError(RuntimeError):
    """An example failed; ``example`` is its index in the list given to `map`."""

    def __init__(self, message: str, example: int | None = None) -> None:
        super().__init__(message)
        self.example = example


def _where(exc: BaseException) -> str:
    """' (at file:line)' of the innermost frame outside torch and this package."""
    for f in reversed(traceback.extract_tb(exc.__traceback__)):
        path = f.filename.replace("\\", "/")
        if "/torch/" not in path and "/dynamic/autobatch/" not in path and "greenlet" not in path:
            return f" (at {f.filename}:{f.lineno})"
    return ""


def name_of(fn) -> str:
    """A short readable name of a module or function."""
    if isinstance(fn, torch.nn.Module):
        return type(fn).__name__
    name = getattr(fn, "__name__", None) or repr(fn)
    qual = getattr(fn, "__qualname__", "") or ""
    if qual.startswith(("TensorBase.", "_TensorBase.", "Tensor.")):
        return f"Tensor.{name}"
    return name


class Run:
    """One `map` call: the examples' greenlets, the pending graph and the scheduler."""

    # The C extension's hooks (`run_class`): (torch.stack's, a fusable cell class's __call__,
    # more (owner, name, value)); None: state.py's Python ones
    native_hooks = None
    native = None  # the C extension module (its flush and teardown helpers), for a native run

    def __init__(self, fn, examples, *, policy, fused, rowwise, cache, profile, lanes=True):
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        self.fn = fn
        self.examples = list(examples)
        self.policy = policy
        self.rowwise = tuple(rowwise)
        self.outinfo = cache.setdefault("outinfo", {})  # signature -> outputs' structure
        self.sites = cache.setdefault("sites", {})
        self.composites = cache.setdefault("composites", {})
        self.cell_memo: dict = {}  # a cell call's arguments -> (site, the arguments)
        self.cat_sites = cache.setdefault("cat_sites", {})  # cat/stack on dim 0 -> site
        self.profile = profile
        self.fuser = Fuser(self) if fused else None
        self.lanes = lanes
        self.current = None  # index of the task running now (None: the scheduler)
        self.live = 0  # tasks started and neither finished nor abandoned
        self.count = 1  # how many examples the running task stands for
        self.pending: list = []  # recorded nodes not yet run (a fused group holds its members)
        self.done: list = []
        self.dissolved: list = []  # members of groups turned back into ordinary nodes
        self.blocked: list = []
        self.tmeta: dict = {}
        self.units: dict = {}
        self.eager: dict = {}  # signature -> why its batches run one call at a time
        self.modules: list = []  # every module called, for check mode's parameter names
        # module classes called in earlier runs of this function: their __call__ goes
        # straight to `module_call` while this run is active (see state.py)
        self.called_types = cache.setdefault("module_types", set())
        self.fast_classes = tuple(self.called_types)
        self.cell_classes = () if self.fuser is None else self.fuser.cells  # (exact types)

    def names(self) -> dict:
        """id(parameter) -> "Module.name" of the modules the examples called (check mode's
        messages name a parameter whose gradient differs)."""
        out: dict = {}
        for module in self.modules:
            for n, p in module.named_parameters():
                out.setdefault(id(p), f"{type(module).__name__}.{n}")
        return out

    # ------------------------------------------------------------------------------------
    # Driving the examples
    # ------------------------------------------------------------------------------------
    def execute(self) -> list:
        """Run every example; return their results with tensors in place of lazy values."""
        n = len(self.examples)
        self.results: list = [None] * n
        self.finished: list = []  # (task, what its function returned)
        self.tasks, self.members, self.grad = [], [], []
        with state.activated(self):
            try:
                self.main = greenlet.getcurrent()
                rows = stacked_rows(self.examples) if self.lanes and n > 1 else None
                if rows is not None:  # alike tensors (rows of a data tensor): one group
                    self._new_task(list(range(n)), rows)
                else:
                    for members in (
                        lane_groups(self.examples) if self.lanes else ([i] for i in range(n))
                    ):
                        self._new_task(members)
                self.runnable = list(range(len(self.tasks)))
                while self.runnable:
                    i = 0
                    while i < len(self.runnable):  # a split appends its parts here
                        self._step(self.runnable[i])
                        i += 1
                    self.runnable, self.blocked = self.blocked, []
                    self._flush()
                for t, out in self.finished:
                    members = self.members[t]
                    for m, r in zip(members, member_results(out, len(members)), strict=True):
                        self.results[m] = r
                return self.results
            finally:
                self._teardown()

    def _new_task(self, members: list, ex=None) -> int:
        """A greenlet for one example, or for a lane group of alike examples (`ex`: the
        group's example if it is already made)."""
        if ex is None:
            ex = (
                self.examples[members[0]]
                if len(members) == 1
                else group_example(self.examples, members)
            )
        self.tasks.append(greenlet(partial(self.fn, ex)))
        self.live += 1
        self.members.append(members)
        self.grad.append(_grad_enabled())
        if self.profile is not None and len(members) > 1:
            self.profile.lane_groups += 1
        return len(self.tasks) - 1

    def _step(self, t: int) -> None:
        task = self.tasks[t]
        members = self.members[t]
        outer = _grad_enabled()
        if self.grad[t] != outer:
            torch.set_grad_enabled(self.grad[t])
        self.current, self.count = t, len(members)
        try:
            out = task.switch()
        except AutobatchError:
            raise
        except BaseException as e:
            if len(members) > 1:  # find the example: each one alone
                out = Split([[k] for k in range(len(members))])
            else:
                i = members[0]
                raise AutobatchError(
                    f"example {i}: {type(e).__name__}: {e}{_where(e)}", example=i
                ) from e
        finally:
            self.current = None
            self.grad[t] = _grad_enabled()
            if self.grad[t] != outer:
                torch.set_grad_enabled(outer)
        if type(out) is Split:
            self.live -= 1
            self._split(t, out)
        elif task.dead:
            self.live -= 1
            self.finished.append((t, out))

    def _split(self, t: int, split: Split) -> None:
        """Abandon a lane group's execution; its parts start again from the beginning."""
        task = self.tasks[t]
        if not task.dead:
            _kill(task)
        if self.profile is not None:
            self.profile.splits += 1
        for part in split.parts:
            self.runnable.append(self._new_task([self.members[t][k] for k in part]))

    def block(self) -> None:
        """Pause the running task until the next flush has run every pending node."""
        t, count = self.current, self.count
        self.blocked.append(t)
        self.main.switch()
        self.current, self.count = t, count

    def demand(self, lz: Lazy) -> Tensor:
        """The concrete value of `lz` (pauses this task if it is not computed yet); for a
        lane group's value, its examples' values stacked."""
        if not _computed(lz):
            if self.profile is not None:
                self.profile.demands += 1
            self.block()
        return lz.value()

    def concrete(self, lz: Lazy, convert):
        """A Python value of `lz` (bool, float, item, ...). A lane group whose examples
        disagree splits here: this execution ends and each part starts again."""
        v = self.demand(lz)
        if lz.count == 1:
            return convert(v)
        py = _PYTHON.get(convert)
        if py is not None and (v.dim() == 1 or convert is Tensor.tolist):
            # One tolist() for the whole group instead of G conversions (0-d values only:
            # bool([x]) is not bool(tensor([x])))
            raw = v.tolist()
            if raw.count(raw[0]) == len(raw):  # equal values convert equally: one call
                return py(raw[0])
            per = [py(x) for x in raw]
        else:
            per = [convert(v[k]) for k in range(lz.count)]
        try:
            if per.count(per[0]) == len(per):  # the common case: the group agrees
                return per[0]
        except (TypeError, RuntimeError, ValueError):  # values whose == is not a bool
            pass
        parts: dict = {}
        try:
            for k, x in enumerate(per):
                parts.setdefault(_hashable(x), []).append(k)
        except TypeError:  # values that cannot be compared: every example on its own
            parts = {k: [k] for k in range(lz.count)}
        if len(parts) == 1:
            return per[0]
        self.main.switch(Split(list(parts.values())))
        raise RuntimeError("autobatch: a split lane group was resumed (please report)")

    def _teardown(self) -> None:
        # Break the node <-> value and producer <-> user cycles, and the node -> argument
        # links, so the whole recorded graph is freed by reference counting right here: the
        # collector is resumed next, and a young generation of ~10^5 live objects would cost
        # it ~20 ms to scan (measured).
        for nodes in (self.done, self.pending, self.dissolved):
            for node in nodes:
                node.users = node.outs = node.leaves = node.group = None
        if self.fuser is not None:  # members: their group holds every link they have
            for g in self.fuser.groups:
                g.clear(self.native)
            self.fuser.groups = []
            self.fuser.open = {}
        self.finished = []
        for task in getattr(self, "tasks", ()):
            if task and not task.dead:
                _kill(task)
        self.pending = self.done = self.tasks = self.dissolved = []
        self.tmeta.clear()
        self.units.clear()
        self.cell_memo.clear()
        if self.native is not None:
            self.clear_memo()  # (the C base's recent memo entries)

    # ------------------------------------------------------------------------------------
    # Recording
    # ------------------------------------------------------------------------------------
    def _unit(self, module) -> tuple:
        """(module, its rule, whether its calls may fuse), made at its first call in a run."""
        entry = self.units.get(id(module))
        if entry is None or entry[0] is not module:
            rule = module_rule(module, self.rowwise)
            cell = self.fuser is not None and self.fuser.fusable(module)
            entry = self.units[id(module)] = (module, rule, cell)
            self.modules.append(module)
            self.called_types.add(type(module))
        return entry

    def module_call(self, module, args, kwargs):
        """nn.Module.__call__ inside an example: one node, or the forward traced op by op."""
        entry = self.units.get(id(module))
        if entry is None or entry[0] is not module:
            entry = self._unit(module)
        if entry[2] and not kwargs and len(args) == 4 and self.count == 1:
            return self.cell_call(module, entry[1], args)
        rule = entry[1]
        if rule is None:
            return state.call_module(module, args, kwargs)
        return self.record(module, rule, args, kwargs, module.training)

    def function_call(self, func, args, kwargs):
        """A torch function, tensor method or operator on a lazy value."""
        special = _SPECIAL.get(func)
        if special is not None:
            out = special(self, func, args, kwargs)
            if out is not None:
                return out
        return self.record(func, function_rule(func), args, kwargs)

    def meta(self, leaf):
        if type(leaf) is Lazy:
            return leaf.meta
        e = self.tmeta.get(id(leaf))
        if e is not None and e[0] is leaf:
            return e[1]
        m = tensor_meta(leaf)
        self.tmeta[id(leaf)] = (leaf, m)
        return m

    def record(self, fn, rule, args, kwargs, training=None):
        """Record one call of the running example; return its lazy outputs."""
        prof = self.profile
        t0 = time.perf_counter() if prof is not None else 0.0
        found = self._site_of(fn, rule, args, kwargs, training)
        if type(found) is str:
            return self.alone(fn, args, kwargs, found)
        site, leaves = found
        if self.count != 1 and self.live == 1 and not self.pending and not self._open_groups():
            return self._direct(site, leaves)
        if prof is not None:
            prof.record_s += time.perf_counter() - t0
        return self._record_at(site, leaves)

    def _record_at(self, site: Site, leaves):
        """A node for a call at a known site; its lazy outputs (pauses to learn them the first
        time its signature is seen)."""
        prof = self.profile
        t0 = time.perf_counter() if prof is not None else 0.0
        node = Node()
        node.site = site
        node.leaves = leaves
        node.example = self.current
        node.count = count = self.count
        node.users = []
        node.group = None
        node.outs = None
        self._link(node, leaves)
        self.pending.append(node)
        if site.outs is None:
            if prof is not None:
                prof.record_s += time.perf_counter() - t0
            self.block()  # first call of this signature: its output structure is learnt by running
            self._learn_site(site)
            return unflatten_out(site.ospec, node.outs)
        if count == 1:
            outs = node.outs = [Lazy(node, j, m) for j, m in enumerate(site.outs)]
        else:
            outs = node.outs = [Lazy(node, j, m, count) for j, m in enumerate(site.outs)]
        if prof is not None:
            prof.record_s += time.perf_counter() - t0
        single = site.single
        if single is True:
            return outs[0]
        if single is False:
            return tuple(outs)
        return unflatten_out(site.ospec, outs)

    def _open_groups(self) -> bool:
        return self.fuser is not None and bool(self.fuser.open)

    def cell_call(self, module, rule, args):
        """A library cell called with (x, child_h, child_c, mask): a member of the cell's
        fused group if it is fusable (see fused.py), else an ordinary call. (`rule`: the
        module's, or None when state.py's shortcut for fusable cell classes calls.)"""
        # The site and how the call may fuse, memoized for this run by the lazy arguments'
        # metas and the plain tensors' identities (the memo keeps those tensors alive: an id
        # is never reused meanwhile)
        t0 = time.perf_counter() if self.profile is not None else 0.0
        x, ch, cc, mask = args
        memo_key = (
            module,
            x.meta if type(x) is Lazy else id(x),
            ch.meta if type(ch) is Lazy else id(ch),
            cc.meta if type(cc) is Lazy else id(cc),
            id(mask) if type(mask) is not Lazy else mask.meta,
            _grad_enabled(),
            module.training,
        )
        memo = self.cell_memo.get(memo_key)
        if memo is None:
            if rule is None:
                rule = self._unit(module)[1]
            found = self._site_of(module, rule, args, None, module.training)
            if type(found) is str:
                return self.alone(module, args, {}, found)
            site = found[0]
            if site.outs is None:  # (a site learns its outputs once; then it is final)
                return self._record_at(site, args)
            memo = self.cell_memo[memo_key] = (site, args, self.fuser.kind(site, args))
        site = memo[0]
        if memo[2]:
            out = self.fuser.add(self, site, args, memo[2])
            if out is not None:
                if self.profile is not None:
                    self.profile.record_s += time.perf_counter() - t0
                return out
        return self._record_at(site, args)

    def _direct(self, site: Site, leaves):
        """A lone lane group's call, run at once: no other task is alive and nothing is
        pending, so no call could join its batch, and its G examples already make one (no
        node kept, no pause, no greenlet switch)."""
        node = Node()
        node.site = site
        node.leaves = leaves
        node.example = t = self.current
        node.count = self.count
        node.outs = None
        outs = None
        self.current = None  # the batched call itself is not recorded
        try:
            if site.outs is not None and self.profile is None and site.sig not in self.eager:
                outs = self._run_direct(node)  # the lean path; None: the general one decides
            if outs is None:
                self._execute([node])
                outs = node.outs
                for lz in outs:
                    lz.node = INPUT  # computed: nothing links to the node (no cycle)
        finally:
            self.current = t
        single = site.single
        if single is True:
            return outs[0]
        if single is False:
            return tuple(outs)
        return unflatten_out(site.ospec, outs)

    def _run_direct(self, node: Node):
        """`_execute` of a one-node batch whose outputs are known, minus its bookkeeping:
        the rule's call, the row check, the values. None if the call failed or its rows are
        not what the rule promised (the general path then runs it and records why)."""
        site = node.site
        count = node.count
        try:
            outs, _, layouts = site.rule.run(site.fn, site.spec, [node], site.mode)
        except AutobatchError:
            raise
        except Exception:
            return None
        if len(outs) != len(site.outs):
            return None
        values = []
        for j, (t, layout, m) in enumerate(zip(outs, layouts, site.outs, strict=True)):
            if layout == FLAT:
                if t.dim() == 0 or t.shape[0] != site.rows * count or t.shape[1:] != m.shape[1:]:
                    return None
                lz = Lazy(INPUT, j, m, count)
            else:
                if t.dim() == 0 or t.shape[0] != count or t.shape[1:] != m.shape:
                    return None
                lz = Lazy(INPUT, j, m, count)
                lz.rows = None
            lz.src = t
            values.append(lz)
        return values

    def _site_of(self, fn, rule, args, kwargs, training):
        """(site, tensor leaves) of a call, or the reason why it must run alone."""
        if not kwargs and len(args) < 9 and _all_tensors(args):
            # All positional tensors: the spec is canonical, its key the argument count
            # (a tuple's hash is not cached, an int's is free).
            leaves, skey = args, len(args)
        else:
            if kwargs.get("inplace") is True or kwargs.get("out") is not None:
                raise TypeError(_IMMUTABLE.format(f"{name_of(fn)}(inplace=True / out=)"))
            leaves = []
            skey = flatten_call(args, kwargs, leaves)
            if not leaves:
                return "no tensor arguments"
        key = (fn, skey, self._metas(leaves), _grad_enabled(), training)
        if self.count != 1:
            key += ("lanes",)  # a lane group's call: rules that need one example each differ
        if rule.shared:
            key += (tuple([_shared_key(leaves, i) for i in rule.shared]),)
        try:
            site = self.sites.get(key)
        except TypeError:
            return "an argument is not hashable"
        if site is None:
            site = self._new_site(key, rule, leaves)
            if site is None:
                return f"{rule.name} rule: these shapes do not batch"
        return site, leaves

    def _metas(self, leaves) -> tuple:
        tm = self.tmeta
        metas = []
        for a in leaves:
            if type(a) is Lazy:
                metas.append(a.meta)
            else:
                e = tm.get(id(a))
                metas.append(e[1] if e is not None and e[0] is a else self.meta(a))
        return tuple(metas)

    def _new_site(self, key, rule, leaves) -> Site | None:
        fn, spec, metas, grad, training = key[:5]
        if type(spec) is int:  # the canonical spec of an all-tensor positional call
            spec = _POS[spec]
        plan = rule.plan(fn, spec, leaves, list(metas))
        if plan is None:
            return None
        mode, rows, keys, skey = plan
        if mode == VMAP or ("lanes" in key and isinstance(rule, Cat0)):
            rule, mode, keys, skey = VMAP_RULE, STACK, tuple(metas), None
        elif mode == FLAT and "lanes" in key and rule is ELEMENTWISE:
            # A lane group's values are stored [G, *shape]: stacked, an elementwise op needs
            # no reshape (a view and an autograd node each way) of every argument
            mode, rows, keys = STACK, None, tuple(metas)
        site = Site()
        site.fn, site.rule, site.spec, site.metas, site.mode, site.rows = (
            fn,
            rule,
            spec,
            metas,
            mode,
            rows,
        )
        site.sig = (fn, mode, spec if skey is None else skey, keys, grad, training)
        site.outs = site.ospec = site.single = None
        site.fuse = None if "lanes" in key else site_key(site)
        self._learn_site(site)
        self.sites[key] = site
        return site

    def _learn_site(self, site: Site) -> None:
        """Fill a site's output shapes once its signature's output structure is known."""
        if site.outs is not None:
            return
        info = self.outinfo.get(site.sig)
        if info is None:
            return
        site.ospec = info[0]
        # How to hand the outputs back: True one tensor, False a flat tuple, None the spec.
        site.single = True if info[0] is LEAF else False if _flat_tuple(info[0]) else None
        outs = []
        for layout, m in info[1]:
            if layout == FLAT:
                m = meta_of((site.rows, *m.shape), m.dtype, m.device)
            outs.append(m)
        site.outs = outs

    def _link(self, node: Node, leaves) -> None:
        depth = 0
        waiting = 0
        for x in leaves:
            if type(x) is not Lazy:
                continue
            if x.parts is None:
                p = x.node
                if p.depth > depth:
                    depth = p.depth
                if x.src is None:
                    g = p.group
                    if g is None:
                        p.users.append(node)
                        waiting += 1
                    elif g.last is not node:  # a fused member's output: wait on its group once
                        g.last = node
                        g.users.append(node)
                        waiting += 1
                continue
            d, w = self._link_nested(node, x)  # a composite's or alias's parts
            depth = d if d > depth else depth
            waiting += w
        node.depth = depth + 1
        node.waiting = waiting

    @staticmethod
    def _link_nested(node: Node, x: Lazy) -> tuple[int, int]:
        """(depth, pending inputs) of a composite: its parts are linked one by one."""
        depth = waiting = 0
        for base in x.parts[2]:
            if type(base) is not Lazy:
                continue
            for b in (base,) if base.parts is None else _bases(base):
                p = b.node
                if p.depth > depth:
                    depth = p.depth
                if b.src is None:
                    g = p.group
                    if g is None:
                        p.users.append(node)
                        waiting += 1
                    elif g.last is not node:
                        g.last = node
                        g.users.append(node)
                        waiting += 1
        return depth, waiting

    row_alias = staticmethod(_row_alias)  # x[j], x[a:b] of a lazy x (values._getitem asks)

    def compose_call(self, func, args, kwargs):
        """``torch.stack`` / ``torch.cat`` called inside an example (state.py's shortcut): what
        ``Lazy.__torch_function__`` does with it, without PyTorch's dispatch."""
        if not kwargs and len(args) == 2:
            out = self.compose(func, args[0], args[1])
            if type(out) is Lazy:
                return out
        parts = args[0] if args else kwargs.get("tensors")
        if (type(parts) is list or type(parts) is tuple) and any(type(p) is Lazy for p in parts):
            return self.function_call(func, args, kwargs)
        return func(*args, **kwargs)  # no lazy part: PyTorch's (its errors included)

    def compose(self, func, parts, dim):
        """``func(parts, dim)`` (torch.stack / torch.cat) of lazy parts of ONE meta: the
        composite; False if such parts make no composite (dim 0: a call); None if the parts
        are not of that kind (the general `_composite` decides)."""
        if type(parts) is not list or not parts:
            return None
        p0 = parts[0]
        if type(p0) is not Lazy:
            return None
        m0 = p0.meta
        for p in parts:
            if type(p) is not Lazy or p.meta is not m0:
                return None
        entry = self.composites.get((func, dim, m0, len(parts)))
        if entry is None:
            entry = _composite_shape(func is _TORCH_STACK, dim, (m0,) * len(parts))
            self.composites[(func, dim, m0, len(parts))] = entry
        if entry is False:
            return False
        out = Lazy(None, 0, entry[1], self.count)
        out.parts = (entry[0], entry[2], tuple(parts))
        return out

    def _cat0(self, func, args, kwargs, dim):
        """torch.cat / torch.stack along dim 0 of lazy parts of one meta: its site by (func,
        meta, count, grad mode) instead of the generic key over every part (None: the
        generic record decides)."""
        if dim != 0 or self.count != 1:
            return None
        parts = args[0]
        key = (func, parts[0].meta, len(parts), _grad_enabled())
        site = self.cat_sites.get(key)
        if site is None:
            found = self._site_of(func, function_rule(func), args, kwargs, None)
            if type(found) is str:
                return None
            site = found[0]
            if site.outs is None:
                return self._record_at(site, found[1])
            self.cat_sites[key] = site
        return self._record_at(site, list(parts))

    def _composite(self, func, args, kwargs):
        """torch.stack / torch.cat of per-example values along a non-batch dim: no node; the
        consumer gathers the parts. None when it must be a call (dim 0, dtypes differ...)."""
        n = len(args)
        if n == 0 or n > 2 or (kwargs and (len(kwargs) > 1 or "dim" not in kwargs)):
            return None
        parts = args[0]
        if type(parts) is not list and type(parts) is not tuple or not parts:
            return None
        dim = args[1] if n == 2 else kwargs.get("dim", 0)
        if type(parts) is list:
            out = self.compose(func, parts, dim)  # lazy parts of one meta
            if out is not None:  # False: along dim 0, one Cat0 call (a tree's node states)
                return self._cat0(func, args, kwargs, dim) if out is False else out
        return self._composite_general(func, parts, dim)

    def _composite_general(self, func, parts, dim):
        """`_composite` for parts of several metas, or plain tensors among them."""
        metas = []
        for p in parts:
            if type(p) is Lazy:
                metas.append(p.meta)
            elif isinstance(p, Tensor):
                metas.append(self.meta(p))
            else:
                return None
        key = (func, dim, tuple(metas))
        entry = self.composites.get(key)
        if entry is None:
            entry = self.composites[key] = _composite_shape(func in _STACK, key[1], key[2])
        if entry is False:
            return None
        out = Lazy(None, 0, entry[1], self.count)
        out.parts = (entry[0], entry[2], tuple(parts))
        return out

    def _alias(self, func, args, kwargs):
        """x[j], x[a:b], x.squeeze(0), x.unsqueeze(0) of a lazy x: an alias (see values.py)."""
        if kwargs or len(args) != 2 or type(args[0]) is not Lazy or self.count != 1:
            return None
        x, arg = args
        shape = x.meta.shape
        if func in _GETITEM:
            if type(arg) is int and shape:
                j = arg + shape[0] if arg < 0 else arg
                if not 0 <= j < shape[0]:
                    return None
                return _make_alias(x, alias_row, j, shape[1:])
            if type(arg) is slice and shape and arg.step in (None, 1):
                a, b, _ = arg.indices(shape[0])
                if b <= a:
                    return None
                return _make_alias(x, alias_rows, (a, b), (b - a, *shape[1:]))
            return None
        if type(arg) is not int or arg != 0:
            return None
        if func in _SQUEEZE:
            if shape and shape[0] == 1:
                return _make_alias(x, alias_squeeze0, 0, shape[1:])
            return None
        return _make_alias(x, alias_unsqueeze0, 0, (1, *shape))

    def alone(self, fn, args, kwargs, reason: str):
        """Run one call now, on concrete values (this example waits for its inputs)."""
        if self.profile is not None:
            self.profile.unbatched[(name_of(fn), reason)] += 1
        leaves: list = []
        spec = flatten_call(args, kwargs, leaves)
        if any(type(x) is Lazy and not _computed(x) for x in leaves):
            self.block()
        lazy = any(type(x) is Lazy for x in leaves)
        if self.count == 1 or not lazy:
            return _call_now(fn, spec, [x.value() if type(x) is Lazy else x for x in leaves])
        # A lane group: once per example, then the outputs stacked back into group values.
        outs = [
            _call_now(fn, spec, [x.value()[k] if type(x) is Lazy else x for x in leaves])
            for k in range(self.count)
        ]
        flat = [flatten_out(o) if _all_tensor_out(o) else None for o in outs]
        if any(f is None or f[1] != flat[0][1] for f in flat) or any(
            [t.shape for t in f[0]] != [t.shape for t in flat[0][0]] for f in flat
        ):
            self.main.switch(Split([[k] for k in range(self.count)]))  # examples differ
        group = [stored_group(torch.stack(ts)) for ts in zip(*[f[0] for f in flat], strict=True)]
        return unflatten_out(flat[0][1], group)

    # ------------------------------------------------------------------------------------
    # Flushing: scheduling and batched execution
    # ------------------------------------------------------------------------------------
    def _flush(self) -> None:
        nodes = self.pending
        if not nodes and not self._open_groups():
            return
        self.pending = []
        prof = self.profile
        t0 = time.perf_counter()
        units = nodes + self.fuser.take_groups() if self.fuser is not None else nodes
        self._schedule(units)
        self.done.extend(nodes)
        if prof is not None:
            prof.rounds += 1
            prof.flush_s += time.perf_counter() - t0

    def _schedule(self, units: list) -> None:
        agenda = self.policy == "agenda"
        prio = _agenda_priorities(units) if agenda else None
        ready: dict = {}
        for u in units:
            if u.waiting == 0:
                key = u.site.sig if agenda else (u.depth, u.site.sig)
                lst = ready.get(key)
                if lst is None:
                    ready[key] = [u]
                else:
                    lst.append(u)
        left = len(units)
        while True:
            while ready:
                key = min(ready, key=prio.__getitem__) if agenda else min(ready, key=_first)
                batch = ready.pop(key)
                self._execute(batch)
                left -= len(batch)
                _release(batch, ready, agenda)
            if left == 0:
                return
            # a fused group waited on itself: its members become ordinary calls
            left += self.fuser.dissolve(units, ready, agenda, self.dissolved)
            if agenda:
                prio = _agenda_priorities(
                    [u for u in units if type(u) is not Group] + self.dissolved
                )

    def _execute(self, batch: list) -> None:
        b0 = batch[0]
        if type(b0) is Group:
            return self.fuser.run(b0)
        prof = self.profile
        t0 = time.perf_counter() if prof is not None else 0.0
        site = b0.site
        sig = site.sig
        grad = sig[4]
        outer = _grad_enabled()
        if grad != outer:
            torch.set_grad_enabled(grad)
        try:
            reason = self.eager.get(sig)
            if reason is None:
                try:
                    outs, ospec, layouts = site.rule.run(site.fn, site.spec, batch, site.mode)
                    self._scatter(batch, outs, ospec, layouts)
                except AutobatchError:
                    raise
                except Exception as e:  # batched call refused: each call alone (still correct)
                    reason = self.eager[sig] = f"batched call failed: {type(e).__name__}: {e}"
                    self._each_alone(batch)
            else:
                self._each_alone(batch)
        finally:
            if grad != outer:
                torch.set_grad_enabled(outer)
        if prof is not None:
            prof.add_batch(sig, b0, sum(n.count for n in batch), time.perf_counter() - t0, reason)

    def _scatter(self, batch, outs, ospec, layouts) -> None:
        """Hand each call of a batch its rows of the batched outputs."""
        sig = batch[0].site.sig
        info = _checked_info(self.outinfo.get(sig), batch, outs, ospec, layouts)
        self.outinfo[sig] = info
        for node in batch:
            if node.outs is None:
                self._learn_site(node.site)
                node.outs = [Lazy(node, j, m, node.count) for j, m in enumerate(node.site.outs)]
        for j, (t, layout) in enumerate(zip(outs, layouts, strict=True)):
            lo = 0
            if layout == FLAT:
                for node in batch:
                    lz = node.outs[j]
                    lz.src = t
                    lz.lo = lo
                    lo += lz.rows * node.count
            else:
                for node in batch:
                    lz = node.outs[j]
                    lz.src = t
                    lz.lo = lo
                    lz.rows = None
                    lo += node.count

    def _each_alone(self, batch: list) -> None:
        """Run every call of a batch on its own concrete values (the fallback); a lane
        group's call once per example."""
        for node in batch:
            site = node.site
            if node.count == 1:
                leaves, ospec = self._one_call(node, None)
            else:
                each = [self._one_call(node, k) for k in range(node.count)]
                ospec = each[0][1]
                leaves = [torch.stack(ts) for ts in zip(*[e[0] for e in each], strict=True)]
            if node.outs is None:
                per = leaves if node.count == 1 else [t[0] for t in leaves]
                self._learn_alone(site, ospec, per)
                if site.ospec is None:
                    site.ospec = ospec
                node.outs = [Lazy(node, j, tensor_meta(t), node.count) for j, t in enumerate(per)]
            self._store_alone(node, leaves)

    def _one_call(self, node: Node, k: int | None):
        """One example's call (k: its position in a lane group) -> (output tensors, spec)."""
        site = node.site
        vals = [
            x if type(x) is not Lazy else x.value() if k is None else x.value()[k]
            for x in node.leaves
        ]
        a, kw = rebuild(site.spec, vals)
        try:
            if isinstance(site.fn, torch.nn.Module):
                out = state.call_module(site.fn, a, kw)
            else:
                out = site.fn(*a, **kw)
            return flatten_out(out)
        except Exception as e:
            i = self.members[node.example][k or 0]
            raise AutobatchError(
                f"example {i}: {name_of(site.fn)} raised {type(e).__name__}: {e}{_where(e)}",
                example=i,
            ) from e

    def _store_alone(self, node: Node, leaves: list) -> None:
        shift = 0 if node.count == 1 else 1
        if len(node.outs) != len(leaves) or any(
            lz.meta.shape != tuple(t.shape[shift:])
            for lz, t in zip(node.outs, leaves, strict=False)
        ):
            i = self.members[node.example][0]
            raise AutobatchError(
                f"example {i}: {name_of(node.site.fn)} returned other shapes than earlier "
                "calls of the same signature",
                example=i,
            )
        for lz, t in zip(node.outs, leaves, strict=True):
            if node.count != 1:
                lz.src, lz.lo, lz.rows = t, 0, None  # one row per example of the group
            elif t.dim() == 0:
                lz.src, lz.lo, lz.rows = t.reshape(1), 0, None
            else:
                lz.src, lz.lo, lz.rows = t, 0, t.shape[0]

    def _learn_alone(self, site: Site, ospec, leaves: list) -> None:
        """Remember the output structure of a signature learnt from a call run alone: by
        rows (FLAT) when every output keeps the call's rows, whole shapes for STACK calls;
        otherwise not at all (each such call then waits for its own result)."""
        if site.sig in self.outinfo:
            return
        if site.mode == FLAT:
            if all(t.dim() >= 1 and t.shape[0] == site.rows for t in leaves):
                self.outinfo[site.sig] = (ospec, [_out_meta(t, FLAT) for t in leaves])
        else:
            self.outinfo[site.sig] = (ospec, [(STACK, tensor_meta(t)) for t in leaves])
        self._learn_site(site)


_native_class: dict = {}  # "cls" -> the native Run subclass, or None (it did not load)


def run_class() -> type:
    """The class a map runs: `Run`, or (unless ``TREELSTM_AUTOBATCH_NATIVE=0`` or the C
    extension could not be built, see native.py) its subclass whose `compose`, `row_alias`
    and `cell_call` are the extension's, and so are its hooks of ``torch.stack``, a fusable
    cell class's ``__call__`` and ``Lazy.__getitem__``: the same results, the common case
    without Python frames, anything else handed to the Python methods and hooks."""
    if not native.enabled():
        return Run
    if "cls" not in _native_class:
        mod = native.module()
        cls = None
        if mod is not None:
            try:
                mod.setup(
                    Lazy=Lazy, Meta=Meta, Node=Node, Group=Group, Site=Site, FuseKey=FuseKey,
                    compose=Run.compose, cell_call=Run.cell_call, row_alias=_row_alias,
                    wait_for=fused._wait_for, record_at=Run._record_at,
                    grad_enabled=torch.is_grad_enabled, stack=_TORCH_STACK,
                    alias_row=alias_row, alias_rows=alias_rows, tls=state.tls,
                    stack_hook=state._stack, getitem_hook=values._getitem,
                    cell_hook=state._fast_cell_call,
                    leaf_call=fused.LEAF_CALL, inner_call=fused.INNER_CALL,
                )  # fmt: skip
                stack, getitem, cell = mod.hooks(torch.nn.Module)
                attrs = {"__module__": __name__, "native": mod}
                attrs["native_hooks"] = (stack, cell, ((Lazy, "__getitem__", getitem),))
                cls = type("NativeRun", (mod.RunBase, Run), attrs)
            except TypeError as e:  # a class's slots changed under the C source
                native.log.warning("dynamic.autobatch: native recording off (%s)", e)
        _native_class["cls"] = cls
    return _native_class["cls"] or Run


def _checked_info(info, batch, outs, ospec, layouts):
    """The output structure of a signature, learnt from this batch or checked against it
    (a function that is not row-wise shows here: its output has the wrong number of rows)."""
    if info is None:
        info = (ospec, [_out_meta(t, layout) for t, layout in zip(outs, layouts, strict=True)])
    elif len(info[1]) != len(outs) or info[0] != ospec:
        raise RuntimeError("the outputs differ from an earlier batch of the same signature")
    for j, (t, layout) in enumerate(zip(outs, layouts, strict=True)):
        m = info[1][j][1]
        if layout == FLAT:
            want = sum(node.site.rows * node.count for node in batch)
        else:
            want = sum(node.count for node in batch)
        if t.dim() == 0 or t.shape[0] != want or tuple(t.shape[1:]) != m.shape:
            raise RuntimeError(f"batched output {tuple(t.shape)} is not {want} rows of {m}")
    return info


def _release(batch: list, ready: dict, agenda: bool) -> None:
    """Count down the users of a finished batch; users with no inputs left become ready."""
    for u in batch:
        for v in u.users:
            if type(v) is Group and v.done:
                continue  # dissolved: its members were linked on their own
            v.waiting -= 1
            if v.waiting == 0:
                key = v.site.sig if agenda else (v.depth, v.site.sig)
                lst = ready.get(key)
                if lst is None:
                    ready[key] = [v]
                else:
                    lst.append(v)


def _agenda_priorities(units: list) -> dict:
    """Average depth of each signature's pending calls (a fused group: its own depth)."""
    tot: dict = {}
    for u in units:
        sig = u.site.sig
        s = tot.get(sig)
        if s is None:
            tot[sig] = [u.depth, 1]
        else:
            s[0] += u.depth
            s[1] += 1
    return {s: v[0] / v[1] for s, v in tot.items()}


# Conversions a lane group can make from tolist() values (same results as on each tensor).
_PYTHON = {bool: bool, float: float, int: int, Tensor.item: lambda x: x, Tensor.tolist: lambda x: x}


def _call_now(fn, spec, vals):
    a, k = rebuild(spec, vals)
    if isinstance(fn, torch.nn.Module):
        return state.call_module(fn, a, k)
    return fn(*a, **k)


def _all_tensor_out(obj) -> bool:
    try:
        flatten_out(obj)
    except TypeError:
        return False
    return True


def _kill(task) -> None:
    """End a suspended greenlet (its `finally` blocks run; their errors are dropped)."""
    try:
        task.throw()
    except BaseException:
        pass


def _hashable(x):
    return tuple(map(_hashable, x)) if isinstance(x, list) else x


# Functions recorded without a call when they can be: views of rows, stack/cat of parts.
_SPECIAL = {f: Run._alias for f in (*_GETITEM, *_SQUEEZE, *_UNSQUEEZE)}
_SPECIAL.update({f: Run._composite for f in (*_STACK, *_CAT)})


def _all_tensors(args) -> bool:
    for a in args:
        if type(a) is not Lazy and not isinstance(a, Tensor):
            return False
    return True


def _shared_key(leaves, i: int):
    if i >= len(leaves):
        return None
    x = leaves[i]
    return "lazy" if type(x) is Lazy else x


def _make_alias(x: Lazy, op, arg, shape: tuple) -> Lazy:
    m = x.meta
    out = Lazy(None, 0, meta_of(shape, m.dtype, m.device))
    out.parts = (op, arg, (x,))
    return out


def _flat_tuple(ospec) -> bool:
    return ospec == (SEQ, tuple, tuple([LEAF] * len(ospec[2]))) if type(ospec) is tuple else False


def _first(key):
    return key[0]


def _computed(lz: Lazy) -> bool:
    if lz.parts is None:
        return lz.src is not None
    return all(b.src is not None for b in _bases(lz))


def _bases(x: Lazy):
    """The stored (non-composite) lazy values a value is made of."""
    if x.parts is None:
        return (x,)
    out = []
    for p in x.parts[2]:
        if type(p) is Lazy:
            out.extend(_bases(p))
    return out


def _out_meta(t: Tensor, layout: str):
    return (layout, meta_of(tuple(t.shape[1:]), t.dtype, t.device))


def _composite_shape(stack: bool, dim, metas: tuple):
    """(op, out meta, normalized dim) of stack/cat along a non-batch dim, or False."""
    if not isinstance(dim, int) or isinstance(dim, bool):
        return False
    m0 = metas[0]
    if any(m.dtype != m0.dtype or m.device != m0.device for m in metas):
        return False
    rank = len(m0.shape)
    d = dim + rank + 1 if (stack and dim < 0) else (dim + rank if dim < 0 else dim)
    if d <= 0 or d > (rank if stack else rank - 1):
        return False
    s0 = m0.shape
    if stack:
        if any(m.shape != s0 for m in metas):
            return False
        shape = (*s0[:d], len(metas), *s0[d:])
    else:
        for m in metas:
            s = m.shape
            if len(s) != len(s0) or s[:d] != s0[:d] or s[d + 1 :] != s0[d + 1 :]:
                return False
        shape = (*s0[:d], sum(m.shape[d] for m in metas), *s0[d + 1 :])
    return (_TORCH_STACK if stack else _TORCH_CAT, meta_of(shape, m0.dtype, m0.device), d)
