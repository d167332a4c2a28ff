"""InstructionStream: building, validation, and the diffable text round trip."""

from __future__ import annotations

import numpy as np
import pytest

from archsim.isa import COLUMNS, InstructionStream


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
    builder.add("move", unit="c1.c2c", op="L0.send", chip=1, deps=[0], issue=20, layer=0)
    s = builder.build()
    back = InstructionStream.loads(s.dumps(), ["work", "move"])
    for name in COLUMNS:
        np.testing.assert_array_equal(back.cols[name], s.cols[name])
    assert back.unit_names == s.unit_names and back.op_names == s.op_names
    np.testing.assert_array_equal(back.dep_idx, s.dep_idx)
    assert back.meta == {"family": "toy"}
    assert back.dumps() == s.dumps()
