"""Amaranth HDL implementation of the datapath (built from emulator's configuration objects).

The hardware lands with the RTL issue; this package exists so the distribution's
layout is final. It holds no components yet.
"""
