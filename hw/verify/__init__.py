"""Verification IP: run anyone's RTL of the update datapath against the golden model.

Everything a testbench needs comes from a manifest (:mod:`hw.verify.manifest`): the
configuration, lanes, latency, payload layout and register map. The parts:

* :mod:`hw.verify.beats` -- payload packing/unpacking (numpy, whole streams at once);
* :mod:`hw.verify.case` -- what one run is (:class:`Design`, :class:`CosimCase`), as JSON;
* :mod:`hw.verify.plan` -- the seeded random traffic plan and its expected words (the
  scoreboard's reference, computed with ``NumpyEngine`` before simulation);
* :mod:`hw.verify.tb` -- cocotb stream driver and monitor, control-bus driver, reset;
* :mod:`hw.verify.cocotb_top` -- the cocotb test module the simulator runs;
* :mod:`hw.verify.runner` -- ``cocotb_tools.runner`` on Icarus and Verilator, flags built in;
* :mod:`hw.verify.verify` -- ``verify(sources, manifest)``: what ``lpsgld verify`` runs;
* :mod:`hw.verify.mutate`, ``rerun``, ``throughput`` -- mutation check, reproduction, speed;
* :mod:`hw.verify.amaranth_sim` -- amaranth.sim host driver of ``UpdateTop`` (tests, examples);
* :mod:`hw.verify.vectorsim` -- vectorized evaluation of pipelined units (exhaustive checks).

Importing this package needs neither cocotb nor amaranth; the simulator parts import cocotb
when used. See docs/cosim.md and docs/hardware.md.
"""
