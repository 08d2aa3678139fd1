"""pixelnn.ann: PCA reduction and the size-aware FAISS index, against exact brute force.

Data: clustered unit vectors (fixed seed), rounded to float16 like stored descriptors; ground
truth by numpy brute force, as faiss's own tests do.
"""

import numpy as np
import pytest

from pixelnn.ann import (INDEX_KINDS, AnnIndex, PCAReducer, choose_index, evenly_spaced, index_ram_bytes,
                         l2_normalize)
from pixelnn.errors import PixelNNError

N, DIM, K = 3000, 32, 10


def clustered(n, dim, seed, clusters=40, spread=0.35):
    """Unit rows around ``clusters`` random centres, float16-exact, (n, dim) float32."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + spread * rng.normal(size=(n, dim))
    return l2_normalize(x).astype(np.float16).astype(np.float32)


def brute(q, x, k, ids=None):
    """Exact inner-product top-k over rows ``ids`` of ``x``: (D, I), ties to the lower id."""
    ids = np.arange(len(x)) if ids is None else np.asarray(ids)
    sims = q @ x[ids].T
    order = np.stack([np.lexsort((ids, -s)) for s in sims])[:, :k]
    return np.take_along_axis(sims, order, 1), ids[order]


def recall(I, gt):
    return float(np.mean([len(set(a[a >= 0]) & set(b[b >= 0])) / max(1, (b >= 0).sum()) for a, b in zip(I, gt)]))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One OpenMP thread: on a shared CPU, faiss's spinning threads make small builds much slower."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(scope="module")
def data():
    x = clustered(N, DIM, seed=0)
    q = clustered(50, DIM, seed=1)
    return x, q


def build(kind, x):
    if kind == "ivfpq":
        return AnnIndex.build(x, kind="ivfpq", nlist=8, pq_m=16, pq_nbits=4, opq_iter=2)
    return AnnIndex.build(x, kind=kind)


@pytest.fixture(scope="module")
def indexes(data):
    x, _ = data
    return {kind: build(kind, x) for kind in INDEX_KINDS}


# ------------------------------------------------------------------------------------------ search
def test_flat_is_exact(data, indexes):
    x, q = data
    D, I = indexes["flat"].search(q, K)
    gD, gI = brute(q, x, K)
    np.testing.assert_array_equal(I, gI)
    np.testing.assert_allclose(D, gD, atol=1e-5)
    assert D.dtype == np.float32 and I.dtype == np.int64 and D.shape == I.shape == (len(q), K)
    assert np.all(np.diff(D, axis=1) <= 1e-6)


@pytest.mark.parametrize("kind,bound", [("hnsw", 0.95), ("ivfpq", 0.35)])
def test_approximate_recall(data, indexes, kind, bound):
    x, q = data
    D, I = indexes[kind].search(q, K, nprobe=4, ef_search=128)  # 4 of 8 cells; 4-bit PQ codes
    assert recall(I, brute(q, x, K)[1]) >= bound
    assert np.all(np.diff(D, axis=1) <= 1e-6)


@pytest.mark.parametrize("kind", INDEX_KINDS)
@pytest.mark.parametrize("exact_below", [0, 10**9])
def test_filters_never_return_disallowed(data, indexes, kind, exact_below):
    x, q = data
    index = indexes[kind]
    index.exact_below = exact_below
    rng = np.random.default_rng(2)
    allowed = np.sort(rng.choice(N, 900, replace=False))
    excluded = allowed[::3]
    try:
        _, I = index.search(q, K, allowed=allowed)
        assert np.isin(I, allowed).all()
        _, I = index.search(q, K, excluded=excluded)
        assert not np.isin(I, excluded).any() and (I >= 0).all()
        _, I = index.search(q, K, allowed=allowed, excluded=excluded)
        assert np.isin(I, np.setdiff1d(allowed, excluded)).all()
        mask = np.zeros(N, bool)
        mask[allowed] = True
        _, I2 = index.search(q, K, allowed=mask)
        assert np.isin(I2, allowed).all()
    finally:
        index.exact_below = AnnIndex(index.index, kind, DIM).exact_below


@pytest.mark.parametrize("kind", INDEX_KINDS)
@pytest.mark.parametrize("exact_below", [0, 10**9])
def test_padding_when_fewer_than_k_allowed(data, indexes, kind, exact_below):
    _, q = data
    index = indexes[kind]
    index.exact_below = exact_below
    try:
        allowed = np.array([5, 17, 2000])
        D, I = index.search(q[:4], K, allowed=allowed, nprobe=8)
        assert I.shape == D.shape == (4, K)
        assert (I[:, 3:] == -1).all() and np.isneginf(D[:, 3:]).all()
        assert ((I == -1) == np.isneginf(D)).all() and np.isin(I[I >= 0], allowed).all()
        if exact_below or kind != "hnsw":  # the HNSW graph search may miss some of 3 allowed rows
            assert np.isin(I[:, :3], allowed).all()
        D, I = index.search(q[:2], K, allowed=np.array([], np.int64))
        assert (I == -1).all() and np.isneginf(D).all()
        D, I = index.search(q[:2], K, allowed=allowed, excluded=allowed)
        assert (I == -1).all()
    finally:
        index.exact_below = 20_000


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_exact_fallback_equals_brute_force(data, indexes, kind):
    x, q = data
    allowed = np.arange(7, N, 11)
    D, I = indexes[kind].search(q, K, allowed=allowed)
    gD, gI = brute(q, x, K, allowed)
    np.testing.assert_array_equal(I, gI)
    np.testing.assert_allclose(D, gD, atol=1e-5)


def test_exact_fallback_ivfpq_is_exhaustive_over_decoded(data, indexes):
    _, q = data
    index = indexes["ivfpq"]
    allowed = np.arange(7, N, 11)
    _, I = index.search(q, K, allowed=allowed, nprobe=1)
    _, gI = brute(q, index.reconstruct(np.arange(N)), K, allowed)
    assert recall(I, gI) > 0.99  # the same decoded vectors (float rounding may swap near-ties)


@pytest.mark.parametrize("kind", INDEX_KINDS)
@pytest.mark.parametrize("mmap", [True, False])
def test_write_read_round_trip(data, indexes, kind, mmap, tmp_path):
    _, q = data
    index = indexes[kind]
    path = tmp_path / f"{kind}.faiss"
    index.write(path)
    assert not list(tmp_path.glob("*.tmp"))
    again = AnnIndex.read(path, mmap=mmap)
    assert (again.kind, again.dim, len(again)) == (kind, DIM, N)
    assert again.params == index.params
    assert again.mapped == mmap and not index.mapped
    for kwargs in ({}, {"allowed": np.arange(0, N, 2)}, {"excluded": np.arange(0, N, 5)}):
        D, I = index.search(q, K, **kwargs)
        D2, I2 = again.search(q, K, **kwargs)
        np.testing.assert_array_equal(I, I2)
        np.testing.assert_array_equal(D, D2)
    D3, I3 = AnnIndex.from_bytes(index.to_bytes()).search(q, K)
    np.testing.assert_array_equal(I3, index.search(q, K)[1])


def test_build_from_chunks_and_add(data):
    x, q = data
    chunks = (x[i:i + 700] for i in range(0, N, 700))
    a = AnnIndex.build(chunks, n=N)
    assert a.kind == "flat" and len(a) == N
    b = AnnIndex.build(x[:1000], kind="hnsw")
    b.add(x[1000:])
    assert len(b) == N
    np.testing.assert_array_equal(a.search(q, K)[1], brute(q, x, K)[1])
    with pytest.raises(PixelNNError, match="train="):
        AnnIndex.build(iter([x]), kind="ivfpq", nlist=8, pq_m=8)


# --------------------------------------------------------------------------------------------- PCA
def test_pca_matches_numpy_reference(tmp_path):
    x = clustered(800, 64, seed=3, clusters=10, spread=0.6)
    pca = PCAReducer.fit(x, dims=8, sample=500)
    rows = evenly_spaced(800, 500)
    xs = x[rows].astype(np.float64)
    _, _, vt = np.linalg.svd(xs - xs.mean(0), full_matrices=False)
    np.testing.assert_allclose(pca.mean, xs.mean(0), atol=1e-6)
    np.testing.assert_allclose(np.abs(np.sum(pca.components * vt[:8], 1)), 1, atol=1e-4)
    y = pca.transform(x)
    ref = l2_normalize((x - pca.mean) @ pca.components.T).astype(np.float16).astype(np.float32)
    assert y.shape == (800, 8) and y.dtype == np.float32 and pca.dims == 8
    np.testing.assert_array_equal(y, ref)
    np.testing.assert_array_equal(y, y.astype(np.float16).astype(np.float32))  # float16-exact
    pca.save(tmp_path / "pca.safetensors")
    for again in (PCAReducer.load(tmp_path / "pca.safetensors"), PCAReducer.from_bytes(pca.to_bytes())):
        np.testing.assert_array_equal(again.transform(x), y)
    np.testing.assert_array_equal(PCAReducer.fit(x, dims=8, sample=500).components, pca.components)


@pytest.mark.parametrize("dims", [0, 64, 100])
def test_pca_identity(dims):
    x = clustered(50, 64, seed=4)
    pca = PCAReducer.fit(x, dims=dims)
    assert pca.dims == 64 and not pca.is_reducing
    np.testing.assert_array_equal(pca.transform(x), x)
    np.testing.assert_array_equal(PCAReducer.from_bytes(pca.to_bytes()).transform(x), x)


# ------------------------------------------------------------------------------------- choose_index
def test_choose_index_thresholds():
    gib = 1 << 30
    assert choose_index(0, 512) == "flat"
    assert choose_index(49_999, 512, gib) == "flat"
    assert choose_index(50_000, 512, 8 * gib) == "hnsw"
    assert choose_index(1_000_000, 512, 8 * gib) == "hnsw"
    assert 1.2e9 < index_ram_bytes("hnsw", 1_000_000, 512) < 1.4e9
    assert choose_index(1_000_000, 512, gib // 2) == "ivfpq"
    assert choose_index(50_000_000, 512, 64 * gib) == "ivfpq"
    with pytest.raises(PixelNNError, match="memory budget"):
        choose_index(10**9, 512, gib)


# ------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("call,match", [
    (lambda i, q: i.search(q[:, :5], K), r"\(Q, 32\)"),
    (lambda i, q: i.search(q, 0), "k must be"),
    (lambda i, q: i.search(q, K, allowed=[N + 3]), "out of range"),
    (lambda i, q: i.search(q, K, allowed=[0.5, 2.0]), "integer row ids"),
    (lambda i, q: i.search(q, K, excluded=np.ones(5, bool)), "length 3000"),
    (lambda i, q: AnnIndex.build(q, kind="lsh"), "valid: flat, hnsw, ivfpq"),
    (lambda i, q: choose_index(-1, 512), "non-negative"),
    (lambda i, q: PCAReducer.fit(q, dims=-2), "dims"),
    (lambda i, q: PCAReducer.fit(q, dims=4).transform(q[:, :3]), r"\(N, 32\)"),
    (lambda i, q: PCAReducer.load("/nonexistent/pca.safetensors"), "no PCA reducer file"),
    (lambda i, q: PCAReducer.from_bytes(b"garbage"), "not a PCA reducer"),
    (lambda i, q: AnnIndex.from_bytes(b"garbage"), "not a faiss index"),
])
def test_bad_input_one_line_errors(data, indexes, call, match):
    _, q = data
    with pytest.raises(PixelNNError, match=match) as e:
        call(indexes["flat"], q)
    assert "\n" not in str(e.value)


def test_read_errors(tmp_path):
    with pytest.raises(PixelNNError, match="no index file"):
        AnnIndex.read(tmp_path / "missing.faiss")
    bad = tmp_path / "bad.faiss"
    bad.write_bytes(b"not an index at all")
    with pytest.raises(PixelNNError, match="not a faiss index"):
        AnnIndex.read(bad)
