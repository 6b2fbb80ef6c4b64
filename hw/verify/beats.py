"""Beat payloads of the UpdateTop ports (HW_CONTRACT), packed and unpacked with numpy.

Sink payload, LSB first: ``keep`` (L bits), ``theta`` (L x S.W), ``grad`` (L x G.W).
Source payload, LSB first: ``keep`` (L bits), ``state`` (L x S.W), ``weight`` (L x Wf.W).
Packing turns a whole stream into Python ints once, before simulation, so the testbench
writes one precomputed integer per clock; unpacking the collected output ints is vectorized.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from emulator.spec.datapath import DatapathConfig


def _bits(words: np.ndarray, width: int) -> np.ndarray:
    """Two's-complement bits of int64 ``words`` (shape (n, k)) -> uint8 (n, k * width), LSB first."""
    u = words.astype(np.int64).view(np.uint64)[..., None] >> np.arange(width, dtype=np.uint64)
    return (u & np.uint64(1)).astype(np.uint8).reshape(words.shape[0], -1)


def _field(bits: np.ndarray, lo: int, width: int, count: int, signed: bool) -> np.ndarray:
    """``count`` fields of ``width`` bits starting at bit ``lo`` -> int64 (n, count)."""
    b = bits[:, lo:lo + width * count].reshape(bits.shape[0], count, width).astype(np.uint64)
    v = (b << np.arange(width, dtype=np.uint64)).sum(axis=2, dtype=np.uint64)
    if signed and width < 64:
        sign = np.uint64(1) << np.uint64(width - 1)
        v = (v ^ sign) - sign  # wraps in uint64: the two's-complement value
    return v.view(np.int64)


@dataclass(frozen=True)
class BeatLayout:
    lanes: int
    state_width: int
    grad_width: int
    weight_width: int

    @classmethod
    def of(cls, cfg: DatapathConfig) -> BeatLayout:
        return cls(cfg.lanes, cfg.state.width, cfg.grad.width, cfg.weight.width)

    @property
    def sink_width(self) -> int:
        return self.lanes * (1 + self.state_width + self.grad_width)

    @property
    def source_width(self) -> int:
        return self.lanes * (1 + self.state_width + self.weight_width)

    def pack_sink(self, keep: np.ndarray, theta: np.ndarray, grad: np.ndarray) -> list[int]:
        """One int per beat from (beats, L) arrays: bool keep, int64 theta and grad words."""
        bits = np.concatenate(
            [keep.astype(np.uint8), _bits(theta, self.state_width), _bits(grad, self.grad_width)], axis=1
        )
        return _to_ints(bits)

    def pack_source(self, keep: np.ndarray, state: np.ndarray, weight: np.ndarray) -> list[int]:
        """Output beats as ints (used to test unpacking and to build stand-ins)."""
        bits = np.concatenate(
            [keep.astype(np.uint8), _bits(state, self.state_width), _bits(weight, self.weight_width)], axis=1
        )
        return _to_ints(bits)

    def unpack_sink(self, beats: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        bits = _from_ints(beats, self.sink_width)
        L, s, g = self.lanes, self.state_width, self.grad_width
        keep = bits[:, :L].astype(bool)
        return keep, _field(bits, L, s, L, True), _field(bits, L + L * s, g, L, True)

    def unpack_source(self, beats: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(keep bool, state int64, weight int64), each (len(beats), L)."""
        bits = _from_ints(beats, self.source_width)
        L, s, w = self.lanes, self.state_width, self.weight_width
        keep = bits[:, :L].astype(bool)
        return keep, _field(bits, L, s, L, True), _field(bits, L + L * s, w, L, True)


def _to_ints(bits: np.ndarray) -> list[int]:
    packed = np.packbits(bits, axis=1, bitorder="little")
    return [int.from_bytes(row.tobytes(), "little") for row in packed]


def _from_ints(beats: list[int], width: int) -> np.ndarray:
    nbytes = (width + 7) // 8
    if any(b < 0 or b >> width for b in beats):
        raise ValueError(f"beat value outside {width} bits")
    raw = b"".join(b.to_bytes(nbytes, "little") for b in beats)
    arr = np.frombuffer(raw, dtype=np.uint8).reshape(len(beats), nbytes)
    return np.unpackbits(arr, axis=1, bitorder="little")[:, :width]
