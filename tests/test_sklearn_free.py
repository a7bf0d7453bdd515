"""fedge.tasks.sklearn_free gives scikit-learn's digits and stratified split, bit for bit."""

import numpy as np
import pytest

from fedge.tasks.sklearn_free import digits_csv, stratified_split


def test_digits_csv_is_load_digits():
    from sklearn.datasets import load_digits

    images, target = digits_csv()
    bunch = load_digits()
    assert images.dtype == bunch.images.dtype and np.array_equal(images, bunch.images)
    assert target.dtype == bunch.target.dtype and np.array_equal(target, bunch.target)


@pytest.mark.parametrize("fraction", [0.2, 0.1, 0.33, 0.5, 0.77])
@pytest.mark.parametrize("seed", [0, 1, 7, 123])
@pytest.mark.parametrize("labels", ["digits", "uneven", "strings"])
def test_stratified_split_is_train_test_split(fraction, seed, labels):
    from sklearn.model_selection import train_test_split

    rng = np.random.default_rng(seed)
    y = {
        "digits": digits_csv()[1],
        "uneven": rng.choice(7, size=523, p=[0.4, 0.2, 0.1, 0.1, 0.1, 0.05, 0.05]),  # ties and remainders
        "strings": np.array(list("abcab" * 41)),
    }[labels]
    rows = np.arange(len(y))
    want_train, want_test = train_test_split(rows, test_size=fraction, random_state=seed, stratify=y)
    train, test = stratified_split(y, fraction, seed)
    assert train.dtype == test.dtype == np.int64
    assert np.array_equal(train, want_train) and np.array_equal(test, want_test)


def test_stratified_split_refuses_what_scikit_learn_refuses():
    with pytest.raises(ValueError, match="fewer than 2"):
        stratified_split(np.array([0, 0, 1, 1, 2]), 0.4, 0)
    with pytest.raises(ValueError, match="cover"):
        stratified_split(np.repeat(np.arange(5), 2), 0.2, 0)


def test_digits_task_loads_without_scikit_learn():
    import subprocess
    import sys

    code = "import sys; from fedge.tasks.digits import DigitsTask; d = DigitsTask().load(); print(len(d.train.y), len(d.test.y), 'sklearn' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["1437", "360", "False"], done.stdout + done.stderr
