"""Face normal maps (pixelnn.normals): the mesh, the rasteriser on analytic surfaces, the region fit.

Conventions checked here: normals in the view frame (x to the image's right, y up the image, z
toward the viewer), encoded round((n + 1) / 2 * 255), 128 outside the mask.
"""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from pixelnn import normals as N
from pixelnn.errors import PixelNNError
from tests.conftest import shared_data_dir
from tests.test_facemesh import needs_model


def _angles_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    return np.degrees(np.arccos(np.clip(cos, -1, 1)))


def _grid_mesh(xs: np.ndarray, ys: np.ndarray, keep=None) -> tuple[np.ndarray, np.ndarray]:
    """A regular grid of (x, y) image points triangulated with consistent winding: (V, 2), (T, 3)."""
    gx, gy = np.meshgrid(xs, ys)  # (ny, nx)
    pts = np.stack([gx.ravel(), gy.ravel()], 1).astype(np.float64)
    idx = np.arange(len(pts)).reshape(gx.shape)
    tris = []
    for i in range(len(ys) - 1):
        for j in range(len(xs) - 1):
            a, b, c, d = idx[i, j], idx[i, j + 1], idx[i + 1, j], idx[i + 1, j + 1]
            for t in ((a, b, d), (a, d, c)):
                if keep is None or keep(pts[list(t)]).all():
                    tris.append(t)
    return pts, np.asarray(tris, np.int64)


# --------------------------------------------------------------------------------------------------
# rasteriser and normals on analytic surfaces


SPHERE_CENTRE, SPHERE_RADIUS = 48.0, 40.0


def _sphere(spacing: float = 2.0):
    """A hemisphere facing the viewer as a grid mesh: image-space vertices (x, y, depth), triangles."""
    r = SPHERE_RADIUS
    ticks = np.arange(SPHERE_CENTRE - r, SPHERE_CENTRE + r + 1e-9, spacing)
    inside = lambda p: ((p - SPHERE_CENTRE) ** 2).sum(1) < r**2  # noqa: E731
    pts, tris = _grid_mesh(ticks, ticks, keep=inside)
    depth = np.sqrt(np.clip(r**2 - ((pts - SPHERE_CENTRE) ** 2).sum(1), 0, None))
    return np.column_stack([pts, depth]), tris


def _sphere_truth(size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """Analytic normals at the pixel centres (view frame) and their distance from the centre / r."""
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    dx, dy = (xx - SPHERE_CENTRE) / SPHERE_RADIUS, (yy - SPHERE_CENTRE) / SPHERE_RADIUS
    rho = np.sqrt(dx**2 + dy**2)
    truth = np.stack([dx, -dy, np.sqrt(np.clip(1 - rho**2, 0, None))], -1)  # y up: a pixel below the centre has n_y < 0
    return truth, rho


def test_sphere_normal_map_matches_the_analytic_normals():
    vertices, tris = _sphere()
    normals, mask = N.mesh_normal_map(vertices, tris, 96, 96)
    truth, rho = _sphere_truth()
    inner = rho < 0.9
    assert mask[inner].all() and not mask[rho > 1.0].any()
    err = _angles_deg(normals[inner], truth[inner])
    # measured: mean 0.25 deg, median 0.15, max 1.6 deg (the mesh's vertex normals approximate the sphere's)
    assert err.mean() < 0.5, err.mean()
    assert err.max() < 4, err.max()
    # with the exact vertex normals the rasteriser's interpolation alone is what remains
    exact = np.column_stack([(vertices[:, 0] - 48) / 40, -(vertices[:, 1] - 48) / 40, vertices[:, 2] / 40])
    values, _ = N.rasterize(vertices, tris, exact, 96, 96)
    err2 = _angles_deg(values[inner], truth[inner])
    assert err2.mean() < 0.2, err2.mean()  # measured: mean 0.04 deg, max 0.3


def test_sphere_winding_does_not_matter():
    vertices, tris = _sphere(spacing=4.0)
    a, mask_a = N.mesh_normal_map(vertices, tris, 96, 96)
    b, mask_b = N.mesh_normal_map(vertices, tris[:, ::-1], 96, 96)
    np.testing.assert_array_equal(mask_a, mask_b)
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert (a[mask_a][:, 2] > 0).all()  # camera-facing: z toward the viewer


@pytest.mark.parametrize("slope_x,slope_y", [(0.0, 0.0), (0.3, -0.2), (-0.8, 0.5)])
def test_tilted_plane_gives_its_normal_and_the_exact_mask(slope_x, slope_y):
    pts, tris = _grid_mesh(np.arange(20, 77, 8.0), np.arange(20, 77, 8.0))  # the square [20, 76]^2
    depth = 5 + slope_x * (pts[:, 0] - 48) + slope_y * (pts[:, 1] - 48)  # toward the viewer, image x and y
    normals, mask = N.mesh_normal_map(np.column_stack([pts, depth]), tris, 96, 96)
    expected = np.zeros((96, 96), bool)
    expected[20:76, 20:76] = True  # pixel centres 20.5 .. 75.5
    np.testing.assert_array_equal(mask, expected)
    # depth = sx * x + sy * y + c with Y = -y: the surface Z - sx X + sy Y = c has normal (-sx, sy, 1)
    n = np.array([-slope_x, slope_y, 1.0]) / np.linalg.norm([-slope_x, slope_y, 1.0])
    err = _angles_deg(normals[mask], n[None])
    assert err.max() < 0.01, err.max()  # float32 output: measured 0.003 deg at the steepest slope


def test_plane_facing_right_and_up_encodes_red_and_green():
    pts, tris = _grid_mesh(np.arange(0, 97, 16.0), np.arange(0, 97, 16.0))
    right = N.mesh_normal_map(np.column_stack([pts, -0.5 * pts[:, 0]]), tris, 96, 96)  # nearer on the left
    up = N.mesh_normal_map(np.column_stack([pts, 0.5 * pts[:, 1]]), tris, 96, 96)  # nearer at the bottom (y down)
    enc_r, enc_u = N.encode_normals(*right), N.encode_normals(*up)
    assert (enc_r[..., 0] > 180).all() and (abs(enc_r[..., 1].astype(int) - 128) <= 1).all()
    assert (enc_u[..., 1] > 180).all() and (abs(enc_u[..., 0].astype(int) - 128) <= 1).all()


def _naive_inside(p: np.ndarray, tri: np.ndarray, size: int) -> np.ndarray:
    """Pixel centres inside or on a triangle, one pixel at a time."""
    out = np.zeros((size, size), bool)
    a, b, c = tri[:, :2]
    cross = lambda u, v: u[0] * v[1] - u[1] * v[0]  # noqa: E731
    for i in range(size):
        for j in range(size):
            q = np.array([j + 0.5, i + 0.5])
            s = [cross(b - a, q - a), cross(c - b, q - b), cross(a - c, q - c)]
            out[i, j] = all(x >= -1e-9 for x in s) or all(x <= 1e-9 for x in s)
    return out


def test_rasterize_single_triangle_mask_matches_naive():
    rng = np.random.default_rng(3)
    for _ in range(5):
        tri = np.column_stack([rng.uniform(-5, 37, (3, 2)), rng.uniform(0, 1, 3)])
        for t in (np.array([[0, 1, 2]]), np.array([[0, 2, 1]])):
            _, mask = N.rasterize(tri, t, np.ones((3, 1)), 32, 32)
            np.testing.assert_array_equal(mask, _naive_inside(tri[:, :2], tri, 32))


def test_rasterize_z_buffer_keeps_the_nearest_and_interpolates():
    near = np.array([[0, 0, 2.0], [20, 0, 2.0], [0, 20, 2.0]])
    far = np.array([[0, 0, 1.0], [20, 0, 1.0], [0, 20, 1.0]])
    pts = np.concatenate([far, near])
    attr = np.array([[1.0], [1.0], [1.0], [2.0], [2.0], [2.0]])
    for tris in (np.array([[0, 1, 2], [3, 4, 5]]), np.array([[3, 4, 5], [0, 1, 2]])):
        values, mask = N.rasterize(pts, tris, attr, 24, 24, chunk=7)  # tiny chunks: the buffer spans them
        assert (values[mask] == 2).all() and mask.sum() > 150
    # barycentric interpolation of a linear attribute is exact
    tri = np.array([[2, 3, 0.0], [30, 5, 0.0], [10, 28, 0.0]])
    lin = tri[:, :2] @ np.array([0.7, -0.3]) + 4
    values, mask = N.rasterize(tri, np.array([[0, 1, 2]]), lin[:, None], 32, 32)
    yy, xx = np.mgrid[0:32, 0:32] + 0.5
    np.testing.assert_allclose(values[mask, 0], (0.7 * xx - 0.3 * yy + 4)[mask], atol=1e-5)
    # degenerate and off-screen triangles draw nothing
    _, m = N.rasterize(np.array([[1, 1, 0], [5, 5, 0], [9, 9, 0], [-50, -50, 0], [-40, -50, 0], [-50, -40, 0.]]),
                       np.array([[0, 1, 2], [3, 4, 5]]), np.zeros((6, 1)), 16, 16)
    assert not m.any()


def test_vertex_normals_match_naive_area_weighting():
    rng = np.random.default_rng(4)
    v = rng.standard_normal((12, 3))
    t = np.array([[0, 1, 2], [0, 2, 3], [1, 4, 2], [5, 6, 7], [0, 3, 8], [2, 4, 3]])
    got = N.vertex_normals(v, t)
    for k in range(len(v)):
        acc = sum(np.cross(v[b] - v[a], v[c] - v[a]) for a, b, c in t if k in (a, b, c))
        if isinstance(acc, int):  # on no triangle
            np.testing.assert_array_equal(got[k], 0)
        else:
            np.testing.assert_allclose(got[k], acc / np.linalg.norm(acc), atol=1e-12)


def test_encode_decode():
    n = np.array([[0, 0, 1.0], [1, 0, 0], [0, -1, 0], [0.6, 0, 0.8]])
    enc = N.encode_normals(n)
    np.testing.assert_array_equal(enc[0], [128, 128, 255])
    np.testing.assert_array_equal(enc[1], [255, 128, 128])
    np.testing.assert_array_equal(enc[2], [128, 0, 128])
    assert _angles_deg(N.decode_normals(enc), n).max() < 0.5
    masked = N.encode_normals(n, np.array([True, False, True, False]))
    assert (masked[[1, 3]] == N.BACKGROUND).all()
    assert (N.decode_normals(masked[[1, 3]]) == 0).all()


# --------------------------------------------------------------------------------------------------
# the face mesh


@needs_model
def test_face_topology_is_a_disc_with_the_openings_filled():
    topo = N.face_topology()
    assert topo.num_vertices == 471 and len(topo.triangles) == 852 + 52
    assert [len(h) for h in topo.holes] == [20, 16, 16] and len(topo.outline) == 36
    assert topo.triangles.max() == 470 and topo.triangles.min() == 0
    directed = N._directed_edges(topo.triangles)
    assert len({tuple(e) for e in directed}) == len(directed)  # consistently oriented: no directed edge twice
    assert [len(x) for x in N.boundary_loops(topo.triangles)] == [36]  # only the face oval is left open
    edges = {tuple(sorted(e)) for e in directed}
    assert 471 - len(edges) + len(topo.triangles) == 1  # Euler characteristic of a disc
    # the openings are the eyes and the (inner) lips of MediaPipe's contours
    assert set(topo.holes[1]) | set(topo.holes[2]) >= {33, 133, 263, 362}
    assert {13, 14, 78, 308} <= set(topo.holes[0])


def test_mesh_triangles_drops_separating_triangles():
    # an octahedron's upper half around the inner triangle (0, 1, 2): 0-1-2 is a 3-cycle, not a face
    edges = [(0, 1), (1, 2), (0, 2), (0, 3), (1, 3), (1, 4), (2, 4), (2, 5), (0, 5), (3, 6), (4, 6), (5, 6),
             (0, 6), (1, 6), (2, 6)]
    tris = N.mesh_triangles(np.array(edges))
    assert (0, 1, 2) not in {tuple(t) for t in tris}
    assert len(tris) == 9
    with pytest.raises(PixelNNError, match="more than two"):
        N.orient_triangles(np.array([[0, 1, 2], [0, 1, 3], [0, 1, 4]]))


def test_read_tessellation_from_a_file(tmp_path):
    f = tmp_path / "face_mesh_connections.py"
    f.write_text("import os\nFACEMESH_TESSELATION = frozenset([(0, 1), (1, 2), (2, 0), (1, 0)])\n")
    np.testing.assert_array_equal(N.read_tessellation(f), [[0, 1], [0, 2], [1, 2]])
    f.write_text("OTHER = 1\n")
    with pytest.raises(PixelNNError, match="no FACEMESH_TESSELATION"):
        N.read_tessellation(f)


# --------------------------------------------------------------------------------------------------
# region fit


def test_crop_regions_and_project_landmarks_agree():
    h = w = 96
    yy, xx = np.mgrid[0:h, 0:w]
    photo = np.stack([2 * xx, 2 * yy, np.zeros_like(xx)], -1).astype(np.uint8)[None]  # R = 2 col, G = 2 row
    regions = np.array([[50.0, 44.0, 40.0, np.radians(25)]])
    crop = N.crop_regions(photo, regions, size=32)[0].numpy() * 255  # (3, 32, 32)
    b, a = np.mgrid[0:32, 0:32] + 0.5  # crop pixel centres (row b, column a)
    where = N.project_landmarks(np.stack([a, b, np.zeros_like(a)], -1).reshape(1, -1, 3), regions, size=32)[0]
    # bilinear sampling of a linear ramp is exact: the crop holds the photo coordinates it was sampled at
    np.testing.assert_allclose(crop[0].ravel() / 2 + 0.5, where[:, 0], atol=2e-3)
    np.testing.assert_allclose(crop[1].ravel() / 2 + 0.5, where[:, 1], atol=2e-3)
    z = N.project_landmarks(np.array([[[0.0, 0, 8]]]), regions, size=32)[0, 0, 2]
    assert z == pytest.approx(8 * 40 / 32)  # z scales with the region like x and y


def test_refit_regions_follows_the_eye_line():
    ang = np.radians(-20)
    u, v = np.array([np.cos(ang), np.sin(ang)]), np.array([-np.sin(ang), np.cos(ang)])
    lm = np.zeros((1, 468, 3))
    rng = np.random.default_rng(5)
    local = np.column_stack([rng.uniform(-20, 20, 468), rng.uniform(-12, 12, 468)])
    local[[0, 1]] = [[-20, -12], [20, 12]]  # the box's corners
    local[33], local[263] = [-15, 0], [15, 0]  # the eye line along u
    lm[0, :, :2] = np.array([40, 50]) + local[:, :1] * u + local[:, 1:] * v
    cx, cy, side, a = N.refit_regions(lm)[0]
    assert a == pytest.approx(ang)
    assert side == pytest.approx(1.5 * 40)
    assert (cx, cy) == (pytest.approx(40), pytest.approx(50))


# --------------------------------------------------------------------------------------------------
# real faces


def _celeba_photos(n: int) -> np.ndarray:
    """The first n CelebA crops fitted like `prepare --fit crop` (centre square, Lanczos to 96x96)."""
    from PIL import Image

    z = (shared_data_dir() or __import__("pathlib").Path("/nonexistent")) / "celeba-10k.zip"
    if not z.is_file():
        pytest.skip("../shared/data/celeba-10k.zip is absent")
    out = []
    with zipfile.ZipFile(z) as f:
        for i in range(1, n + 1):
            im = Image.open(io.BytesIO(f.read(f"img_align_celeba/{i:06d}.jpg"))).convert("RGB")  # 89x109
            out.append(np.asarray(im.crop((0, 10, 89, 99)).resize((96, 96), Image.LANCZOS)))
    return np.stack(out)


@needs_model
@pytest.mark.integration
def test_normal_maps_of_celeba_faces():
    photos = _celeba_photos(8)
    res = N.normal_maps(photos)
    assert res.maps.shape == (8, 96, 96, 3) and res.maps.dtype == np.uint8
    assert res.masks.shape == (8, 96, 96) and res.found.all() and (res.presence > 0.9).all()
    frac = res.masks.mean((1, 2))
    assert ((frac > 0.15) & (frac < 0.35)).all(), frac  # the face only: about a quarter of the frame
    assert (res.maps[~res.masks] == N.BACKGROUND).all()
    n = N.decode_normals(res.maps)
    for k in range(8):
        m = res.masks[k]
        rows, cols = np.nonzero(m)
        mid_c, mid_r = np.median(cols), np.median(rows)
        face = n[k][m]
        assert face[:, 2].mean() > 0.6  # mostly facing the camera
        assert n[k][m & (np.arange(96)[None] < mid_c - 10)][:, 0].mean() < 0  # the image-left cheek faces left
        assert n[k][m & (np.arange(96)[None] > mid_c + 10)][:, 0].mean() > 0
        top = m & (np.arange(96)[:, None] < rows.min() + 6)  # the chin faces down, the forehead less so or up
        bottom = m & (np.arange(96)[:, None] > rows.max() - 6)
        assert n[k][bottom][:, 1].mean() < -0.15 and n[k][top][:, 1].mean() > n[k][bottom][:, 1].mean() + 0.3
        lm = res.landmarks[k]
        assert 0 < lm[:, 0].min() and lm[:, 0].max() < 96 and abs(mid_r - 52) < 15


@needs_model
def test_normal_maps_report_faces_not_found():
    rng = np.random.default_rng(6)
    noise = rng.integers(0, 256, (2, 96, 96, 3), dtype=np.uint8)
    flat = np.full((1, 96, 96, 3), 200, np.uint8)
    res = N.normal_maps(np.concatenate([noise, flat]))
    assert not res.found.any() and (res.presence < 0.5).all()
    assert (res.maps == N.BACKGROUND).all() and not res.masks.any()
    empty = N.normal_maps(np.zeros((0, 96, 96, 3), np.uint8))
    assert empty.maps.shape == (0, 96, 96, 3) and empty.found.shape == (0,)
    with pytest.raises(ValueError):
        N.normal_maps(np.zeros((96, 96, 3), np.uint8))
