"""Amaranth HDL implementation of the datapath, built from the emulator's configuration objects.

* :mod:`hw.options`: ``HwOptions``: target (ice40-hx / dsp18 / generic) and pipeline depth;
* :mod:`hw.rng`: xoroshiro generator (transition and scrambler from ``XoroshiroSpec``);
* :mod:`hw.gaussian`: table Gaussian generator (table from ``GaussianSpec``);
* :mod:`hw.arith`: saturation, round-to-nearest, partial products, pipelined adder trees;
* :mod:`hw.datapath`: exact sum, SR rounder, VC quantizer, one update lane;
* :mod:`hw.top`: ``UpdateTop``, the L-lane stream top with control registers;
* :mod:`hw.control`: register map, ``seed_writes``, ``register_writes``;
* :mod:`hw.flows`: Verilog + JSON manifest export (``lpsgld rtl``), synthesis (``lpsgld synth``), the
  technology-independent gate count (``generic_area``);
* :mod:`hw.verify`: verification IP for anyone's RTL (manifest loader, cocotb driver / monitor /
  scoreboard, runner, ``lpsgld verify``, mutation check), ``amaranth.sim`` host driver, vectorized
  exhaustive evaluation.

See docs/hardware.md.
"""
