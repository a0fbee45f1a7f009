"""Subsets are seeded, class-stratified random samples: on a class-sorted folder data set the
probe-train and test subsets hold every class in the split's proportions, and kNN on a
subset agrees with kNN on the whole split within sampling error."""

import math

import pytest
import torch
from PIL import Image

from spatialssl.evals import jigsaw, knn, patch_pair, segmentation
from spatialssl.evals.features import EvalContext, stratified_sample

N_CLS = 4


def _write_folder(root, split: str, per_class: int, seed: int, step: int) -> None:
    """ImageFolder ``root/split/c<k>/*.png`` (sorted by class on loading). The red channel
    holds a code: the class itself for classes 0 and 1; for classes 2 and 3 a random class
    60% of the time (so accuracy differs by class, and a class-biased subset shows it)."""
    g = torch.Generator().manual_seed(seed)
    for c in range(N_CLS):
        d = root / split / f"c{c}"
        d.mkdir(parents=True)
        for i in range(per_class):
            code = c
            if c >= 2 and torch.rand(1, generator=g).item() < 0.6:
                code = int(torch.randint(0, N_CLS, (1,), generator=g))
            img = torch.randint(0, 256, (16, 16, 3), generator=g, dtype=torch.uint8)
            img[..., 0] = code * step
            Image.fromarray(img.numpy()).save(d / f"{i:03d}.png")


@pytest.fixture(scope="module")
def sorted_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    _write_folder(root, "train", 40, 0, 20)
    _write_folder(root, "test", 40, 1, 20)
    return root


def _ctx(planted_tools, root, backbone=None, seed=0, **ev):
    t = planted_tools
    ctx = t["context"](backbone or t["Planted"](N_CLS), {}, seed=seed, **ev)
    ctx.cfg["data"].update(root=str(root), canvas_size=16)
    ctx.cfg["views"]["global_size"] = 16
    return ctx


def _hist(labels: torch.Tensor) -> torch.Tensor:
    return torch.bincount(labels, minlength=N_CLS).float() / len(labels)


def test_subsets_keep_the_class_histogram(planted_tools, sorted_folder):
    ctx = _ctx(planted_tools, sorted_folder, n_train=80, n_test=40, jigsaw_n_train=20, jigsaw_n_test=12,
               dense_n_train=20, dense_n_test=12)
    full = ctx.full_split("test")
    assert full.labels.tolist() == sorted(full.labels.tolist())  # the folder comes sorted by class
    tr, te = ctx.split("train"), ctx.split("test")
    assert len(tr) == 80 and len(te) == 40
    for sub in (tr, te):
        assert torch.allclose(_hist(sub.labels), _hist(full.labels))  # 1/4 each, exactly
    j_tr, j_te = jigsaw.subsets(ctx)
    assert torch.allclose(_hist(j_tr.labels), torch.full((N_CLS,), 0.25))
    assert sorted(torch.bincount(j_te.labels, minlength=N_CLS).tolist()) == [3, 3, 3, 3]
    a, b = patch_pair.halves(ctx, len(te), te.labels)
    assert set(a.tolist()).isdisjoint(b.tolist()) and len(a) + len(b) == len(te)
    assert torch.bincount(te.labels[a], minlength=N_CLS).tolist() == [5, 5, 5, 5]
    counts = torch.bincount(stratified_sample(1000, 100, torch.tensor([0] * 700 + [1] * 300), "x"), minlength=1000)
    assert counts[:700].sum() == 70 and counts[700:].sum() == 30


def test_subsets_seeded_by_eval_seed_not_by_checkpoint(planted_tools, sorted_folder):
    a = _ctx(planted_tools, sorted_folder, n_test=40)
    b = EvalContext(a.cfg, planted_tools["random_backbone"](), "another-checkpoint", splits={}, progress=False)
    assert torch.equal(a.split("test").images, b.split("test").images)  # same items, same order
    c = a.for_seed(1)
    assert not torch.equal(a.split("test").images, c.split("test").images)
    assert torch.allclose(_hist(c.split("test").labels), torch.full((N_CLS,), 0.25))


def test_knn_on_a_subset_agrees_with_the_whole_split(planted_tools, sorted_folder):
    """Classes 0/1 are always right and 2/3 often wrong: the first 40 test images (classes
    0 and 1 only) would read ~1.0 against ~0.75 on the whole split."""
    whole = knn.run(_ctx(planted_tools, sorted_folder, n_train=0, n_test=0))
    sub = knn.run(_ctx(planted_tools, sorted_folder, n_train=80, n_test=40))
    p, n, big_n = whole["top1"], 40, whole["n_test"]
    se = math.sqrt(p * (1 - p) / n * (1 - n / big_n))  # sampling without replacement
    assert 0.6 < p < 0.9 and sub["n_test"] == 40
    assert abs(sub["top1"] - p) < 3 * se, (sub["top1"], p, se)


def test_dense_subsets_are_samples_too(planted_tools):
    t = planted_tools
    tr, te = t["dense_set"](30, 3, 0), t["dense_set"](30, 3, 1)
    te.labels = torch.arange(30) // 10  # sorted
    ctx = t["context"](t["Planted"](3), {"train": tr, "test": te}, dense_n_train=9, dense_n_test=9)
    _, d_te = segmentation.dense_subsets(ctx, (("train", tr), ("test", te)))
    assert torch.bincount(d_te.labels).tolist() == [3, 3, 3]


def test_data_loaded_once_is_shared_by_derived_contexts(planted_tools, sorted_folder):
    """``split_once`` / ``subset_once`` (what the dense evals cache through): made once per
    evaluation, the same object for another backbone's or seed's context; ``has_split``
    tells what is loaded."""
    ctx = _ctx(planted_tools, sorted_folder)
    made = []

    def load():
        made.append(1)
        return ctx.full_split("test")

    assert not ctx.has_split("seg_x_test")
    first = ctx.split_once("seg_x_test", load)
    other = ctx.with_backbone(planted_tools["random_backbone"](), "another").for_seed(3)
    assert other.split_once("seg_x_test", load) is first and other.has_split("seg_x_test") and len(made) == 1
    sub = ctx.subset_once(("dense-decoded", "x"), lambda: first.subset(torch.arange(4)))
    assert other.subset_once(("dense-decoded", "x"), lambda: made.append(2)) is sub and made == [1]
