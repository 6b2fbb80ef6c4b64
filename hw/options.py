"""Implementation choices that never change the integers: target technology and pipeline depth.

``HwOptions(target, pipeline)`` is handed to every datapath unit (and ``UpdateTop``,
``export``, ``lpsgld rtl`` / ``lpsgld synth``). Whatever the choice, the lane computes the
golden model's words; only the structure of the multipliers and where the registers sit
change (docs/hardware.md, "Targets and pipeline depth").

* ``ice40-hx`` (default, the shipped RTL): no DSP blocks. Every product is split into
  2-bit digit products of the narrower operand (one adder deep each), summed by the tree;
  wide exact-sum adders are carry-select adders (``HwOptions.max_carry``).
* ``dsp18``: devices with 18x18 multipliers (ECP5 MULT18X18D, iCE40 UP5K SB_MAC16,
  Xilinx / Intel DSPs). Whole products, one multiplier each, the product registered right
  after the multiplier (where the DSP's output register is; Yosys's ECP5 mapping leaves it in
  the fabric); an operand wider than 18 signed bits is split into 17-bit
  digits so that every multiplier still fits 18x18. The VC squarer stays in logic (the
  ``ice40-hx`` symmetric digit squarer): DSP blocks are the scarce resource (28 on an
  ECP5-25K, 8 on a UP5K) and a VC lane then needs 3, not 4. The Gaussian table output
  gets a register of its own (block-RAM output, e.g. ECP5 DP16KD, is slow).
* ``generic`` (ASIC flows): whole products written as ``a * b`` (the synthesis tool picks
  the multiplier architecture), table output registered as for ``dsp18``.

``pipeline = k``: every k-th level of each adder tree (exact sum, squarer, Gaussian sum)
is registered, and always the root; ``k = 1`` registers every level (the shipped RTL).
The leaves (products, table look-ups) are always registered. Latency follows from the
choice: ``hw.datapath.lane_latency(cfg, opts)``.
"""

from __future__ import annotations

from dataclasses import dataclass

TARGETS = ("ice40-hx", "dsp18", "generic")
MAX_PIPELINE = 8
DSP_DIGIT_BITS = 17  # an unsigned 17-bit digit is an 18-bit signed DSP operand
DSP_OPERAND_BITS = 18
ICE40_MAX_CARRY = 32  # iCE40 HX: adders above 32 bits are carry-select adders ...
ICE40_WIDE_SUM = 40  # ... or above 40 bits in an exact sum wider than 40 (HwOptions.max_carry)


@dataclass(frozen=True)
class HwOptions:
    """``target`` (one of :data:`TARGETS`) and ``pipeline`` (register every k-th adder level)."""

    target: str = "ice40-hx"
    pipeline: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.target, str):
            raise TypeError(f"target must be a str, one of {', '.join(TARGETS)}; got {self.target!r}")
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {', '.join(TARGETS)}; got {self.target!r}")
        if isinstance(self.pipeline, bool) or not isinstance(self.pipeline, int):
            raise TypeError(f"pipeline must be an int, got {self.pipeline!r}")
        if not 1 <= self.pipeline <= MAX_PIPELINE:
            raise ValueError(f"pipeline must be in [1, {MAX_PIPELINE}] (register every k-th adder level), "
                             f"got {self.pipeline}")

    @property
    def default(self) -> bool:
        return self == HwOptions()

    @property
    def digit_products(self) -> bool:
        """Products as 2-bit digit products (no DSP blocks)."""
        return self.target == "ice40-hx"

    def max_carry(self, sum_width: int) -> int | None:
        """Widest plain adder of an exact-sum tree whose root is ``sum_width`` bits; wider ones are
        carry-select adders. None: no limit (the tool's adders).

        iCE40 HX: a 34-cell chain runs at 119-121 MHz, so adders above 32 bits are split; where the
        sum is wider than ``ICE40_WIDE_SUM`` (w8-lpf: 50 bits) the halves of its widest adders and
        their multiplexer set the clock anyway, and only adders above that width are split
        (splitting the 33-40-bit ones too cost w8-lpf 143 LUT4 for no gain, docs/synthesis.md).
        """
        if self.target != "ice40-hx":
            return None
        return ICE40_MAX_CARRY if sum_width <= ICE40_WIDE_SUM else ICE40_WIDE_SUM

    @property
    def squares_in_logic(self) -> bool:
        """The VC squarer as 2-bit digit products in logic (``ice40-hx``, and ``dsp18``, where each
        DSP block goes to one of the exact sum's products: 3 per VC lane, so 8 lanes fit 28)."""
        return self.target != "generic"

    @property
    def register_table(self) -> bool:
        """An extra register on the Gaussian table (block-RAM) output."""
        return self.target != "ice40-hx"

    @property
    def suffix(self) -> str:
        """Module-name suffix: '' for the defaults, else ``_<target>_p<k>`` (dashes as underscores)."""
        if self.default:
            return ""
        return f"_{self.target.replace('-', '_')}_p{self.pipeline}"

    def to_dict(self) -> dict[str, object]:
        return {"target": self.target, "pipeline": self.pipeline}


def check_options(opts: object) -> HwOptions:
    if opts is None:
        return HwOptions()
    if not isinstance(opts, HwOptions):
        raise TypeError(f"opts must be an hw.options.HwOptions, got {type(opts).__name__}")
    return opts


def tree_levels(depth: int, pipeline: int) -> int:
    """Registered levels of an adder tree of ``depth`` levels when every ``pipeline``-th is registered."""
    return -(-depth // pipeline)


def registered_level(level: int, depth: int, pipeline: int) -> bool:
    """Whether level ``level`` (0-based) of a ``depth``-level tree gets a register: every k-th and the root."""
    return (level + 1) % pipeline == 0 or level == depth - 1
