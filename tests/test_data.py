"""Tests for ersm_surgery.data: the built-in clutter set, image folders, errors and loaders."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from ersm_surgery.data import (
    CLUTTER_MEAN,
    CLUTTER_STD,
    ClutterDataset,
    FolderDataset,
    _render,
    canonical_split,
    create_dataset,
    list_builtin_datasets,
    make_loader,
)
from ersm_surgery.errors import DataError

# ---------------------------------------------------------------- builtin:clutter


def test_clutter_is_deterministic_per_seed_split_and_index():
    a = create_dataset("builtin:clutter", "train", seed=3, size=20)
    b = create_dataset("builtin:clutter", "training", seed=3, size=20)
    x0, y0 = a[5]
    x1, y1 = b[5]
    assert x0.dtype == torch.float32 and x0.shape == (3, 64, 64)
    assert torch.equal(x0, x1) and y0 == y1
    assert not torch.equal(a[5][0], a[6][0])
    assert not torch.equal(a[5][0], create_dataset("builtin:clutter", "train", seed=4, size=20)[5][0])
    assert not torch.equal(a[5][0], create_dataset("builtin:clutter", "val", seed=3, size=20)[5][0])
    assert torch.equal(a[-1][0], a[19][0])
    with pytest.raises(IndexError):
        a[20]


def test_clutter_keeps_rendered_pictures_and_renders_again_when_the_settings_change(monkeypatch):
    import pickle

    from ersm_surgery.data import clutter
    from ersm_surgery.data.preprocessing import legacy_preprocessing

    ds = ClutterDataset(size=6, seed=2)
    drawn = []
    real = ClutterDataset.sample
    monkeypatch.setattr(ClutterDataset, "sample", lambda self, i: drawn.append(i) or real(self, i))
    first = ds[3][0]
    assert torch.equal(ds[3][0], first) and drawn == [3]  # drawn once, transformed each time
    assert torch.equal(first, ds.transform(real(ds, 3).image))
    ds.set_preprocessing(legacy_preprocessing(48, CLUTTER_MEAN, CLUTTER_STD))
    assert ds[3][0].shape == (3, 48, 48) and drawn == [3, 3]  # a new size is a new picture
    ds.spurious_cue = 1.0
    ds[3]
    assert drawn == [3, 3, 3]
    clone = pickle.loads(pickle.dumps(ds))  # DataLoader workers started by spawn
    assert "_cache" not in clone.__dict__ and torch.equal(clone[3][0], ds[3][0])
    monkeypatch.setattr(clutter, "RENDER_CACHE_BYTES", 0)  # no room: drawn on every access
    full = ClutterDataset(size=6, seed=2)
    full[1], full[1]
    assert drawn[-2:] == [1, 1]


def test_clutter_api_and_defaults():
    train = create_dataset("builtin:clutter")
    val = create_dataset("builtin:clutter", "validation", img_size=48)
    assert (len(train), len(val)) == (2000, 500)
    assert train.num_classes == 10 and len(set(train.classes)) == 10
    assert train.has_boxes and val[0][0].shape == (3, 48, 48)
    assert sorted(train.target(i) for i in range(10)) == list(range(10))  # balanced
    d = train.description()
    assert d["kind"] == "builtin:clutter" and d["seed"] == 0 and d["split"] == "train" and d["size"] == 2000
    assert d["classes"] == train.classes
    small = create_dataset("builtin:clutter", num_classes=4, size=7)
    assert small.classes == ["circle", "square", "triangle", "cross"] and len(small) == 7
    assert list_builtin_datasets() == ["builtin:clutter"]


def test_clutter_normalisation_constants_match_the_generator():
    ds = ClutterDataset(size=200, seed=1)
    px = np.stack([np.asarray(ds.sample(i).image, dtype=np.float64) / 255 for i in range(len(ds))])
    assert np.allclose(px.mean((0, 1, 2)), CLUTTER_MEAN, atol=0.03)
    assert np.allclose(px.std((0, 1, 2)), CLUTTER_STD, atol=0.03)


def test_clutter_boxes_are_tight_and_cover_the_object(monkeypatch):
    captured = {}
    composite = _render.composite

    def spy(rng, img, alpha, *args, **kwargs):
        captured["under"], captured["alpha"] = img.copy(), alpha
        return composite(rng, img, alpha, *args, **kwargs)

    monkeypatch.setattr(_render, "composite", spy)
    ds = ClutterDataset(size=40, seed=2)
    for i in range(len(ds)):
        s = ds.sample(i)
        assert s.box == ds.box(i)
        x0, y0, x1, y1 = s.box
        assert 0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0
        assert 0.3 <= max(x1 - x0, y1 - y0) <= 0.65  # objects span 35-60% of the side (+ anti-aliasing)
        c0, r0, c1, r1 = (round(v * 64) for v in s.box)
        inside = np.zeros((64, 64), bool)
        inside[r0:r1, c0:c1] = True
        alpha = captured["alpha"]
        assert alpha[~inside].max() == 0 and alpha[inside].max() > 0
        # the object is visible: inside the box many pixels differ from what lies beneath, outside none do
        changed = np.linalg.norm(np.asarray(s.image) / 255.0 - np.clip(captured["under"], 0, 1), axis=2) > 0.1
        assert changed[inside].mean() > 0.2
        assert changed[~inside].mean() < 0.01


def _tint_agreement(ds: ClutterDataset, n: int) -> tuple[float, float]:
    """Nearest-tint class read from the background pixels: agreement with the label, and cue-tag agreement."""
    tints = np.stack([_render.cue_tint(c, ds.num_classes) for c in range(ds.num_classes)])
    hits, tagged = 0, 0
    for i in range(n):
        s = ds.sample(i)
        c0, r0, c1, r1 = (round(v * ds.img_size) for v in s.box)
        px = np.asarray(s.image, dtype=np.float32) / 255.0
        outside = np.ones(px.shape[:2], bool)
        outside[r0:r1, c0:c1] = False
        est = 2 * px[outside].mean(0) - 0.5  # undo the 50% blend with a mid-grey texture
        read = int(np.argmin(np.linalg.norm(tints - est, axis=1)))
        hits += read == s.target
        tagged += s.cue == s.target
    return hits / n, tagged / n


def test_spurious_cue_is_correlated_in_train_only():
    n = 150
    train_hit, train_tag = _tint_agreement(ClutterDataset("train", spurious_cue=1.0, seed=5), n)
    val_hit, val_tag = _tint_agreement(ClutterDataset("validation", spurious_cue=1.0, seed=5), n)
    none_hit, _ = _tint_agreement(ClutterDataset("train", spurious_cue=0.0, seed=5), n)
    assert train_tag == 1.0 and val_tag < 0.25
    assert train_hit > 0.6, train_hit  # measured from pixels: the tint predicts the label in train ...
    assert val_hit < 0.3 and none_hit < 0.3, (val_hit, none_hit)  # ... and not in validation
    half = ClutterDataset("train", spurious_cue=0.5, seed=5)
    frac = np.mean([half.sample(i).cue is not None for i in range(200)])
    assert 0.35 < frac < 0.65


def test_claim_f_splits_cued_and_decorrelated_differ_only_in_the_tint():
    """reproduce's cue (0.9, 4 classes): cued validation agrees with the class as train does; the decorrelated
    one (the usual validation split) at chance among tinted images; the same objects either way."""
    n, k = 200, 4
    cued = ClutterDataset("validation", num_classes=k, spurious_cue=0.9, seed=3, validation_cue="correlated")
    plain = ClutterDataset("validation", num_classes=k, spurious_cue=0.9, seed=3)
    cued_hit, cued_tag = _tint_agreement(cued, n)
    plain_hit, plain_tag = _tint_agreement(plain, n)
    tinted = [plain.sample(i).cue is not None for i in range(n)]
    assert 0.85 < np.mean(tinted) < 0.95 and cued_tag == pytest.approx(np.mean(tinted))
    assert cued_hit > 0.7, cued_hit
    # chance among the tinted images is 1/k; untinted ones have no cue to agree
    assert abs(plain_tag - np.mean(tinted) / k) < 0.08 and plain_hit < 0.4, (plain_tag, plain_hit)
    for i in range(20):
        a, b = cued.sample(i), plain.sample(i)
        assert a.box == b.box and a.target == b.target and (a.cue is None) == (b.cue is None)
    with pytest.raises(DataError, match="validation_cue"):
        ClutterDataset("validation", validation_cue="flipped")


@pytest.mark.parametrize("kwargs", [{"num_classes": 11}, {"num_classes": 1}, {"spurious_cue": 1.5}, {"size": 0},
                                    {"img_size": 8}])
def test_clutter_rejects_bad_settings(kwargs):
    with pytest.raises(DataError, match="invalid builtin:clutter settings"):
        create_dataset("builtin:clutter", **kwargs)


def test_factory_rejects_unknown_builtin_option_and_split():
    with pytest.raises(DataError, match="unknown built-in data set 'builtin:nope'.*builtin:clutter"):
        create_dataset("builtin:nope")
    with pytest.raises(DataError, match="unknown option.*colour"):
        create_dataset("builtin:clutter", colour=3)
    with pytest.raises(DataError, match="unknown split 'dev'.*training"):
        create_dataset("builtin:clutter", "dev")
    assert canonical_split("VAL") == canonical_split("test") == "validation"


# ---------------------------------------------------------------- folders


def _write(path, colour=(200, 30, 30), size=(20, 16)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def _folder(root, splits=("train", "validation"), classes=("cat", "dog"), per_class=3):
    for split in splits:
        for k, c in enumerate(classes):
            for i in range(per_class):
                _write(root / split / c / f"{i}.png", (40 * k, 10 * i, 100))
    return root


def test_folder_dataset_reads_timm_layout(tmp_path):
    root = _folder(tmp_path / "data", classes=("b_dog", "a_cat", "c10", "c9"), per_class=2)
    ds = create_dataset(root, "train", img_size=12)
    assert isinstance(ds, FolderDataset)
    assert ds.classes == ["a_cat", "b_dog", "c9", "c10"]  # timm's natural order
    assert len(ds) == 8 and ds.num_classes == 4 and not ds.has_boxes and ds.box(0) is None
    x, y = ds[0]
    assert x.shape == (3, 12, 12) and x.dtype == torch.float32 and y == 0
    assert ds.mean == (0.485, 0.456, 0.406) and ds.std == (0.229, 0.224, 0.225)
    d = ds.description()
    assert d["kind"] == "folder" and d["split"] == "train" and d["size"] == 8 and d["classes"] == ds.classes
    assert d["path"] == str(root.resolve())


def test_folder_split_synonyms_and_shared_class_indices(tmp_path):
    root = tmp_path / "data"
    _folder(root, splits=("training",), classes=("cat", "dog", "eel"))
    _folder(root, splits=("val",), classes=("dog",))
    train = create_dataset(str(root), "train")
    val = create_dataset(str(root), "validation")
    assert train.split_dir.name == "training" and val.split_dir.name == "val"
    assert val.classes == ["cat", "dog", "eel"] and {val[i][1] for i in range(len(val))} == {1}


def test_folder_error_missing_directory(tmp_path):
    with pytest.raises(DataError, match=f"data directory '{tmp_path / 'nope'}' does not exist.*--data-dir"):
        create_dataset(tmp_path / "nope")


def test_folder_error_no_train_split(tmp_path):
    _folder(tmp_path, splits=("validation",))
    with pytest.raises(DataError, match=r"no train split in .*train/, training/.*; create"):
        create_dataset(tmp_path, "train")


def test_folder_error_no_validation_split(tmp_path):
    _folder(tmp_path, splits=("train",))
    with pytest.raises(DataError, match=r"no validation split .*validation/, val/, valid/.*test/"):
        create_dataset(tmp_path, "val")


def test_folder_error_empty_class_folder(tmp_path):
    _folder(tmp_path, splits=("train",))
    (tmp_path / "train" / "emu").mkdir()
    with pytest.raises(DataError, match=r"empty class folder\(s\): .*train/emu; add images"):
        create_dataset(tmp_path)


def test_folder_error_no_image_files(tmp_path):
    for c in ("cat", "dog"):
        (tmp_path / "train" / c).mkdir(parents=True)
        (tmp_path / "train" / c / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match=r"no image files \(.*\.jpg.*\) under .*train'; add images"):
        create_dataset(tmp_path)


def test_folder_error_no_class_folders(tmp_path):
    _write(tmp_path / "train" / "loose.png")
    with pytest.raises(DataError, match="no class folders in .*one sub-folder per class"):
        create_dataset(tmp_path)


def test_folder_error_validation_class_unknown_to_train(tmp_path):
    _folder(tmp_path, splits=("train",))
    _folder(tmp_path, splits=("validation",), classes=("cat", "yak"))
    with pytest.raises(DataError, match="missing from the train split: yak"):
        create_dataset(tmp_path, "validation")


def test_folder_error_unknown_option(tmp_path):
    _folder(tmp_path)
    with pytest.raises(DataError, match="unknown option.*spurious_cue.*train_augment"):
        create_dataset(tmp_path, spurious_cue=0.5)


def _with_corrupt(root):
    _folder(root, splits=("train",), per_class=3)
    bad = root / "train" / "cat" / "1.png"
    bad.write_bytes(b"this is not a png")
    return bad


def test_corrupt_image_is_skipped_counted_and_logged_once(tmp_path, caplog):
    bad = _with_corrupt(tmp_path)
    ds = create_dataset(tmp_path)
    assert ds.skipped == 0
    with caplog.at_level(logging.WARNING, logger="ersm_surgery.data.folder"):
        for _ in range(2):  # a second epoch meets the same file: still one skip, one warning
            items = [ds[i] for i in range(len(ds))]
    assert len(items) == 6 and ds.skipped == 1
    assert torch.equal(items[1][0], items[2][0]) and items[1][1] == 0  # replaced by the next image
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(bad) in warnings[0].getMessage()
    assert ds.description()["skipped"] == 1


def test_corrupt_image_skips_are_counted_across_loader_workers(tmp_path):
    _with_corrupt(tmp_path)
    ds = create_dataset(tmp_path, img_size=8)
    loader = make_loader(ds, batch_size=2, shuffle=False, workers=2, seed=0)
    targets = torch.cat([y for _, y in loader])
    assert len(targets) == 6 and ds.skipped == 1


def test_strict_raises_on_corrupt_image_at_build(tmp_path):
    bad = _with_corrupt(tmp_path)
    with pytest.raises(DataError, match=f"1 unreadable image.*{bad}.*without --strict"):
        create_dataset(tmp_path, strict=True)


def test_strict_raises_naming_a_truncated_image_when_read(tmp_path):
    _folder(tmp_path, splits=("train",), per_class=2)
    bad = tmp_path / "train" / "dog" / "big.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(bad)
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) * 2 // 3])  # header intact, data cut off: passes verify, fails decode
    ds = create_dataset(tmp_path, strict=True)
    index = [p for p, _ in ds.samples].index(str(bad))
    with pytest.raises(DataError, match=f"cannot read image '{bad}'"):
        ds[index]
    lenient = create_dataset(tmp_path)
    lenient[index]
    assert lenient.skipped == 1


# ---------------------------------------------------------------- loaders


def test_loader_order_is_fixed_by_seed():
    ds = create_dataset("builtin:clutter", size=30, img_size=32)

    def order(seed):
        return torch.cat([y for _, y in make_loader(ds, 8, shuffle=True, workers=0, seed=seed)]).tolist()

    def first_batch(seed):
        return next(iter(make_loader(ds, 8, shuffle=True, workers=0, seed=seed)))[0]

    assert order(1) == order(1) and order(1) != order(2)
    assert torch.equal(first_batch(1), first_batch(1))
    loader = make_loader(ds, 8, shuffle=False, workers=0, seed=0, drop_last=True)
    assert len(loader) == 3 and torch.cat([y for _, y in loader]).tolist() == [i % 10 for i in range(24)]


def test_loader_argument_errors():
    ds = create_dataset("builtin:clutter", size=4)
    with pytest.raises(DataError, match="batch_size=0"):
        make_loader(ds, 0, shuffle=False, workers=0, seed=0)
    with pytest.raises(DataError, match="no process group.*torchrun"):
        make_loader(ds, 2, shuffle=True, workers=0, seed=0, distributed=True)
