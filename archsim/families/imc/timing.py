"""Numba timing kernel of the dmatrix-like family: cycles of each instruction.

A DIMC core is a two-rate engine plus a fixed latency (shared/reference/dmatrix-dimc.md §2.1,
§7): it brings ``touch_bits_per_cycle`` of stored weights into multiply-accumulate per cycle
and forms ``bit_products_per_cycle`` weight-bit x input-bit products per cycle. A tile of
``rows x cols`` weights is swept in ``rows x cols x w_bits / touch_bits`` cycles, and each
sweep (a *pass*) serves ``lanes = bit_products / (touch_bits x in_bits)`` input vectors, so
that a full pass runs exactly at the MAC rate ``bit_products / (w_bits x in_bits)``. Every
helper of a kernel lives in this file and every number arrives as an argument. Equations:
docs/arch/dmatrix-like.md.
"""

from __future__ import annotations

import math

import numpy as np

from archsim.core.isa import Timing
from archsim.core.jit import njit

# opcodes, in this order
OPCODES = ["dimc", "simd", "write", "load", "store", "d2d", "link", "sync"]
DIMC, SIMD, WRITE, LOAD, STORE, D2D, LINK, SYNC = range(8)
# link kinds (n column of a link instruction)
BRIDGE, PCIE, NIC = range(3)
LINK_KINDS = ("bridge", "pcie", "nic")


@njit
def tile_pass_cycles(vectors, w_bits, in_bits, rows, cols, touch_bits, products, in_place, serial):
    """Cycles one core spends multiplying one resident tile by ``vectors`` input vectors.

    in place (reading B): only the MAC rate binds, bit-granular:
        ceil(vectors x rows x cols x w_bits x in_bits / products);
    weight touch (reading A): sweep = ceil(rows x cols x w_bits / touch_bits) cycles serving
    lanes = products / (touch_bits x in_bits) vectors (bit-parallel), so
        ceil(vectors / lanes) x sweep;
    bit-serial inputs hold each touched row for in_bits cycles and serve in_bits x lanes
    vectors (one bit of each per cycle): ceil(vectors / (lanes x in_bits)) x sweep x in_bits.
    """
    if vectors <= 0:
        return 0
    elems = rows * cols
    if in_place:
        return (vectors * elems * w_bits * in_bits + products - 1) // products
    sweep = (elems * w_bits + touch_bits - 1) // touch_bits
    lanes = max(1, products // (touch_bits * in_bits))
    if serial:
        per = lanes * in_bits
        return ((vectors + per - 1) // per) * sweep * in_bits
    return ((vectors + lanes - 1) // lanes) * sweep


@njit
def imc_durations(
    opcode, m, n, k, g, h, aux,
    rows, cols, touch_bits, products, in_place, serial, dimc_lat, write_bits,
    lanes, tr_cycles, simd_lat, lpddr_lat, d2d_hop, link_lat, layer_cycles, step_cycles,
):  # fmt: skip
    """(work, latency) of every instruction, in cycles.

    Columns: dimc m=vectors n=tiles on the busiest core g=weight bits h=input bits;
    simd m=elements on the busiest chiplet n=fp ops per element k=transcendentals per element
    g=transcendentals per row (rows = aux) h=cross-lane reduction steps;
    write/load/store m=bits written into (read from) the busiest core's arrays;
    d2d m=phases n=hops k=elements added per chiplet (reduce-scatter);
    link m=hops n=link kind; sync m=0 a layer's, m=1 a step's fixed latency (no unit held).
    """
    n_ins = opcode.shape[0]
    work = np.zeros(n_ins, dtype=np.int64)
    lat = np.zeros(n_ins, dtype=np.int64)
    for i in range(n_ins):
        op = opcode[i]
        if op == DIMC:
            per = tile_pass_cycles(
                m[i], g[i], h[i], rows, cols, touch_bits, products, in_place, serial
            )
            work[i] = n[i] * per
            lat[i] = dimc_lat
        elif op == SIMD:
            ops = m[i] * n[i] + m[i] * k[i] * tr_cycles + aux[i] * g[i] * tr_cycles
            work[i] = max(1, (ops + lanes - 1) // lanes)
            lat[i] = simd_lat + h[i]
        elif op == WRITE:
            work[i] = max(1, (m[i] + write_bits - 1) // write_bits)
        elif op in (LOAD, STORE):
            work[i] = max(1, (m[i] + write_bits - 1) // write_bits)
            lat[i] = lpddr_lat
        elif op == D2D:
            work[i] = 1
            lat[i] = m[i] * n[i] * d2d_hop + (k[i] + lanes - 1) // lanes
        elif op == LINK:
            work[i] = 1
            lat[i] = m[i] * link_lat[n[i]]
        elif op == SYNC:
            lat[i] = step_cycles if m[i] == 1 else layer_cycles
    return work, lat


# ---- glue: the config -> the kernel's arguments (plain Python) ------------------------------
def cycles_of(seconds: float, clock_hz: float) -> int:
    return math.ceil(seconds * clock_hz - 1e-9)


def dimc_args(p) -> tuple:
    """(rows, cols, touch_bits, products, in_place, serial) of the DIMC equations."""
    d = p.dimc
    return (
        d.tile_rows, d.tile_cols, d.touch_bits_per_cycle, d.bit_products_per_cycle,
        d.touch_model == "in_place", d.input_mode == "bit_serial",
    )  # fmt: skip


def resource_bytes_per_cycle(name: str, p) -> float:
    """Bandwidth of a per-card resource, by its suffix (``card3.lpddr``, ``card3.d2d``, ...)."""
    c, ln = p.card, p.links
    kind = name.rsplit(".", 1)[-1]
    bw = {
        "lpddr": p.memory.lpddr_bw_bytes_per_s,
        "d2d": ln.d2d_bw_bytes_per_s * c.chiplets,
        "bridge": ln.bridge_bw_bytes_per_s,
        "pcie": ln.pcie_bw_bytes_per_s,
        "nic": ln.nic_bw_bytes_per_s,
    }[kind]
    return bw / c.clock_hz


def imc_timing(stream, p) -> Timing:
    """Cycles of every instruction. The LPDDR read queue of a card streams one chunk at a
    time (a load holds it until its bytes are in), so a card's reloads follow each other at
    the full bandwidth and prefetch in order; stores of new K/V go through the write queue and
    share the LPDDR with the reads in flight. An array write holds its unit only while it
    writes (its ``work``); transfers free their port at once; a fixed latency holds nothing
    (micro-batches overlap it)."""
    c, d, s, ln = p.card, p.dimc, p.simd, p.links
    clock = c.clock_hz
    link_lat = np.array([cycles_of(x, clock) for x in
                         (ln.bridge_latency_s, ln.pcie_latency_s, ln.nic_latency_s)],
                        dtype=np.int64)  # fmt: skip
    st = stream
    work, lat = imc_durations(
        st.opcode, st.m, st.n, st.k, st.g, st.h, st.aux,
        *dimc_args(p), d.pipeline_latency_cycles, d.write_bits_per_cycle,
        s.lanes_per_chiplet, s.transcendental_cycles, s.latency_cycles,
        cycles_of(p.memory.lpddr_latency_s, clock), cycles_of(ln.d2d_hop_latency_s, clock),
        link_lat, cycles_of(p.compiler.layer_overhead_s, clock),
        cycles_of(p.compiler.step_overhead_s, clock),
    )  # fmt: skip
    interval = np.full(len(work), -1, dtype=np.int64)
    flows = np.isin(st.opcode, (STORE, WRITE, D2D, LINK, SYNC))
    interval[flows] = work[flows]
    bw = np.array([resource_bytes_per_cycle(r, p) for r in st.resource_names], dtype=np.float64)
    return Timing(work=work, latency=lat, interval=interval, resource_bw=bw)
