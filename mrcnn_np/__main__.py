"""Command line: ``python -m mrcnn_np {figures,bench} ...``.

- ``figures``: execute every notebook in ``notebooks/`` top to bottom, in
  place (outputs refreshed, written atomically); the notebooks regenerate the
  figures in ``images/``. Needs the ``notebooks`` extra
  (``pip install -e '.[notebooks]'``) and a source checkout.
- ``bench``: run the speed benchmarks in ``benchmarks/`` (each prints its own
  table). Run it with ``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE`` on
  machines that set those variables (they halve NumPy's GEMM).

The training demo (``demo``, ``train``, ``evaluate``, ``predict``) arrives
with the model; until then ``figures`` is the main job.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from ._atomic import atomic_path

REPO = Path(__file__).resolve().parents[1]


def _checkout_dir(name):
    path = REPO / name
    if not path.is_dir():
        raise SystemExit(
            f"{name}/ not found next to the package ({path}); "
            "run from a source checkout installed with `pip install -e .`"
        )
    return path


def run_figures(patterns, timeout):
    """Execute the selected notebooks in place; returns the list of paths."""
    try:
        import nbformat
        from nbconvert.preprocessors import ExecutePreprocessor
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise SystemExit(
            f"`figures` needs jupyter ({exc}); install with: pip install -e '.[notebooks]'"
        ) from exc
    from tqdm.auto import tqdm

    nb_dir = _checkout_dir("notebooks")
    paths = sorted(p for pat in patterns for p in nb_dir.glob(pat))
    if not paths:
        raise SystemExit(f"no notebook in {nb_dir} matches {patterns}")
    for path in tqdm(paths, desc="notebooks", unit="nb"):
        nb = nbformat.read(path, as_version=4)
        ExecutePreprocessor(timeout=timeout, kernel_name="python3").preprocess(
            nb, {"metadata": {"path": str(nb_dir)}}
        )
        with atomic_path(path) as tmp:
            nbformat.write(nb, str(tmp))
    return paths


def run_bench(names):
    """Run ``benchmarks/bench_<name>.py`` for each name (all when empty)."""
    bench_dir = _checkout_dir("benchmarks")
    scripts = sorted(bench_dir.glob("bench_*.py"))
    if names:
        wanted = {f"bench_{n}.py" for n in names}
        unknown = wanted - {s.name for s in scripts}
        if unknown:
            raise SystemExit(f"unknown benchmark(s) {sorted(unknown)}; have {[s.stem[6:] for s in scripts]}")
        scripts = [s for s in scripts if s.name in wanted]
    for script in scripts:
        print(f"== {script.name}", flush=True)
        subprocess.run([sys.executable, str(script)], check=True)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m mrcnn_np", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    fig = sub.add_parser("figures", help="execute the notebooks in place and regenerate images/")
    fig.add_argument("patterns", nargs="*", default=["*.ipynb"], help="notebook glob(s), default all")
    fig.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    bench = sub.add_parser("bench", help="run the speed benchmarks")
    bench.add_argument("names", nargs="*", help="e.g. conv nms roi_align (default: all)")
    args = parser.parse_args(argv)
    if args.command == "figures":
        for path in run_figures(args.patterns, args.timeout):
            print(f"executed {path.relative_to(REPO)}")
        print(f"figures in {REPO / 'images'}")
    elif args.command == "bench":
        run_bench(args.names)
    return 0


if __name__ == "__main__":
    sys.exit(main())
