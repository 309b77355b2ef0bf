"""PK samplers: batch layout, the FlipReID / MSINet / CM-NAS policies, determinism and resume."""
import json

import reid_tf  # noqa: F401  (selects tf-keras; first import of every test)

import numpy as np
import pandas as pd
import pytest

from reid_tf.data.sampler import CrossModalitySampler, PKSampler


def identities_with_counts(counts, shuffle_seed=None):
    """A per-row identity array: identity i (numbered 100 + i) has counts[i] rows."""
    values = np.concatenate([np.full(count, 100 + index) for index, count in enumerate(counts)])
    if shuffle_seed is not None:
        values = np.random.default_rng(shuffle_seed).permutation(values)
    return values


def check_pk_layout(batch, identities, P, K):
    """P·K rows, K-long identity-constant groups, P distinct identities; returns the groups."""
    batch = np.asarray(batch)
    assert batch.shape == (P * K,)
    groups = identities[batch].reshape(P, K)
    assert (groups == groups[:, :1]).all(), "identities are not contiguous per group of K"
    assert len(set(groups[:, 0].tolist())) == P, "an identity repeats within the batch"
    return groups[:, 0]


# ---------------------------------------------------------------------------------------------
# FlipReID policy (flipreid.md §4.5)

def test_flipreid_layout_skips_small_identities_and_has_steps_batches():
    counts = [3, 9, 4, 1, 12, 7, 5, 8, 2, 6, 10, 4]
    identities = identities_with_counts(counts, shuffle_seed=0)
    P, K, steps = 3, 4, 7
    sampler = PKSampler(identities, P, K, steps_per_epoch=steps, seed=1, policy="flipreid")
    small = {100 + index for index, count in enumerate(counts) if count < K}
    for epoch in range(4):
        batches = sampler.epoch_batches(epoch)
        assert len(batches) == steps
        assert len(np.concatenate(batches)) == steps * P * K
        for batch in batches:
            chosen = check_pk_layout(batch, identities, P, K)
            assert not small & set(chosen.tolist())


def test_flipreid_rounds_use_each_chunk_once_and_carry_over_across_epochs():
    # Ten identities with 5..7 images and K = 4: one chunk each, so with P = 5 every round is
    # exactly 2 batches covering all ten identities once. Identities 3 and 8 (< K) never appear.
    counts = [5, 6, 7, 3, 5, 6, 7, 5, 2, 6, 7, 5]
    identities = identities_with_counts(counts, shuffle_seed=3)
    eligible = {100 + index for index, count in enumerate(counts) if count >= 4}
    assert len(eligible) == 10
    sampler = PKSampler(identities, 5, 4, steps_per_epoch=3, seed=7)
    stream = [batch for epoch in range(4) for batch in sampler.epoch_batches(epoch)]
    assert len(stream) == 12
    for round_start in range(0, 12, 2):
        round_rows = np.concatenate(stream[round_start:round_start + 2])
        assert len(set(round_rows.tolist())) == len(round_rows)  # no image twice in a round
        assert set(identities[round_rows].tolist()) == eligible


def test_flipreid_round_with_several_chunks_per_identity_uses_every_image_once():
    # Every identity has exactly 3·K images and P equals the identity count: a round is exactly
    # three batches and uses every image once; a 4th image-less remainder never exists.
    identities = identities_with_counts([6] * 4, shuffle_seed=5)
    sampler = PKSampler(identities, 4, 2, steps_per_epoch=2, seed=11)
    stream = [batch for epoch in range(3) for batch in sampler.epoch_batches(epoch)]
    for round_start in (0, 3):
        rows = np.concatenate(stream[round_start:round_start + 3])
        assert sorted(rows.tolist()) == list(range(24))


def test_flipreid_default_steps_and_too_few_identities():
    identities = identities_with_counts([4] * 5)
    assert PKSampler(identities, 2, 4).steps_per_epoch == 200
    with pytest.raises(ValueError, match="only 2 identities have at least K=4"):
        PKSampler(identities_with_counts([4, 4, 3, 2]), 3, 4)


# ---------------------------------------------------------------------------------------------
# MSINet policy (msinet.md §9.3)

def test_msinet_epoch_upsamples_small_identities_and_drops_incomplete_batches():
    counts = [2, 9, 4, 1, 13, 7, 5, 3, 8]
    identities = identities_with_counts(counts, shuffle_seed=2)
    P, K = 3, 4
    sampler = PKSampler(identities, P, K, seed=4, policy="msinet")
    chunk_counts = {100 + index: max(count, K) // K for index, count in enumerate(counts)}
    for epoch in range(3):
        batches = sampler.epoch_batches(epoch)
        used = {identity: 0 for identity in chunk_counts}
        rows_of = {identity: [] for identity in chunk_counts}
        for batch in batches:
            chosen = check_pk_layout(batch, identities, P, K)
            for position, identity in enumerate(chosen.tolist()):
                used[identity] += 1
                rows_of[identity].extend(batch[position * K:(position + 1) * K].tolist())
        assert sum(used.values()) == len(batches) * P
        # the loop stops only when fewer than P identities still have chunks
        assert sum(used[identity] < chunk_counts[identity] for identity in used) < P
        assert all(used[identity] <= chunk_counts[identity] for identity in used)
        for index, count in enumerate(counts):
            identity = 100 + index
            if count >= K:  # drawn without repeats
                assert len(set(rows_of[identity])) == len(rows_of[identity])
            elif used[identity]:  # upsampled to K with replacement: repeats are unavoidable
                assert len(rows_of[identity]) == K
                assert len(set(rows_of[identity])) <= count
                assert set(identities[rows_of[identity]].tolist()) == {identity}


def test_msinet_small_identities_are_sampled():
    # 6 identities of 1 image and K = 4: each is drawn as one chunk of 4 identical rows.
    identities = identities_with_counts([1] * 6)
    sampler = PKSampler(identities, 2, 4, seed=0, policy="msinet")
    batches = sampler.epoch_batches(0)
    assert len(batches) == 3
    for batch in batches:
        check_pk_layout(batch, identities, 2, 4)
        assert (batch.reshape(2, 4) == batch.reshape(2, 4)[:, :1]).all()


def test_msinet_steps_per_epoch_cuts_the_stream_of_natural_epochs():
    identities = identities_with_counts([5, 9, 4, 12, 7, 8, 6], shuffle_seed=9)
    natural = PKSampler(identities, 2, 4, seed=21, policy="msinet")
    cut = PKSampler(identities, 2, 4, steps_per_epoch=5, seed=21, policy="msinet")
    natural_stream = [batch for epoch in range(4) for batch in natural.epoch_batches(epoch)]
    cut_stream = [batch for epoch in range(3) for batch in cut.epoch_batches(epoch)]
    assert all(len(cut.epoch_batches(epoch)) == 5 for epoch in range(3))
    assert len(natural_stream) >= 15
    for left, right in zip(cut_stream, natural_stream):
        np.testing.assert_array_equal(left, right)


# ---------------------------------------------------------------------------------------------
# Cross-modality (cmnas.md §7.4)

def cross_modality_table():
    rows = []
    rng = np.random.default_rng(0)
    for identity in range(7):
        for _ in range(rng.integers(1, 6)):
            rows.append((f"v{identity}", 10 + identity, 1, "visible", "train"))
        for _ in range(rng.integers(1, 4)):
            rows.append((f"t{identity}", 10 + identity, 3, "infrared", "train"))
    order = rng.permutation(len(rows))
    return pd.DataFrame([rows[index] for index in order],
                        columns=["image_file_path", "identity_ID", "camera_ID", "modality",
                                 "split"])


def test_cross_modality_batches_are_identity_aligned_with_expected_count():
    table = cross_modality_table()
    P, K = 3, 2
    sampler = CrossModalitySampler.from_dataframe(table, P, K, seed=5)
    n_max = max((table.modality == "visible").sum(), (table.modality == "infrared").sum())
    identities = table.identity_ID.to_numpy()
    modality = table.modality.to_numpy()
    for epoch in range(2):
        batches = sampler.epoch_batches(epoch)
        assert len(batches) == n_max // (P * K) + 1
        for visible, infrared in batches:
            assert (modality[visible] == "visible").all()
            assert (modality[infrared] == "infrared").all()
            np.testing.assert_array_equal(identities[visible], identities[infrared])
            check_pk_layout(visible, identities, P, K)


def test_cross_modality_series_input_steps_and_errors():
    table = cross_modality_table()
    visible = table.identity_ID[table.modality == "visible"]
    infrared = table.identity_ID[table.modality == "infrared"]
    sampler = CrossModalitySampler(visible, infrared, 2, 3, steps_per_epoch=4, seed=1)
    batches = sampler.epoch_batches(0)
    assert len(batches) == 4
    for visible_rows, infrared_rows in batches:
        assert set(visible_rows.tolist()) <= set(visible.index.tolist())
        assert set(infrared_rows.tolist()) <= set(infrared.index.tolist())
    with pytest.raises(ValueError, match=r"only visible: \[16\]"):
        CrossModalitySampler(visible, infrared[infrared != 16], 2, 3)
    with pytest.raises(ValueError, match="fewer than P=8"):
        CrossModalitySampler(visible, infrared, 8, 3)


# ---------------------------------------------------------------------------------------------
# Determinism and exact resume

def assert_same_batches(left, right):
    assert len(left) == len(right)
    for a, b in zip(left, right):
        if isinstance(a, tuple):
            for part_a, part_b in zip(a, b):
                np.testing.assert_array_equal(part_a, part_b)
        else:
            np.testing.assert_array_equal(a, b)


def flatten(batches):
    return np.concatenate([np.concatenate(batch) if isinstance(batch, tuple) else batch
                           for batch in batches])


SAMPLER_FACTORIES = {
    "flipreid": lambda seed: PKSampler(identities_with_counts([5, 9, 4, 12, 7, 8, 6, 3]), 3, 4,
                                       steps_per_epoch=4, seed=seed),
    "msinet": lambda seed: PKSampler(identities_with_counts([5, 9, 4, 12, 7, 8, 6, 3]), 3, 4,
                                     seed=seed, policy="msinet"),
    "msinet_cut": lambda seed: PKSampler(identities_with_counts([5, 9, 4, 12, 7, 8, 6, 3]), 3,
                                         4, steps_per_epoch=3, seed=seed, policy="msinet"),
    "cmnas": lambda seed: CrossModalitySampler.from_dataframe(cross_modality_table(), 3, 2,
                                                              seed=seed),
}


@pytest.mark.parametrize("name", sorted(SAMPLER_FACTORIES))
def test_determinism_random_access_and_exact_resume(name):
    make = SAMPLER_FACTORIES[name]
    first, second = make(3), make(3)
    sequential = [first.epoch_batches(epoch) for epoch in range(6)]
    assert_same_batches(second.epoch_batches(4), sequential[4])  # random access
    assert_same_batches(second.epoch_batches(1), sequential[1])
    other = make(4).epoch_batches(0)
    assert not np.array_equal(flatten(other), flatten(sequential[0]))

    state = json.loads(json.dumps(first.get_state(3)))  # JSON round trip
    assert state["epoch_index"] == 3
    resumed = make(999)  # the restored state, not the seed, decides the later epochs
    resumed.set_state(state)
    for epoch in (3, 4, 5):
        assert_same_batches(resumed.epoch_batches(epoch), sequential[epoch])


def test_set_state_rejects_other_arguments():
    sampler = PKSampler(identities_with_counts([5, 9, 4, 12]), 2, 4, steps_per_epoch=3)
    state = sampler.get_state(2)
    with pytest.raises(ValueError, match="differing: steps_per_epoch"):
        PKSampler(identities_with_counts([5, 9, 4, 12]), 2, 4, steps_per_epoch=5).set_state(
            state)
    with pytest.raises(ValueError, match="policy"):
        PKSampler(identities_with_counts([5, 9, 4, 12]), 2, 4, policy="msinet").set_state(state)
    with pytest.raises(ValueError, match="Unknown sampler policy"):
        PKSampler(identities_with_counts([5, 9]), 2, 4, policy="random")
