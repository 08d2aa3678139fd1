"""Surface-normal maps of face photos, as inputs for the ``normals`` task.

A face photo goes through MediaPipe's face-mesh model (:mod:`pixelnn.models.facemesh`, 468 3D
landmarks), whose mesh is shaded with its own normals and rasterised onto the photo's pixel grid:

1. **Region fit** (:func:`face_landmarks`), for aligned face crops such as CelebA's, where no face
   detector is needed: run the model on a fixed square region of the photo
   (:data:`CELEBA_REGION`), then refit the region from the landmarks with MediaPipe's rule (1.5x
   the landmarks' bounding box, squared on its long side, rotated so that the eye line, landmarks
   33 -> 263, is horizontal; the box is measured along that line and across it), and run the model
   again. The presence score of the second run says whether a face was found.
2. **Mesh** (:func:`face_topology`): the triangles of MediaPipe's ``FACEMESH_TESSELATION`` (its
   3-cliques, without the few "separating" 3-cycles that are not faces), consistently oriented,
   with the eye and mouth openings filled by a fan around an extra vertex at each opening's
   centroid (468 + 3 vertices).
3. **Normals** (:func:`vertex_normals`): area-weighted vertex normals.
4. **Raster** (:func:`rasterize`): z-buffered barycentric interpolation of the vertex normals at
   the pixel centres, then normalised.

The map therefore aligns with the photo pixel for pixel and covers the face only (inside the face
oval: forehead, cheeks and chin), not hair, ears, neck or background; :attr:`FaceNormals.masks` says
where it is defined.

Conventions
-----------
Normals are unit vectors in the **view frame**: x points to the image's right, y **up** the image,
z **toward the viewer** (right-handed; a surface facing the camera has n = (0, 0, 1)). Maps are
encoded as uint8 ``round((n + 1) / 2 * 255)``: a camera-facing pixel is (128, 128, 255), a surface
turned to the image's right is reddish, one facing up is greenish. Pixels outside the mask hold
:data:`BACKGROUND` (128, 128, 128), the encoding of the zero vector.

Image coordinates: pixel (i, j) (row, column) covers [j, j + 1) x [i, i + 1), its centre is at
(j + 0.5, i + 0.5); landmarks are (x, y, z) with x the column coordinate, y the row coordinate and
z MediaPipe's depth (larger = farther), all in photo pixels.
"""

from __future__ import annotations

import ast
import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pixelnn.errors import PixelNNError

log = logging.getLogger(__name__)

#: First-pass region on an aligned CelebA crop fitted to a square photo (``--fit crop``): centre x,
#: centre y and side, as fractions of the photo's side (about 75 px of the 89x109 crop).
CELEBA_REGION = (0.5, 0.54, 0.84)
#: MediaPipe's region rule: the landmarks' box enlarged this much (``RectTransformationCalculator``).
ROI_SCALE = 1.5
#: Landmarks whose line sets the region's rotation: the outer corners of the two eyes.
EYE_LINE = (33, 263)
#: uint8 value of every channel outside the face mask: the encoding of the zero vector.
BACKGROUND = 128

CONNECTIONS_FILE = ("python", "solutions", "face_mesh_connections.py")


# --------------------------------------------------------------------------------------------------
# the mesh


def read_tessellation(path: str | Path | None = None) -> np.ndarray:
    """The edges of MediaPipe's ``FACEMESH_TESSELATION``, read from ``face_mesh_connections.py``.

    The file is parsed with :mod:`ast` (its literal edge list), so mediapipe's runtime and its
    dependencies are never imported.

    Parameters
    ----------
    path : path-like, optional
        Default: the file of the installed ``mediapipe`` wheel.

    Returns
    -------
    ndarray, (E, 2) int64
        Undirected edges, each once, sorted (468 vertices: 0..467).
    """
    if path is None:
        from pixelnn.models.facemesh import WEIGHTS_PACKAGE, model_path

        model_path()  # the clear "mediapipe is not installed" error
        from pixelnn.io import package_file

        path = package_file(WEIGHTS_PACKAGE, *CONNECTIONS_FILE)
    tree = ast.parse(Path(path).read_text())
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id == "FACEMESH_TESSELATION"):
            try:
                pairs = ast.literal_eval(node.value.args[0])  # frozenset([(a, b), ...]) -> the list
            except (AttributeError, IndexError, ValueError) as e:
                raise PixelNNError(f"{path}: FACEMESH_TESSELATION is not a literal edge list ({e})") from None
            edges = np.unique(np.sort(np.asarray(pairs, dtype=np.int64), axis=1), axis=0)
            return edges
    raise PixelNNError(f"{path} defines no FACEMESH_TESSELATION")


def mesh_triangles(edges: np.ndarray) -> np.ndarray:
    """The faces of a triangulated surface given its edges: the 3-cliques of the edge graph.

    A 3-cycle whose three edges all lie on more than two cliques is a "separating" triangle (it
    encloses other faces rather than being one) and is dropped, so that every edge bounds at most
    two triangles.

    Parameters
    ----------
    edges : ndarray, (E, 2) int

    Returns
    -------
    ndarray, (T, 3) int64
        Vertex indices, ascending in each row (not yet oriented), rows sorted.
    """
    edges = np.unique(np.sort(np.asarray(edges, dtype=np.int64), axis=1), axis=0)
    neighbours: dict[int, set[int]] = {}
    for a, b in edges:
        neighbours.setdefault(int(a), set()).add(int(b))
        neighbours.setdefault(int(b), set()).add(int(a))
    cliques = sorted({tuple(sorted((int(a), int(b), c))) for a, b in edges
                      for c in neighbours[int(a)] & neighbours[int(b)]})
    uses: dict[tuple[int, int], int] = {}
    for a, b, c in cliques:
        for e in ((a, b), (a, c), (b, c)):
            uses[e] = uses.get(e, 0) + 1
    faces = [t for t in cliques if not all(uses[e] > 2 for e in ((t[0], t[1]), (t[0], t[2]), (t[1], t[2])))]
    return np.asarray(faces, dtype=np.int64).reshape(-1, 3)


def _directed_edges(tris: np.ndarray) -> np.ndarray:
    """(T, 3) -> (3T, 2): each triangle's edges a->b, b->c, c->a."""
    return np.stack([tris, np.roll(tris, -1, axis=1)], axis=-1).reshape(-1, 2)


def orient_triangles(tris: np.ndarray) -> np.ndarray:
    """Reorder each triangle's vertices so that neighbours agree (a shared edge runs both ways).

    Orientation spreads from triangle 0 across shared edges (one connected surface assumed); the
    global sign is arbitrary (see :func:`vertex_normals`' callers, which fix it from the view).

    Parameters
    ----------
    tris : ndarray, (T, 3) int

    Returns
    -------
    ndarray, (T, 3) int64

    Raises
    ------
    PixelNNError
        The surface is not orientable, not edge-manifold, or not connected.
    """
    tris = np.array(tris, dtype=np.int64)
    by_edge: dict[tuple[int, int], list[int]] = {}
    for t, (a, b, c) in enumerate(tris):
        for e in ((a, b), (b, c), (c, a)):
            by_edge.setdefault((min(e), max(e)), []).append(t)
    if any(len(v) > 2 for v in by_edge.values()):
        raise PixelNNError("the face mesh has an edge shared by more than two triangles")
    done = np.zeros(len(tris), bool)
    done[0] = True
    stack = [0]
    while stack:
        t = stack.pop()
        a, b, c = tris[t]
        for u, v in ((a, b), (b, c), (c, a)):  # t runs u -> v; a neighbour must run v -> u
            for n in by_edge[(min(u, v), max(u, v))]:
                if n == t:
                    continue
                runs = {(int(x), int(y)) for x, y in ((tris[n, 0], tris[n, 1]), (tris[n, 1], tris[n, 2]),
                                                      (tris[n, 2], tris[n, 0]))}
                if done[n]:
                    if (u, v) in runs:
                        raise PixelNNError("the face mesh is not orientable")
                    continue
                if (u, v) in runs:
                    tris[n] = tris[n, ::-1]
                done[n] = True
                stack.append(n)
    if not done.all():
        raise PixelNNError(f"the face mesh is not connected ({int((~done).sum())} triangles apart)")
    return tris


def boundary_loops(tris: np.ndarray) -> list[np.ndarray]:
    """The boundary of an oriented surface as closed loops, longest first.

    Parameters
    ----------
    tris : ndarray, (T, 3) int, consistently oriented

    Returns
    -------
    list of ndarray, each (L,) int64
        Vertex indices in the order of the triangles' boundary edges (each edge a -> b of the list
        is the edge a -> b of one triangle).
    """
    directed = {(int(a), int(b)) for a, b in _directed_edges(tris)}
    nxt: dict[int, int] = {}
    for a, b in directed:
        if (b, a) not in directed:
            if a in nxt:
                raise PixelNNError(f"the face mesh's boundary touches itself at vertex {a}")
            nxt[a] = b
    loops, seen = [], set()
    for start in sorted(nxt):
        if start in seen:
            continue
        loop, v = [], start
        while v not in seen:
            seen.add(v)
            loop.append(v)
            v = nxt[v]
        if v != start:
            raise PixelNNError("the face mesh's boundary is not made of closed loops")
        loops.append(np.asarray(loop, dtype=np.int64))
    return sorted(loops, key=len, reverse=True)


@dataclass(frozen=True)
class FaceTopology:
    """The face mesh: oriented triangles over the 468 landmarks plus one vertex per filled opening.

    Attributes
    ----------
    triangles : ndarray, (T, 3) int64
        Consistently oriented; T = 852 mesh triangles + 52 filling the eyes and mouth.
    holes : tuple of ndarray
        The openings filled (two eyes of 16 vertices, the mouth of 20): vertex ``468 + k`` is the
        centroid of ``holes[k]``.
    outline : ndarray, (36,) int64
        The face oval, the mesh's one remaining boundary.
    num_vertices : int
        471.
    """

    triangles: np.ndarray
    holes: tuple[np.ndarray, ...]
    outline: np.ndarray
    num_vertices: int


def build_topology(edges: np.ndarray, num_landmarks: int = 468) -> FaceTopology:
    """Triangles from the edges (:func:`mesh_triangles`), oriented, with every opening but the outline filled.

    Parameters
    ----------
    edges : ndarray, (E, 2) int
    num_landmarks : int

    Returns
    -------
    FaceTopology
    """
    tris = orient_triangles(mesh_triangles(edges))
    loops = boundary_loops(tris)
    outline, holes = loops[0], tuple(loops[1:])
    fans = []
    for k, loop in enumerate(holes):
        centre = num_landmarks + k
        # the loop runs a -> b along its triangles' edges; a fan triangle must run b -> a
        fans.append(np.stack([np.roll(loop, -1), loop, np.full(len(loop), centre)], axis=1))
    tris = np.concatenate([tris, *fans]) if fans else tris
    return FaceTopology(tris, holes, outline, num_landmarks + len(holes))


@functools.lru_cache(maxsize=1)
def face_topology() -> FaceTopology:
    """:func:`build_topology` of the installed mediapipe's ``FACEMESH_TESSELATION`` (computed once).

    Raises
    ------
    PixelNNError
        mediapipe is not installed, or its tessellation is not the expected mesh (852 triangles,
        the outline and three openings).
    """
    topo = build_topology(read_tessellation())
    if len(topo.holes) != 3 or len(topo.outline) != 36 or len(topo.triangles) != 852 + sum(map(len, topo.holes)):
        raise PixelNNError(f"unexpected FACEMESH_TESSELATION: {len(topo.triangles)} triangles, boundary loops "
                           f"{[len(topo.outline), *map(len, topo.holes)]} (expected 852 + fills, [36, 20, 16, 16])")
    return topo


def add_hole_vertices(vertices: np.ndarray, topology: FaceTopology) -> np.ndarray:
    """Append each opening's centroid: (..., 468, 3) -> (..., 471, 3)."""
    centres = [vertices[..., loop, :].mean(axis=-2, keepdims=True) for loop in topology.holes]
    return np.concatenate([vertices, *centres], axis=-2)


# --------------------------------------------------------------------------------------------------
# normals and rasterisation


def face_normals(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Cross products (b - a) x (c - a) of each triangle: normal times twice the area.

    Parameters
    ----------
    vertices : ndarray, (V, 3) float
    triangles : ndarray, (T, 3) int

    Returns
    -------
    ndarray, (T, 3) float64
    """
    v = np.asarray(vertices, dtype=np.float64)
    a, b, c = v[triangles[:, 0]], v[triangles[:, 1]], v[triangles[:, 2]]  # (T, 3) each
    return np.cross(b - a, c - a)


def vertex_normals(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Area-weighted vertex normals: the normalised sum of the adjacent triangles' area x normal.

    Parameters
    ----------
    vertices : ndarray, (V, 3) float
        Any right-handed frame; the normals come out in the same frame, pointing to the side from
        which the triangles run counter-clockwise.
    triangles : ndarray, (T, 3) int

    Returns
    -------
    ndarray, (V, 3) float64
        Unit vectors; 0 for a vertex on no (non-degenerate) triangle.
    """
    fn = face_normals(vertices, triangles)  # (T, 3), |fn| = 2 area
    acc = np.zeros((len(vertices), 3))
    for k in range(3):
        np.add.at(acc, triangles[:, k], fn)
    norm = np.linalg.norm(acc, axis=1, keepdims=True)
    return np.divide(acc, norm, out=np.zeros_like(acc), where=norm > 0)


def rasterize(points: np.ndarray, triangles: np.ndarray, attributes: np.ndarray, height: int, width: int,
              chunk: int = 1 << 20) -> tuple[np.ndarray, np.ndarray]:
    """Z-buffered barycentric rasterisation of per-vertex attributes at the pixel centres.

    A pixel is covered by a triangle when its centre (j + 0.5, i + 0.5) lies inside it or on its
    edges; where triangles overlap, the one nearest the viewer (largest depth) wins.

    Parameters
    ----------
    points : ndarray, (V, 3) float
        Column coordinate x, row coordinate y (image pixels, see the module docstring) and depth
        toward the viewer (larger = nearer).
    triangles : ndarray, (T, 3) int
        Either winding; degenerate (zero-area) triangles are skipped.
    attributes : ndarray, (V, C) float
        Interpolated linearly in screen space.
    height, width : int
    chunk : int
        Candidate (triangle, pixel) pairs processed at a time (bounds the memory).

    Returns
    -------
    values : ndarray, (height, width, C) float32
        0 where no triangle covers the pixel.
    mask : ndarray, (height, width) bool
        Covered pixels.
    """
    p = np.asarray(points, dtype=np.float64)
    tris = np.asarray(triangles, dtype=np.int64).reshape(-1, 3)
    attr = np.asarray(attributes, dtype=np.float64)
    n_ch = attr.shape[1]
    depth = np.full(height * width, -np.inf)
    out = np.zeros((height * width, n_ch))
    covered = np.zeros(height * width, bool)
    a, b, c = p[tris[:, 0]], p[tris[:, 1]], p[tris[:, 2]]  # (T, 3) each
    area2 = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])  # (T,)
    xs, ys = np.stack([a[:, 0], b[:, 0], c[:, 0]], 1), np.stack([a[:, 1], b[:, 1], c[:, 1]], 1)  # (T, 3)
    ok = (np.abs(area2) > 1e-12) & np.isfinite(area2) & np.isfinite(p[tris][..., 2]).all(1)
    x0 = np.clip(np.ceil(np.nan_to_num(xs.min(1)) - 0.5), 0, width).astype(np.int64)  # first column centre inside
    x1 = np.clip(np.floor(np.nan_to_num(xs.max(1)) - 0.5), -1, width - 1).astype(np.int64)
    y0 = np.clip(np.ceil(np.nan_to_num(ys.min(1)) - 0.5), 0, height).astype(np.int64)
    y1 = np.clip(np.floor(np.nan_to_num(ys.max(1)) - 0.5), -1, height - 1).astype(np.int64)
    nx, ny = x1 - x0 + 1, y1 - y0 + 1
    count = np.where(ok & (nx > 0) & (ny > 0), nx * ny, 0)  # (T,) candidate pixels per triangle
    todo = np.flatnonzero(count)
    eps = 1e-9
    start = 0
    while start < len(todo):
        cum = np.cumsum(count[todo[start:]])
        stop = start + max(1, int(np.searchsorted(cum, chunk, side="right")))
        ids = todo[start:stop]
        start = stop
        n = count[ids]
        t = np.repeat(ids, n)  # (K,) triangle of each candidate
        local = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)  # (K,) index inside the triangle's box
        px = x0[t] + local % nx[t]
        py = y0[t] + local // nx[t]
        sx, sy = px + 0.5, py + 0.5
        ta, tb, tc = a[t], b[t], c[t]  # (K, 3)
        wa = ((tb[:, 0] - sx) * (tc[:, 1] - sy) - (tb[:, 1] - sy) * (tc[:, 0] - sx)) / area2[t]  # area(p, b, c) / area
        wb = ((tc[:, 0] - sx) * (ta[:, 1] - sy) - (tc[:, 1] - sy) * (ta[:, 0] - sx)) / area2[t]  # area(p, c, a) / area
        wc = 1.0 - wa - wb
        inside = (wa >= -eps) & (wb >= -eps) & (wc >= -eps)
        t, pix = t[inside], (py * width + px)[inside]
        w = np.stack([wa[inside], wb[inside], wc[inside]], 1)  # (K', 3)
        d = (w * np.stack([ta[inside, 2], tb[inside, 2], tc[inside, 2]], 1)).sum(1)  # (K',)
        order = np.lexsort((-d, pix))  # by pixel, nearest first
        first = order[np.r_[True, pix[order][1:] != pix[order][:-1]]] if len(order) else order
        win = first[d[first] > depth[pix[first]]]
        depth[pix[win]] = d[win]
        covered[pix[win]] = True
        vt = tris[t[win]]  # (W, 3) vertex ids
        out[pix[win]] = np.einsum("kv,kvc->kc", w[win], attr[vt])  # (W, C)
    return out.reshape(height, width, n_ch).astype(np.float32), covered.reshape(height, width)


def mesh_normal_map(vertices: np.ndarray, triangles: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The normal map of a mesh given in image coordinates.

    Parameters
    ----------
    vertices : ndarray, (V, 3) float
        x (column), y (row) in image pixels and depth z toward the viewer (larger = nearer), the
        same scale as x and y.
    triangles : ndarray, (T, 3) int
        Consistently oriented (either way: the side facing the viewer is taken as the outside).
    height, width : int

    Returns
    -------
    normals : ndarray, (height, width, 3) float32
        Unit normals in the view frame (x right, y up, z toward the viewer); 0 outside the mask.
    mask : ndarray, (height, width) bool
    """
    v = np.asarray(vertices, dtype=np.float64)
    view = np.stack([v[:, 0], -v[:, 1], v[:, 2]], axis=1)  # (V, 3) right-handed: x right, y up, z to the viewer
    fn = face_normals(view, triangles)
    tris = triangles if fn[:, 2].sum() >= 0 else triangles[:, ::-1]  # the visible side outward
    vn = vertex_normals(view, tris)  # (V, 3)
    values, mask = rasterize(v, tris, vn, height, width)  # (H, W, 3)
    norm = np.linalg.norm(values, axis=-1, keepdims=True)
    normals = np.divide(values, norm, out=np.zeros_like(values), where=norm > 1e-12)
    return normals.astype(np.float32), mask & (norm[..., 0] > 1e-12)


def encode_normals(normals: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """uint8 maps ``round((n + 1) / 2 * 255)``, :data:`BACKGROUND` outside ``mask``.

    Parameters
    ----------
    normals : ndarray, (..., 3) float in [-1, 1]
    mask : ndarray, (...) bool, optional

    Returns
    -------
    ndarray, (..., 3) uint8
    """
    out = np.clip(np.rint((np.asarray(normals, dtype=np.float64) + 1) / 2 * 255), 0, 255).astype(np.uint8)
    if mask is not None:
        out[~np.asarray(mask, bool)] = BACKGROUND
    return out


def decode_normals(maps: np.ndarray) -> np.ndarray:
    """Unit normals from uint8 maps: (..., 3) uint8 -> (..., 3) float32; about 0 for :data:`BACKGROUND`."""
    n = np.asarray(maps, dtype=np.float32) / 255 * 2 - 1
    norm = np.linalg.norm(n, axis=-1, keepdims=True)
    return np.where(norm > 0.5, n / np.maximum(norm, 1e-12), 0).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# landmarks of face photos


def crop_regions(photos: np.ndarray, regions: np.ndarray, size: int = 192, device: str = "cpu"):
    """Resample rotated square regions of the photos to (size, size) model inputs.

    Bilinear, border pixels repeated outside the photo (MediaPipe's ``BORDER_REPLICATE``).

    Parameters
    ----------
    photos : ndarray, (N, H, W, 3) uint8
    regions : ndarray, (N, 4) float
        Centre x, centre y, side (photo pixels) and angle (radians): the crop's x axis runs along
        (cos a, sin a) in the photo (x right, y down).
    size : int
    device : str

    Returns
    -------
    Tensor, (N, 3, size, size) float32 in [0, 1]
    """
    import torch
    import torch.nn.functional as F

    n, h, w, _ = photos.shape
    r = torch.as_tensor(np.asarray(regions, dtype=np.float64))
    cx, cy, side, ang = r.unbind(1)
    cos, sin = torch.cos(ang), torch.sin(ang)
    # output (xo, yo) in [-1, 1] -> photo point c + side / 2 * (xo * u + yo * v), u = (cos, sin), v = (-sin, cos),
    # in grid_sample's [-1, 1] photo coordinates (align_corners=False: -1 is the photo's left edge)
    theta = torch.stack([torch.stack([side / w * cos, -side / w * sin, 2 * cx / w - 1], 1),
                         torch.stack([side / h * sin, side / h * cos, 2 * cy / h - 1], 1)], 1)  # (N, 2, 3)
    x = torch.from_numpy(np.array(photos)).to(device).permute(0, 3, 1, 2).float() / 255  # (N, 3, H, W)
    grid = F.affine_grid(theta.float().to(device), [n, 3, size, size], align_corners=False)  # (N, size, size, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)  # (N, 3, size, size)


def project_landmarks(landmarks: np.ndarray, regions: np.ndarray, size: int = 192) -> np.ndarray:
    """Landmarks in crop pixels -> photo pixels (x, y) and z scaled alike.

    Parameters
    ----------
    landmarks : ndarray, (N, L, 3)
        From the model, in pixels of the (size, size) crop.
    regions : ndarray, (N, 4)
        See :func:`crop_regions`.

    Returns
    -------
    ndarray, (N, L, 3) float64
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    cx, cy, side, ang = (np.asarray(regions, dtype=np.float64)[:, k, None] for k in range(4))  # (N, 1) each
    a = lm[..., 0] / size - 0.5  # (N, L) along the crop's x axis, in units of the side
    b = lm[..., 1] / size - 0.5
    x = cx + side * (a * np.cos(ang) - b * np.sin(ang))
    y = cy + side * (a * np.sin(ang) + b * np.cos(ang))
    return np.stack([x, y, lm[..., 2] * side / size], axis=-1)


def refit_regions(landmarks: np.ndarray, scale: float = ROI_SCALE, eye_line: tuple[int, int] = EYE_LINE) -> np.ndarray:
    """MediaPipe's next region from landmarks: rotated by the eye line, ``scale`` x the box, square.

    Parameters
    ----------
    landmarks : ndarray, (N, L, 3)
        In photo pixels.
    scale : float
    eye_line : (int, int)
        Landmarks whose direction becomes the region's x axis.

    Returns
    -------
    ndarray, (N, 4) float64
        Centre x, centre y, side, angle (see :func:`crop_regions`).
    """
    lm = np.asarray(landmarks, dtype=np.float64)[..., :2]  # (N, L, 2)
    d = lm[:, eye_line[1]] - lm[:, eye_line[0]]  # (N, 2)
    ang = np.arctan2(d[:, 1], d[:, 0])
    u = np.stack([np.cos(ang), np.sin(ang)], 1)  # (N, 2) the region's x axis
    v = np.stack([-np.sin(ang), np.cos(ang)], 1)
    pu = np.einsum("nlk,nk->nl", lm, u)  # (N, L) coordinates along u and v
    pv = np.einsum("nlk,nk->nl", lm, v)
    mu, mv = (pu.min(1) + pu.max(1)) / 2, (pv.min(1) + pv.max(1)) / 2
    side = scale * np.maximum(pu.max(1) - pu.min(1), pv.max(1) - pv.min(1))
    centre = mu[:, None] * u + mv[:, None] * v  # (N, 2)
    return np.stack([centre[:, 0], centre[:, 1], side, ang], axis=1)


def face_landmarks(photos: np.ndarray, region: tuple[float, float, float] = CELEBA_REGION, device: str = "cpu",
                   batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """468 landmarks of aligned face photos with the two-pass region fit (module docstring).

    Parameters
    ----------
    photos : ndarray, (N, S, S, 3) uint8
        Aligned face crops (e.g. CelebA prepared with ``--fit crop``).
    region : (float, float, float)
        First-pass region: centre x, centre y and side as fractions of S, angle 0.
    device : str
    batch_size : int

    Returns
    -------
    landmarks : ndarray, (N, 468, 3) float32
        x, y in photo pixels, z MediaPipe's depth (larger = farther) in the same units, from the
        second pass.
    presence : ndarray, (N,) float32
        The second pass's face-presence probability.
    """
    from pixelnn.models.facemesh import INPUT_SIZE, run_facemesh

    photos = _check_photos(photos)
    n, h, w, _ = photos.shape
    first = np.tile([region[0] * w, region[1] * h, region[2] * min(h, w), 0.0], (n, 1))  # (N, 4)
    landmarks = np.zeros((n, 468, 3), np.float32)
    presence = np.zeros(n, np.float32)
    for s in range(0, n, batch_size):
        batch = photos[s:s + batch_size]
        regions = first[s:s + len(batch)]
        for _ in range(2):  # pass 1 on the fixed region, pass 2 on the refitted one
            lm, presence[s:s + len(batch)] = run_facemesh(crop_regions(batch, regions, INPUT_SIZE, device), device=device,
                                                          batch_size=batch_size)
            lm = project_landmarks(lm, regions, INPUT_SIZE)  # (B, 468, 3) photo pixels
            regions = refit_regions(lm)
        landmarks[s:s + len(batch)] = lm
    return landmarks, presence


@dataclass
class FaceNormals:
    """Normal maps of face photos (:func:`normal_maps`).

    Attributes
    ----------
    maps : ndarray, (N, S, S, 3) uint8
        ``round((n + 1) / 2 * 255)`` in the view frame (module docstring); :data:`BACKGROUND`
        outside the mask and for faces not found.
    masks : ndarray, (N, S, S) bool
        Where the face mesh covers the pixel (all False for faces not found).
    found : ndarray, (N,) bool
        Presence probability at least the threshold.
    presence : ndarray, (N,) float32
    landmarks : ndarray, (N, 468, 3) float32
        Photo pixels (see :func:`face_landmarks`).
    normals : ndarray, (N, S, S, 3) float32, optional
        The unit normals before encoding (0 outside the mask), when asked for (``normal_maps(...,
        float_normals=True)``: the angular-error metrics use them unquantised); else None.
    """

    maps: np.ndarray
    masks: np.ndarray
    found: np.ndarray
    presence: np.ndarray
    landmarks: np.ndarray
    normals: np.ndarray | None = None


def normal_maps(photos: np.ndarray, threshold: float | None = None, region: tuple[float, float, float] = CELEBA_REGION,
                device: str = "cpu", batch_size: int = 64, progress: bool = False,
                float_normals: bool = False) -> FaceNormals:
    """Surface-normal maps of aligned face photos, aligned with them pixel for pixel.

    Parameters
    ----------
    photos : ndarray, (N, S, S, 3) uint8
    threshold : float, optional
        Smallest presence probability taken as a face (default MediaPipe's 0.5).
    region : (float, float, float)
        The first-pass region (see :func:`face_landmarks`).
    device : str
        Where the face-mesh model runs (rasterisation is numpy, on the CPU).
    batch_size : int
    progress : bool
        A tqdm progress bar over the photos.
    float_normals : bool
        Also return the unit normals as float32 (:attr:`FaceNormals.normals`).

    Returns
    -------
    FaceNormals
    """
    from tqdm.auto import tqdm

    from pixelnn.models.facemesh import PRESENCE_THRESHOLD

    threshold = PRESENCE_THRESHOLD if threshold is None else threshold
    photos = _check_photos(photos)
    n, h, w, _ = photos.shape
    topo = face_topology()
    maps = np.full((n, h, w, 3), BACKGROUND, np.uint8)
    masks = np.zeros((n, h, w), bool)
    landmarks = np.zeros((n, 468, 3), np.float32)
    presence = np.zeros(n, np.float32)
    floats = np.zeros((n, h, w, 3), np.float32) if float_normals else None
    with tqdm(total=n, desc="normal maps", unit="img", disable=not progress, leave=False) as bar:
        for s in range(0, n, batch_size):
            lm, p = face_landmarks(photos[s:s + batch_size], region, device, batch_size)
            landmarks[s:s + len(lm)], presence[s:s + len(lm)] = lm, p
            for k in np.flatnonzero(p >= threshold):
                v = add_hole_vertices(lm[k].astype(np.float64), topo)  # (471, 3)
                v[:, 2] = -v[:, 2]  # MediaPipe's z grows away from the camera; ours toward the viewer
                normals, mask = mesh_normal_map(v, topo.triangles, h, w)
                maps[s + k], masks[s + k] = encode_normals(normals, mask), mask
                if floats is not None:
                    floats[s + k] = np.where(mask[..., None], normals, 0)
            bar.update(len(lm))
    found = presence >= threshold
    if not found.all():
        log.debug("no face found in %d of %d photos", int((~found).sum()), n)
    return FaceNormals(maps, masks, found, presence, landmarks, floats)


def _check_photos(photos: np.ndarray) -> np.ndarray:
    photos = np.asarray(photos)
    if photos.ndim != 4 or photos.shape[-1] != 3 or photos.dtype != np.uint8:
        raise ValueError(f"photos must be (N, H, W, 3) uint8, got {photos.shape} {photos.dtype}")
    return photos
