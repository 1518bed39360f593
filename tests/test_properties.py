"""Property-based tests (hypothesis) of what reads untrusted input: the .psic container, adapter configs, keys.

Each property: any input gives a result or the library's own error (PSICError and its subclasses), never
another exception; a few say more (a decode is of the header's size; the key rule). The runs are bounded and
derandomized (no example database written), so the suite stays fast and deterministic.
"""

from __future__ import annotations

import json
import struct
import tempfile
import warnings
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import event as _event
from hypothesis import strategies as st

from psic_adapter.adapter import PSICConfig, wrap_model
from psic_adapter.adapter.config import FORMAT_VERSION as ADAPTER_FORMAT
from psic_adapter.adapter.keys import MAX_KEY_BYTES, normalize_key, read_key_file, write_key_file
from psic_adapter.bitstream import coding, container
from psic_adapter.errors import ConfigError, ContainerError, ImageError, PSICError

from .psic_files import DELETE, KEY, build_psic, edit_psic, real_psic, split_psic, tiny_codec

FAST = dict(deadline=5000, database=None, derandomize=True,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

def event(label: str) -> None:
    """hypothesis.event where it may be called (the helpers also serve plain tests)."""
    from hypothesis.control import currently_in_test_context

    if currently_in_test_context():
        _event(label)


FILES = {"rgb": (48, 80, 3), "rgba": (40, 40, 4)}

# JSON values: the leaves a crafted file can hold (ints kept below 1e308: see test_untrusted_files for the larger)
_leaves = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(max_size=12) | st.sampled_from([0, 1, -1, 16, 48, 63, 64, 65, 80, 128, 4096, 65536, 2**31]))
json_values = st.recursive(
    _leaves,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@pytest.fixture(scope="module")
def files():
    tiny_codec()
    return {name: real_psic(*shape) for name, shape in FILES.items()}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("props")


def _near(value, draw):
    """A value close to ``value``: an int moved a little, one entry of a list changed, a nesting level added."""
    if isinstance(value, bool) or value is None:
        return draw(json_values)
    if isinstance(value, int):
        return value + draw(st.integers(-70, 70))
    if isinstance(value, float):
        return draw(st.sampled_from([value + 1, -value, float("nan"), float("inf"), 0.0]))
    if isinstance(value, list) and value:
        out = list(value)
        i = draw(st.integers(0, len(out) - 1))
        out[i] = _near(out[i], draw) if draw(st.booleans()) else draw(json_values)
        return draw(st.sampled_from([out, [out], out[:-1], out + out[-1:]]))
    if isinstance(value, str):
        return draw(st.sampled_from([value[:-1], value + "0", value.upper(), "", "zz" * (len(value) // 2)]))
    return draw(json_values)


FIELDS = ["codec", "quality", "height", "width", "mode", "bit_depth", "base_fingerprint", "tables_hash",
          "adapter_fingerprint", "dims", "padded", "shape", "layout", "alpha_len", "alpha_raw_len", "latent_check"]


@st.composite
def header_mutations(draw):
    """(which file, the header changes): 1-3 fields set to random JSON, to a near value, or removed."""
    which = draw(st.sampled_from(sorted(FILES)))
    _, header, _ = split_psic(real_psic(*FILES[which]))
    changes = {}
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(FIELDS + [None])) or draw(st.text(min_size=1, max_size=6))  # mostly known
        how = draw(st.sampled_from(["near", "random", "delete"]))
        if how == "delete":
            changes[name] = DELETE
        elif how == "near" and name in header:
            changes[name] = _near(header[name], draw)
        else:
            changes[name] = draw(json_values)
    return which, changes


# ------------------------------------------------------------------ the container
def _unpack_is_clean(data: bytes):
    try:
        return container.unpack(data)
    except (ContainerError, ImageError, PSICError) as exc:
        assert "\n" not in str(exc)
        return None


@settings(max_examples=150, **FAST)
@given(data=st.binary(max_size=300))
def test_unpack_random_bytes(data):
    _unpack_is_clean(data)


@settings(max_examples=150, **FAST)
@given(version=st.integers(0, 255), hlen=st.integers(0, 2**32 - 1) | st.integers(0, 400),
       rest=st.binary(max_size=300), crc=st.booleans())
def test_unpack_random_bytes_behind_a_real_prefix(version, hlen, rest, crc):
    body = struct.pack(">4sBI", b"PSIC", version, hlen) + rest
    _unpack_is_clean(body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF) if crc else body)


@settings(max_examples=150, **FAST)
@given(header=json_values | st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=len(FIELDS)),
       payload=st.binary(max_size=64), version=st.sampled_from([1, 2]))
def test_unpack_random_json_headers_with_a_valid_crc(header, payload, version):
    _unpack_is_clean(build_psic(json.dumps(header).encode(), payload, version=version))


@st.composite
def byte_mutations(draw):
    which = draw(st.sampled_from(sorted(FILES)))
    data = bytearray(real_psic(*FILES[which]))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[pos] ^= draw(st.integers(1, 255))
        elif kind == "truncate":
            del data[pos:]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif data:
            del data[pos: pos + draw(st.integers(1, 8))]
    return bytes(data), draw(st.booleans())


@settings(max_examples=150, **FAST)
@given(mutation=byte_mutations())
def test_unpack_mutated_real_files(files, mutation):
    data, recompute_crc = mutation
    if recompute_crc and len(data) >= 4:
        data = data[:-4] + struct.pack(">I", zlib.crc32(data[:-4]) & 0xFFFFFFFF)
    _unpack_is_clean(data)


@settings(max_examples=80, **FAST)
@given(mutation=header_mutations())
@example(mutation=("rgb", {"width": 70}))  # decodes, to 70 x 48
@example(mutation=("rgb", {"width": 10}))  # the padded size no longer fits
@example(mutation=("rgba", {"mode": "RGB"}))
@example(mutation=("rgb", {"mode": "L"}))
@example(mutation=("rgb", {"\n": None}))  # a field named by a line break (what hypothesis 6.170 finds)
def test_a_mutated_header_decodes_to_its_size_or_is_refused(files, workdir, mutation):
    from PIL import Image

    which, changes = mutation
    data = edit_psic(files[which], **changes)
    with tempfile.TemporaryDirectory(dir=workdir) as d:
        src, dst = Path(d) / "m.psic", Path(d) / "m.png"
        src.write_bytes(data)
        try:
            _, header, _ = container.unpack(data)
        except ContainerError:
            header = None
        try:
            out = coding.decode_file(src, dst, tiny_codec())
        except PSICError as exc:
            assert "\n" not in str(exc)
            assert not dst.exists()
            event(f"refused: {str(exc).replace(f'{src}: ', '')[:45]}")
            return
        event("decoded")
        assert header is not None, "decode_file decoded a file that container.unpack refuses"
        with Image.open(dst) as im:
            assert im.size == (header.width, header.height)
            if header.bit_depth == 8:
                assert im.mode == header.mode
        assert out["header"].width == header.width and out["header"].height == header.height


@pytest.mark.parametrize("name", ["\n", "a\r\nb", "x, y", "\x1b[2J"])
def test_untrusted_names_in_errors_stay_one_line_and_unambiguous(files, name):
    """An unknown field's name is shown as its repr: one line, and a comma in a name is not a second field."""
    from psic_adapter.adapter.keys import check_kdf, default_kdf

    raisers = [lambda: container.unpack(edit_psic(files["rgb"], **{name: 1})),
               lambda: PSICConfig.from_dict({"preset": "paper", name: 1}),
               lambda: check_kdf({**default_kdf(), name: 1})]
    for raise_it in raisers:
        with pytest.raises(PSICError) as info:
            raise_it()
        text = str(info.value)
        assert text.isprintable() and repr(name) in text, text


def test_a_psic_error_is_one_line_whatever_it_embeds():
    """The net under the rule: a path holding a line break (a file name may) still prints as one line."""
    exc = ImageError("/tmp/a\nb.png: cannot read \x00")
    assert str(exc) == "/tmp/a\\nb.png: cannot read \\x00"
    assert str(ConfigError("plain, one line")) == "plain, one line"


# ------------------------------------------------------------------ adapter configs
@pytest.fixture(scope="module")
def real_config():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = wrap_model(tiny_codec(), PSICConfig(), key=KEY)
    model.unwrap()
    return json.loads(model.config.to_json_string())


CONFIG_FIELDS = ["preset", "target_modules", "cond_dim", "hidden_dim", "fourier_freqs", "modulation", "condition",
                 "full_version", "kdf", "description", "salt", "key_check", "injection_points", "base_model",
                 "training", "library_version", "format_version", "modes"]


def _config_outcome(data):
    """A PSICConfig (which then survives its own JSON round trip) or a one-line ConfigError."""
    try:
        cfg = PSICConfig.from_dict(data)
    except ConfigError as exc:
        assert "\n" not in str(exc)
        event(f"refused: {str(exc)[:30]}")
        return None
    event("accepted")
    again = PSICConfig.from_dict(json.loads(cfg.to_json_string()))
    assert again.to_json_string() == cfg.to_json_string()
    return cfg


@settings(max_examples=200, **FAST)
@given(data=json_values | st.dictionaries(st.sampled_from(CONFIG_FIELDS), json_values, max_size=10)
       | st.dictionaries(st.sampled_from(CONFIG_FIELDS) | st.text(max_size=8), json_values, max_size=6))
def test_config_from_random_json(data):
    _config_outcome(data)


@st.composite
def config_mutations(draw, base):
    data = json.loads(json.dumps(base))
    paths = [[k] for k in data] + [["kdf", k] for k in data["kdf"]] + \
        [["injection_points", i, k] for i, p in enumerate(data["injection_points"]) for k in p] + \
        [["base_model", k] for k in data["base_model"]] + [["injection_points", 0]] + [["new_field"]]
    path = draw(st.sampled_from(paths))
    target = data
    for k in path[:-1]:
        target = target[k]
    how = draw(st.sampled_from(["near", "random", "delete"]))
    if how == "delete":
        if isinstance(target, dict):
            target.pop(path[-1], None)
        else:
            del target[path[-1]]
    elif how == "near" and isinstance(target, dict) and path[-1] in target:
        target[path[-1]] = _near(target[path[-1]], draw)
    else:
        target[path[-1]] = draw(json_values)
    return data


def test_the_real_config_is_accepted(real_config):
    cfg = _config_outcome(real_config)
    assert cfg is not None and cfg.is_bound and cfg.format_version == ADAPTER_FORMAT


@settings(max_examples=200, **FAST)
@given(data=st.data())
def test_config_single_field_mutations(real_config, data):
    _config_outcome(data.draw(config_mutations(real_config)))


# ------------------------------------------------------------------ keys
WHITESPACE = " \t\r\n\v\f"
_key_text = st.text(max_size=40) | st.builds(lambda c, n: c * n, st.characters(), st.integers(4090, 4100))
_key_bytes = st.binary(max_size=40) | st.builds(lambda c, n: c * n, st.binary(min_size=1, max_size=1),
                                                st.integers(4090, 4100))


def _key_outcome(key):
    try:
        out = normalize_key(key)
    except ConfigError as exc:
        assert "\n" not in str(exc)
        return "error"
    assert isinstance(out, bytes) and 0 < len(out) <= MAX_KEY_BYTES
    assert out == out.strip(WHITESPACE.encode())
    return out


@settings(max_examples=200, **FAST)
@given(key=_key_text | _key_bytes, pre=st.text(WHITESPACE, max_size=4), post=st.text(WHITESPACE, max_size=4))
def test_surrounding_whitespace_does_not_change_a_key(key, pre, post):
    if isinstance(key, bytes):
        padded = pre.encode() + key + post.encode()
    else:
        padded = pre + key + post
        assert _key_outcome(key) == _key_outcome(key.encode("utf-8"))  # a str is its UTF-8 bytes
    assert _key_outcome(padded) == _key_outcome(key)


@settings(max_examples=100, **FAST)
@given(content=_key_bytes | _key_text.map(lambda s: s.encode("utf-8")), pre=st.text(WHITESPACE, max_size=70))
def test_a_key_file_reads_as_the_key_rule_says(workdir, content, pre):
    content = pre.encode() + content
    with tempfile.TemporaryDirectory(dir=workdir) as d:
        path = Path(d) / "key"
        path.write_bytes(content)
        try:
            got = read_key_file(path)
        except PSICError as exc:
            assert "\n" not in str(exc)
            got = "error"
    if len(content) > MAX_KEY_BYTES + 64:  # too long to be a key file, whatever its whitespace
        assert got == "error"
    else:
        assert got == _key_outcome(content)


@settings(max_examples=60, **FAST)
@given(key=st.text(min_size=1, max_size=30))
def test_normalize_key_never_raises_another_exception_on_text(key):
    _key_outcome(key)


@settings(max_examples=30, **FAST)
@given(key=st.lists(st.characters() | st.integers(0xD800, 0xDFFF).map(chr), min_size=1, max_size=8).map("".join))
@example(key="key\udcff")
def test_normalize_key_on_any_str_is_bytes_or_a_config_error(key):
    _key_outcome(key)


@settings(max_examples=40, **FAST)
@given(key=st.text(min_size=1, max_size=20))
@example(key="abc\u00a0")
def test_a_written_key_file_reads_back_as_the_same_key(workdir, key):
    want = _key_outcome(key)
    if want == "error":
        return
    with tempfile.TemporaryDirectory(dir=workdir) as d:
        path = write_key_file(Path(d) / "owner.key", key)
        assert read_key_file(path) == want
