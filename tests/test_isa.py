"""InstructionStream: building, validation, and the diffable text round trip."""

from __future__ import annotations

import numpy as np
import pytest

from archsim.core.isa import COLUMNS, END_START, START_START, InstructionStream


def test_builder_csr_dependencies(builder):
    """Dependencies land in CSR form: producers of i are dep_idx[dep_ptr[i]:dep_ptr[i+1]]."""
    a = builder.add("work", unit="u0", op="x")
    b = builder.add("work", unit="u1", op="y")
    builder.add("move", unit="u0", op="z", deps=[b, a, a])
    s = builder.build()
    assert list(s.dep_ptr) == [0, 0, 0, 2]
    assert list(s.dep_idx) == [0, 1]  # sorted, deduplicated
    assert s.unit_names == ["u0", "u1"] and list(s.unit) == [0, 1, 0]


def test_forward_dependency_rejected(builder):
    """A dependency on a later instruction is not a valid program order."""
    builder.add("work", unit="u0", op="x")
    s = builder.build()
    s.dep_idx = np.array([0], dtype=np.int64)
    s.dep_ptr = np.array([0, 1], dtype=np.int64)
    s.dep_kind = np.zeros(1, dtype=np.int8)
    s.dep_lag = np.zeros(1, dtype=np.int64)
    with pytest.raises(ValueError, match="forward"):
        s.validate()


def test_text_round_trip(builder):
    """dumps -> loads reproduces every column, name table and dependency exactly."""
    builder.meta["family"] = "toy"
    builder.add(
        "work",
        unit="c0.mxm",
        op="L0.q",
        chip=0,
        m=3,
        n=5,
        k=7,
        g=2,
        h=4,
        aux=9,
        offchip_bytes=1.5e9,
        onchip_bytes=0.1,
        link_bytes=3.0,
        flops=1e12 / 3,
        issue=10,
        layer=0,
    )
    builder.add("move", unit="c1.c2c", op="L0.send", chip=1, deps=[0], issue=20, layer=0,
                resources={"hbm": 4096.0, "link0": 2.5})  # fmt: skip
    builder.add("work", unit="c1.mxm", op="L0.o", lagged=[(1, START_START, 7), (0, END_START, 3)])
    s = builder.build()
    back = InstructionStream.loads(s.dumps(), ["work", "move"])
    for name in COLUMNS:
        np.testing.assert_array_equal(back.cols[name], s.cols[name])
    assert back.unit_names == s.unit_names and back.op_names == s.op_names
    np.testing.assert_array_equal(back.dep_idx, s.dep_idx)
    assert back.deps_of(2) == [(0, END_START, 3), (1, START_START, 7)]
    assert back.resources_of(1) == {"hbm": 4096.0, "link0": 2.5}
    assert back.meta == {"family": "toy"}
    assert back.dumps() == s.dumps()


def test_replicated_copies_rounds_and_feedback(builder):
    """Two copies x two rounds of a 3-instruction chain a -> b -> c: copy (r, j) is
    r * 2 + j, its dependencies shifted by its offset (3 per copy); from round 1 on, the
    entry (a) of copy (1, j) waits for the exit (c) of copy (0, j): instruction 6 (copy 2)
    on 2, instruction 9 (copy 3) on 5."""
    a = builder.add("work", unit="u0", op="a", resources={"hbm": 8.0})
    b = builder.add("work", unit="u1", op="b", deps=[a])
    builder.add("move", unit="u0", op="c", lagged=[(b, START_START, 2)])
    s = builder.build().replicated(2, 2)
    assert len(s) == 12 and list(s.copy) == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    assert [s.deps_of(i) for i in range(12)] == [
        [], [(0, 0, 0)], [(1, 1, 2)],
        [], [(3, 0, 0)], [(4, 1, 2)],
        [(2, 0, 0)], [(6, 0, 0)], [(7, 1, 2)],
        [(5, 0, 0)], [(9, 0, 0)], [(10, 1, 2)],
    ]  # fmt: skip
    assert [s.resources_of(i) for i in (0, 3, 6, 9)] == [{"hbm": 8.0}] * 4
    assert (s.issue == -1).all() and s.meta["rounds"] == "2"
