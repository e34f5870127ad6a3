"""Deployment speed: onnxruntime vs eager forward of the full-size Restormer, PromptIR and AnyIR.

    OMP_NUM_THREADS=2 pytest tests/benchmarks/test_bench_export.py --benchmark-only -s
    OMP_NUM_THREADS=2 pytest tests/benchmarks/test_bench_export.py --benchmark-only -s -k anyir

Each network is built as users build it (``torch.manual_seed(0)``,
``irblocks.create_model(name).eval()``, our default execution) and exported once per session
with ``irblocks.export.export_onnx`` (what ``irblocks export NAME`` writes; minutes per
full-size network on this 2-core CPU). ``$IRBLOCKS_BENCH_ONNX_DIR`` names a folder that keeps
the files between sessions (``NAME.onnx``, exported when missing, reused otherwise).

Before timing, the file is checked against the model it is timed against: onnxruntime equals
eager within 1e-4 relative (max |ort - eager| / max |eager|) at 1 x 3 x 64 x 64 and
1 x 3 x 57 x 83 (not multiples of 8), so a stale reused file fails instead of being timed.
This is also the full-size counterpart of tests/test_export.py (tiny variants): the full-size
exports take minutes each, too long for the suite.

Groups "<name> deploy 1x3xSxS", S = 128, 256, 512: eager (``model(x)`` under ``no_grad``) and
onnxruntime (``InferenceSession.run``, CPUExecutionProvider) in the same run. The second prints
eager / onnxruntime of the medians and of the minima (the run least disturbed by other jobs on
a shared machine) and stores them in ``extra_info["speedup"]`` and ``["speedup_min"]``; both
store the thread count.
onnxruntime runs with its default session options (all graph optimisations, sequential
execution) except one: its intra-op thread count is set to torch's
(``torch.get_num_threads()``, which tests/conftest.py sets from ``OMP_NUM_THREADS``, 1 unless
given). onnxruntime's default is the number of physical cores and ignores ``OMP_NUM_THREADS``
(onnxruntime.ai, "Thread management"), so without this the two would run on different thread
counts whenever OMP_NUM_THREADS differs from the core count.
"""
import os
from pathlib import Path

import pytest
import torch

import irblocks

_EXTRA = "needs the export extra: pip install 'irblocks[export]'"
onnxruntime = pytest.importorskip("onnxruntime", reason=_EXTRA)
pytest.importorskip("onnx", reason=_EXTRA)
pytest.importorskip("onnxscript", reason=_EXTRA)

from irblocks.export import export_onnx  # noqa: E402
from tests._compare import rel_error as _rel  # noqa: E402

MODELS = ["restormer", "promptir", "anyir"]
SIZES = [128, 256, 512]
CHECK_SIZES = [(1, 3, 64, 64), (1, 3, 57, 83)]
ONNX_DIR_ENV = "IRBLOCKS_BENCH_ONNX_DIR"
_TIMES: dict = {}


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """name -> (eager model, onnxruntime session), one export per network and session; one
    full-size network in memory at a time."""
    cache: dict = {}

    def get(name):
        if name not in cache:
            cache.clear()
            torch.manual_seed(0)                      # what `irblocks export NAME` builds
            model = irblocks.create_model(name).eval()
            folder = os.environ.get(ONNX_DIR_ENV)
            folder = Path(folder) if folder else tmp_path_factory.mktemp("onnx")
            path = folder / f"{name}.onnx"
            if not path.exists():
                export_onnx(model, path, name)
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = torch.get_num_threads()     # see the docstring
            session = onnxruntime.InferenceSession(str(path), options,
                                                   providers=["CPUExecutionProvider"])
            for size in CHECK_SIZES:
                x = torch.rand(size)
                with torch.no_grad():
                    ref = model(x)
                got = torch.from_numpy(session.run(None, {"image": x.numpy()})[0])
                if got.shape != ref.shape or _rel(got, ref) > 1e-4:
                    pytest.fail(f"{path}: onnxruntime differs from eager {name} at {size} "
                                f"(shape {tuple(got.shape)}, rel {_rel(got, ref):.2e} > 1e-4); "
                                f"a stale file in ${ONNX_DIR_ENV}? delete it to re-export")
            cache[name] = model, session
        return cache[name]
    return get


@pytest.mark.parametrize("backend", ["eager", "onnxruntime"])
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", MODELS)
def test_deploy_forward(benchmark, deployed, name, size, backend):
    model, session = deployed(name)
    benchmark.group = f"{name} deploy 1x3x{size}x{size}"
    x = torch.rand(1, 3, size, size)
    if backend == "eager":
        def run():
            with torch.no_grad():
                return model(x)
    else:
        feed = {"image": x.numpy()}

        def run():
            return session.run(None, feed)

    benchmark.pedantic(run, rounds=3, warmup_rounds=1, iterations=1)
    benchmark.extra_info["threads"] = torch.get_num_threads()     # torch's and onnxruntime's
    stats = benchmark.stats.stats
    _TIMES[(name, size, backend)] = stats.median, stats.min
    eager, ort = _TIMES.get((name, size, "eager")), _TIMES.get((name, size, "onnxruntime"))
    if eager and ort:
        benchmark.extra_info["speedup"] = round(eager[0] / ort[0], 3)
        benchmark.extra_info["speedup_min"] = round(eager[1] / ort[1], 3)
        print(f"\n{name} 1x3x{size}x{size}: eager {eager[0] * 1e3:.0f} ms (min "
              f"{eager[1] * 1e3:.0f}), onnxruntime {ort[0] * 1e3:.0f} ms (min {ort[1] * 1e3:.0f}), "
              f"eager / onnxruntime = {eager[0] / ort[0]:.2f}x medians, "
              f"{eager[1] / ort[1]:.2f}x minima ({torch.get_num_threads()} threads each)")
