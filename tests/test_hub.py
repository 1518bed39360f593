"""The Hugging Face Hub, offline: loading from a pre-populated cache, and pushing to a recording fake.

Nothing here reaches the network. The cache is laid out the way huggingface_hub
(2.x) leaves it after a download and reads it offline in ``snapshot_download``:

    <HF_HUB_CACHE>/models--org--name/
        blobs/<etag>                     the files' bytes (git sha1, or sha256 for LFS files)
        snapshots/<commit>/<file>        relative symlinks to the blobs
        refs/main, refs/<tag>            the commit hash (no newline)
        trees/<commit>.json              the commit's file listing (lets it spot incomplete snapshots)

Uploads go through ``huggingface_hub.HfApi``, whose ``create_repo`` /
``create_branch`` / ``upload_folder`` are replaced by recorders that copy what
would be sent. The model card's numbers come from a ``metrics.json`` built from a
hand-made :class:`~psic_adapter.eval.record.EvalResult` (``{"schema": 2, "runs": [...]}``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import load_file

import huggingface_hub
from huggingface_hub import HfApi, ModelCard, scan_cache_dir

from psic_adapter import PSICConfig, PSICError, load_adapter, wrap_model
from psic_adapter import hub
from psic_adapter.cli import main
from psic_adapter.errors import ConfigError
from psic_adapter.eval.record import Classification, EvalResult, ScaleResult, Stat
from psic_adapter.eval.report import write_results
from psic_adapter.hub import card as hub_card
from psic_adapter.hub import transfer
from psic_adapter.codec import save_codec
from psic_adapter.adapter.config import CONFIG_NAME, WEIGHTS_NAME

from .conftest import make_codec, randomize_adapter

CODEC = "bmshj2018-hyperprior"
QUALITY = 1  # conftest's random-weight hyperprior
KEY = "hub test owner key: 5b1f0c7e"
REPO = "psic-test/hyperprior-q1"
ADAPTER_FILES = {CONFIG_NAME, WEIGHTS_NAME, "README.md"}


# ------------------------------------------------------------------ helpers
def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def put_in_hf_cache(cache: Path, repo_id: str, files: dict, commit: str, refs=("main",), listed=None) -> Path:
    """Store ``files`` ({name in repo: local path}) as commit ``commit`` of model repo ``repo_id``.

    ``listed``: the names the cached tree listing claims (default: the files given).
    Returns the snapshot folder.
    """
    storage = cache / ("models--" + repo_id.replace("/", "--"))
    snap = storage / "snapshots" / commit
    tree = {}
    for name, src in files.items():
        data = Path(src).read_bytes()
        if name.endswith(".safetensors"):  # an LFS file: its etag is the sha256 of its bytes
            sha = hashlib.sha256(data).hexdigest()
            pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {len(data)}\n".encode()
            etag, entry = sha, {"size": len(pointer), "blob_id": _git_blob_sha1(pointer),
                                "lfs_sha256": sha, "lfs_size": len(data)}
        else:
            etag = _git_blob_sha1(data)
            entry = {"size": len(data), "blob_id": etag}
        tree[name] = entry
        blob = storage / "blobs" / etag
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snap / name
        link.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.symlink(os.path.relpath(blob, link.parent), link)
        except OSError:  # no symlinks (Windows without developer mode): huggingface_hub copies too
            link.write_bytes(data)
    for ref in refs:
        (storage / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (storage / "refs" / ref).write_text(commit)  # no newline: snapshot_download reads it verbatim
    if listed is not None:
        tree.update({n: {"size": 1, "blob_id": "0" * 40} for n in listed if n not in tree})
    (storage / "trees").mkdir(parents=True, exist_ok=True)
    (storage / "trees" / f"{commit}.json").write_text(json.dumps({"format_version": 1, "files": tree}, indent=1))
    return snap


def commit_hash(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def decodes(model, enc, key=None):
    with torch.no_grad():
        return model.decompress(enc["strings"], enc["shape"], key=key)["x_hat"]


class RecordingApi:
    """What ``HfApi`` would send, copied before the temporary upload folder goes away."""

    def __init__(self):
        self.calls = []
        self.uploaded = {}

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        return f"https://huggingface.co/{repo_id}"

    def create_branch(self, repo_id, **kwargs):
        self.calls.append(("create_branch", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs["repo_id"], kwargs))
        folder = Path(kwargs["folder_path"])
        patterns = kwargs.get("allow_patterns")
        self.uploaded = {
            p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()
            and (patterns is None or p.relative_to(folder).as_posix() in patterns)
        }
        self.folder_files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
        url = f"https://huggingface.co/{kwargs['repo_id']}/commit/{'c' * 40}"
        return types.SimpleNamespace(commit_url=url, pr_url=None, oid="c" * 40)

    def call(self, name):
        return [c for c in self.calls if c[0] == name]


# ------------------------------------------------------------------ fixtures
@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any call that would reach the Hub fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to reach the Hugging Face Hub")

    for name in ("repo_info", "model_info", "list_repo_tree", "create_repo", "create_branch", "upload_folder",
                 "create_commit", "whoami"):
        monkeypatch.setattr(HfApi, name, refuse)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # as the environment leaves it
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN",
                "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME"):
        monkeypatch.delenv(var, raising=False)


_PRISTINE = {}


def fresh_codec():
    """A copy of one random-weight hyperprior that no adapter ever touched (building one costs seconds)."""
    if "codec" not in _PRISTINE:
        _PRISTINE["codec"] = make_codec(CODEC)
    return copy.deepcopy(_PRISTINE["codec"])


@pytest.fixture(scope="module")
def owner(tmp_path_factory):
    """Two saved versions of a keyed adapter on one random hyperprior, its checkpoint and key file."""
    folder = tmp_path_factory.mktemp("owner")
    codec = fresh_codec()
    v1 = randomize_adapter(wrap_model(codec, PSICConfig(description="test adapter"), key=KEY, quality=QUALITY), seed=0)
    v1.config.training = {"codec": CODEC, "quality": QUALITY, "target": "efficientnet-lite0", "data": "samples",
                          "train_config": {"stage": 2, "steps": 20, "batch_size": 4, "crop": 64, "objective": "uaeo"},
                          "lmbda": 0.0018, "steps_done": 20, "final": {"psnr_full": 30.5, "psnr_encrypted": 27.25}}
    d1 = v1.save_pretrained(folder / "v1")
    v2 = randomize_adapter(wrap_model(fresh_codec(), PSICConfig(), key=KEY, quality=QUALITY), seed=1)
    d2 = v2.save_pretrained(folder / "v2")
    ckpt = save_codec(codec, folder / "codec.safetensors")
    key_file = folder / "owner.key"
    key_file.write_text(KEY + "\n")
    g = torch.Generator().manual_seed(1)  # smooth content, as conftest's image64
    x = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 8, generator=g), size=(64, 64), mode="bicubic").clamp(0, 1)
    with torch.no_grad():
        enc = v1.compress(x)  # the base codec's bitstream: one for every model here
    yield types.SimpleNamespace(model=v1, v1=d1, v2=d2, model_v2=v2, ckpt=ckpt, key_file=key_file, enc=enc,
                                fingerprint=v1.config.base_model["fingerprint"])
    v2.unwrap()


@pytest.fixture()
def offline_cache(owner, tmp_path, monkeypatch):
    """An HF cache holding REPO: main -> v1 (with a card), tag v2 -> v2; HF_HUB_OFFLINE=1."""
    cache = tmp_path / "hf-home" / "hub"
    (tmp_path / "card").mkdir()
    card = hub.write_model_card(tmp_path / "card", PSICConfig.load(owner.v1), repo_id=REPO)
    c1, c2 = commit_hash("v1"), commit_hash("v2")
    put_in_hf_cache(cache, REPO, {CONFIG_NAME: owner.v1 / CONFIG_NAME, WEIGHTS_NAME: owner.v1 / WEIGHTS_NAME,
                                  "README.md": card}, c1, refs=("main",))
    put_in_hf_cache(cache, REPO, {CONFIG_NAME: owner.v2 / CONFIG_NAME, WEIGHTS_NAME: owner.v2 / WEIGHTS_NAME}, c2,
                    refs=("v2",))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return types.SimpleNamespace(cache=cache, c1=c1, c2=c2)


def _stat(mean, n=8):
    return Stat(mean=mean, std=0.0, n=n, min=mean, max=mean)


#: scale -> (ASR, control, images the base gets right, bpp, PSNR base / full / encrypted)
SCALES = {"whole": (0.875, 0.125, 8, 0.31234, 29.871, 29.871, 27.512),
          "224px": (0.5, 1 / 6, 6, 0.31234, 31.25, 31.25, 29.0)}


def eval_result(name="q1", scales=SCALES) -> EvalResult:
    """What ``psic eval`` measures, built by hand."""
    out = {}
    for key, (asr, control, right, bpp, pb, pf, pe) in scales.items():
        psnr = {"base": pb, "full": pf, "encrypted": pe}
        out[key] = ScaleResult(
            scale=key, description=f"{key} photos", n_images=8, bpp={v: _stat(bpp) for v in psnr},
            quality={v: {"psnr": _stat(p)} for v, p in psnr.items()}, downsampling=_stat(2.0),
            classification=Classification(n_base_right=right, asr=asr, control_asr=control,
                                          agreement_with_base={"full": 1.0}))
    return EvalResult(method="PSIC", target="efficientnet-lite0",
                      versions={"base": "base", "full": "the owner's key", "encrypted": "no key"},
                      scales=out, primary=next(iter(scales)), per_image=[{"scale": "whole", "name": "a.png"}],
                      meta={"name": name, "data": "samples", "key_given": True})


#: the layout of `psic eval`'s metrics.json
METRICS = {"schema": 2, "runs": [eval_result().to_dict()]}
#: the evaluation table's rows for METRICS
CARD_ROWS = ["| q1 | whole | 8 | 0.3123 | 29.87 | 29.87 | 27.51 | 8 | 87.5 % (7/8) [52.9-97.8] | 12.5 % (1/8) [2.2-47.1] "
             "| above noise |",
             "| q1 | 224px | 8 | 0.3123 | 31.25 | 31.25 | 29.00 | 6 | 50.0 % (3/6) [18.8-81.2] | 16.7 % (1/6) [3.0-56.4] "
             "| not distinguishable from noise |"]


# ------------------------------------------------------------------ loading from the cache
def test_the_hand_made_cache_is_a_valid_hf_cache(offline_cache):
    info = scan_cache_dir(offline_cache.cache)
    assert not info.warnings
    (repo,) = info.repos
    assert repo.repo_id == REPO
    refs = {r.commit_hash: set(r.refs) for r in repo.revisions}
    assert refs == {offline_cache.c1: {"main"}, offline_cache.c2: {"v2"}}


def test_load_from_the_offline_cache_decodes_as_the_original(owner, offline_cache):
    loaded = load_adapter(fresh_codec(), REPO)
    assert hub.is_hub_id(REPO)
    assert loaded.adapter_fingerprint() == owner.model.adapter_fingerprint()
    encrypted = decodes(loaded, owner.enc)
    assert torch.equal(encrypted, decodes(owner.model, owner.enc))
    full = decodes(loaded, owner.enc, key=KEY)
    assert torch.equal(full, decodes(owner.model, owner.enc, key=KEY))
    assert not torch.equal(full, encrypted)


def test_a_revision_picks_its_commit(owner, offline_cache):
    by_tag = load_adapter(fresh_codec(), REPO, revision="v2")
    by_hash = load_adapter(fresh_codec(), REPO, revision=offline_cache.c2)
    by_main = load_adapter(fresh_codec(), REPO, revision="main")
    want = owner.model_v2.adapter_fingerprint()
    assert by_tag.adapter_fingerprint() == want == by_hash.adapter_fingerprint()
    assert by_main.adapter_fingerprint() == owner.model.adapter_fingerprint() != want
    assert torch.equal(decodes(by_tag, owner.enc, key=KEY), decodes(owner.model_v2, owner.enc, key=KEY))


def test_the_snapshot_is_the_cached_commit_with_adapter_files_only(owner, offline_cache):
    folder = hub.snapshot(REPO)
    assert folder == offline_cache.cache / f"models--{REPO.replace('/', '--')}" / "snapshots" / offline_cache.c1
    assert {p.name for p in folder.iterdir()} == ADAPTER_FILES
    assert transfer.SNAPSHOT_PATTERNS == ["*.json", "*.safetensors", "README.md"]


def test_hf_hub_cache_names_the_cache_too(owner, offline_cache, monkeypatch):
    monkeypatch.delenv("HF_HOME")
    monkeypatch.setenv("HF_HUB_CACHE", str(offline_cache.cache))
    assert hub.snapshot(REPO, revision="v2").name == offline_cache.c2


def test_a_missing_repo_offline_is_a_clear_error(offline_cache):
    with pytest.raises(PSICError, match=r"'psic-test/nope' is not in the local Hugging Face cache.*HF_HUB_OFFLINE=1"):
        load_adapter(fresh_codec(), "psic-test/nope")


def test_a_missing_revision_offline_is_a_clear_error(offline_cache):
    with pytest.raises(PSICError, match=r"revision 'v9'.*not in the local Hugging Face cache"):
        load_adapter(fresh_codec(), REPO, revision="v9")


def test_an_incomplete_cached_snapshot_is_a_clear_error(owner, offline_cache):
    put_in_hf_cache(offline_cache.cache, "psic-test/partial", {CONFIG_NAME: owner.v1 / CONFIG_NAME}, commit_hash("p"),
                    listed=[WEIGHTS_NAME])
    with pytest.raises(PSICError, match=r"'psic-test/partial'.*incomplete"):
        hub.snapshot("psic-test/partial")


def test_a_cached_repo_without_an_adapter_is_a_clear_error(offline_cache, tmp_path):
    other = tmp_path / "model.safetensors"
    other.write_bytes(b"not an adapter")
    put_in_hf_cache(offline_cache.cache, "psic-test/not-an-adapter", {"model.safetensors": other}, commit_hash("n"))
    with pytest.raises(PSICError, match=r"holds no adapter_config\.json"):
        load_adapter(fresh_codec(), "psic-test/not-an-adapter")


def _http_error(cls, status, url):
    import httpx2

    response = httpx2.Response(status, request=httpx2.Request("GET", url))
    return cls(f"{status} Client Error", response=response)


@pytest.mark.parametrize("which, pattern", [
    ("repo", r"no adapter repository 'psic-test/gone' on the hub \(or it is private"),
    ("revision", r"'psic-test/gone' has no revision 'v3'"),
    ("connect", r"not in the local Hugging Face cache.*the hub cannot be reached"),
    ("server", r"cannot get adapter 'psic-test/gone'.*HTTP 500"),
])
def test_online_failures_are_clear_errors(which, pattern, monkeypatch):
    from huggingface_hub.errors import (HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    url = "https://huggingface.co/api/models/psic-test/gone"
    errors = {"repo": _http_error(RepositoryNotFoundError, 404, url),
              "revision": _http_error(RevisionNotFoundError, 404, url),
              "connect": LocalEntryNotFoundError("An error happened while trying to locate the files on the Hub"),
              "server": _http_error(HfHubHTTPError, 500, url)}
    seen = {}

    def fake_snapshot_download(repo_id, **kwargs):
        seen.update(kwargs)
        raise errors[which]

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    with pytest.raises(PSICError, match=pattern):
        hub.snapshot("psic-test/gone", revision="v3")
    assert seen["local_files_only"] is False and seen["allow_patterns"] == transfer.SNAPSHOT_PATTERNS


# ------------------------------------------------------------------ the model card
def test_the_model_card(owner, tmp_path):
    path = hub.write_model_card(tmp_path, PSICConfig.load(owner.v1), METRICS, repo_id=REPO)
    assert path == tmp_path / "README.md"
    text = path.read_text()
    card = ModelCard(text)  # the YAML header parses
    assert card.data.library_name == "psic-adapter"
    assert card.data.tags == ["psic", "image-compression", "privacy", "compressai"]
    assert card.data.license == "apache-2.0"
    assert card.data.to_dict()["base_model_fingerprint"] == owner.fingerprint
    assert card.data.to_dict()["base_model_architecture"] == "bmshj2018-hyperprior"
    assert text.startswith("---\n") and card.text.lstrip().startswith("# PSIC adapter for `bmshj2018-hyperprior`")
    assert owner.fingerprint in text and "`bmshj2018-hyperprior`" in text and "| quality | 1 |" in text
    assert "| N | 128 |" in text and "| M | 192 |" in text
    assert "test adapter" in text  # the description
    assert "| target model | efficientnet-lite0 |" in text and "| steps | 20 |" in text
    assert "Last logged step: psnr_encrypted = 27.2500." in text
    # the evaluation table: each scale's numbers, ASR and control with their counts, intervals and verdict
    assert "## Evaluation (`psic eval`)" in text
    assert "Measured against `efficientnet-lite0` on `samples`, with the owner's key." in text
    assert "| run | scale | images | bpp | PSNR base | full | encrypted | base right | ASR (k/n) [95% CI] | control [95% CI] | vs noise |" in text
    table = [line for line in text.splitlines() if line.startswith("| q1 |")]
    assert table == CARD_ROWS
    # how to decode, and what is not protected
    assert f'load_adapter(codec, "{REPO}")' in text and 'key=read_key_file("owner.key")' in text
    assert f"psic decompress IN.psic OUT.png --adapter {REPO} --key-file owner.key" in text
    assert "The key is not in this repository" in text
    assert "The base codec alone decodes the full image" in text and "docs/threat-model.md" in text
    assert KEY not in text


def test_the_card_of_an_adapter_on_the_shipped_codec_needs_no_download():
    """Its snippets load the codec psic-adapter ships (no zoo download, no --codec to get wrong)."""
    from psic_adapter.codec import SHIPPED_CODEC

    cfg = PSICConfig.from_dict({**json.loads(PSICConfig().to_json_string()),
                                "base_model": {"architecture": "bmshj2018-hyperprior", "quality": 3,
                                               "fingerprint": SHIPPED_CODEC["fingerprint"]}})
    text = hub_card.render_model_card(cfg, repo_id=REPO)
    assert 'load_codec("bmshj2018-hyperprior", quality=3, checkpoint="shipped")' in text
    assert f"psic compress IN.png IN.psic --adapter {REPO}" in text
    assert "pretrained=True" not in text and "--codec" not in text


def test_the_card_reads_the_metrics_through_the_typed_result(owner, tmp_path):
    result = eval_result()
    config = PSICConfig.load(owner.v1)
    text = hub_card.render_model_card(config, METRICS)
    assert hub_card.render_model_card(config, result) == text  # an EvalResult, or its metrics.json dict
    (back,) = hub_card.load_card_results(METRICS)
    assert back.to_dict() == result.to_dict()
    rows = hub_card.metrics_rows([back])["rows"]
    assert [(r["scale"], r["asr"], r["control"], r["right"]) for r in rows] == [
        ("whole", "87.5 % (7/8) [52.9-97.8]", "12.5 % (1/8) [2.2-47.1]", 8),
        ("224px", "50.0 % (3/6) [18.8-81.2]", "16.7 % (1/6) [3.0-56.4]", 6)]


def test_an_undefined_asr_is_n_a_on_the_card(owner):
    undefined = eval_result(scales={"whole": (float("nan"), float("nan"), 0, 0.25, 30.0, 30.0, 28.0)})
    text = hub_card.render_model_card(PSICConfig.load(owner.v1), undefined)
    assert "| q1 | whole | 8 | 0.2500 | 30.00 | 30.00 | 28.00 | 0 | n/a (0 to count) | n/a (0 to count) | n/a |" in text
    assert "nan" not in text.lower().replace("finance", "")


def test_metrics_that_are_not_psic_evals_are_clear_errors(owner, tmp_path):
    config = PSICConfig.load(owner.v1)
    old = {"summary": {"images": 8, "asr": 0.875}, "per_image": [], "meta": {}}  # the layout before schema 2
    with pytest.raises(PSICError, match="no 'runs'"):
        hub.write_model_card(tmp_path, config, old)
    with pytest.raises(PSICError, match=r"schema 1 is not this psic-adapter's \(2\)"):
        hub.write_model_card(tmp_path, config, {"schema": 1, "runs": [dict(METRICS["runs"][0], schema=1)]})
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(PSICError, match="not valid JSON"):
        hub.write_model_card(tmp_path, config, bad)
    with pytest.raises(PSICError, match="no metrics file"):
        hub.write_model_card(tmp_path, config, tmp_path / "nope.json")
    assert not (tmp_path / "README.md").exists()  # nothing written


def test_the_model_card_without_metrics_or_training(tmp_path):
    model = wrap_model(fresh_codec(), PSICConfig(condition="public"))
    folder = model.save_pretrained(tmp_path / "a")
    text = hub.write_model_card(folder).read_text()  # config read from the folder
    assert "## Evaluation" not in text
    assert "holds no training record" in text
    assert "not access-controlled" in text and 'mode="full"' in text and "--key-file" not in text
    assert f"| parameters | {model.num_adapter_parameters():,} |" in text
    assert "org/name" in text  # the placeholder id


def test_metrics_of_several_adapters_and_from_a_report_folder(owner, tmp_path):
    other = eval_result("q3", scales={"whole": (0.625, 0.0, 8, 0.5, 33.0, 33.0, 30.5)})
    write_results(tmp_path / "report", [eval_result(), other])  # the writer `psic eval` uses
    text = hub.write_model_card(tmp_path, PSICConfig.load(owner.v1), tmp_path / "report").read_text()
    rows = [line for line in text.splitlines() if line.startswith(("| q1 |", "| q3 |"))]
    assert rows == CARD_ROWS + ["| q3 | whole | 8 | 0.5000 | 33.00 | 33.00 | 30.50 | 8 | 62.5 % (5/8) [30.6-86.3] | "
                                "0.0 % (0/8) [0.0-32.4] | not distinguishable from noise |"]
    same = hub.write_model_card(tmp_path, PSICConfig.load(owner.v1), tmp_path / "report" / "metrics.json")
    assert same.read_text() == text


def test_a_pipe_in_a_run_name_does_not_break_the_card_table(owner):
    text = hub_card.render_model_card(PSICConfig.load(owner.v1), eval_result("run|a"))
    header = "| run | scale | images | bpp | PSNR base | full | encrypted | base right | ASR (k/n) [95% CI] | control [95% CI] | vs noise |"
    table = text[text.index(header):].split("\n\n")[0].splitlines()
    assert len(table) == 2 + len(SCALES)
    columns = [len(re.findall(r"(?<!\\)\|", line)) for line in table]
    assert columns == [12] * len(table)  # the run name's '|' escaped
    assert table[2].startswith("| run\\|a | whole |")


# ------------------------------------------------------------------ pushing
def _assert_upload(api, owner, repo=REPO, metrics=True):
    assert set(api.uploaded) == ADAPTER_FILES and api.folder_files == ADAPTER_FILES
    sent, saved = load_safetensors(api.uploaded[WEIGHTS_NAME]), load_file(str(owner.v1 / WEIGHTS_NAME))
    assert sent.keys() == saved.keys() and all(torch.equal(sent[k], saved[k]) for k in saved)
    assert json.loads(api.uploaded[CONFIG_NAME]) == json.loads((owner.v1 / CONFIG_NAME).read_text())
    card = api.uploaded["README.md"].decode()
    assert owner.fingerprint in card and f'load_adapter(codec, "{repo}")' in card
    assert ModelCard(card).data.library_name == "psic-adapter"
    assert all((row in card) == metrics for row in CARD_ROWS)
    for blob in api.uploaded.values():  # no key material
        assert KEY.encode() not in blob and KEY.encode().hex().encode() not in blob


def test_push_a_folder(owner, tmp_path):
    folder = tmp_path / "adapter"
    folder.mkdir()
    for fn in (CONFIG_NAME, WEIGHTS_NAME):
        (folder / fn).write_bytes((owner.v1 / fn).read_bytes())
    (folder / "owner.key").write_text(KEY)  # a careless owner: it must stay here
    (folder / "notes.txt").write_text("private notes")
    api = RecordingApi()
    info = hub.push_to_hub(folder, REPO, private=True, token="hf_test", api=api)
    assert info.commit_url.startswith(f"https://huggingface.co/{REPO}/commit/")
    _assert_upload(api, owner, metrics=False)
    ((_, repo, kw),) = api.call("create_repo")
    assert repo == REPO and kw["private"] is True and kw["exist_ok"] is True and kw["token"] == "hf_test"
    ((_, _, up),) = api.call("upload_folder")
    assert up["revision"] is None and up["create_pr"] is False and up["commit_message"] == "Upload PSIC adapter"
    assert not api.call("create_branch")
    assert sorted(p.name for p in folder.iterdir()) == sorted([CONFIG_NAME, WEIGHTS_NAME, "owner.key", "notes.txt"])


def test_model_push_to_hub_through_hfapi(owner, monkeypatch):
    api = RecordingApi()
    for name in ("create_repo", "create_branch", "upload_folder"):
        monkeypatch.setattr(HfApi, name, lambda self, *a, _n=name, **k: getattr(api, _n)(*a, **k))
    monkeypatch.setenv("HF_TOKEN", "hf_from_env")
    info = hub.push_to_hub(owner.model, REPO, revision="dev", commit_message="v1", create_pr=True)
    assert info.oid == "c" * 40
    _assert_upload(api, owner, metrics=False)
    ((_, _, br),) = api.call("create_branch")
    assert br["branch"] == "dev" and br["exist_ok"] is True
    ((_, _, up),) = api.call("upload_folder")
    assert up["revision"] == "dev" and up["create_pr"] is True and up["commit_message"] == "v1"


def test_the_model_does_not_call_up_into_the_hub(owner):
    """Uploading is the hub package's (it sits above the adapter package: issue 16); the model's old method says
    where it went, before anything is uploaded."""
    with pytest.raises(ConfigError, match=r"psic_adapter\.hub\.push_to_hub\(model"):
        owner.model.push_to_hub(REPO)


def test_push_of_one_adapter_of_several(owner, tmp_path):
    model = wrap_model(fresh_codec(), PSICConfig(), key=KEY, quality=QUALITY)
    randomize_adapter(model, seed=3)
    model.add_adapter("second", PSICConfig(condition="public"))
    api = RecordingApi()
    hub.push_to_hub(model, REPO, token="t", adapter_name="second", api=api)
    assert set(api.uploaded) == ADAPTER_FILES
    assert json.loads(api.uploaded[CONFIG_NAME])["condition"] == "public"
    assert "not access-controlled" in api.uploaded["README.md"].decode()
    default = RecordingApi()
    hub.push_to_hub(model, REPO, token="t", api=default)  # the active adapter
    assert json.loads(default.uploaded[CONFIG_NAME])["condition"] == "key"
    for blob in default.uploaded.values():
        assert KEY.encode() not in blob
    # PSICModel.resolve_adapter_name picks the adapter: an unknown name is a clear error before any upload
    nothing = RecordingApi()
    with pytest.raises(ConfigError, match=r"no adapter named 'third' \(adapters: default, second\)"):
        hub.push_to_hub(model, REPO, token="t", adapter_name="third", api=nothing)
    assert nothing.calls == []
    with pytest.raises(PSICError, match="adapter_name applies to a model"):
        hub.push_to_hub(owner.v1, REPO, token="t", adapter_name="second", api=nothing)
    model.unwrap()


PUSH_BUG = ("library bug: push_to_hub turns card_metrics into a list of EvalResult (load_card_results) and hands "
            "that list to write_model_card, whose load_card_results accepts a path, a mapping or one EvalResult: "
            "Path(list) raises TypeError, so any card_metrics (and `psic push --metrics`) crashes")


@pytest.mark.parametrize("form", ["dict", "metrics.json", "report folder", "EvalResult"])
def test_push_with_metrics_puts_the_evaluation_table_on_the_card(owner, tmp_path, form):
    write_results(tmp_path / "report", [eval_result()])
    metrics = {"dict": METRICS, "metrics.json": tmp_path / "report" / "metrics.json",
               "report folder": tmp_path / "report", "EvalResult": eval_result()}[form]
    api = RecordingApi()
    hub.push_to_hub(owner.v1, REPO, token="t", card_metrics=metrics, api=api)
    _assert_upload(api, owner, metrics=True)


def test_push_with_bad_metrics_uploads_nothing(owner):
    api = RecordingApi()
    with pytest.raises(PSICError, match="no 'runs'"):
        hub.push_to_hub(owner.v1, REPO, token="t", card_metrics={"summary": {}}, api=api)
    assert api.calls == []


def test_push_failures_are_clear_errors(owner, tmp_path, monkeypatch):
    from huggingface_hub.errors import HfHubHTTPError

    with pytest.raises(PSICError, match="needs a Hugging Face token"):
        monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
        hub.push_to_hub(owner.v1, REPO)
    with pytest.raises(PSICError, match="not a hub id"):
        hub.push_to_hub(owner.v1, "no-slash", api=RecordingApi())
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    for fn in (CONFIG_NAME, WEIGHTS_NAME):
        (run / "adapter" / fn).write_bytes((owner.v1 / fn).read_bytes())
    with pytest.raises(PSICError, match=r"run: no adapter_config\.json here.*did you mean .*run/adapter"):
        hub.push_to_hub(run, REPO, api=RecordingApi())
    (run / "adapter" / WEIGHTS_NAME).unlink()
    with pytest.raises(PSICError, match=r"adapter_model\.safetensors is missing"):
        hub.push_to_hub(run / "adapter", REPO, api=RecordingApi())

    url = "https://huggingface.co/api/repos/create"

    class Failing(RecordingApi):
        def __init__(self, exc):
            super().__init__()
            self.exc = exc

        def create_repo(self, repo_id, **kwargs):
            raise self.exc

    import httpx2

    for exc, pattern in [
        (_http_error(HfHubHTTPError, 401, url), r"cannot create the repository .*refused the token"),
        (_http_error(HfHubHTTPError, 403, url), r"no write access to 'psic-test'"),
        (httpx2.ConnectError("[Errno -3] Temporary failure in name resolution"), r"cannot reach the hub"),
    ]:
        with pytest.raises(PSICError, match=pattern):
            hub.push_to_hub(owner.v1, REPO, token="t", api=Failing(exc))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PSICError, match="HF_HUB_OFFLINE"):
        hub.push_to_hub(owner.v1, REPO, token="t", api=RecordingApi())


# ------------------------------------------------------------------ the command line
@pytest.fixture()
def cli_api(monkeypatch):
    """HfApi's upload methods recorded, with the token each call was made with."""
    api = RecordingApi()
    api.tokens = []

    def make(name):
        def method(self, *a, **k):
            api.tokens.append(self.token)
            return getattr(api, name)(*a, **k)
        return method

    for name in ("create_repo", "create_branch", "upload_folder"):
        monkeypatch.setattr(HfApi, name, make(name))
    return api


def test_psic_push(owner, cli_api, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MY_HF_TOKEN", "hf_cli_token")
    rc = main(["push", str(owner.v1), REPO, "--private", "--revision", "r1", "--token-env", "MY_HF_TOKEN"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert f"https://huggingface.co/{REPO}/commit/" in out
    _assert_upload(cli_api, owner, metrics=False)
    assert set(cli_api.tokens) == {"hf_cli_token"}
    assert cli_api.call("create_repo")[0][2]["private"] is True
    assert cli_api.call("upload_folder")[0][2]["revision"] == "r1"

    rc = main(["push", str(owner.v1), REPO, "--token-env", "UNSET_VARIABLE_FOR_PSIC"])
    out, err = capsys.readouterr()
    assert rc == 1 and err.startswith("psic: error: ") and "UNSET_VARIABLE_FOR_PSIC" in err
    assert "Traceback" not in err

    (tmp_path / "old-metrics.json").write_text(json.dumps({"summary": {"asr": 0.5}}))  # before schema 2
    rc = main(["push", str(owner.v1), REPO, "--token-env", "MY_HF_TOKEN", "--metrics",
               str(tmp_path / "old-metrics.json")])
    out, err = capsys.readouterr()
    assert rc == 1 and err.startswith("psic: error: ") and "no 'runs'" in err


def test_psic_push_with_metrics(owner, cli_api, tmp_path, monkeypatch, capsys):
    write_results(tmp_path / "report", [eval_result()])
    monkeypatch.setenv("MY_HF_TOKEN", "hf_cli_token")
    rc = main(["push", str(owner.v1), REPO, "--metrics", str(tmp_path / "report" / "metrics.json"),
               "--token-env", "MY_HF_TOKEN"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    _assert_upload(cli_api, owner, metrics=True)


def test_psic_compress_and_decompress_with_a_hub_id(owner, offline_cache, tmp_path, capsys):
    from psic_adapter import load_codec
    from psic_adapter.bitstream.coding import decode_file

    import numpy as np
    from PIL import Image

    src = tmp_path / "in.png"
    g = torch.Generator().manual_seed(3)
    small = torch.rand(3, 6, 6, generator=g)
    pixels = torch.nn.functional.interpolate(small[None], size=(40, 56), mode="bilinear")[0]
    Image.fromarray((pixels.permute(1, 2, 0).numpy() * 255).round().astype("uint8")).save(src)
    psic = tmp_path / "x.psic"
    ckpt = str(owner.ckpt)
    assert main(["compress", str(src), str(psic), "--codec", CODEC, "--quality", str(QUALITY),
                 "--checkpoint", ckpt, "--adapter", REPO]) == 0
    full, enc = tmp_path / "full.png", tmp_path / "enc.png"
    assert main(["decompress", str(psic), str(full), "--checkpoint", ckpt, "--adapter", REPO,
                 "--key-file", str(owner.key_file)]) == 0
    assert main(["decompress", str(psic), str(enc), "--checkpoint", ckpt, "--adapter", REPO]) == 0
    out = capsys.readouterr().out
    assert "full version" in out and "encrypted version" in out

    reference = load_adapter(load_codec(CODEC, quality=QUALITY, checkpoint=ckpt), owner.v1)
    ref_full, ref_enc = tmp_path / "ref-full.png", tmp_path / "ref-enc.png"
    decode_file(psic, ref_full, reference, key=KEY)
    decode_file(psic, ref_enc, reference)
    arr = {p.name: np.asarray(Image.open(p)) for p in (full, enc, ref_full, ref_enc)}
    assert np.array_equal(arr["full.png"], arr["ref-full.png"])
    assert np.array_equal(arr["enc.png"], arr["ref-enc.png"])
    assert not np.array_equal(arr["full.png"], arr["enc.png"])

    rc = main(["decompress", str(psic), str(tmp_path / "x.png"), "--checkpoint", ckpt, "--adapter", "psic-test/nope"])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("psic: error: ") and "not in the local Hugging Face cache" in err
