"""Polynomials over GF(2) as Python integers (bit i = coefficient of x^i).

Used to derive jump-ahead polynomials and to prove generator periods; every
function is exact integer arithmetic.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def clmul(a: int, b: int) -> int:
    """Carry-less product of two GF(2) polynomials."""
    if a < b:
        a, b = b, a
    result = 0
    while b:
        low = b & -b
        result ^= a << (low.bit_length() - 1)
        b ^= low
    return result


def polymod(a: int, p: int) -> int:
    """Remainder of ``a`` divided by ``p`` (``p`` non-zero)."""
    if p == 0:
        raise ZeroDivisionError("polynomial modulus is zero")
    dp = p.bit_length()
    while a.bit_length() >= dp:
        a ^= p << (a.bit_length() - dp)
    return a


def mulmod(a: int, b: int, p: int) -> int:
    return polymod(clmul(a, b), p)


def x_pow_mod(n: int, p: int) -> int:
    """x**n mod p by square-and-multiply (n >= 0)."""
    if n < 0:
        raise ValueError(f"exponent must be >= 0, got {n}")
    result = polymod(1, p)
    base = polymod(0b10, p)
    while n:
        if n & 1:
            result = mulmod(result, base, p)
        base = mulmod(base, base, p)
        n >>= 1
    return result


def berlekamp_massey(bits: Sequence[int]) -> int:
    """Connection polynomial of the shortest LFSR generating ``bits``.

    Returned as a monic polynomial of degree L with coefficient of x^L set,
    i.e. the characteristic polynomial of the linear recurrence.
    """
    n = len(bits)
    c = [0] * (n + 1)
    b = [0] * (n + 1)
    c[0] = b[0] = 1
    length, m = 0, -1
    for i in range(n):
        d = bits[i]
        for j in range(1, length + 1):
            d ^= c[j] & bits[i - j]
        if d:
            t = c[:]
            shift = i - m
            for j in range(n + 1 - shift):
                c[j + shift] ^= b[j]
            if 2 * length <= i:
                length, m, b = i + 1 - length, i, t
    # c is the connection polynomial C(x) = 1 + c1 x + ... ; the characteristic
    # polynomial is its reciprocal x^L C(1/x).
    poly = 0
    for j in range(length + 1):
        if c[j]:
            poly |= 1 << (length - j)
    return poly


def is_primitive(p: int, factors: Iterable[int]) -> bool:
    """True if ``p`` (degree d) is primitive, given the distinct prime factors of 2^d - 1."""
    d = p.bit_length() - 1
    order = (1 << d) - 1
    if x_pow_mod(order, p) != 1:
        return False
    return all(x_pow_mod(order // q, p) != 1 for q in factors)


def prime_factors(n: int) -> list[int]:
    """Distinct prime factors by trial division (for the small moduli used in tests)."""
    out = []
    f = 2
    while f * f <= n:
        if n % f == 0:
            out.append(f)
            while n % f == 0:
                n //= f
        f += 1 if f == 2 else 2
    if n > 1:
        out.append(n)
    return out


# Distinct prime factors of 2^128 - 1 = F0 F1 F2 F3 F4 F5 F6 (Fermat numbers; F5 and F6 composite).
FACTORS_2_128_MINUS_1 = (
    3,
    5,
    17,
    257,
    641,
    65537,
    274177,
    6700417,
    67280421310721,
)
