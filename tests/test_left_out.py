"""Nothing left out without a word: what the loaders and the FlipReID sampler policy leave out
is logged and collected (counts worked out by hand on small trees)."""
import logging

import numpy as np
import pytest

import dataset_trees as trees
from reid_tf.data import load_dataset
from reid_tf.data.left_out import collect_left_out
from reid_tf.data.sampler import PKSampler

# a: 3 images, b: 1, c: 2, d: 4
IDENTITIES = np.array(["a", "b", "a", "c", "d", "d", "a", "c", "d", "d"])


@pytest.mark.parametrize("K, identities, images", [(2, 1, 1), (3, 2, 3), (1, 0, 0)])
def test_flipreid_policy_reports_identities_with_fewer_than_K_images(K, identities, images,
                                                                       caplog):
    with caplog.at_level(logging.WARNING, "reid_tf.data"), collect_left_out() as records:
        sampler = PKSampler(IDENTITIES, P=1, K=K, steps_per_epoch=2, seed=0)
    if not identities:
        assert sampler.left_out is None and records == [] and not caplog.records
        return
    assert records == [sampler.left_out]
    assert (records[0]["identities"], records[0]["images"]) == (identities, images)
    assert "--image_num_per_identity" in records[0]["changed_by"]
    assert "--sampler_policy=msinet" in records[0]["changed_by"]
    assert f"{identities} identities and {images} images" in caplog.text
    # And indeed they never come out of the sampler.
    short = {"b"} if K == 2 else {"b", "c"}
    drawn = {IDENTITIES[row] for epoch in range(3) for batch in sampler.epoch_batches(epoch)
             for row in batch}
    assert drawn and not drawn & short


def test_msinet_policy_leaves_no_identity_out():
    with collect_left_out() as records:
        sampler = PKSampler(IDENTITIES, P=2, K=3, steps_per_epoch=None, seed=0, policy="msinet")
    assert sampler.left_out is None and records == []


def test_sysu_identities_without_folders_are_reported(tmp_path):
    ids = {"train_id.txt": [2, 1, 7, 8], "val_id.txt": [3], "test_id.txt": [10, 5, 11]}
    trees.write_sysu_mm01(str(tmp_path), ids=ids)
    with collect_left_out() as records:
        load_dataset("SYSU_MM01", str(tmp_path))
    # 7 and 8 (training) and 11 (test) have no cam*/00NN folder.
    assert [(r["source"], r["identities"], r["images"]) for r in records] == [
        ("SYSU_MM01", 2, 0), ("SYSU_MM01", 1, 0)]
    assert "[7, 8]" in records[0]["reason"] and "[11]" in records[1]["reason"]


def test_sysu_without_absent_identities_reports_nothing(tmp_path):
    trees.write_sysu_mm01(str(tmp_path))
    with collect_left_out() as records:
        load_dataset("SYSU_MM01", str(tmp_path))
    assert records == []


def test_junk_identity_and_other_extensions_are_reported(tmp_path):
    files = {folder: list(names) for folder, names in trees.MARKET1501_FILES.items()}
    files["query"] = files["query"] + ["0007_c2s1_000300_01.png"]
    trees.write_market1501(str(tmp_path), files=files)
    with collect_left_out() as records:
        frame = load_dataset("Market1501", str(tmp_path))
    # One -1 image in bounding_box_train and one in bounding_box_test; one .png in query.
    by_reason = {r["reason"].startswith("images of the junk"): (r["identities"], r["images"])
                 for r in records}
    assert by_reason == {True: (1, 2), False: (None, 1)}
    assert len(frame) == 10 - 2  # 10 .jpg files written, 2 of them junk
