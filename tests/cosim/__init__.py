"""Co-verification of the exported ``hw.top.UpdateTop`` Verilog against the numpy engine.

pytest (``tests/hardware/test_cosim.py``) drives ``cocotb_tools.runner`` on Icarus and Verilator;
the cocotb side (``tests.cosim.cocotb_updatetop``) receives its whole configuration as
JSON (:class:`tests.cosim.case.CosimCase`), regenerates the seeded stimulus and the
expected words with the engine (vectorized, before simulation) and compares every
output word by equality. See ``docs/cosim.md``.
"""
