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
  inputs and consumers (named relative to the layer), on the same stages relative to its
  frame (``Framed``: a family may write its units, resources and stages relative to where
  the run starts, so that a layer replays on other chips);
* the family's state at its start (``ReplayState.snapshot``: the last instruction of each
  unit, a plane rotation, bytes in flight, ...) is the same, its indices written as Refs;
* what the family left for the run's inputs from outside it (``ReplayState.op_state`` of
  each input op: its last instructions) is the same, its indices written as Refs.

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


class Framed(Protocol):
    """What a family adds to its ReplayState to replay a layer in another frame: on other
    pipeline stages than the recorded one (a layer k stages further down runs the same passes
    on other chips), or where a rotation (of MXM planes, of DMA engines) stands elsewhere."""

    def frame(self, run: list[Op]) -> tuple:
        """Where ``run`` starts: ``(first stage, ...)`` (``run_base``; then what the family's
        rotations stand at), hashable. Records replay across frames: the run's unit and
        resource names, its stages and its state are written relative to its frame."""
        ...

    def relative_name(self, name: str, frame: tuple) -> str:
        """A unit's or resource's name relative to ``frame`` (``chip3.mxm2`` at first stage 3
        with the planes' rotation at 1: ``chip0.mxm1``)."""
        ...

    def absolute_name(self, name: str, frame: tuple) -> str:
        """The inverse of ``relative_name``."""
        ...

    # and: snapshot(ref, run, frame) and restore(snap, frame) write the state relative to the
    # frame and include every fact about the absolute stages the lowering reads (hops and
    # ports toward a next stage that sits in another node); the stream's chip column holds
    # the stage.


def run_base(run: list[Op]) -> int:
    """The first pipeline stage a run touches: stages are written relative to it."""
    return min(op.stage for op in run)


def rotation_frame(run: list[Op], positions: dict[int, int]) -> tuple:
    """A frame for a family whose units are ``chip<s>.<unit>`` and one kind of unit per
    stage is taken in rotation: (first stage, where the rotation of each stage from it to
    the run's last stands) from ``positions`` (stage -> next in the rotation, 0 if absent)."""
    base = run_base(run)
    last = max(op.stage for op in run)
    return base, tuple(positions.get(s, 0) for s in range(base, last + 1))


_CHIP_UNIT = re.compile(r"chip(-?\d+)\.(.+)\Z")


def rotated_name(name: str, frame: tuple, sign: int, rotating: str, count: int) -> str:
    """``chip<s>.<unit>`` relative to a ``rotation_frame`` (``sign`` -1) or back from it
    (+1): the stage moved by the frame's first stage, and a unit ``<rotating><k>`` of a
    rotation of ``count`` by where its stage's rotation stands (relative: counted from it).
    Other names come back unchanged."""
    m = _CHIP_UNIT.match(name)
    if m is None:
        return name
    base, first = frame
    s, unit = int(m.group(1)), m.group(2)
    i = s if sign > 0 else s - base  # the stage's place in the frame
    if unit.startswith(rotating) and unit[len(rotating) :].isdigit() and 0 <= i < len(first):
        unit = f"{rotating}{(int(unit[len(rotating) :]) + sign * first[i]) % count}"
    return f"chip{s + sign * base}.{unit}"


def layer_runs(ops: list[Op]) -> list[list[Op]]:
    """The ops cut into runs of consecutive ops of one layer."""
    runs: list[list[Op]] = []
    for op in ops:
        if runs and runs[-1][0].layer == op.layer:
            runs[-1].append(op)
        else:
            runs.append([op])
    return runs


_STAGE_IN_NAME = re.compile(r"_s(\d+)(?=\.|\Z)")  # packing's send_s<dst> and <a2a>_s<dst>
_RELATIVE_STAGE = re.compile(r"_s@(-?\d+)(?=\.|\Z)")


def _relative_name(rest: str, base: int) -> str:
    """An op name with the stages it names (``.send_s3``) written relative to ``base``."""
    if base == 0 or "_s" not in rest:
        return rest
    return _STAGE_IN_NAME.sub(lambda m: f"_s@{int(m.group(1)) - base}", rest)


def _absolute_name(rest: str, base: int) -> str:
    if "_s@" not in rest:
        return rest
    return _RELATIVE_STAGE.sub(lambda m: f"_s{int(m.group(1)) + base}", rest)


class _Unresolved(Exception):
    """A Ref names an instruction the stream does not hold (the record does not apply)."""


class _Record:
    """A lowered run: its instructions, dependencies and state, every index a Ref, every
    stage relative to the run's first."""

    __slots__ = (
        "signature", "start", "rows", "units", "resources", "op_refs", "deps", "uses", "ops",
        "end",
    )  # fmt: skip

    def __init__(self, signature, start, body) -> None:
        self.signature = signature
        # the family's snapshot before the run, and the op_state of each input from outside it
        self.start = start
        # slots are numbered in the order their names first appear in the run (the order
        # lowering adds them to the builder, so a replay that adds them does so likewise).
        # rows: per instruction (opcode, unit slot, chip - base, columns m..issue, layer
        # delta, op slot, columns after op); units / resources: per slot its name relative
        # to the frame; op_refs: per op slot ("op", rest, delta) or ("abs", name); deps: per
        # instruction ((Ref, kind, lag) before the run, (offset, kind, lag) inside it); uses:
        # per instruction ((resource slot, bytes), ...); ops: per op of the run its op_state;
        # end: the family's snapshot after the run
        (self.rows, self.units, self.resources, self.op_refs, self.deps, self.uses, self.ops,
         self.end) = body  # fmt: skip


class LayerReplay:
    """Lowers ``ops`` into ``b`` run by run, replaying recorded layers (module docstring)."""

    def __init__(self, b: StreamBuilder, g: nx.DiGraph, state: ReplayState) -> None:
        self.b, self.g, self.state = b, g, state
        self.framed = hasattr(state, "frame")
        self.records: dict[tuple, list[_Record]] = {}
        self._at: dict[tuple, tuple] = {}  # (record, frame) -> its unit indices, ...
        self._names: dict[str, tuple | None] = {}
        self._nodes: dict[str, tuple] = {}  # node -> (name without the layer prefix, layer)

    def lower(self, ops: list[Op], lower_op: Callable[[Op], None]) -> None:
        """Lower every op with ``lower_op`` (which updates the family's state), replaying
        what can be replayed."""
        for run in layer_runs(ops):
            self.run(run, lower_op)

    def run(self, run: list[Op], lower_op: Callable[[Op], None]) -> None:
        layer = run[0].layer
        key = frame = None
        if _enabled and layer >= 0:
            frame = self.state.frame(run) if self.framed else (0,)
            key = self._key(run, frame[0])
            if key is not None and key not in self.records:
                # a key seen once is lowered, not recorded: recording costs more than lowering,
                # and a first run rarely repeats (its inputs come from the embedding, or it is
                # the only such layer on its chip); the second run is recorded
                self.records[key] = []
                key = None
        if key is None:
            for op in run:
                lower_op(op)
            return
        state, start, base = self.state, len(self.b), frame[0]
        sig, inputs = self._signature(run, base)
        ref = self._ref_fn(layer, base, start)
        snap = (self._snapshot(ref, run, frame), tuple(state.op_state(x, ref) for x in inputs))
        for rec in self.records.get(key, ()):
            if rec.signature == sig and rec.start == snap:
                try:
                    self._replay(rec, run, frame)
                except _Unresolved:
                    continue
                stats["replayed"] += 1
                return
        for op in run:
            lower_op(op)
        self._record(key, sig, snap, run, frame, start, ref)

    def _snapshot(self, ref, run: list[Op], frame: tuple) -> Hashable:
        if self.framed:
            return self.state.snapshot(ref, run, frame)
        return self.state.snapshot(ref, run)

    def _record(self, key, sig, snap, run, frame, start, ref) -> None:
        b, layer, base = self.b, run[0].layer, frame[0]
        relative = self._names_in(frame, self.state.relative_name if self.framed else None)
        rows, deps, uses = [], [], []
        units: dict[str, int] = {}
        resources: dict[str, int] = {}
        op_refs: dict[tuple, int] = {}
        for row, ds, us in b.segment(start):
            unit = units.setdefault(relative(b.unit_names[row[1]]), len(units))
            op_ref = self._name_ref(b.op_names[row[OP_COLUMN]], layer, base)
            op = op_refs.setdefault(op_ref, len(op_refs))
            rows.append((row[0], unit, row[2] - base, row[3:LAYER_COLUMN],
                         row[LAYER_COLUMN] - layer, op, row[OP_COLUMN + 1 :]))  # fmt: skip
            # producers before the run (Refs to resolve) come first in the sorted list
            outside = tuple((ref(d), kind, lag) for d, kind, lag in ds if d < start)
            inside = tuple((d - start, kind, lag) for d, kind, lag in ds if d >= start)
            deps.append((outside, inside))
            uses.append(tuple(
                (resources.setdefault(relative(b.resource_names[r]), len(resources)), x)
                for r, x in us
            ))  # fmt: skip
        ops = tuple(self.state.op_state(op.id, ref) for op in run)
        end = self._snapshot(ref, run, frame)
        body = (tuple(rows), tuple(units), tuple(resources), tuple(op_refs), tuple(deps),
                tuple(uses), ops, end)  # fmt: skip
        self.records.setdefault(key, []).append(_Record(sig, snap, body))
        stats["recorded"] += 1

    # ---- what identifies a run --------------------------------------------------------------
    def _key(self, run: list[Op], base: int) -> tuple | None:
        """A decoder layer's ops by name (without the ``L<n>.`` prefix) and stage relative to
        ``base``; None for a run that is not a decoder layer's (the embedding, the head) or
        whose ids lack the prefix."""
        layer = run[0].layer
        prefix = f"L{layer}."
        if layer < 0 or not all(op.id.startswith(prefix) for op in run):
            return None
        n = len(prefix)
        return tuple((_relative_name(op.id[n:], base), op.stage - base) for op in run)

    def _signature(self, run: list[Op], base: int) -> tuple[list, list[str]]:
        """Everything about a run's ops the lowering may read: each op's fields but its id
        and layer (stages relative to ``base``), and its inputs and consumers named relative
        to the layer; and the run's inputs from outside it."""
        layer = run[0].layer
        names, nodes = self._nodes, self.g.nodes

        def relative(x: str) -> tuple:
            where = names.get(x)
            if where is None:
                lx = nodes[x]["op"].layer
                prefix = f"L{lx}."
                where = names[x] = (x[len(prefix) :] if x.startswith(prefix) else x, lx)
            return (_relative_name(where[0], base), where[1] - layer)

        fields = _fields(type(run[0]), base)
        g = self.g
        sig = [
            (
                fields(op),
                [relative(x) for x in g.predecessors(op.id)],
                [relative(x) for x in g.successors(op.id)],
            )
            for op in run
        ]
        inside = {op.id for op in run}
        inputs = [x for op in run for x in g.predecessors(op.id) if x not in inside]
        return sig, list(dict.fromkeys(inputs))

    # ---- Refs -------------------------------------------------------------------------------
    def _name_ref(self, name: str, layer: int, base: int) -> tuple:
        """An op's name relative to ``layer`` and stage ``base``: ("op", rest, delta) or
        ("abs", name)."""
        parsed = self._names.get(name, False)
        if parsed is False:
            m = _LAYER_OP.match(name)
            parsed = self._names[name] = (int(m.group(1)), m.group(2)) if m else None
        if parsed is None:
            return ("abs", name)
        return ("op", _relative_name(parsed[1], base), parsed[0] - layer)

    def _op_name(self, r: tuple, layer: int, base: int) -> str:
        """The name an op Ref (``_name_ref``) stands for in ``layer`` at stage ``base``."""
        if r[0] == "op":
            return f"L{layer + r[2]}.{_absolute_name(r[1], base)}"
        return r[1]

    def _ref_fn(self, layer: int, base: int, start: int) -> Callable[[int], Ref]:
        b = self.b

        def ref(i: int) -> Ref:
            if i < 0:
                return Ref(("none", i))
            if i >= start:
                return Ref(("in", i - start))
            name, j = b.origin(i)
            return Ref((*self._name_ref(name, layer, base), j))

        return ref

    def _resolve_fn(self, layer: int, base: int, start: int) -> Callable[[Ref], int]:
        b = self.b

        def resolve(r: Ref) -> int:
            tag = r[0]
            if tag == "in":
                return start + r[1]
            if tag == "none":
                return r[1]
            i = b.find(self._op_name(r, layer, base), r[-1])
            if i is None:
                raise _Unresolved(r)
            return i

        return resolve

    @staticmethod
    def _names_in(frame: tuple, rename) -> Callable[[str], str]:
        if rename is None:
            return lambda name: name
        return lambda name: rename(name, frame)

    def _names_at(self, rec: _Record, frame: tuple) -> tuple[list[int], list[int]]:
        """The builder's indices of ``rec``'s units and resources in ``frame``."""
        at = self._at.get((id(rec), frame))
        if at is None:
            b = self.b
            absolute = self._names_in(frame, self.state.absolute_name if self.framed else None)
            at = self._at[(id(rec), frame)] = (
                [b.unit(absolute(name)) for name in rec.units],
                [b.resource(absolute(name)) for name in rec.resources],
            )
        return at

    # ---- replay -----------------------------------------------------------------------------
    def _replay(self, rec: _Record, run: list[Op], frame: tuple) -> None:
        """Append ``rec``'s instructions for ``run`` (in ``frame``) and set the family's
        state; raises _Unresolved, before changing anything, if a Ref names no instruction."""
        b, layer, start, base = self.b, run[0].layer, len(self.b), frame[0]
        resolve = self._resolve_fn(layer, base, start)
        deps = [
            sorted((resolve(r), kind, lag) for r, kind, lag in outside)
            + [(start + d, kind, lag) for d, kind, lag in inside]
            if outside
            else [(start + d, kind, lag) for d, kind, lag in inside]
            for outside, inside in rec.deps
        ]
        ops = [_resolved(st, resolve) for st in rec.ops]
        end = _resolved(rec.end, resolve)
        units, resources = self._names_at(rec, frame)
        op_slots = [b.op_index(self._op_name(r, layer, base)) for r in rec.op_refs]
        b.extend(
            [
                (opcode, units[unit], chip + base, *cols, layer + dlayer, op_slots[op], *tail)
                for opcode, unit, chip, cols, dlayer, op, tail in rec.rows
            ],
            deps,
            [[(resources[r], x) for r, x in us] if us else us for us in rec.uses],
        )
        for op, st in zip(run, ops, strict=True):
            self.state.set_op_state(op.id, st)
        if self.framed:
            self.state.restore(end, frame)
        else:
            self.state.restore(end)


@functools.cache
def _fields(cls: type, base: int) -> Callable[[Op], tuple]:
    """A getter of an op's fields but its id and layer, with its stage (and the stage a
    transfer goes to) relative to ``base``."""
    names = [f.name for f in dataclasses.fields(cls) if f.name not in ("id", "layer")]
    get = operator.attrgetter(*names)
    if base == 0:
        return get
    at_stage, at_shape = names.index("stage"), names.index("shape")

    def fields(op: Op) -> tuple:
        values = list(get(op))
        values[at_stage] -= base
        shape = values[at_shape]
        if "dst_stage" in shape:
            values[at_shape] = {**shape, "dst_stage": shape["dst_stage"] - base}
        return tuple(values)

    return fields


def _resolved(value: Any, resolve: Callable[[Ref], int]) -> Any:
    """``value`` with every Ref in its nested tuples turned back into an index."""
    t = type(value)
    if t is Ref:
        return resolve(value)
    if t is tuple:
        return tuple(_resolved(v, resolve) for v in value)
    return value
