"""``tltorch-ext demo`` (the transfer-learning comparison), ``tltorch-ext rank`` (transferability
scores against fine-tuned accuracy) and ``tltorch-ext bench``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch


def _bench(args) -> int:
    from .benchmarking import harness  # noqa: PLC0415

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but torch sees no CUDA device")
    results = []
    for op in args.ops:
        for case in harness.cases(op, device, args.quick):
            if not args.quiet:
                print(f"[bench] {op}: {case.group}", file=sys.stderr, flush=True)
            results += harness.run_case(case, device, args.quick)
    print(harness.format_table(results))
    out = Path(args.out)
    name = harness.device_info(device)["name"].replace(" ", "_") if device.type == "cuda" else "cpu"
    stem = f"{name}{'-quick' if args.quick else ''}"
    harness.write_json(results, device, out / f"{stem}.json")
    harness.plot(results, out / f"{stem}.png")
    print(f"wrote {out / (stem + '.json')} and {out / (stem + '.png')}")
    if args.update_auto:
        from . import _backend  # noqa: PLC0415

        path = _backend.record_auto_orders(harness.fastest_backends(results, device.type))
        print(f"updated {path}")
    return 0


def _demo(args) -> int:
    from .demo import run_demo  # noqa: PLC0415

    return run_demo(args)


def _rank(args) -> int:
    from .demo.rank import run_rank  # noqa: PLC0415

    return run_rank(args)


def build_parser(demo_options: bool = True) -> argparse.ArgumentParser:
    """The tltorch-ext parser; without ``demo_options`` the demo package is not imported (the
    bench command leaves it out)."""
    from .benchmarking.harness import OPS  # noqa: PLC0415

    parser = argparse.ArgumentParser(prog="tltorch-ext", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    bench = sub.add_parser("bench", help="benchmark the fused ops against their alternatives")
    bench.add_argument("--ops", nargs="+", default=list(OPS), choices=OPS)
    bench.add_argument("--quick", action="store_true", help="fewer shapes and repetitions")
    bench.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    bench.add_argument("--out", default="benchmarks/results", help="folder for JSON and PNG")
    bench.add_argument("--update-auto", action="store_true",
                       help="record the fastest backend per op for the 'auto' choice, in the "
                       "user cache (tltorch_ext.explain_backend shows where)")
    bench.add_argument("--quiet", action="store_true")
    bench.set_defaults(func=_bench)

    demo = sub.add_parser("demo", help="fine-tuning methods compared on a small transfer task")
    if demo_options:
        from .demo import add_arguments  # noqa: PLC0415

        add_arguments(demo)
    demo.set_defaults(func=_demo)

    rank = sub.add_parser("rank", help="transferability scores rank candidate source models, "
                          "beside their fine-tuned accuracy (Kendall's tau)")
    if demo_options:
        from .demo.rank import add_rank_arguments  # noqa: PLC0415

        add_rank_arguments(rank)
    rank.set_defaults(func=_rank)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(demo_options=argv[:1] != ["bench"]).parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
