"""What the hardware computes, and nothing else: number formats and rounding, the lane generator and
its GF(2) algebra, the Gaussian generator, the fixed-point and BFP datapath rules, the host register
rule, and the shipped configurations. Plain frozen objects and integer functions; imports nothing
from the layers above (docs/architecture.md)."""
