"""Replay of lowered decoder layers: a layer identical to an earlier one, lowered in the same
state, appends that layer's instructions again instead of being lowered op by op.

A model's decoder layers are mostly alike, and lowering (Python, per op) is most of a
point's time on the families with fine-grained streams. :class:`LayerReplay` walks the ops in
runs of one layer. The first run with a given (ops, wiring, lowering state) is lowered by the
family and recorded: its instructions with every index written as a :class:`Ref`, either an
offset inside the run or "the j-th instruction of op ``rest`` of the layer ``delta`` before
this one" (or of a named op outside the layers, the embedding). A later run replays the
record when

* its ops equal the recorded ones in every field but their id and layer, with the same
  inputs and consumers (named relative to the layer), and on the same stages;
* the family's state at its start (``ReplayState.snapshot``: the last instruction of each
  unit, a plane rotation, bytes in flight, ...) is the same, its indices written as Refs;
* the layers the record refers to hold the same instructions, relatively, as the ones it
  referred to when recorded (their content ids match).

Then the family's lowering would emit exactly the recorded instructions (it is a function of
those inputs), so the stream is the same as lowering every layer; ``tests/test_replay.py``
compares the two streams on every family. The family keeps all state that its lowering reads
from one op to the next in ``snapshot`` / ``op_state``; state it forgets to declare there is
what that test catches.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
import re
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import networkx as nx

from archsim.core.isa import LAYER_COLUMN, OP_COLUMN, StreamBuilder
from archsim.graph.ops import Op

_LAYER_OP = re.compile(r"L(\d+)\.(.+)\Z")
_enabled = True
# replayed and lowered decoder-layer runs since the process started (tests read the change)
stats = {"replayed": 0, "recorded": 0}


@contextmanager
def disabled() -> Iterator[None]:
    """Lower every layer op by op (the reference the replayed stream is compared with)."""
    global _enabled
    before, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = before


class Ref(tuple):
    """An instruction index written relative to a run: ("in", offset) inside it, ("op", rest,
    delta, j) the j-th instruction of op ``L<layer+delta>.<rest>``, ("abs", name, j) of an op
    outside the layers, ("none", i) a negative index (no instruction)."""

    __slots__ = ()


class ReplayState(Protocol):
    """The lowering state a family carries from op to op, written with Refs."""

    def snapshot(self, ref: Callable[[int], Ref], run: list[Op]) -> Hashable:
        """Everything the lowering of ``run`` reads or changes besides its ops and their
        inputs' last instructions (the state of the run's stages), as nested tuples with every
        instruction index passed through ``ref``. Include facts about the run's layer number
        that the lowering uses (the last layer is special); the state of stages the run does
        not touch is best left out (a layer on stage 1 does not care where stage 0 is)."""
        ...

    def restore(self, snap: Any) -> None:
        """Set the state ``snapshot`` described (after the run) from its value with the Refs
        turned back into indices; state it does not describe stays."""
        ...

    def op_state(self, op: str, ref: Callable[[int], Ref]) -> Hashable:
        """What the lowering left for op ``op`` (its last instructions, ...), with Refs."""
        ...

    def set_op_state(self, op: str, state: Any) -> None:
        """Set op ``op``'s state from ``op_state``'s value with its Refs resolved."""
        ...


def layer_runs(ops: list[Op]) -> list[list[Op]]:
    """The ops cut into runs of consecutive ops of one layer."""
    runs: list[list[Op]] = []
    for op in ops:
        if runs and runs[-1][0].layer == op.layer:
            runs[-1].append(op)
        else:
            runs.append([op])
    return runs


def run_key(run: list[Op]) -> tuple | None:
    """A decoder layer's ops by name (without the ``L<n>.`` prefix) and stage; None for a run
    that is not a decoder layer's (the embedding, the head) or whose ids lack the prefix."""
    layer = run[0].layer
    prefix = f"L{layer}."
    if layer < 0 or not all(op.id.startswith(prefix) for op in run):
        return None
    n = len(prefix)
    return tuple((op.id[n:], op.stage) for op in run)


def run_signature(g: nx.DiGraph, run: list[Op], names: dict[str, tuple] | None = None) -> list:
    """Everything about a run's ops the lowering may read: each op's fields but its id and
    layer, and its inputs and consumers named relative to the layer. ``names`` caches each
    node's (name without the layer prefix, layer)."""
    layer = run[0].layer
    names = {} if names is None else names
    nodes = g.nodes

    def relative(x: str) -> tuple:
        where = names.get(x)
        if where is None:
            lx = nodes[x]["op"].layer
            prefix = f"L{lx}."
            where = names[x] = (x[len(prefix) :] if x.startswith(prefix) else x, lx)
        return (where[0], where[1] - layer)

    fields = _fields(type(run[0]))
    return [
        (
            fields(op),
            [relative(x) for x in g.predecessors(op.id)],
            [relative(x) for x in g.successors(op.id)],
        )
        for op in run
    ]


@functools.cache
def _fields(cls: type) -> Callable[[Op], tuple]:
    """A getter of an op's fields but its id and layer."""
    names = [f.name for f in dataclasses.fields(cls) if f.name not in ("id", "layer")]
    return operator.attrgetter(*names)


class _Unresolved(Exception):
    """A Ref names an instruction the stream does not hold (the record does not apply)."""


class _Record:
    """A lowered run: its instructions, dependencies and state, every index a Ref."""

    __slots__ = (
        "signature", "start", "needs", "rows", "op_refs", "deps", "uses", "ops", "end", "cid"
    )  # fmt: skip

    def __init__(self, signature, start, needs, rows, op_refs, deps, uses, ops, end, cid):
        self.signature = signature
        self.start = start  # the family's snapshot before the run
        self.needs = needs  # ((layer delta, content ids), ...) the Refs rely on
        # per instruction: (columns before the layer, layer delta, op slot, columns after op)
        self.rows = rows
        self.op_refs = op_refs  # per op slot: ("op", rest, delta) or ("abs", name)
        self.deps = deps  # per instruction: ((Ref, kind, lag) before the run, (offset, ...))
        self.uses = uses
        self.ops = ops  # per op of the run: its op_state
        self.end = end  # the family's snapshot after the run
        self.cid = cid


class LayerReplay:
    """Lowers ``ops`` into ``b`` run by run, replaying recorded layers (module docstring)."""

    def __init__(self, b: StreamBuilder, g: nx.DiGraph, state: ReplayState) -> None:
        self.b, self.g, self.state = b, g, state
        self.records: dict[tuple, list[_Record]] = {}
        self.content: dict[int, tuple] = {}  # layer -> content ids of its runs so far
        self._cids: dict[tuple, int] = {}
        self._names: dict[str, tuple | None] = {}
        self._nodes: dict[str, tuple] = {}  # node -> (name without the layer prefix, layer)

    def lower(self, ops: list[Op], lower_op: Callable[[Op], None]) -> None:
        """Lower every op with ``lower_op`` (which updates the family's state), replaying
        what can be replayed."""
        for run in layer_runs(ops):
            self.run(run, lower_op)

    def run(self, run: list[Op], lower_op: Callable[[Op], None]) -> None:
        layer = run[0].layer
        key = run_key(run) if _enabled else None
        if key is not None and key not in self.records:
            # a key seen once is not recorded: recording costs more than lowering on families
            # whose runs rarely repeat (a layer or two per card); the second run is recorded
            self.records[key] = []
            key = None
        if key is None:
            for op in run:
                lower_op(op)
            self._add_content(layer, ("unique", len(self.b), id(run)))
            return
        b, start = self.b, len(self.b)
        deltas: set[int] = {-1}
        sig = run_signature(self.g, run, self._nodes)
        snap = self.state.snapshot(self._ref_fn(layer, start, deltas), run)
        for rec in self.records.get(key, ()):
            if rec.signature == sig and rec.start == snap and self._holds(rec.needs, layer):
                try:
                    self._replay(rec, run)
                except _Unresolved:
                    continue
                stats["replayed"] += 1
                self._add_content(layer, rec.cid)
                return
        for op in run:
            lower_op(op)
        ref = self._ref_fn(layer, start, deltas)
        rows, deps, uses, op_refs = [], [], [], {}
        for row, ds, us in b.segment(start):
            op_ref = self._name_ref(b.op_names[row[OP_COLUMN]], layer)
            slot = op_refs.setdefault(op_ref, len(op_refs))
            rows.append((row[:LAYER_COLUMN], row[LAYER_COLUMN] - layer, slot, row[OP_COLUMN + 1 :]))
            # producers before the run (Refs to resolve) come first in the sorted list
            outside = tuple((ref(d), kind, lag) for d, kind, lag in ds if d < start)
            inside = tuple((d - start, kind, lag) for d, kind, lag in ds if d >= start)
            deps.append((outside, inside))
            uses.append(tuple(us))
        ops = tuple(self.state.op_state(op.id, ref) for op in run)
        end = self.state.snapshot(ref, run)
        needs = tuple((d, self.content.get(layer + d)) for d in sorted(deltas))
        # the content id names what the run holds relative to itself; the layers its Refs
        # reach are checked through ``needs`` when a record is replayed
        body = (tuple(rows), tuple(op_refs), tuple(deps), tuple(uses), ops, end)
        cid = self._cids.setdefault(body, len(self._cids))
        self.records.setdefault(key, []).append(
            _Record(sig, snap, needs, rows, tuple(op_refs), deps, uses, ops, end, cid)
        )
        stats["recorded"] += 1
        self._add_content(layer, cid)

    # ---- Refs ---------------------------------------------------------------------------------
    def _name_ref(self, name: str, layer: int) -> tuple:
        """An op's name relative to ``layer``: ("op", rest, delta) or ("abs", name)."""
        parsed = self._names.get(name, False)
        if parsed is False:
            m = _LAYER_OP.match(name)
            parsed = self._names[name] = (int(m.group(1)), m.group(2)) if m else None
        if parsed is None:
            return ("abs", name)
        return ("op", parsed[1], parsed[0] - layer)

    def _ref_fn(self, layer: int, start: int, deltas: set[int]) -> Callable[[int], Ref]:
        b = self.b

        def ref(i: int) -> Ref:
            if i < 0:
                return Ref(("none", i))
            if i >= start:
                return Ref(("in", i - start))
            name, j = b.origin(i)
            where = self._name_ref(name, layer)
            if where[0] == "op":
                deltas.add(where[2])
            return Ref((*where, j))

        return ref

    def _resolve_fn(self, layer: int, start: int) -> Callable[[Ref], int]:
        b = self.b

        def resolve(r: Ref) -> int:
            tag = r[0]
            if tag == "in":
                return start + r[1]
            if tag == "none":
                return r[1]
            name = f"L{layer + r[2]}.{r[1]}" if tag == "op" else r[1]
            i = b.find(name, r[-1])
            if i is None:
                raise _Unresolved(r)
            return i

        return resolve

    def _holds(self, needs: tuple, layer: int) -> bool:
        return all(self.content.get(layer + d) == cid for d, cid in needs)

    def _add_content(self, layer: int, cid: Hashable) -> None:
        self.content[layer] = (*self.content.get(layer, ()), cid)

    # ---- replay -------------------------------------------------------------------------------
    def _replay(self, rec: _Record, run: list[Op]) -> None:
        """Append ``rec``'s instructions for ``run`` and set the family's state; raises
        _Unresolved, before changing anything, if a Ref names no instruction."""
        b, layer, start = self.b, run[0].layer, len(self.b)
        resolve = self._resolve_fn(layer, start)
        deps = [
            sorted((resolve(r), kind, lag) for r, kind, lag in outside)
            + [(start + d, kind, lag) for d, kind, lag in inside]
            if outside
            else [(start + d, kind, lag) for d, kind, lag in inside]
            for outside, inside in rec.deps
        ]
        ops = [_resolved(st, resolve) for st in rec.ops]
        end = _resolved(rec.end, resolve)
        slots = [
            b.op_index(f"L{layer + r[2]}.{r[1]}" if r[0] == "op" else r[1]) for r in rec.op_refs
        ]
        for (before, dlayer, slot, after), ds, us in zip(rec.rows, deps, rec.uses, strict=True):
            b.append((*before, layer + dlayer, slots[slot], *after), ds, us)
        for op, st in zip(run, ops, strict=True):
            self.state.set_op_state(op.id, st)
        self.state.restore(end)


def _resolved(value: Any, resolve: Callable[[Ref], int]) -> Any:
    """``value`` with every Ref in its nested tuples turned back into an index."""
    t = type(value)
    if t is Ref:
        return resolve(value)
    if t is tuple:
        return tuple(_resolved(v, resolve) for v in value)
    return value
