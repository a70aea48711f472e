"""Model save/load on file:// against torch.save/torch.load of the same state dict, on the same disk.

The model is ``--layers`` (default 8) ``Linear(4096, 4096)`` layers: 537 MB of float32 parameters
(``--width`` and ``--layers`` change it). Measured, each as ``tensorhub / baseline`` of medians
over ``--repeats`` alternating runs, in one temporary directory for both sides:

* ``save``: ``hub.save_model(net, name)`` into a new, empty store against
  ``torch.save(net.state_dict(), path)`` into a new file (``os.sync()`` before each run,
  untimed, so no run pays for the previous one's dirty pages; neither side fsyncs);
* ``load into a module``: ``hub.find_model(name, into=net)`` against
  ``net.load_state_dict(torch.load(path))`` (both read files just written, from the page cache);
* ``load, rebuilding the class``: ``hub.find_model(name)`` (imports the class, builds it with
  its ``tensorhub_init_kwargs``, fills it) against ``BigMLP(...)`` + ``load_state_dict(torch.load(path))``;
* ``checkpoint save, 1 layer changed``: ``hub.save_model`` of the same network again, after a
  training step changed one layer, into the store that holds the previous checkpoint (only the
  changed tensors' chunks are written), against ``torch.save`` of the whole state dict again.

    python benchmarks/bench_models.py                  # 8 x Linear(4096, 4096), 537 MB
    python benchmarks/bench_models.py --quick          # 2 x Linear(2048, 2048), 34 MB, 3 repeats
    python benchmarks/bench_models.py --profile        # also print cProfile of save and load
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Result, bench_main, compare, profile, repeats_of  # noqa: E402

BENCH = "models"
PROJECT = "bench"
_unique = itertools.count()


def _model_class() -> Any:
    """``BigMLP``, defined on first use so that ``--help`` does not import torch."""
    import torch

    class BigMLP(torch.nn.Module):
        """``layers`` square Linear layers with ReLUs: a state dict of large float32 tensors."""

        def __init__(self, width: int = 4096, layers: int = 8) -> None:
            super().__init__()
            self.tensorhub_init_kwargs = {"width": width, "layers": layers}
            self.body = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x)

    BigMLP.__module__ = __name__
    BigMLP.__qualname__ = "BigMLP"
    globals()["BigMLP"] = BigMLP  # importable by its dotted path, as the torch adapter needs
    return BigMLP


def run(width: int = 4096, layers: int = 8, repeats: int = 5, tmpdir: str | None = None,
        show_profile: bool = False) -> list[Result]:
    import torch

    from tensorhub import TensorHub

    torch.manual_seed(0)
    cls = _model_class()
    net = cls(width, layers)
    size_mb = sum(t.numel() * t.element_size() for t in net.state_dict().values()) / 1e6
    label = f"{size_mb:.0f} MB"
    print(f"models: {layers} x Linear({width}, {width}), {label} of float32 parameters", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="tensorhub-bench-models-", dir=tmpdir))
    results: list[Result] = []
    try:
        def new_store(_: Any = None) -> TensorHub:
            os.sync()
            return TensorHub(f"file://{tmp / f'hub-{next(_unique)}'}", project_name=PROJECT)

        def drop_store(hub: TensorHub) -> None:
            hub.close()
            shutil.rmtree(hub.uri.removeprefix("file://"), ignore_errors=True)

        def new_path() -> Path:
            os.sync()
            return tmp / f"raw-{next(_unique)}.pt"

        def drop_path(path: Path) -> None:
            path.unlink(missing_ok=True)

        results.append(compare(
            BENCH, "file", f"save_model {label}", "torch.save(state_dict)", repeats=repeats,
            tensorhub=lambda hub: hub.save_model(net, "big"), raw=lambda path: torch.save(net.state_dict(), path),
            setup_tensorhub=new_store, setup_raw=new_path, teardown_tensorhub=drop_store, teardown_raw=drop_path))

        hub = new_store()
        hub.save_model(net, "big")
        path = tmp / "baseline.pt"
        torch.save(net.state_dict(), path)
        target = cls(width, layers)
        results.append(compare(
            BENCH, "file", f"find_model(into=net) {label}", "load_state_dict(torch.load)", repeats=repeats,
            tensorhub=lambda _: hub.find_model(model_name="big", into=target),
            raw=lambda _: target.load_state_dict(torch.load(path))))
        results.append(compare(
            BENCH, "file", f"find_model (rebuild class) {label}", "cls() + load_state_dict(torch.load)",
            repeats=repeats, tensorhub=lambda _: hub.find_model(model_name="big"),
            raw=lambda _: cls(width, layers).load_state_dict(torch.load(path))))

        step = itertools.count(1)

        def train_one_layer(value: Any = None) -> Any:
            with torch.no_grad():
                net.body[0].bias.fill_(next(step))  # one "training step" changed one layer
            os.sync()
            return value

        results.append(compare(
            BENCH, "file", f"checkpoint save_model, 1 layer changed, {label}", "torch.save(state_dict)",
            repeats=repeats, tensorhub=lambda _: hub.save_model(net, "big"),
            raw=lambda p: torch.save(net.state_dict(), p),
            setup_tensorhub=train_one_layer, setup_raw=lambda: train_one_layer(new_path()), teardown_raw=drop_path))
        if show_profile:
            print(profile("save_model", lambda: hub.save_model(net, "big", version="profile")))
            print(profile("find_model(into=)", lambda: hub.find_model(model_name="big", into=target)))
        drop_store(hub)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--width", type=int, default=None, help="features of each Linear layer (default 4096)")
    parser.add_argument("--layers", type=int, default=None, help="number of Linear layers (default 8)")


def from_args(args: argparse.Namespace, extras: dict[str, Any]) -> list[Result]:
    width = args.width or (2048 if args.quick else 4096)
    layers = args.layers or (2 if args.quick else 8)
    return run(width, layers, repeats_of(args), args.tmpdir, args.profile)


def main(argv: list[str] | None = None) -> int:
    return bench_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
