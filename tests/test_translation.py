"""The en-ro-l10n translation task: Debian packages as assets, the catalogue reader, the cleaning rules,
the splits, BLEU as the reference scores en-ro, the copy baseline and a tiny training run."""
from __future__ import annotations

import io
import math
import struct
import subprocess
import tarfile
from pathlib import Path

import pytest

from conftest import tiny_model
from petl import assets, baselines, l10n, metrics, tasks
from petl.train import TrainConfig, train

ro_l10n = pytest.mark.needs_assets("ro-l10n")  # the tests that read the real catalogues


def mo_bytes(entries: dict[str, str], charset: str = "UTF-8") -> bytes:
    """A GNU .mo catalogue of ``entries`` (keys may hold a context ``ctx\\x04id`` or a plural ``id\\x00ids``)."""
    header = f"Content-Type: text/plain; charset={charset}\n"
    items = sorted([(b"", header.encode("ascii"))] + [(k.encode(charset), v.encode(charset)) for k, v in entries.items()])
    n = len(items)
    originals, translations = 28, 28 + 8 * n
    blob_start = 28 + 16 * n
    blob, table_o, table_t = b"", b"", b""
    for key, _ in items:
        table_o += struct.pack("<2I", len(key), blob_start + len(blob))
        blob += key + b"\0"
    for _, value in items:
        table_t += struct.pack("<2I", len(value), blob_start + len(blob))
        blob += value + b"\0"
    return struct.pack("<7I", 0x950412DE, 0, n, originals, translations, 0, 0) + table_o + table_t + blob


# ---- reading catalogues -------------------------------------------------------------------------------

def test_read_mo_gives_context_plural_and_decodes_the_header_charset():
    data = mo_bytes({"menu\x04Open the file": "Deschide fișierul",
                     "%d file was removed\x00%d files were removed": "%d fișier a fost eliminat\x00%d fișiere au fost eliminate",
                     "Save": "Salvează"})
    by_id = {m.msgid: m for m in l10n.read_mo(data)}
    assert set(by_id) == {"Open the file", "%d file was removed", "Save"}          # header left out
    assert by_id["Open the file"].context == "menu" and by_id["Open the file"].msgstr == ("Deschide fișierul",)
    plural = by_id["%d file was removed"]
    assert plural.msgid_plural == "%d files were removed" and plural.msgstr[0] == "%d fișier a fost eliminat"
    latin2 = l10n.read_mo(mo_bytes({"Cannot read the file": "Nu se poate citi fişierul"}, charset="ISO-8859-2"))
    assert latin2[0].msgstr == ("Nu se poate citi fişierul",)
    with pytest.raises(ValueError, match="magic number"):
        l10n.read_mo(b"\0" * 40)


# ---- cleaning -----------------------------------------------------------------------------------------

def test_normalise_removes_mnemonics_markup_and_layout_the_same_way_on_both_sides():
    assert l10n.normalise("_Open the file", "gtk20") == "Open the file"
    assert l10n.normalise("Des_chide fișierul", "gtk20") == "Deschide fișierul"
    assert l10n.normalise("uses _bfd_elf_get_property", "bfd") == "uses _bfd_elf_get_property"  # not GTK
    assert l10n.normalise("<b>Warning:</b> the key\n   is   <i>revoked</i>", "gnupg2") == "Warning: the key is revoked"
    assert l10n.normalise("write to <file> or <http://gnu.org/>", "tar") == "write to <file> or <http://gnu.org/>"


@pytest.mark.parametrize("source, target, reason", [
    ("cannot open file %s", "nu se poate deschide fișierul %s", None),
    ("cannot open file %1$s in %2$s", "nu se poate deschide în %2$s fișierul %1$s", None),  # reordered
    ("cannot open file %s", "cannot open file %s", "untranslated"),
    ("%s: cannot assign", "%s: nu se poate atribui", "fewer than 3 words"),                 # placeholders are no words
    ("cannot open file %s", "nu se poate deschide fișierul", "placeholders differ"),
    ("cannot open file %s: %d", "nu se poate deschide fișierul %s: %s", "placeholders differ"),
    (" ".join(["word"] * 41), " ".join(["cuvânt"] * 41), "more than 40 words"),
    ("no such file here", "nu există niciun fișier de acest fel aici, verificați calea și încercați din nou", "lengths differ more than 3-fold"),
])
def test_drop_reason(source, target, reason):
    assert l10n.drop_reason(source, target) == reason


def test_collect_deduplicates_by_source_keeping_the_commonest_translation(tmp_path):
    a = {"Cannot read the file": "Nu se poate citi fișierul", "Open": "Deschide"}
    b = {"cannot  read the file": "Fișierul nu poate fi citit", "Show all the files": "Arată toate fișierele"}
    c = {"Cannot read the file": "Fișierul nu poate fi citit"}
    for name, entries in (("a", a), ("b", b), ("c", c)):
        (tmp_path / f"{name}.mo").write_bytes(mo_bytes(entries))
    pairs, dropped = l10n.collect((f"pkg-{n}", n, tmp_path / f"{n}.mo") for n in "abc")
    assert {p.source: p.target for p in pairs} == {"cannot read the file": "Fișierul nu poate fi citit",
                                                    "Show all the files": "Arată toate fișierele"}
    assert dropped == {"messages": 5, "fewer than 3 words": 1, "duplicate source": 2}


def test_split_is_disjoint_by_skeleton_exactly_sized_and_deterministic():
    words = [f"x{chr(97 + i // 26)}{chr(97 + i % 26)}" for i in range(120)]   # skeletons ignore digits
    pairs = [l10n.Pair(f"cannot open file {w} now", f"nu se poate deschide {w}", "p", "c", i)
             for i, w in enumerate(words)]
    pairs += [l10n.Pair(f"cannot open file {w} now '%s'", f"nu se poate deschide {w} „%s”", "p", "c", 200 + i)
              for i, w in enumerate(words[::3])]  # variants: the same skeleton as their plain message
    parts = l10n.split(pairs, {"test": 30, "validation": 20})
    assert [len(parts[s]) for s in ("test", "validation", "train")] == [30, 20, len(pairs) - 50]
    skeletons = {s: {l10n.skeleton(p.source) for p in parts[s]} for s in parts}
    assert not (skeletons["test"] & skeletons["validation"] or skeletons["test"] & skeletons["train"]
                or skeletons["validation"] & skeletons["train"])
    assert parts == l10n.split(pairs, {"test": 30, "validation": 20})
    with pytest.raises(ValueError, match="split 'test': .* 500 wanted"):
        l10n.split(pairs[:10], {"test": 500})


# ---- the task, built from the pinned Debian packages ----------------------------------------------------

@pytest.fixture(scope="module")
def enro():
    return tasks.load_task("en-ro-l10n")


@ro_l10n
def test_task_builds_from_the_fetched_packages_with_the_card_sizes(enro):
    spec = tasks.get_task("en-ro-l10n")
    assert {s: len(enro[s]) for s in enro} == dict(spec.splits)            # the sizes the docstring's card states
    assert spec.stands_in_for == "wmt16-en-ro" and tasks.get_task("wmt16-en-ro").stand_in == "en-ro-l10n"
    keys = {s: {l10n.source_key(x) for x in enro[s]["source"]} for s in enro}
    skel = {s: {l10n.skeleton(x) for x in enro[s]["source"]} for s in enro}
    for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
        assert not keys[a] & keys[b] and not skel[a] & skel[b]
    assert sum(len(k) for k in keys.values()) == sum(len(enro[s]) for s in enro)   # no source twice
    sample = enro["train"].select(range(0, len(enro["train"]), 25))
    assert all(l10n.drop_reason(s, t) is None for s, t in zip(sample["source"], sample["target"]))
    assert not {c for s in enro for c in enro[s]["catalogue"]} & {"iso_3166", "iso_639", "iso_4217", "xkeyboard-config"}


@ro_l10n
def test_the_cards_counts_are_what_the_rules_drop_and_keep():
    folders = {a: assets.ensure(a) for a in assets.expand(["ro-l10n"])}
    pairs, dropped = l10n.collect((package, domain, folders[a] / f"{domain}.mo")
                                  for a, package, domain in assets.RO_CATALOGUES)
    # the numbers petl/tasks.py's data card states
    assert len(pairs) == 11_002 and sum(l10n.count_words(p.source) for p in pairs) == 73_407
    assert dropped == {"messages": 15_093, "untranslated": 729, "fewer than 3 words": 3_069, "more than 40 words": 125,
                       "placeholders differ": 24, "lengths differ more than 3-fold": 4, "duplicate source": 140}


@ro_l10n
def test_the_copy_baseline_is_a_record_scored_on_the_test_messages(enro, tmp_path):
    record = baselines.copy_record("en-ro-l10n", 200)
    part = enro["test"].select(range(200))
    assert record["name"] == "en-ro-l10n-copy-200" and record["test_examples"] == 200
    assert record["test"] == metrics.compute_metrics("en-ro-l10n", part["source"], part["target"])
    assert 0 < record["test"]["bleu"] < 100
    dev = enro["validation"].select(range(baselines.COPY_DEV))                  # the CPU default's dev messages
    assert record["validation"] == metrics.compute_metrics("en-ro-l10n", dev["source"], dev["target"])
    path = baselines.write(record, tmp_path)
    assert path.name == "en-ro-l10n-copy-200.json"


# ---- BLEU as the reference scores en-ro -------------------------------------------------------------------

def test_romanian_bleu_is_the_reference_pipeline_on_a_hand_checked_example():
    hyp, ref = "Fişierul %s nu există în acest director.", "Fișierul „%s” nu există în acest director."
    # normalise-romanian + remove-diacritics, Moses' punctuation normaliser (quotes) and tokenizer (-no-escape)
    assert metrics.romanian_tokenize(hyp) == "Fisierul % s nu exista in acest director ."
    assert metrics.romanian_tokenize(ref) == 'Fisierul " % s " nu exista in acest director .'
    # 9 hypothesis tokens, 11 reference tokens; matched n-grams 9/9, 6/8, 4/7, 3/6; no smoothing (-s none)
    expected = 100 * math.exp(1 - 11 / 9) * (9 / 9 * 6 / 8 * 4 / 7 * 3 / 6) ** 0.25
    assert metrics.bleu([hyp], [ref], romanian=True) == pytest.approx(expected, abs=1e-9)
    assert metrics.compute_metrics("en-ro-l10n", [hyp], [ref])["bleu"] == pytest.approx(expected, abs=1e-9)
    # no smoothing: a sentence without a matching 4-gram scores 0, as `sacrebleu -s none`
    assert metrics.bleu(["Fişierul nu"], ["Fișierul „x” nu"], romanian=True) == 0.0
    scores = metrics.compute_metrics("en-ro-l10n", [ref], [hyp.replace("ş", "ș")])
    assert scores["chrf"] < 100 and metrics.chrf([ref], [ref], romanian=True) == pytest.approx(100.0)


# ---- Debian packages as assets ---------------------------------------------------------------------------

def _deb(path: Path, files: dict[str, bytes]) -> Path:
    """A minimal Debian package: ar archive of debian-binary, control.tar.xz and data.tar.xz."""
    def tar_xz(members):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:xz") as tf:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
        return buf.getvalue()

    out = b"!<arch>\n"
    for name, data in (("debian-binary", b"2.0\n"), ("control.tar.xz", tar_xz({"./control": b"Package: x\n"})),
                       ("data.tar.xz", tar_xz(files))):
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode() + data + b"\n" * (len(data) % 2)
    path.write_bytes(out)
    return path


def test_a_deb_asset_extracts_its_catalogues(tmp_path):
    deb = _deb(tmp_path / "x.deb", {"./usr/share/locale/ro/LC_MESSAGES/x.mo": b"MO",
                                    "./usr/share/doc/x/copyright": b"GPL"})
    asset = assets.Asset(name="t", package="x", version="1", filename="x.deb", sha256="", size=0,
                         extract=(("./usr/share/locale/ro/LC_MESSAGES/x.mo", "x.mo"),), required=("x.mo",),
                         licence="", description="", registry="debian", arch="all")
    out = tmp_path / "out"
    out.mkdir()
    assert assets._extract(asset, deb, out) == ["x.mo"] and (out / "x.mo").read_bytes() == b"MO"
    assert asset.requirement == "x:all=1" and asset.kind == "deb"
    (tmp_path / "bad.deb").write_bytes(b"PK\3\4")
    with pytest.raises(assets.AssetError, match="not a Debian package"):
        assets._extract(asset, tmp_path / "bad.deb", out)


def test_a_vanished_debian_version_fails_naming_package_version_and_how_to_repin(tmp_path, monkeypatch):
    asset = assets.ASSETS["ro-l10n-bash"]
    monkeypatch.delenv(assets.FILES_VAR, raising=False)
    monkeypatch.setattr(assets.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(
        a[0], 100, "", "E: Can't find a source to download version '5.2.15-2+b13' of 'bash:amd64'"))
    with pytest.raises(assets.AssetError) as err:
        assets._download(asset, tmp_path)
    said = str(err.value)
    assert "bash 5.2.15-2+b13 (amd64)" in said and "apt-get update" in said and "petl.assets repin" in said
    monkeypatch.setattr(assets.shutil, "which", lambda name: None)
    with pytest.raises(assets.AssetError, match="does not have. Fetch it on Debian 12"):
        assets._download(asset, tmp_path)


def test_the_group_name_fetches_every_catalogue_package():
    assert assets.expand(["ro-l10n"]) == list(dict.fromkeys(a for a, _p, _c in assets.RO_CATALOGUES))
    assert not set(assets.GROUPS["ro-l10n"]) & set(assets.DEFAULT_ASSETS)      # apt-get: by name only
    with pytest.raises(ValueError, match="groups: ro-l10n"):
        assets.expand(["ro-l10"])


# ---- a tiny training run -----------------------------------------------------------------------------------

@pytest.mark.slow
@ro_l10n
def test_a_tiny_translation_run_writes_a_record_with_bleu_and_chrf(tiny_dir, tmp_path):
    tiny = tiny_dir("llama")
    cfg = TrainConfig(variant="lora", task="en-ro-l10n", model=tiny, max_steps=2, eval_every=2, batch_size=4,
                      max_train_examples=16, max_eval_examples=4, max_test_examples=4, gen_max_length=8,
                      num_beams=1, lr=1e-3, overrides={"attn_bn": 4}, progress=False)
    resolved = cfg.resolved()
    assert (resolved.label_smoothing, resolved.max_grad_norm, resolved.adam_betas) == (0.1, 1.0, (0.9, 0.98))  # en-ro
    record = train(cfg, runs_dir=tmp_path / "runs")
    assert record.status == "complete", record.metrics.get("reason")
    assert record.metrics["primary_metric"] == "bleu" and set(record.metrics["test"]) == {"bleu", "chrf"}
    assert all(0 <= v <= 100 for v in record.metrics["test"].values())
    assert record.metrics["num_examples"]["test"] == 4


def test_an_mbart_model_gets_the_language_codes_of_the_task():
    from petl import models

    class Tokenizer:  # the two look-ups petl makes of an mBART tokenizer
        pad_token_id, eos_token_id = 1, 2

        def get_vocab(self):
            return {"en_XX": 250004, "ro_RO": 250020}

        def convert_tokens_to_ids(self, token):
            return self.get_vocab()[token]

    model = tiny_model("mbart")
    spec = tasks.get_task("en-ro-l10n")
    assert (spec.source_lang, spec.target_lang) == ("en_XX", "ro_RO")
    models._set_generation_defaults(model, Tokenizer(), spec, "encoder-decoder")
    gc = model.generation_config
    assert (gc.forced_bos_token_id, gc.num_beams, gc.max_length) == (250020, 5, 200)   # the reference's decoding


def test_repin_prints_the_rows_apt_offers_marking_what_changed(monkeypatch):
    def apt_cache(cmd, **kw):
        package = cmd[-1].split(":")[0]
        row = next(r for r in assets._RO_DEBS if r[0] == package)
        version, sha, size = (("5.2.15-2+b14", "f" * 64, 1_500_000) if package == "bash" else (row[1], row[3], row[4]))
        return subprocess.CompletedProcess(cmd, 0, f"Package: {package}\nVersion: {version}\nSize: {size}\nSHA256: {sha}\n", "")

    monkeypatch.setattr(assets.shutil, "which", lambda name: "/usr/bin/" + name)
    monkeypatch.setattr(assets.subprocess, "run", apt_cache)
    lines = assets.repin_lines()
    assert len(lines) == len(assets._RO_DEBS)
    changed = [line for line in lines if "# was" in line]
    assert changed == [f'("bash", "5.2.15-2+b14", "amd64", "{"f" * 64}", 1_500_000, (\'bash\',), "GPL-3+"),  # was 5.2.15-2+b13']
