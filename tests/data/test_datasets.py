import os
import pickle

import numpy as np
import pytest
import torch

from paramsim.data import Task, group_tasks, load_cifar, load_digits, load_idx, pair_tasks
from paramsim.data.datasets import load_dataset
from paramsim.errors import ParamsimError
from synthetic_files import make_idx_dir, write_idx


def test_digits_split_is_fixed_stratified_and_in_unit_range():
    a, b = load_digits(), load_digits()
    assert torch.equal(a.x_train, b.x_train) and a.input_shape == (1, 8, 8)
    assert a.x_train.min() >= 0 and a.x_train.max() <= 1
    train_counts = torch.bincount(a.y_train, minlength=10).float()
    test_counts = torch.bincount(a.y_test, minlength=10).float()
    ratio = test_counts / (train_counts + test_counts)
    assert torch.all((ratio - 0.3).abs() < 0.02)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_directory_loads(tmp_path, gz):
    ds = load_idx(make_idx_dir(tmp_path, gz))
    assert ds.x_train.shape == (40, 1, 5, 5) and ds.x_test.shape == (20, 1, 5, 5)
    assert ds.x_train.max() <= 1.0 and ds.y_train.dtype == torch.int64


def test_idx_images_out_of_unit_range_and_bad_labels_are_refused(tmp_path):
    rng = np.random.default_rng(0)
    make_idx_dir(tmp_path)
    scan = rng.integers(0, 4096, (40, 5, 5)).astype(np.int16)  # 12-bit values, not bytes
    write_idx(tmp_path / "train-images-idx3-ubyte", scan)
    with pytest.raises(ParamsimError, match=r"int16 hold values outside \[0, 1\].*max 40"):
        load_idx(tmp_path)
    write_idx(tmp_path / "train-images-idx3-ubyte", (scan / 4095).astype(np.float32))
    assert float(load_idx(tmp_path).x_train.max()) == pytest.approx(scan.max() / 4095)
    labels = rng.integers(0, 4, 40).astype(np.float32)
    labels[3] = 1.5  # would have been truncated to class 1
    write_idx(tmp_path / "train-labels-idx1-ubyte", labels)
    with pytest.raises(ParamsimError, match="whole numbers.*1.5"):
        load_idx(tmp_path)
    labels[3] = -1.0
    write_idx(tmp_path / "train-labels-idx1-ubyte", labels)
    with pytest.raises(ParamsimError, match="whole numbers.*-1"):
        load_idx(tmp_path)


def test_idx_without_examples_channels_last_or_absurd_labels_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    make_idx_dir(tmp_path)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((0, 5, 5), dtype=np.uint8))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(0, dtype=np.uint8))
    with pytest.raises(ParamsimError, match="the test files hold no examples"):
        load_idx(tmp_path)
    make_idx_dir(tmp_path)
    colour = rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)  # (N, H, W, C)
    write_idx(tmp_path / "train-images-idx3-ubyte", colour)
    with pytest.raises(ParamsimError, match=r"look like \(N, H, W, channels\)"):
        load_idx(tmp_path)
    write_idx(tmp_path / "train-images-idx3-ubyte", colour.transpose(0, 3, 1, 2).copy())
    write_idx(
        tmp_path / "t10k-images-idx3-ubyte", rng.integers(0, 256, (20, 3, 8, 8), dtype=np.uint8)
    )
    assert load_idx(tmp_path).x_train.shape == (40, 3, 8, 8)  # (N, C, H, W) is read as is
    labels = rng.integers(0, 4, 40).astype(np.int16)
    labels[0] = 32767
    write_idx(tmp_path / "train-labels-idx1-ubyte", labels)
    with pytest.raises(ParamsimError, match="a label reads 32767"):
        load_idx(tmp_path)


def test_a_data_set_is_read_once_until_its_files_change(tmp_path):
    make_idx_dir(tmp_path)
    first = load_dataset("idx", tmp_path)
    assert load_dataset("idx", str(tmp_path)) is first  # shared: one copy per process
    images = np.full((40, 5, 5), 255, dtype=np.uint8)
    write_idx(tmp_path / "train-images-idx3-ubyte", images, False)  # same size, new content
    os.utime(tmp_path / "train-images-idx3-ubyte", ns=(1, 1))  # and a different time
    again = load_dataset("idx", tmp_path)
    assert again is not first and bool((again.x_train == 1).all())


def test_packaged_fashion_mnist_and_the_same_dir_given_share_one_copy(tmp_path, monkeypatch):
    from paramsim.data import datasets

    monkeypatch.setattr(datasets, "FASHION_MNIST_DIR", make_idx_dir(tmp_path, gz=True))
    assert load_dataset("fashion-mnist") is load_dataset("fashion-mnist", tmp_path)


def test_idx_missing_file_names_expected_files(tmp_path):
    make_idx_dir(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(ParamsimError, match="t10k-labels-idx1-ubyte"):
        load_idx(tmp_path)


def test_idx_truncated_and_bad_magic_are_named(tmp_path):
    make_idx_dir(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(ParamsimError, match="truncated"):
        load_idx(tmp_path)
    path.write_bytes(b"\x01\x02\x03\x04junk")
    with pytest.raises(ParamsimError, match="not an IDX file"):
        load_idx(tmp_path)
    path.write_bytes(bytes([0, 0, 0x08, 0, 7]))  # zero dimensions: one scalar byte
    with pytest.raises(ParamsimError, match="declares no dimensions"):
        load_idx(tmp_path)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_declaring_more_than_the_file_holds_is_refused_before_reading(tmp_path, gz):
    import gzip
    import struct

    header = bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 60_000, 10_000, 10_000)  # 6 TB
    data = header + bytes(100)
    path = tmp_path / ("x.gz" if gz else "x")
    path.write_bytes(gzip.compress(data) if gz else data)
    from paramsim.data.datasets import read_idx

    with pytest.raises(ParamsimError, match="declares shape"):
        read_idx(path)


def test_gzipped_idx_with_a_long_tail_is_refused_without_decompressing_it(tmp_path):
    import gzip
    import struct
    import tracemalloc

    from paramsim.data.datasets import read_idx

    header = bytes([0, 0, 0x08, 1]) + struct.pack(">I", 10)
    tail = bytes(64 << 20)  # 64 MiB of zeros after the declared 10 bytes
    path = tmp_path / "labels.gz"
    path.write_bytes(gzip.compress(header + bytes(10) + tail))
    del tail
    tracemalloc.start()
    try:
        with pytest.raises(ParamsimError, match="padded"):
            read_idx(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(ParamsimError, match="does not exist"):
        load_idx(tmp_path / "nope")


def _cifar100(tmp_path, n=10):
    rng = np.random.default_rng(0)
    for name in ("train", "test"):
        batch = {
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"fine_labels": list(rng.integers(0, 100, n)),
        }
        with open(tmp_path / name, "wb") as f:
            pickle.dump(batch, f)
    return tmp_path


def test_cifar100_pickles_load(tmp_path):
    ds = load_cifar(_cifar100(tmp_path), 100)
    assert ds.x_train.shape == (10, 3, 32, 32) and ds.n_classes == 100


class _Evil:
    def __reduce__(self):
        return (exec, ("open('pwned', 'w').write('x')",))


def test_cifar_pickle_with_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _cifar100(tmp_path)
    with open(tmp_path / "train", "wb") as f:
        pickle.dump({b"data": _Evil(), b"fine_labels": []}, f)
    with pytest.raises(ParamsimError, match="not a valid CIFAR pickle"):
        load_cifar(tmp_path, 100)
    assert not (tmp_path / "pwned").exists()


def test_cifar_missing_files_are_listed(tmp_path):
    with pytest.raises(ParamsimError, match="data_batch_1"):
        load_cifar(tmp_path, 10)


def test_pair_tasks_and_relations():
    assert len(pair_tasks(10)) == 45
    disjoint = pair_tasks(10, "disjoint")
    assert [t.sides for t in disjoint[:2]] == [((0,), (1,)), ((2,), (3,))]
    a, b = Task.parse("0-1"), Task.parse("1-5")
    assert a.shared_classes(b) == 1 and a.shared_classes(a) == 2
    with pytest.raises(ParamsimError):
        pair_tasks(10, "3-12")
    with pytest.raises(ParamsimError):
        Task.parse("3-3")
    for text in ("3 vs 7", "3v7", "3-7"):  # the name paramsim prints reads back
        assert Task.parse(text) == Task.parse("3-7")
    assert (
        Task.parse("1+2 vs 3") == Task.parse("1+2v3") and Task.parse("1+2 vs 3").name == "1+2 vs 3"
    )


def test_group_tasks_never_contain_plain_pairs_and_are_seeded():
    tasks = group_tasks(10, 50, seed=1)
    assert len({t.sides for t in tasks}) == 50
    assert all(len(t.classes) >= 3 for t in tasks)
    assert [t.sides for t in tasks] == [t.sides for t in group_tasks(10, 50, seed=1)]


def test_task_subset_relabels_by_side():
    t = Task(((3, 4), (7,)))
    x = torch.arange(6).float()
    y = torch.tensor([3, 7, 1, 4, 7, 0])
    xs, ys = t.subset(x, y)
    assert xs.tolist() == [0, 1, 3, 4] and ys.tolist() == [0, 1, 0, 1]


def test_group_tasks_draw_each_task_once_in_either_side_order():
    """{a,b} vs {c} and {c} vs {a,b} are one task (`task_key`), so a zoo of drawn group
    tasks holds no swapped twin (which transfer refuses and eval merges)."""
    from paramsim.data import group_tasks, task_key

    tasks = group_tasks(10, 300, seed=0)
    assert len(tasks) == 300
    assert len({task_key(t) for t in tasks}) == 300


def test_tasks_on_a_class_without_examples_are_refused():
    """Labels 1..3 make 4 classes; class 0 has no image, so a task on it is one-sided."""
    from paramsim.data import Dataset, check_tasks_have_examples

    x = torch.zeros(6, 1, 2, 2)
    y = torch.tensor([1, 2, 3, 1, 2, 3])
    ds = Dataset("gappy", x, y, x[:3], torch.tensor([1, 2, 2]), 4)
    check_tasks_have_examples(
        [Task.parse("1-2"), Task.parse("1+2v3")], Dataset(**{**ds.__dict__, "y_test": y})
    )
    with pytest.raises(ParamsimError, match="no training example of class 0"):
        check_tasks_have_examples(pair_tasks(4), ds)
    with pytest.raises(ParamsimError, match="no test example of class 3"):
        check_tasks_have_examples([Task.parse("1-3")], ds)


def test_cifar_batch_with_more_labels_than_images_is_refused(tmp_path):
    """Batches are concatenated: one extra label in data_batch_1 would pair every image of
    data_batch_2..5 with its neighbour's label."""
    rng = np.random.default_rng(0)
    for i, name in enumerate([f"data_batch_{j}" for j in range(1, 6)] + ["test_batch"]):
        n_labels = 5 if i == 0 else 4
        batch = {
            b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8),
            b"labels": list(rng.integers(0, 10, n_labels)),
        }
        with open(tmp_path / name, "wb") as f:
            pickle.dump(batch, f)
    with pytest.raises(ParamsimError, match="data_batch_1 holds 4 images"):
        load_cifar(tmp_path, 10)
