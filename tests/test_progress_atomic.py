import threading

import numpy as np
import pytest

from napari_sscce.atomic import atomic_path, atomic_write_json
from napari_sscce.preprocessing import normalize_intensity, resample_to_shape, resampled_shape
from napari_sscce.progress import Cancelled, CancelToken, ProgressEvent, check


def test_cancel_token_crosses_threads():
    token = CancelToken()
    check(token)
    t = threading.Thread(target=token.cancel)
    t.start()
    t.join()
    with pytest.raises(Cancelled):
        check(token)


def test_progress_fraction():
    assert ProgressEvent("x", 5, 10).fraction == 0.5
    assert ProgressEvent("x", 5).fraction == 0.0


def test_atomic_path_keeps_old_file_on_error(tmp_path):
    target = tmp_path / "m.json"
    atomic_write_json(target, {"v": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half written")
        raise RuntimeError("crash")
    assert target.read_text().strip().startswith("{")
    assert '"v": 1' in target.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_normalize_and_resample_round_trip():
    rng = np.random.default_rng(0)
    a = rng.normal(5, 3, size=(10, 12, 14)) * 1e6
    n = normalize_intensity(a, "zscore")
    assert abs(n.mean()) < 1e-4 and abs(n.std() - 1) < 1e-3
    smooth = np.fromfunction(lambda z, y, x: z + 2 * y - x, (10, 12, 14)).astype(np.float32)
    shape = resampled_shape(smooth.shape, (2.0, 1.0, 1.0), (1.0, 1.0, 1.0))
    assert shape == (20, 12, 14)
    up = resample_to_shape(smooth, shape, order=1)
    back = resample_to_shape(up, smooth.shape, order=1)
    np.testing.assert_allclose(back, smooth, atol=1e-3)


def test_atomic_write_gives_normal_permissions(tmp_path):
    import os

    umask = os.umask(0o022)
    try:
        target = tmp_path / "new.json"
        atomic_write_json(target, {"v": 1})
        assert target.stat().st_mode & 0o777 == 0o644
        target.chmod(0o600)  # an existing file keeps its own permissions
        atomic_write_json(target, {"v": 2})
        assert target.stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(umask)
