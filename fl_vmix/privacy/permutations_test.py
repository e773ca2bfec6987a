"""Uniform permutations from PRF words: exact bijection, chi-square, and the two implementations agree."""

import itertools

import numpy as np
import pytest
import torch
from scipy import stats

from fl_vmix.privacy.keyed import KeyedPRF
from fl_vmix.privacy.permutations import (
    ShuffleGeometry,
    _sources_numba,
    _sources_torch,
    accepted_draws,
    draw_is_accepted,
    fisher_yates_torch,
    sources,
    spare_words,
)

KEY = bytes(range(32))


def words_for_choices(choices: list[int]) -> list[int]:
    """The 32-bit word that makes Fisher-Yates step i = n-1, n-2, ... pick j = choices[k]: the last word of j's
    interval, whose remainder (at least 2^32 - k) passes the rejection test."""
    n = len(choices) + 1
    return [-(-(j + 1) * 2**32 // (i + 1)) - 1 for j, i in zip(choices, range(n - 1, 0, -1))]


def test_fisher_yates_is_a_bijection_onto_all_permutations():
    # Every sequence of choices j_i in [0, i] gives a different arrangement: all n! of them are reached.
    n = 5
    sequences = list(itertools.product(*[range(i + 1) for i in range(n - 1, 0, -1)]))
    words = torch.tensor([words_for_choices(list(seq)) for seq in sequences], dtype=torch.int64)
    arrangements = fisher_yates_torch(words, n)
    assert len({tuple(a) for a in arrangements.tolist()}) == len(sequences) == 120
    # Step i swaps positions i and j: the first sequence (all j = 0) rotates 0 to the end.
    assert arrangements[0].tolist() == [1, 2, 3, 4, 0]
    # Extreme words stay in range.
    top = fisher_yates_torch(torch.full((1, n - 1), 2**32 - 1, dtype=torch.int64), n)
    assert sorted(top[0].tolist()) == list(range(n))


def test_fisher_yates_from_prf_words_is_uniform_over_s4():
    words = torch.from_numpy(KeyedPRF(KEY, b"fy").words(np.arange(24_000), 0, 3).astype(np.int64))
    arrangements = fisher_yates_torch(words, 4).tolist()
    counts = np.array([arrangements.count(list(p)) for p in itertools.permutations(range(4))])
    assert counts.sum() == 24_000
    assert stats.chisquare(counts).pvalue > 1e-3


GEOMETRIES = [
    (3, 32, 32, 8, (2, 1), False),
    (3, 32, 32, 8, (4, 2, 1), True),
    (3, 30, 29, 8, (4, 3, 1), True),
    (1, 28, 28, 8, (4, 2, 1), False),
    (3, 9, 17, 8, (4, 3, 1), True),
    (3, 48, 48, 16, (8, 4, 2), False),
    (1, 12, 12, 5, (3, 2), False),
    (3, 30, 29, 8, (4, 2), True),  # units of 2 px, partial at the edges
    (2, 27, 33, 9, (6, 3), False),  # units of 3 px
    (2, 16, 16, 8, (4, 1), True),  # two channels swapped or not per region
]


@pytest.mark.parametrize("channels, height, width, region, blocks, permute", GEOMETRIES)
def test_numba_kernel_equals_torch_implementation(channels, height, width, region, blocks, permute):
    geometry = ShuffleGeometry(height, width, channels, region, blocks, permute)
    words = KeyedPRF(KEY, b"eq").words(np.arange(6), 2, geometry.words_per_sample)
    for levels in [list(range(len(blocks))), [len(blocks) - 1], [0]]:
        compiled = _sources_numba(geometry, words, levels)
        vectorised = _sources_torch(geometry, torch.from_numpy(words.astype(np.int64)), levels)
        assert compiled.dtype == vectorised.dtype == torch.int32
        assert torch.equal(compiled, vectorised)


@pytest.mark.parametrize("channels, height, width, region, blocks, permute", GEOMETRIES)
def test_each_level_moves_whole_blocks_of_one_shape_inside_their_region(
    channels, height, width, region, blocks, permute
):
    geometry = ShuffleGeometry(height, width, channels, region, blocks, permute)
    batch = 3
    out = sources(
        geometry,
        KeyedPRF(KEY, b"blk").words(np.arange(batch), 0, geometry.words_per_sample),
        list(range(len(blocks))),
        torch.device("cpu"),
    ).long()
    plane = height * width
    y = torch.arange(height).view(-1, 1).expand(height, width).reshape(-1)
    x = torch.arange(width).view(1, -1).expand(height, width).reshape(-1)
    for level, block in enumerate(blocks):
        src = out[level].view(batch, channels, plane)
        image = src // (channels * plane)
        assert torch.equal(image, torch.arange(batch).view(-1, 1, 1).expand_as(image))
        pix = src % plane
        sy, sx = pix // width, pix % width
        assert torch.equal(sy // region, (y // region).expand_as(sy)) and torch.equal(
            sx // region, (x // region).expand_as(sx)
        )
        # Within a block the offsets are kept: the source of (y, x) is (source block origin) + (y, x) - origin.
        oy, ox = y % region % block, x % region % block
        assert torch.equal(sy % region % block, oy.expand_as(sy)) and torch.equal(sx % region % block, ox.expand_as(sx))
        # A permutation of the batch's values.
        assert torch.equal(src.reshape(-1).sort().values, torch.arange(batch * channels * plane))
        if not permute:
            assert torch.equal(src // plane % channels, torch.arange(channels).view(1, -1, 1).expand_as(src))


def test_block_level_from_compaction_is_uniform():
    # 2-px blocks of an 8-px region: where block 0 of region 0 lands over many ids is uniform over 16 slots.
    geometry = ShuffleGeometry(8, 8, 1, 8, (2, 1), False)
    ids = np.arange(8_000)
    out = sources(geometry, KeyedPRF(KEY, b"cmp").words(ids, 0, geometry.words_per_sample), [0], torch.device("cpu"))
    src = out[0, :, 0].long() % 64  # [ids, 64]: source pixel of each output pixel
    # output slot whose top-left pixel reads source pixel 0 (block 0's origin)
    slot = (src == 0).float().argmax(1)
    counts = np.bincount(((slot // 8) // 2 * 4 + (slot % 8) // 2).numpy(), minlength=16)
    assert counts.sum() == len(ids) and stats.chisquare(counts).pvalue > 1e-3


def test_word_layout():
    geometry = ShuffleGeometry(9, 17, 3, 8, (1,), True)
    sizes = [8 * 8, 8 * 8, 8 * 1, 1 * 8, 1 * 8, 1 * 1]  # regions row-major: 2x3 grid, edges of 1 px
    # each row: its n - 1 draws and its spare words for rejected draws (3 for 64 items, 2 for 8 and for 3 channels)
    rows = 3 * sum(n - 1 + spare_words(n) for n in sizes)
    assert [spare_words(n) for n in (1, 2, 3, 8, 64)] == [0, 0, 2, 2, 3]
    assert geometry.words_per_sample == rows + len(sizes) * (2 + 2)
    assert ShuffleGeometry(9, 17, 3, 8, (1,), False).words_per_sample == rows


def test_units_are_the_gcd_of_the_block_sizes():
    geometry = ShuffleGeometry(224, 224, 3, 16, (8, 4, 2), False)
    assert geometry.unit == 2 and geometry.words_per_sample == 3 * 196 * (64 - 1 + 3)
    assert ShuffleGeometry(32, 32, 3, 8, (2, 1), False).unit == 1
    # 2-px blocks from 2-px units: where a unit-block lands is uniform over the 64 slots of a region
    geometry = ShuffleGeometry(16, 16, 1, 16, (8, 2), False)
    ids = np.arange(6_400)
    out = sources(geometry, KeyedPRF(KEY, b"unit").words(ids, 0, geometry.words_per_sample), [1], torch.device("cpu"))
    slot = (out[0, :, 0].long() % 256 == 0).float().argmax(1)
    counts = np.bincount(((slot // 16) // 2 * 8 + (slot % 16) // 2).numpy(), minlength=64)
    assert stats.chisquare(counts).pvalue > 1e-3


def test_too_large_batch_for_int32_indices():
    geometry = ShuffleGeometry(4096, 4096, 3, 8, (1,), False)
    with pytest.raises(ValueError, match="int32"):
        sources(geometry, np.zeros((50, 1), dtype=np.uint32), [0], torch.device("cpu"))


def test_a_batch_of_exactly_2_to_the_31_values_is_refused():
    geometry = ShuffleGeometry(256, 256, 1, 8, (1,), False)  # 2**16 values per image
    with pytest.raises(ValueError, match="too large for int32"):
        sources(geometry, np.zeros((2**15, 1), dtype=np.uint32), [0], torch.device("cpu"))


@pytest.mark.parametrize("permute", [False, True])
def test_regions_and_channels_draw_different_arrangements(permute):
    # 16 regions x 3 channels of 64 pixels: no two (channel, region) of one image share an arrangement.
    geometry = ShuffleGeometry(32, 32, 3, 8, (1,), permute)
    words = KeyedPRF(KEY, b"fresh").words(np.arange(2), 0, geometry.words_per_sample)
    out = sources(geometry, words, [0], torch.device("cpu"))[0].long() % 1024  # [B, C, 1024] source pixels
    local = (out // 32 % 8 * 8 + out % 8).view(2, 3, 4, 8, 4, 8).permute(0, 1, 2, 4, 3, 5).reshape(2, 48, 64)
    for image in local:
        assert len({tuple(row) for row in image.tolist()}) == 48
    assert not torch.equal(local[0], local[1])


def test_fisher_yates_from_fixed_words():
    # n = 4: step i = 3, 2, 1 picks j = floor(w (i + 1) / 2^32); words chosen for j = 3, 0, 1 swap (3,3), (2,0), (1,1).
    words = torch.tensor([words_for_choices([3, 0, 1])], dtype=torch.int64)
    assert fisher_yates_torch(words, 4).tolist() == [[2, 1, 0, 3]]
    assert fisher_yates_torch(torch.zeros(2, 0, dtype=torch.int64), 1).tolist() == [[0], [0]]


# ------------------------------------------------------------------------------------- unbiased draws


def test_every_index_has_equally_many_accepted_words_at_50176_units():
    # A 224-px region of 1-px blocks: k = 50,176 items. Plain multiply-shift gives 85,598 words to some indices and
    # 85,599 to others (a total-variation distance of about 0.049 over a whole shuffle); with rejection every index
    # has exactly floor(2^32 / k) accepted words. Checked word by word on the full interval of 300 indices.
    k = 50_176
    rng = np.random.default_rng(0)
    for j in [0, 1, k - 1, *rng.integers(0, k, 297).tolist()]:
        first, last = -(-j * 2**32 // k), -(-(j + 1) * 2**32 // k)  # the words with floor(w k / 2^32) = j
        words = torch.arange(first, last, dtype=torch.int64)
        assert bool(((words * k) >> 32 == j).all())
        assert int(draw_is_accepted(words, k).sum()) == 2**32 // k
    # and the closed form for every index: accepted words of j are those of its interval with a remainder >= t
    j = np.arange(k, dtype=np.int64)
    first = -(-j * 2**32 // k)
    remainder = first * k - j * 2**32  # remainder of the interval's first word; it then grows by k per word
    size = -(-(j + 1) * 2**32 // k) - first
    t = 2**32 % k
    rejected = np.maximum(0, -(-(t - remainder) // k)).clip(max=size)
    assert set((size - rejected).tolist()) == {2**32 // k}
    assert len(set(size.tolist())) == 2  # without rejection the indices are not equally likely


def test_a_rejected_draw_takes_the_rows_next_spare_word():
    # k = 3: the word 0 leaves remainder 0 < 2^32 mod 3 = 1 and is rejected; the spare decides instead.
    spare = words_for_choices([2, 0])  # j = 2 at k = 3
    words = torch.tensor([[0, spare[1], spare[0], 7]], dtype=torch.int64)  # draws (k = 3, 2), spares
    assert accepted_draws(words, 3).tolist() == [[spare[0], spare[1]]]
    assert fisher_yates_torch(words, 3).tolist() == fisher_yates_torch(torch.tensor([spare]), 3).tolist()
    # a row out of spares keeps its last word (probability below 2^-64 by construction)
    assert accepted_draws(torch.tensor([[0, 5]], dtype=torch.int64), 3).tolist() == [[0, 5]]
    assert accepted_draws(torch.tensor([[0, 5, 0]], dtype=torch.int64), 3).tolist() == [[0, 5]]


def reference_fisher_yates(words: list[int], n: int, spares: int) -> list[int]:
    """The documented shuffle, written out with Python integers (draws, then spares for rejected draws)."""
    arrangement, spare = list(range(n)), n - 1
    for step, i in enumerate(range(n - 1, 0, -1)):
        k, word = i + 1, words[step]
        while (word * k) % 2**32 < 2**32 % k and spare < n - 1 + spares:
            word, spare = words[spare], spare + 1
        j = word * k // 2**32
        arrangement[i], arrangement[j] = arrangement[j], arrangement[i]
    return arrangement


@pytest.mark.parametrize("channels, height, width, region, blocks, permute", GEOMETRIES[:4] + GEOMETRIES[-2:])
def test_kernel_and_torch_agree_when_draws_are_rejected(channels, height, width, region, blocks, permute):
    # Zero words are rejected whenever k is not a power of two: plant many, the spares take over in both paths.
    geometry = ShuffleGeometry(height, width, channels, region, blocks, permute)
    words = KeyedPRF(KEY, b"rej").words(np.arange(3), 0, geometry.words_per_sample).copy()
    words[:, ::5] = 0
    words[1] = 0  # every word of image 1: rows run out of spares and keep their last word
    levels = list(range(len(blocks)))
    expected = _sources_torch(geometry, torch.from_numpy(words.astype(np.int64)), levels)
    assert torch.equal(_sources_numba(geometry, words, levels), expected)
    if blocks[-1] == 1 and not permute:  # the finest level is the arrangement of each (channel, region)
        n = int(geometry.units_of_shape[geometry.region_shape[0]])
        row = words[0, : n - 1 + spare_words(n)].astype(np.int64).tolist()
        local = expected[-1, 0, 0].view(height, width)[:region, :region].reshape(-1).tolist()
        reference = reference_fisher_yates(row, n, spare_words(n))
        assert [local[p] // width * region + local[p] % width for p in range(n)] == reference
