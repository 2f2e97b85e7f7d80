"""The road surface seen from above, in road coordinates, and its projection into the camera.

`GroundPainter` paints 25.6 m segments of a top-down strip (rows along the road at 5 cm, columns
across it at 4 cm, n from -24 m to +24 m): asphalt and roadside texture, lane markings, stop lines,
crosswalks and shadows, plus two coverage channels (lane marking paint, distractors). Each segment is
box-filtered into a pyramid along the road so distant rows are not aliased.

`Camera` is a pinhole camera over a flat ground plane (640x480, no hood). For each image row it finds
where the road centre line crosses that distance, linearises the road there, and remaps the strip
level whose resolution matches the row's footprint.
"""
from __future__ import annotations

import cv2
import numpy as np

from .road import SEGMENT, Road, Section

DS0 = 0.05  # strip row step along the road, m
DN0 = 0.04  # strip column step across the road, m
HALF = 24.0  # strip half width, m
ROWS = int(round(SEGMENT / DS0))  # 512
COLS = int(round(2 * HALF / DN0))  # 1200
LEVELS = 9
MARGIN = 32  # rows painted beyond each segment end so blurred shadows meet without seams

PAINT = {"white": np.array([228, 232, 232], np.float32), "yellow": np.array([40, 185, 225], np.float32)}
VERGE = {"grass": (55, 105, 75), "dry": (80, 130, 140), "gravel": (110, 120, 125), "sidewalk": (165, 170, 170)}


def level_scale(k: int) -> tuple[int, int]:
    """(along, across) reduction factor of pyramid level k."""
    return 2 ** k, 2 ** max(0, (k - 3) // 2)


def _noise_bank(rng, count=3, rows=ROWS + 2 * MARGIN + ROWS, cols=COLS):
    """Multi-scale noise fields in [-1, 1]: fine grain plus coarse blotches (made small, then enlarged)."""
    bank = []
    for _ in range(count):
        total = np.zeros((rows, cols), np.float32)
        for sigma, weight in ((0.8, 0.45), (3.0, 0.35), (12.0, 0.5), (40.0, 0.6)):
            shrink = max(1.0, sigma / 2)
            small = rng.standard_normal((int(rows / shrink) + 1, int(cols / shrink) + 1)).astype(np.float32)
            small = cv2.GaussianBlur(small, (0, 0), sigma / shrink)
            field = cv2.resize(small, (cols, rows), interpolation=cv2.INTER_LINEAR) if shrink > 1 else small[:rows, :cols]
            total += weight * field / (field.std() + 1e-6)
        bank.append(np.clip(total / 2.0, -1, 1))
    return bank


class GroundPainter:
    """Paints and caches strip segments (all pyramid levels) for a road."""

    def __init__(self, road: Road, seed: int):
        self.road = road
        self.seed = seed
        self.noise = _noise_bank(np.random.default_rng([seed, 2]))
        self.cache: dict[int, tuple[list, list]] = {}

    def segment(self, j: int) -> tuple[list, list]:
        """Segment j at every pyramid level: colours (rows_k, cols_k, 3) and masks (rows_k, cols_k, 2) uint8,
        the mask channels being lane-marking paint and distractor coverage (0-255)."""
        if j not in self.cache:
            colors, masks = self._paint(j)
            colors, masks = [colors], [masks]
            for k in range(1, LEVELS):
                a, c = level_scale(k)
                size = (COLS // c, ROWS // a)
                colors.append(cv2.resize(colors[-1], size, interpolation=cv2.INTER_AREA))
                masks.append(cv2.resize(masks[-1], size, interpolation=cv2.INTER_AREA))
            self.cache[j] = (colors, masks)
        return self.cache[j]

    def forget_before(self, j: int) -> None:
        for key in [k for k in self.cache if k < j]:
            del self.cache[key]

    def _paint(self, j: int):
        rng = np.random.default_rng([self.seed, 3, j])
        rows = ROWS + 2 * MARGIN
        s0 = j * SEGMENT - MARGIN * DS0
        S = (s0 + (np.arange(rows, dtype=np.float32) + 0.5) * DS0)[:, None]
        N = ((np.arange(COLS, dtype=np.float32) + 0.5) * DN0 - HALF)[None, :]
        sec = self.road.section(j * SEGMENT + 1e-3)
        prev = self.road.section(max(0.0, sec.start - 1.0))
        # lane width tapers from the previous section's over 20 m
        w = (prev.lane_width + (sec.lane_width - prev.lane_width) * np.clip((S - sec.start) / 20.0, 0, 1))
        w = np.where(S < sec.start, prev.lane_width, w).astype(np.float32)
        noise = self.noise[j % len(self.noise)]
        off = int(rng.integers(0, noise.shape[0] - rows))
        tex = noise[off:off + rows]
        tex2 = self.noise[(j + 1) % len(self.noise)][off:off + rows]

        right = w * (-sec.lanes_right - 0.5) - sec.shoulder
        left = w * (sec.lanes_left + 0.5) + sec.shoulder
        road = np.clip(np.minimum(N - right, left - N) / DN0 + 0.5, 0, 1)
        asphalt = np.array(sec.asphalt, np.float32)
        verge = np.array(VERGE[sec.verge], np.float32)
        shade = (1 + 0.28 * tex2 + 0.1 * tex) - road * (0.22 * tex2 + 0.02 * tex)  # coarse verge, finer asphalt
        color = (verge + (asphalt - verge) * road[..., None]) * shade[..., None]
        self._patches(rng, color, sec, right, left)

        lane = np.zeros((rows, COLS), np.float32)
        distractor = np.zeros((rows, COLS), np.float32)
        keep = np.ones((rows, 1), np.float32)  # lane lines stop at crosswalks
        for t in self.road.transverse:
            if t.kind == "crosswalk" and s0 - 8 < t.s < s0 + rows * DS0 + 8:
                keep *= 1 - ((S > t.s - 1.5) & (S < t.s + t.depth + 1.5))
        for line in sec.lines:
            for centre in ((line.offset * w - 0.12, line.offset * w + 0.12) if line.double else (line.offset * w,)):
                c0 = max(0, int((centre.min() - sec.line_width + HALF) / DN0) - 2)
                c1 = min(COLS, int((centre.max() + sec.line_width + HALF) / DN0) + 3)
                if c1 <= c0:
                    continue
                cols = slice(c0, c1)
                wear = np.clip(sec.wear * (0.6 + 1.2 * tex2[:, cols]), 0, 1)  # fraction of paint gone
                band = self._line_coverage(N[:, cols], S, centre, sec, line.dashed)
                alpha = band * keep * (1 - wear) * sec.paint
                color[:, cols] += (PAINT[line.color] - color[:, cols]) * alpha[..., None]
                np.maximum(lane[:, cols], alpha, out=lane[:, cols])
        for t in self.road.transverse:
            self._transverse(t, S, N, w, sec, color, distractor, tex2)
        self._shadows(rng, sec, color, distractor, rows)
        sl = slice(MARGIN, MARGIN + ROWS)
        color = np.clip(color[sl], 0, 255).astype(np.uint8)
        masks = (cv2.merge([lane[sl], distractor[sl]]) * 255 + 0.5).astype(np.uint8)
        return color, masks

    @staticmethod
    def _line_coverage(N, S, centre, sec: Section, dashed: bool):
        hw = sec.line_width / 2
        cov = np.clip((hw - np.abs(N - centre)) / DN0 + 0.5, 0, 1)
        if dashed:
            period = sec.dash + sec.gap
            phase = np.mod(S - sec.dash_phase, period)
            cov = cov * np.clip((sec.dash / 2 - np.abs(phase - sec.dash / 2)) / DS0 + 0.5, 0, 1)
        return cov

    def _transverse(self, t, S, N, w, sec: Section, color, distractor, tex):
        r0 = int(np.searchsorted(S[:, 0], t.s - DS0))
        r1 = int(np.searchsorted(S[:, 0], t.s + t.depth + DS0))
        if r1 <= r0:
            return
        rows = slice(r0, r1)
        S, w = S[rows], w[rows]
        along = np.clip((np.minimum(S - t.s, t.s + t.depth - S)) / DS0 + 0.5, 0, 1)
        right = w * (-sec.lanes_right - 0.5)
        if t.kind == "stop":
            left = w * (sec.lanes_left - sec.oncoming + 0.5)
            across = np.clip(np.minimum(N - right, left - N) / DN0 + 0.5, 0, 1)
        else:
            left = w * (sec.lanes_left + 0.5)
            period = t.bar + t.gap
            phase = np.mod(N - right, period)
            bars = np.clip((t.bar / 2 - np.abs(phase - t.bar / 2)) / DN0 + 0.5, 0, 1)
            across = bars * np.clip(np.minimum(N - right, left - N) / DN0 + 0.5, 0, 1)
        alpha = along * across * np.clip(0.9 - 0.5 * tex[rows] * sec.wear, 0, 1) * sec.paint
        color[rows] += (PAINT["white"] - color[rows]) * alpha[..., None]
        np.maximum(distractor[rows], alpha, out=distractor[rows])

    @staticmethod
    def _patches(rng, color, sec: Section, right, left):
        """Repaired asphalt patches and cracks on the road (texture that is not a lane marking)."""
        lo, hi = (float(right.max()) + HALF) / DN0, (float(left.min()) + HALF) / DN0
        rows = color.shape[0]
        factor = np.ones(color.shape[:2], np.float32)
        for _ in range(rng.poisson(1.0)):
            box = ((rng.uniform(lo, hi), rng.uniform(0, rows)), tuple(rng.uniform(15, 80, 2) * [1, 2]),
                   rng.uniform(-20, 20))
            cv2.fillPoly(factor, [cv2.boxPoints(box).astype(np.int32)], float(rng.uniform(0.75, 1.15)))
        for _ in range(rng.poisson(2.0)):
            pts = np.cumsum(rng.normal(0, 12, (8, 2)), axis=0) + [rng.uniform(lo, hi), rng.uniform(0, rows)]
            cv2.polylines(factor, [pts.astype(np.int32)], False, 0.6, 1, cv2.LINE_AA)
        color *= factor[..., None]

    def _shadows(self, rng, sec: Section, color, distractor, rows):
        """Tree shadows (blobs) and pole/building shadows (bands across the road), soft-edged."""
        density = sec.shadows
        if density <= 0:
            return
        shadow = np.zeros((rows, COLS), np.float32)
        for _ in range(rng.poisson(1.5 * density)):
            cx, cy = rng.uniform(0, COLS), rng.uniform(0, rows)
            for _ in range(int(rng.integers(3, 12))):
                c = (int(cx + rng.normal(0, 60)), int(cy + rng.normal(0, 40)))
                axes = (int(rng.uniform(20, 110)), int(rng.uniform(15, 60)))
                cv2.ellipse(shadow, c, axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
        for _ in range(rng.poisson(0.6 * density)):
            y = rng.uniform(0, rows)
            depth = rng.uniform(6, 40 if rng.random() < 0.7 else 120)  # rows: 0.3-6 m deep
            slope = rng.uniform(-0.3, 0.3) * COLS
            x0, x1 = sorted(rng.uniform(0, COLS, 2))
            x0, x1 = (0, COLS) if rng.random() < 0.6 else (x0, x1)
            quad = np.array([[x0, y], [x1, y + slope], [x1, y + slope + depth], [x0, y + depth]], np.int32)
            cv2.fillPoly(shadow, [quad], 1.0)
        if not shadow.any():
            return
        shadow = cv2.GaussianBlur(shadow, (0, 0), 2.5)
        darkness = 0.45 * sec.sun + 0.15
        color *= (1 - darkness * shadow)[..., None]
        np.maximum(distractor, shadow, out=distractor)


class Camera:
    """Pinhole camera 1.45 m above a flat ground plane, looking along the car, horizon near row 228."""

    def __init__(self, width=640, height=480, focal=540.0, cam_height=1.45, horizon=228.0, forward=1.5):
        self.width, self.height = width, height
        self.f, self.h, self.horizon, self.forward = focal, cam_height, horizon, forward
        self.cx = (width - 1) / 2
        self.u = np.arange(width, dtype=np.float32) - self.cx

    def pose(self, road: Road, state):
        """World position and heading of the camera for a car state."""
        x, y, th, _ = road.sample(state.s)
        heading = th + state.psi
        px = x - np.sin(th) * state.d + np.cos(heading) * self.forward
        py = y + np.cos(th) * state.d + np.sin(heading) * self.forward
        return px, py, heading

    def to_camera(self, pose, wx, wy):
        """World points -> (X right, Z forward) in the camera frame."""
        px, py, heading = pose
        dx, dy = wx - px, wy - py
        return np.sin(heading) * dx - np.cos(heading) * dy, np.cos(heading) * dx + np.sin(heading) * dy

    def project(self, pose, wx, wy, height, horizon):
        """World points at `height` above the ground -> (u, v, Z)."""
        X, Z = self.to_camera(pose, wx, wy)
        Zc = np.maximum(Z, 1e-3)
        return self.cx + self.f * X / Zc, horizon + self.f * (self.h - height) / Zc, Z

    def ground_rows(self, road: Road, state, pose, horizon: float, s_origin: float):
        """Per ground row: (first row, level, (a, b, c, e) map coefficients at level 0, valid).

        Strip column (level 0) = a*u' + b and strip row = c*u' + e, with u' = u - cx.
        """
        s = state.s + np.arange(-2.0, 320.0, 0.5)
        wx, wy = road.to_world(s, 0.0)
        X, Z = self.to_camera(pose, wx, wy)
        _, _, th, _ = road.sample(s)
        phi = -(th - pose[2])  # road direction in the camera frame, positive to the right
        stop = np.argmax(np.diff(Z) < 0.1) if np.any(np.diff(Z) < 0.1) else len(Z) - 1
        start = np.argmax(Z > 0.5)
        s, X, Z, phi = s[start:stop + 1], X[start:stop + 1], Z[start:stop + 1], phi[start:stop + 1]
        v0 = int(np.floor(horizon)) + 1
        v = np.arange(v0, self.height, dtype=np.float64)
        depth = self.f * self.h / (v - horizon)
        valid = depth <= Z[-1]
        sv = np.interp(depth, Z, s)
        xc = np.interp(depth, Z, X)
        ph = np.interp(depth, Z, phi)
        k = self.h / (v - horizon)  # metres per pixel across at this row
        cos, sin = np.cos(ph), np.sin(ph)
        # n = -(X - xc) cos(phi), s = sv + (X - xc) sin(phi), X = k u'
        a = -k * cos / DN0
        b = (xc * cos + HALF) / DN0
        c = k * sin / DS0
        e = (sv - xc * sin - s_origin) / DS0
        footprint = self.f * self.h / (v - horizon) ** 2  # metres along the road per row
        level = np.clip(np.round(np.log2(np.maximum(footprint / DS0, 1e-9))), 0, LEVELS - 1).astype(int)
        return v0, level, (a, b, c, e), valid
