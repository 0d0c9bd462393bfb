import pickle
from collections import Counter

import numpy as np
import pytest
import torch

from captioner.data.coco_annotations import SplitData
from captioner.data.datasets import (
    ImageCaptionPairDataset,
    ImageDataset,
    ImageWithCaptionsDataset,
)
from captioner.data.loaders import (
    EpochBatchSampler,
    caption_loader,
    group_by_length,
    image_captions_loader,
    image_loader,
)
from captioner.data.processed import FORMAT_VERSION, write_split_json
from captioner.infra.device_loader import DeviceImageLoader, device_image_loader
from captioner.infra.fileio import write_json
from captioner.text.tokenizers import EOS_ID, PAD_ID, SOS_ID

S = 8
CAPTIONS_PER_IMAGE = {"train": [1, 2, 3, 1, 2, 1, 4], "val": [5, 5, 5], "unlabeled": [0, 0, 0, 0]}
FIRST_ID = {"train": 100, "val": 200, "unlabeled": 300}


def pair_tokens(image_id, j):
    """Made-up token ids of caption j of an image: they name the pair and vary in length."""
    return [1000 + 10 * image_id + j] * (1 + (image_id + j) % 4)


def image_value(image_id):
    return image_id % 251  # every pixel of an image holds this value, so a row names its image


@pytest.fixture
def processed(tmp_path):
    """A hand-made processed folder: train (7 images, 14 pairs), val (3 x 5), unlabeled (4)."""
    for split, counts in CAPTIONS_PER_IMAGE.items():
        ids = [FIRST_ID[split] + i for i in range(len(counts))]
        captions = [[f"caption {j} of {image_id}" for j in range(n)] for image_id, n in zip(ids, counts)]
        tokens = [[pair_tokens(image_id, j) for j in range(n)] for image_id, n in zip(ids, counts)]
        data = SplitData(split, tmp_path, ids, [f"{i}.jpg" for i in ids], captions)
        write_split_json(tmp_path / f"{split}.json", data, tokens, S)
        images = np.stack([np.full((S, S, 3), image_value(i), dtype=np.uint8) for i in ids])
        np.save(tmp_path / f"{split}_images.npy", images)
    write_json(tmp_path / "meta.json", {"format_version": FORMAT_VERSION})
    return tmp_path


def all_pairs(split="train"):
    counts = CAPTIONS_PER_IMAGE[split]
    return Counter((FIRST_ID[split] + i, j) for i, n in enumerate(counts) for j in range(n))


def decode_pairs(batch):
    """(image id, caption index) of every row of a "caption" batch, checking the image mapping."""
    pairs = []
    for b, row in enumerate(batch["tokens"].tolist()):
        image_id = int(batch["image_ids"][batch["image_index"][b]])
        # The image row that image_index points at really is that image.
        assert (batch["images"][batch["image_index"][b]] == image_value(image_id)).all()
        j = row[1] - 1000 - 10 * image_id
        pairs.append((image_id, j))
    return pairs


def test_caption_batch_shapes_dtypes_padding_and_image_index(processed):
    loader = caption_loader(processed, "train", batch_size=5, shuffle=True, seed=3)
    batch = next(iter(loader))
    assert set(batch) == {"images", "image_index", "tokens", "image_ids"}
    U = len(batch["image_ids"])
    assert batch["images"].shape == (U, 3, S, S) and batch["images"].dtype == torch.uint8
    assert batch["image_index"].shape == (5,) and batch["image_index"].dtype == torch.long
    assert batch["tokens"].dtype == torch.long and batch["tokens"].shape[0] == 5
    assert len(set(batch["image_ids"].tolist())) == U  # images are unique
    assert set(batch["image_index"].tolist()) == set(range(U))  # and all used
    for (image_id, j), row in zip(decode_pairs(batch), batch["tokens"].tolist()):
        ids = pair_tokens(image_id, j)
        expected = [SOS_ID] + ids + [EOS_ID]
        assert row == expected + [PAD_ID] * (len(row) - len(expected))
    longest = max(len(pair_tokens(*p)) for p in decode_pairs(batch)) + 2
    assert batch["tokens"].shape[1] == longest


def test_max_len_truncates_and_keeps_eos(processed):
    dataset = ImageCaptionPairDataset(processed, "train", max_len=3)
    batch = dataset.__getitems__(list(range(len(dataset))))
    assert batch["tokens"].shape[1] == 3
    assert (batch["tokens"][:, 0] == SOS_ID).all() and (batch["tokens"][:, 2] == EOS_ID).all()
    with pytest.raises(ValueError, match="at least 3"):
        ImageCaptionPairDataset(processed, "train", max_len=2)


def test_every_pair_exactly_once_per_epoch_and_epochs_differ(processed):
    loader = caption_loader(processed, "train", batch_size=4, shuffle=True, seed=0)
    assert len(loader) == 4  # 14 pairs in batches of 4
    orders = []
    for epoch in range(2):
        loader.batch_sampler.set_epoch(epoch)
        pairs = [p for batch in loader for p in decode_pairs(batch)]
        assert Counter(pairs) == all_pairs()
        orders.append(pairs)
    assert orders[0] != orders[1]


def test_grouped_by_image_takes_all_captions_of_each_image(processed):
    loader = caption_loader(processed, "val", batch_size=10, shuffle=True, group_by_image=True)
    seen = []
    for batch in loader:
        pairs = decode_pairs(batch)
        assert len(batch["image_ids"]) == 2 or len(batch["image_ids"]) == 1  # 10 captions / 5 per image
        per_image = Counter(image_id for image_id, _ in pairs)
        assert all(n == 5 for n in per_image.values())
        seen += pairs
    assert Counter(seen) == all_pairs("val")


def test_sampler_order_is_a_pure_function_of_seed_and_epoch():
    def epoch_order(seed, epoch):
        sampler = EpochBatchSampler(50, 7, shuffle=True, seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert epoch_order(0, 3) == epoch_order(0, 3)
    assert epoch_order(0, 3) != epoch_order(0, 4)
    assert epoch_order(0, 3) != epoch_order(1, 3)
    assert sorted(i for b in epoch_order(0, 3) for i in b) == list(range(50))
    assert list(EpochBatchSampler(5, 2, shuffle=False)) == [[0, 1], [2, 3], [4]]
    assert list(EpochBatchSampler(5, 2, shuffle=False, drop_last=True)) == [[0, 1], [2, 3]]


@pytest.mark.parametrize("replicas", [2, 3])
def test_rank_shards_are_disjoint_and_cover_the_epoch(replicas):
    shards = []
    for rank in range(replicas):
        sampler = EpochBatchSampler(23, 4, shuffle=True, seed=5, num_replicas=replicas, rank=rank)
        sampler.set_epoch(2)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        shards.append([i for b in batches for i in b])
    assert sorted(i for shard in shards for i in shard) == list(range(23))  # disjoint and covering

    full = []
    for rank in range(replicas):
        sampler = EpochBatchSampler(23, 4, shuffle=True, seed=5, drop_last=True, num_replicas=replicas, rank=rank)
        batches = list(sampler)
        assert len(batches) == 23 // (4 * replicas) == len(sampler)  # same count of full batches per rank
        assert all(len(b) == 4 for b in batches)
        full += [i for b in batches for i in b]
    assert len(full) == len(set(full))
    with pytest.raises(ValueError, match="rank"):
        EpochBatchSampler(10, 2, shuffle=False, num_replicas=2, rank=2)


def test_image_captions_batches(processed):
    loader = image_captions_loader(processed, "val", batch_size=2)
    batches = list(loader)
    assert [len(b["image_ids"]) for b in batches] == [2, 1]
    batch = batches[0]
    assert batch["images"].shape == (2, 3, S, S) and batch["images"].dtype == torch.uint8
    assert batch["image_ids"].tolist() == [200, 201]
    assert batch["captions"][1] == [f"caption {j} of 201" for j in range(5)]
    assert (batch["images"][1] == image_value(201)).all()
    dataset = ImageWithCaptionsDataset(processed, "unlabeled")
    assert dataset[2]["captions"] == [[]]


def test_image_only_concatenates_splits(processed):
    loader = image_loader(processed, ["train", "unlabeled"], batch_size=4, shuffle=True, seed=1)
    values = []
    for batch in loader:
        assert set(batch) == {"images"} and batch["images"].dtype == torch.uint8
        assert batch["images"].shape[1:] == (3, S, S)
        values += batch["images"][:, 0, 0, 0].tolist()
    expected = [image_value(FIRST_ID[s] + i) for s in ("train", "unlabeled") for i in range(len(CAPTIONS_PER_IMAGE[s]))]
    assert sorted(values) == sorted(expected)
    assert len(ImageDataset(processed, ("train", "unlabeled"))) == 11


def test_worker_processes_give_the_same_batches(processed):
    def batches(workers):
        loader = caption_loader(processed, "train", batch_size=4, shuffle=True, seed=2, num_workers=workers)
        loader.batch_sampler.set_epoch(1)
        return [b["tokens"].tolist() for b in loader]

    assert batches(1) == batches(0)


def test_datasets_pickle_without_their_images(processed):
    dataset = ImageDataset(processed, ("train", "unlabeled"))
    clone = pickle.loads(pickle.dumps(dataset))
    assert len(pickle.dumps(dataset)) < 2000  # the memmaps are reopened, not copied
    assert np.array_equal(clone[8]["images"], dataset[8]["images"])


def test_incomplete_folder_and_bad_arguments_are_reported(processed):
    with pytest.raises(FileNotFoundError, match="test"):
        image_loader(processed, "test", 4, shuffle=False)
    (processed / "meta.json").unlink()
    with pytest.raises(FileNotFoundError, match="meta.json"):
        image_loader(processed, "train", 4, shuffle=False)


@pytest.mark.parametrize("drop_last, replicas", [(True, 1), (False, 1), (True, 2)])
def test_device_loader_gives_the_dataloaders_batches(processed, drop_last, replicas, monkeypatch):
    # the cache is copied 2 images at a time, so one copy straddles the seam between train and unlabeled
    monkeypatch.setattr(DeviceImageLoader, "CHUNK_BYTES", 2 * S * S * 3)
    splits = ["train", "unlabeled"]
    for rank in range(replicas):
        kwargs = dict(batch_size=3, shuffle=True, seed=4, drop_last=drop_last, num_replicas=replicas, rank=rank)
        host = image_loader(processed, splits, **kwargs)
        device = device_image_loader(processed, splits, device="cpu", **kwargs)
        assert isinstance(device, DeviceImageLoader) and len(device) == len(host) > 0
        assert device.images.shape == (11, S, S, 3) and device.images.dtype == torch.uint8
        for epoch in (0, 1):
            host.batch_sampler.set_epoch(epoch)
            device.batch_sampler.set_epoch(epoch)
            pairs = list(zip(host, device, strict=True))
            for a, b in pairs:
                assert set(b) == {"images"}
                assert b["images"].shape == a["images"].shape and b["images"].stride() == a["images"].stride()
                assert torch.equal(a["images"], b["images"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_device_loader_gives_the_dataloaders_batches(processed):
    kwargs = dict(batch_size=4, shuffle=True, seed=5, drop_last=False)
    host = image_loader(processed, ["train", "unlabeled"], **kwargs)
    device = device_image_loader(processed, ["train", "unlabeled"], device="cuda", **kwargs)
    assert device.images.is_cuda
    for a, b in zip(host, device, strict=True):
        assert b["images"].is_cuda and torch.equal(a["images"], b["images"].cpu())


# ---- batches of about the same length (data.group_by_length) ------------------------------------


def test_group_by_length_sorts_each_window_and_shuffles_whole_blocks():
    # Worked by hand: lengths [1, 9, 2, 8] sorted -> items 0, 2, 3, 1; blocks of 2 -> {0, 2} and {3, 1}.
    rng = np.random.default_rng(0)
    out = group_by_length(np.array([0, 1, 2, 3]), np.array([1, 9, 2, 8]), block=2, rng=rng)
    assert sorted(out.tolist()) == [0, 1, 2, 3]
    assert {frozenset(out[:2].tolist()), frozenset(out[2:].tolist())} == {frozenset({0, 2}), frozenset({1, 3})}
    # A partial last block stays last: items 0-4 of lengths 5, 1, 4, 2, 3 sort to 1, 3, 4, 2, 0, so the
    # blocks are {1, 3} and {4, 2}, and item 0, the longest, is alone at the end.
    out = group_by_length(np.array([4, 0, 3, 1, 2]), np.array([5, 1, 4, 2, 3]), block=2, rng=rng)
    assert out[-1] == 0
    assert {frozenset(out[:2].tolist()), frozenset(out[2:4].tolist())} == {frozenset({1, 3}), frozenset({2, 4})}


def test_group_by_length_stays_within_its_window():
    # Two windows of one block each (window_blocks=1): the second window's items never move into the first's
    # block, however they sort, so the epoch's random cut into windows is kept. Sorted as one window, the
    # blocks would be the short items {1, 3, 5} and the long ones {0, 2, 4}.
    order = np.array([0, 1, 2, 3, 4, 5])
    lengths = np.array([9, 1, 9, 1, 9, 1])
    out = group_by_length(order, lengths, block=3, rng=np.random.default_rng(1), window_blocks=1)
    assert {frozenset(out[:3].tolist()), frozenset(out[3:].tolist())} == {frozenset({0, 1, 2}), frozenset({3, 4, 5})}


@pytest.mark.parametrize("replicas", [1, 2])
def test_length_grouped_sampler_makes_batches_of_one_length(replicas):
    # 40 items, half of length 2 and half of length 9, interleaved; batches of 5 per rank. One window holds
    # the whole epoch, so every block is of one length, and so is every batch of every rank.
    lengths = np.array([2, 9] * 20)
    shares = []
    for rank in range(replicas):
        sampler = EpochBatchSampler(40, 5, shuffle=True, seed=4, num_replicas=replicas, rank=rank, lengths=lengths)
        # many epochs: with blocks of one rank's batch instead of one step of all ranks, a rank's batch joins
        # two blocks, and one epoch may still pass by chance (docs/testing.md), 40 in a row do not
        for epoch in range(40):
            sampler.set_epoch(epoch)
            assert all(len(set(lengths[b].tolist())) == 1 for b in sampler), (rank, epoch)
        sampler.set_epoch(3)
        batches = list(sampler)
        assert len(batches) == 8 // replicas
        shares += [i for b in batches for i in b]
        again = EpochBatchSampler(40, 5, shuffle=True, seed=4, num_replicas=replicas, rank=rank, lengths=lengths)
        again.set_epoch(3)
        assert list(again) == batches  # a pure function of (seed, epoch): resuming sees the same batches
        again.set_epoch(4)
        assert list(again) != batches
    assert sorted(shares) == list(range(40))  # every item once, the ranks disjoint
    # the blocks come in a random order: short batches do not always come first
    first = set()
    for epoch in range(20):
        sampler.set_epoch(epoch)
        first.add(int(lengths[next(iter(sampler))[0]]))
    assert first == {2, 9}
    with pytest.raises(ValueError, match="lengths has 3 entries"):
        EpochBatchSampler(40, 5, shuffle=True, lengths=np.array([1, 2, 3]))


def test_item_lengths_of_images_are_their_longest_captions(processed):
    grouped = ImageCaptionPairDataset(processed, "train", group_by_image=True)
    counts = CAPTIONS_PER_IMAGE["train"]
    expected = [max(len(pair_tokens(FIRST_ID["train"] + i, j)) for j in range(n)) for i, n in enumerate(counts)]
    assert grouped.item_lengths().tolist() == expected
    pairs = ImageCaptionPairDataset(processed, "train")
    assert pairs.item_lengths().tolist() == [len(pair_tokens(FIRST_ID["train"] + i, j))
                                             for i, n in enumerate(counts) for j in range(n)]


def test_length_grouped_caption_batches_hold_less_padding(processed):
    def padding(group_by_length):
        loader = caption_loader(processed, "train", batch_size=2, shuffle=True, seed=0,
                                group_by_length=group_by_length)
        total = 0
        for epoch in range(6):
            loader.batch_sampler.set_epoch(epoch)
            for batch in loader:
                total += int((batch["tokens"] == PAD_ID).sum())
        return total

    # The 14 training pairs have 1-4 tokens; sorted into pairs of neighbours, a batch pads at most
    # one token per row, and often none
    assert padding(True) < padding(False)
