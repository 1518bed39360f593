"""The .psic container: exact round trips, and a clear ContainerError for every bad file."""

from __future__ import annotations

import json
import struct
import types
import zlib

import pytest
import torch

from psic_adapter.bitstream import container
from psic_adapter.bitstream.container import ContainerHeader, pack, unpack
from psic_adapter.errors import ContainerError, OverwriteError

from .conftest import make_codec


def _image(h: int = 64, w: int = 64, seed: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    small = torch.rand(1, 3, 8, 8, generator=g)
    return torch.nn.functional.interpolate(small, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)


def _header(**kw) -> ContainerHeader:
    # format 2: the padded size the image size implies, and a latent checksum (required)
    base = dict(codec="bmshj2018-hyperprior", quality=1, height=64, width=64, base_fingerprint="ab" * 16,
                tables_hash="cd" * 8, dims={"N": 128, "M": 192}, padded=(64, 64), latent_check=[0.0, 1.5])
    base.update(kw)
    return ContainerHeader(**base)


def _with_crc(body: bytes) -> bytes:
    return body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def _raw_file(header_bytes: bytes, payload: bytes = b"abc", version: int = container.PLAIN_FORMAT_VERSION) -> bytes:
    """A file with a valid checksum around any header bytes (to reach the header checks)."""
    return _with_crc(struct.pack(">4sBI", container.MAGIC, version, len(header_bytes)) + header_bytes + payload)


@pytest.fixture(scope="module")
def hp_file(hyperprior):
    x = _image()
    with torch.no_grad():
        enc = hyperprior.compress(x)
        direct = hyperprior.decompress(enc["strings"], enc["shape"])["x_hat"]
    # an alpha plane belongs to an RGBA image, and its decompressed size is the plane's
    alpha = zlib.compress(bytes(range(256)) * 16)
    data = pack(enc["strings"], enc["shape"], _header(mode="RGBA", alpha_raw_len=64 * 64), alpha=alpha)
    return {"enc": enc, "direct": direct, "data": data, "alpha": alpha}


@pytest.fixture(scope="module")
def elic():
    return make_codec("elic2022-official")


# ------------------------------------------------------------------ round trips
def test_round_trip_hyperprior(hyperprior, hp_file):
    enc, data = hp_file["enc"], hp_file["data"]
    assert data[:4] == b"PSIC" and data[4] == container.PLAIN_FORMAT_VERSION
    got, header, alpha = unpack(data)
    assert got["strings"] == enc["strings"]  # the codec's bytes, unchanged
    assert got["shape"] == tuple(enc["shape"])
    assert alpha == hp_file["alpha"]
    assert (header.codec, header.quality, header.height, header.width) == ("bmshj2018-hyperprior", 1, 64, 64)
    assert header.dims == {"N": 128, "M": 192} and header.base_fingerprint == "ab" * 16
    assert header.alpha_len == len(hp_file["alpha"]) and header.alpha_raw_len == 64 * 64
    assert header.mode == "RGBA" and header.latent_check == [0.0, 1.5] and header.version == container.PLAIN_FORMAT_VERSION
    with torch.no_grad():
        x_hat = hyperprior.decompress(got["strings"], got["shape"])["x_hat"]
    assert torch.equal(x_hat, hp_file["direct"])
    # the file is the header plus the codec's bytes plus the alpha plane plus a CRC: nothing hidden
    stream = sum(len(s) for part in enc["strings"] for s in part)
    hlen = struct.unpack(">I", data[5:9])[0]
    assert len(data) == 9 + hlen + stream + len(hp_file["alpha"]) + 4


def test_round_trip_nested_strings_and_dict_shape(elic):
    x = _image(seed=5)
    with torch.no_grad():
        enc = elic.compress(x)
        direct = elic.decompress(enc["strings"], enc["shape"])["x_hat"]
    assert isinstance(enc["shape"], dict)  # ELIC: {"y": [Size, ...], "hyper": Size}
    data = pack(enc["strings"], enc["shape"], _header(codec="elic2022-official", quality=None))
    got, header, alpha = unpack(data)
    assert got["strings"] == enc["strings"]
    assert set(got["shape"]) == set(enc["shape"])
    assert [tuple(s) for s in got["shape"]["y"]] == [tuple(s) for s in enc["shape"]["y"]]
    assert tuple(got["shape"]["hyper"]) == tuple(enc["shape"]["hyper"])
    assert alpha == b"" and header.alpha_len == 0
    with torch.no_grad():
        x_hat = elic.decompress(got["strings"], got["shape"])["x_hat"]
    assert torch.equal(x_hat, direct)


def test_write_and_read_a_file(hp_file, tmp_path):
    path = container.write(tmp_path / "sub" / "a.psic", hp_file["data"])
    assert path.read_bytes() == hp_file["data"]
    assert not (tmp_path / "sub" / "a.psic.part").exists()
    got, header, _ = container.read(path)
    assert got["strings"] == hp_file["enc"]["strings"]


def test_write_refuses_to_overwrite_without_force(hp_file, tmp_path):
    path = tmp_path / "a.psic"
    path.write_bytes(b"precious")
    with pytest.raises(OverwriteError, match="exists"):
        container.write(path, hp_file["data"])
    assert path.read_bytes() == b"precious"
    container.write(path, hp_file["data"], force=True)
    assert path.read_bytes() == hp_file["data"]


def test_read_missing_file_names_it(tmp_path):
    with pytest.raises(ContainerError, match=r"nope\.psic: no such file"):
        container.read(tmp_path / "nope.psic")


# ------------------------------------------------------------------ bad files
@pytest.mark.parametrize("where", ["empty", "in magic", "in prefix", "in header", "in payload", "in crc", "last byte"])
def test_truncated_file(hp_file, where, tmp_path):
    data = hp_file["data"]
    hlen = struct.unpack(">I", data[5:9])[0]
    cut = {
        "empty": 0,
        "in magic": 2,
        "in prefix": 7,
        "in header": 9 + hlen // 2,
        "in payload": 9 + hlen + 10,
        "in crc": len(data) - 2,
        "last byte": len(data) - 1,
    }[where]
    with pytest.raises(ContainerError, match="truncated|empty") as info:
        unpack(data[:cut])
    assert "wrong magic" not in str(info.value)
    # through a file, the message names the file too
    p = tmp_path / "cut.psic"
    p.write_bytes(data[:cut])
    with pytest.raises(ContainerError, match=r"cut\.psic: .*(truncated|empty)"):
        container.read(p)


@pytest.mark.parametrize("offset_from_payload", [0, 17, -1])
def test_one_flipped_byte_in_the_payload(hp_file, offset_from_payload):
    data = bytearray(hp_file["data"])
    hlen = struct.unpack(">I", data[5:9])[0]
    start, end = 9 + hlen, len(data) - 4
    pos = start + offset_from_payload if offset_from_payload >= 0 else end + offset_from_payload
    data[pos] ^= 0x01
    with pytest.raises(ContainerError, match="corrupted"):
        unpack(bytes(data))


def test_one_flipped_byte_in_the_header(hp_file):
    data = bytearray(hp_file["data"])
    data[20] ^= 0x20
    with pytest.raises(ContainerError, match="corrupted"):
        unpack(bytes(data))


@pytest.mark.parametrize("head", [b"\x89PNG\r\n\x1a\n", b"PSIX", b"psic"])
def test_wrong_magic(hp_file, head):
    data = head + hp_file["data"][len(head):]
    with pytest.raises(ContainerError, match="not a .psic file"):
        unpack(data)


def test_newer_format_version(hp_file):
    data = bytearray(hp_file["data"])
    data[4] = container.FORMAT_VERSION + 1
    data = _with_crc(bytes(data[:-4]))  # a well-formed file of a future version
    newer = container.FORMAT_VERSION + 1
    with pytest.raises(ContainerError, match=rf"format version {newer} is newer.*upgrade"):
        unpack(data)


def test_format_version_zero(hp_file):
    data = bytearray(hp_file["data"])
    data[4] = 0
    with pytest.raises(ContainerError, match="unknown format version 0"):
        unpack(_with_crc(bytes(data[:-4])))


GOOD = dict(codec="x", quality=None, height=4, width=4, padded=[64, 64], layout=[[3]], shape=[1, 1], alpha_len=0,
            latent_check=[0.5])


@pytest.mark.parametrize(
    "header, message",
    [
        (b"\xff\xfe\x00 garbage", "unreadable"),
        (b"{not json", "unreadable"),
        (b"[1, 2]", "not a JSON object"),
        (b"null", "not a JSON object"),
        (json.dumps({"codec": "x"}).encode(), "incomplete"),
        (json.dumps({**GOOD, "surprise": 1}).encode(), "unknown field.*surprise"),
        (json.dumps({**GOOD, "height": "abc"}).encode(), "bad height"),
        (json.dumps({**GOOD, "width": 0}).encode(), "bad width"),
        (json.dumps({**GOOD, "alpha_len": "x"}).encode(), "bad alpha_len"),
        (json.dumps({**GOOD, "alpha_len": -3}).encode(), "bad alpha_len"),
        (json.dumps({**GOOD, "bit_depth": 12}).encode(), "bad bit_depth"),
        (json.dumps({**GOOD, "mode": "CMYK"}).encode(), "bad mode"),
        (json.dumps({**GOOD, "layout": [[1.5]]}).encode(), "bad string layout"),
        (json.dumps({**GOOD, "layout": [[True, True, True]]}).encode(), "bad string layout"),
        (json.dumps({**GOOD, "layout": None}).encode(), "bad string layout"),
        (json.dumps({**GOOD, "layout": [[5]]}).encode(), "truncated"),
        (json.dumps({**GOOD, "layout": [[2]]}).encode(), "payload length"),
        (b"[" * 50000 + b"]" * 50000, "unreadable"),
    ],
    ids=lambda v: v[:24].decode("latin-1") if isinstance(v, bytes) else None,
)
def test_garbage_header(header, message):
    with pytest.raises(ContainerError, match=message):
        unpack(_raw_file(header))


def test_the_good_raw_header_is_accepted():
    """The control case of test_garbage_header: the same construction with a sane header."""
    got, header, alpha = unpack(_raw_file(json.dumps(GOOD).encode()))
    assert got == {"strings": [[b"abc"]], "shape": (1, 1)} and alpha == b""


def test_header_running_past_the_end(hp_file):
    data = bytearray(hp_file["data"])
    data[5:9] = struct.pack(">I", len(data) * 2)
    with pytest.raises(ContainerError, match="truncated"):
        unpack(bytes(data))


def test_header_check_is_per_codec_even_when_python_reuses_ids():
    """The codec template cache must not outlive its codec: CPython reuses a freed object's id, and a cache keyed
    by ``id()`` once handed a new hyperprior the template of a dead cheng2020 (CI failed on exactly that)."""
    import gc
    import weakref

    from psic_adapter.bitstream import coding

    gone = []
    for _ in range(3):
        for arch in ("cheng2020-anchor", "bmshj2018-hyperprior"):
            codec = make_codec(arch)
            out = codec.compress(torch.rand(1, 3, 64, 64))
            want = coding.container.shape_to_json(out["shape"])
            header = types.SimpleNamespace(height=64, width=64, codec=arch, shape=want,
                                           layout=coding.container.string_layout(out["strings"])[0])
            coding.check_header_fits(header, codec)  # must not raise
            gone.append(weakref.ref(codec))
            del codec, out
            gc.collect()
    assert all(ref() is None for ref in gone)  # the cache kept none of them alive
