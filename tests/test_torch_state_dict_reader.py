"""Torch state dicts (``.pt`` / ``.pth`` / ``.bin``) read without mapping the file.

Hostile and changing files must give a one-line CheckpointError naming the file and, where
one is involved, the tensor (DESIGN.md "Reliability contract"), never garbage figures and
never a crash; every tensor read must equal ``torch.load(weights_only=True)`` bit for bit.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import subprocess
import sys
import textwrap
import zipfile
from unittest import mock

import numpy as np
import pytest
import torch
from contract import expect_error
from oracle import to_f64

import paramgeom.checkpoints.torch_zip as torch_zip
from paramgeom.checkpoints.reader import open_checkpoint
from paramgeom.cli import main

# --------------------------------------------------------------------------- helpers


def rewrite_zip(src, dst, edit=None, compress=(), zip64: bool = False) -> None:
    """Copy the zip ``src`` to ``dst`` record by record (stored, as torch writes them):
    ``edit(name, data) -> data`` may change a record's bytes; records whose name ends with
    an entry of ``compress`` are deflated instead; ``zip64`` gives every local header the
    zip64 extra field (as torch writes past 4 GiB)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if edit is not None:
                data = edit(info.filename, data)
            out = zipfile.ZipInfo(info.filename, date_time=info.date_time)
            deflate = info.filename.endswith(compress)
            out.compress_type = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
            with zout.open(out, "w", force_zip64=zip64) as f:
                f.write(data)


def record(name: str, key: str) -> bool:
    """True for the storage record ``<archive>/data/<key>``."""
    return name.split("/", 1)[-1] == f"data/{key}"


def raw(t: torch.Tensor) -> torch.Tensor:
    """A tensor's bytes, in logical (row-major) order."""
    return t.contiguous().reshape(-1).view(torch.uint8)


def assert_bits_equal(got: torch.Tensor, want: torch.Tensor) -> None:
    """Same dtype, shape and bytes, and the same exact float64 values (NaN where NaN)."""
    assert got.dtype == want.dtype and got.shape == want.shape
    assert got.is_contiguous()
    assert torch.equal(raw(got), raw(want))
    if got.dtype.is_complex:
        got, want = torch.view_as_real(got), torch.view_as_real(want)
    np.testing.assert_array_equal(to_f64(got), to_f64(want))


def oracle(path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


# --------------------------------------------------------------------------- values


def _dtype_views(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    base = (torch.randn(19, 23, generator=g) * 4).to(dtype)
    wide = torch.zeros(9, 2 * 11 + 1, dtype=dtype)
    wide[:, 1::2] = (torch.randn(9, 11, generator=g) * 3).to(dtype)
    cube = (torch.randn(5, 4, 3, generator=g) * 2).to(dtype)
    return {
        "contiguous": base,
        "tied": base,  # the same tensor under a second name: one storage in the file
        "transposed": base.t(),
        "rows": base[3:11],  # storage offset, contiguous
        "cols": wide[:, 1::2],  # storage offset and a column stride
        "permuted": cube.permute(2, 0, 1),
        "expanded": cube[0, 0].expand(6, 3),  # stride 0
        "scalar": base[2, 5],  # 0-d view at an offset
        "empty": base[4:4],
    }


DTYPES = [torch.bfloat16, torch.float16, torch.float32, torch.float8_e4m3fn, torch.float8_e5m2]


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_tensor_equals_torch_load_bit_for_bit(tmp_path, dtype, zip_format):
    """Contiguous, transposed, sliced, permuted, expanded, tied, 0-d and empty tensors of
    every float format: read whole and in row blocks, each equal to torch.load's."""
    if not zip_format and dtype.itemsize == 1:
        pytest.skip("torch.load cannot read fp8 storages of the legacy format")
    sd = {f"{k}.{str(dtype)[6:]}": v for k, v in _dtype_views(dtype).items()}
    sd["extra.fp32"] = torch.randn(3, 7)  # a second storage of another dtype
    path = tmp_path / "model.pt"
    torch.save(sd, path, _use_new_zipfile_serialization=zip_format)
    want = oracle(path)
    with open_checkpoint(path) as ck:
        assert list(ck.tensors) == list(sd)
        for name, w in want.items():
            assert ck.tensors[name].shape == tuple(w.shape)
            assert ck.tensors[name].nbytes == w.numel() * w.element_size()
            assert_bits_equal(ck.read(name), w)
            assert_bits_equal(ck.read(name, copy=False), w)
            if w.dim():
                n = w.shape[0]
                blocks = [(0, n), (0, 1), (1, n), (n // 3, n // 3 + 2), (n, n)]
                for start, stop in {(min(a, n), min(b, n)) for a, b in blocks}:
                    assert_bits_equal(ck.read_rows(name, start, stop), w[start:stop])


def test_reads_are_private_and_fresh(tmp_path):
    path = tmp_path / "x.pt"
    base = torch.arange(12.0).reshape(3, 4)
    torch.save({"w": base, "t": base}, path)
    with open_checkpoint(path) as ck:
        a = ck.read("w")
        a.add_(1.0)
        assert torch.equal(ck.read("w"), base) and torch.equal(ck.read("t"), base)
        assert ck.read("w").data_ptr() != ck.read("t").data_ptr()


def test_read_rows_reads_only_those_rows(tmp_path, monkeypatch):
    """A row block of a contiguous tensor costs its own bytes, not the tensor's."""
    path = tmp_path / "x.pt"
    torch.save({"w": torch.randn(64, 32)}, path)
    sizes = []
    real = torch_zip.pread_into

    def counting(fh, buf, offset):
        sizes.append(buf.numel())
        return real(fh, buf, offset)

    with open_checkpoint(path) as ck:
        monkeypatch.setattr(torch_zip, "pread_into", counting)
        ck.read_rows("w", 10, 13)
        ck.read("w")
    assert sizes == [3 * 32 * 4, 64 * 32 * 4]


def test_storage_saved_on_a_gpu_loads_to_cpu(tmp_path, monkeypatch):
    """A storage tagged "cuda:0" (saved from a GPU) reads to the CPU: map_location="cpu"."""
    path = tmp_path / "gpu.pt"
    sd = {"w": torch.randn(5, 3), "b": torch.randn(3).half()}
    with monkeypatch.context() as m:
        m.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        torch.save(sd, path)
    assert b"cuda:0" in zipfile.ZipFile(path).read("gpu/data.pkl")
    with open_checkpoint(path) as ck:
        for name, w in sd.items():
            out = ck.read(name)
            assert out.device.type == "cpu"
            assert_bits_equal(out, w)


def test_zip64_records(tmp_path):
    """Local headers with a zip64 extra field: data offsets come from each local header."""
    sd = {"w": torch.randn(33, 7), "b": torch.randn(7).half(), "t": torch.randn(5, 3).t()}
    plain, z64 = tmp_path / "plain.pt", tmp_path / "zip64.pt"
    torch.save(sd, plain)
    rewrite_zip(plain, z64, zip64=True)
    want = oracle(z64)
    with open_checkpoint(z64) as ck:
        for name, w in sd.items():
            assert torch.equal(raw(want[name]), raw(w))  # torch.load reads the file too
            assert_bits_equal(ck.read(name), w)


def test_big_endian_file_is_byteswapped(tmp_path):
    """A file written on a big-endian machine (byteorder record "big"), as torch.load reads it."""
    sd = {
        "f32": torch.randn(4, 5),
        "bf16": torch.randn(3, 2).to(torch.bfloat16),
        "c64": torch.randn(3, dtype=torch.complex64),
        "fp8": torch.randn(6).to(torch.float8_e4m3fn),
    }
    little, big = tmp_path / "little.pt", tmp_path / "big.pt"
    torch.save(sd, little)
    swap = {"0": np.float32, "1": np.uint16, "2": np.float32, "3": np.uint8}  # by key

    def to_big(name, data):
        if name.endswith("/byteorder"):
            return b"big"
        for key, np_type in swap.items():
            if record(name, key):
                return np.frombuffer(data, dtype=np_type).byteswap().tobytes()
        return data

    rewrite_zip(little, big, to_big)
    want = oracle(big)
    with open_checkpoint(big) as ck:
        for name, w in sd.items():
            assert torch.equal(raw(want[name]), raw(w))  # what torch.load calls big-endian
            assert_bits_equal(ck.read(name), w)
            assert_bits_equal(ck.read_rows(name, 1, 3), w[1:3])


# --------------------------------------------------------------------------- hostile files


def test_short_storage_record_is_refused_not_read_past(tmp_path):
    """A storage record shorter than its storage: torch.load(mmap=True) reads the next zip
    bytes as weights (garbage figures, exit 0); it must be an error naming the tensor."""
    good, bad = tmp_path / "good.pt", tmp_path / "bad.pt"
    torch.save({"a": torch.randn(64, 64), "b": torch.randn(64, 64)}, good)
    rewrite_zip(good, bad, lambda name, data: data[: len(data) // 2] if record(name, "1") else data)
    with expect_error("fewer than the 16384", bad, "'b'", "8192 bytes"):
        open_checkpoint(bad)


def test_diff_of_a_short_record_exits_2_with_one_line(tmp_path, capsys):
    """End to end: the command line refuses the file (was: exit 0, ||dW|| ~ 1e32)."""
    g = torch.Generator().manual_seed(5)
    sd = {f"layers.{i}.weight": torch.randn(48, 32, generator=g) for i in range(2)}
    base, good, tuned = tmp_path / "base.pt", tmp_path / "good.pt", tmp_path / "tuned.pt"
    torch.save(sd, base)
    torch.save({k: v + 0.01 for k, v in sd.items()}, good)
    rewrite_zip(good, tuned, lambda name, data: data[:-100] if record(name, "1") else data)
    capsys.readouterr()
    code = main(["diff", str(base), str(tuned), "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    assert str(tuned) in lines[0] and "layers.1.weight" in lines[0] and "fewer than" in lines[0]


def test_view_larger_than_its_storage_is_refused(tmp_path):
    """A pickle whose storage declares fewer elements than a tensor's view needs."""
    path = tmp_path / "view.pt"
    size = torch.storage.TypedStorage._size
    with mock.patch.object(torch.storage.TypedStorage, "_size", lambda s: size(s) - 1):
        torch.save({"w": torch.ones(4, 4)}, path)
    with expect_error("needs 64 bytes of its storage, which has 60", path, "'w'"):
        open_checkpoint(path)


def test_compressed_record_is_refused(tmp_path):
    good, bad = tmp_path / "good.pt", tmp_path / "deflated.pt"
    torch.save({"w": torch.zeros(256)}, good)
    rewrite_zip(good, bad, compress=("data/0",))
    with expect_error("is compressed", bad, "data/0"):
        open_checkpoint(bad)


def _patch_central_entry(path, suffix: str, offset: int, fmt: str, *values: int) -> None:
    """Overwrite a field of the central-directory entry of the record ending in ``suffix``."""
    blob = bytearray(path.read_bytes())
    pos = 0
    while (pos := blob.find(b"PK\x01\x02", pos + 1)) != -1:
        n_name = struct.unpack_from("<H", blob, pos + 28)[0]
        if bytes(blob[pos + 46 : pos + 46 + n_name]).endswith(suffix.encode()):
            struct.pack_into(fmt, blob, pos + offset, *values)
            path.write_bytes(bytes(blob))
            return
    raise AssertionError(f"no central entry for {suffix}")


@pytest.mark.parametrize(
    ("field", "fmt", "values"),
    [
        (20, "<II", (1 << 30, 1 << 30)),  # compressed and uncompressed sizes: 1 GiB
        (42, "<I", (0x7FFF_0000,)),  # local header offset past the end
    ],
    ids=["size", "offset"],
)
def test_record_outside_the_file_is_refused(tmp_path, field, fmt, values):
    path = tmp_path / "x.pt"
    torch.save({"w": torch.zeros(16)}, path)
    _patch_central_entry(path, "data/0", field, fmt, *values)
    with expect_error("lies outside the file", path, "data/0"):
        open_checkpoint(path)


def test_duplicate_record_names_are_refused(tmp_path):
    good, bad = tmp_path / "good.pt", tmp_path / "dup.pt"
    torch.save({"w": torch.ones(4)}, good)
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(bad, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info))
            if info.filename.endswith("data/0"):
                with pytest.warns(UserWarning, match="Duplicate"):
                    zout.writestr(info.filename, b"\0" * 16)
    with expect_error("two records named", bad, "data/0"):
        open_checkpoint(bad)


def test_missing_storage_record_is_refused(tmp_path):
    good, bad = tmp_path / "good.pt", tmp_path / "missing.pt"
    torch.save({"a": torch.ones(4), "b": torch.ones(2)}, good)
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(bad, "w") as zout:
        for info in zin.infolist():
            if not record(info.filename, "1"):
                zout.writestr(info.filename, zin.read(info))
    with expect_error("no zip record for its storage '1'", bad, "'b'"):
        open_checkpoint(bad)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_meta_tensor_is_refused_at_open(tmp_path, zip_format):
    path = tmp_path / "meta.pt"
    sd = {"ok": torch.ones(2), "w": torch.empty(4, 4, device="meta")}
    torch.save(sd, path, _use_new_zipfile_serialization=zip_format)
    with expect_error("meta device: the file holds no data", path, "'w'"):
        open_checkpoint(path)


class _Evil:
    marker = ""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("where", ["top", "wrapped"])
def test_malicious_pickle_is_refused_without_running_it(tmp_path, where):
    marker = tmp_path / "pwned"
    evil = _Evil()
    evil.marker = str(marker)
    path = tmp_path / "evil.pt"
    sd = {"w": torch.ones(2), "payload": evil}
    torch.save(sd if where == "top" else {"model": sd}, path)
    with expect_error("weights_only", path, "never unpickles"):
        open_checkpoint(path)
    assert not marker.exists()


def test_persistent_id_that_is_not_a_storage_is_refused(tmp_path):
    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", "not a storage type", "0", "cpu", 4) if obj == "x" else None

    good, bad = tmp_path / "good.pt", tmp_path / "bad.pt"
    torch.save({"w": torch.ones(4)}, good)

    def replace_pickle(name, data):
        if not name.endswith("/data.pkl"):
            return data
        out = io.BytesIO()
        Pickler(out, protocol=2).dump({"w": "x"})
        return out.getvalue()

    rewrite_zip(good, bad, replace_pickle)
    with expect_error("bad storage entry", bad):
        open_checkpoint(bad)


def test_refusal_raised_as_runtime_error_is_still_a_refusal(tmp_path, monkeypatch):
    """torch <= 2.4's weights_only unpickler refuses a global with RuntimeError."""
    path = tmp_path / "x.pt"
    torch.save({"w": torch.ones(2)}, path)
    ns = {"__name__": torch_zip.WeightsOnlyUnpickler.__module__}  # a frame of that module
    exec("def load(self):\n    raise RuntimeError('Unsupported global: GLOBAL os.system')", ns)
    monkeypatch.setattr(torch_zip.WeightsOnlyUnpickler, "load", ns["load"])
    with expect_error("refused the file.*GLOBAL os.system", path):
        open_checkpoint(path)


def test_tensor_that_torch_cannot_rebuild_is_corrupt_not_refused(tmp_path):
    """A negative storage offset: torch's set_ raises inside the rebuild function."""

    class Storage:
        pass

    class Tensor:
        def __reduce__(self):
            args = (Storage(), -1, (4,), (1,), False, collections.OrderedDict())
            return (torch._utils._rebuild_tensor_v2, args)

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.FloatStorage, "0", "cpu", 4) if type(obj) is Storage else None

    good, bad = tmp_path / "good.pt", tmp_path / "bad.pt"
    torch.save({"w": torch.ones(4)}, good)

    def replace_pickle(name, data):
        if not name.endswith("/data.pkl"):
            return data
        out = io.BytesIO()
        Pickler(out, protocol=2).dump({"w": Tensor()})
        return out.getvalue()

    rewrite_zip(good, bad, replace_pickle)
    with expect_error("not a readable torch state dict.*invalid storage offset -1", bad):
        open_checkpoint(bad)


def test_unsupported_tensor_kinds_give_one_line(tmp_path):
    sparse = tmp_path / "sparse.pt"
    torch.save({"w": torch.ones(2), "s": torch.eye(3).to_sparse()}, sparse)
    with expect_error("unsupported tensor layout", sparse, "'s'"):
        open_checkpoint(sparse)
    # the placeholders rebuilt from the file must not reach torch's next load
    assert not torch._utils._sparse_tensors_to_validate
    quantized = tmp_path / "q.pt"
    torch.save({"q": torch.quantize_per_tensor(torch.ones(4), 0.1, 0, torch.qint8)}, quantized)
    with expect_error("quantized or nested", quantized):
        open_checkpoint(quantized)


# --------------------------------------------------------------------------- changing files


_TRUNCATE_SCRIPT = textwrap.dedent(
    """
    import os, sys, torch
    from paramgeom.checkpoints.errors import CheckpointError
    from paramgeom.checkpoints.reader import open_checkpoint

    path = sys.argv[1]
    big = torch.arange(1 << 20, dtype=torch.float32).reshape(1024, 1024)
    torch.save({"a": big, "b": big.t(), "c": big[512:] * 2}, path)
    ck = open_checkpoint(path)
    ck.read("a")  # a first read before the file shrinks
    os.truncate(path, os.path.getsize(path) // 3)
    src = ck._source("a")
    errors = []
    for name in ("a", "b", "c"):
        for read in (lambda: ck.read(name), lambda: ck.read_rows(name, 400, 500),
                     lambda: src.get(name), lambda: src.get_rows(name, 400, 512)):
            try:
                read().clone()  # the source's own reads skip Checkpoint's pre-check
            except CheckpointError as exc:
                errors.append(str(exc))
            else:
                sys.exit(f"read {name} of a truncated file succeeded")
    print("\\n".join(errors))
    """
)


def test_file_truncated_after_open_is_an_error_not_a_crash(tmp_path):
    """Run in a child: a SIGBUS (a mapped page past the new end) shows as a failed test."""
    path = tmp_path / "x.pt"
    proc = subprocess.run(
        [sys.executable, "-c", _TRUNCATE_SCRIPT, str(path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    lines = proc.stdout.splitlines()
    assert len(lines) == 12 and all(str(path) in ln for ln in lines)
    assert any("file ends" in ln and "bytes into the tensor data" in ln for ln in lines)
    assert any("changed since" in ln for ln in lines)


def test_file_rewritten_during_a_read_is_reported_not_returned(tmp_path, monkeypatch):
    path = tmp_path / "x.pt"
    torch.save({"w": torch.ones(8, 8)}, path)
    real = torch_zip.pread_into

    def read_then_rewrite(fh, buf, offset):
        missing = real(fh, buf, offset)
        st = os.stat(path)  # another process rewrites the file in place, same size
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        return missing

    with open_checkpoint(path) as ck:
        monkeypatch.setattr(torch_zip, "pread_into", read_then_rewrite)
        with expect_error("changed since", path, "'w'"):
            ck.read("w")


def test_identity_of_a_torch_file(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"w": torch.ones(4)}, path)
    with open_checkpoint(path) as ck:
        ident = ck.identity(path)
        assert ident.size == path.stat().st_size and len(ident.header_sha256) == 64
    with open_checkpoint(path) as ck:
        assert ck.identity(path) == ident
