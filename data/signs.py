"""Synthetic traffic signs for the Table 2 sign classifier: 43 classes modelled on the German set (GTSRB).

    images, labels = generate(seed, count)                  # (N,125,125) uint8 gray, (N,) int64
    images, labels, masks = generate(seed, count, masks=True)  # + (N,125,125) bool: the sign's pixels

Families share shape and colour, as in the real set: red-rimmed circles (eight speed limits, no passing,
no vehicles, no trucks), end-of-restriction circles with diagonal stripes, red-rimmed warning triangles
with 15 pictograms, blue mandatory circles with arrows, no entry, stop, yield and priority road. Each
sign is drawn with OpenCV on a 128x128 canvas, warped (35-90 % of the frame, position, rotation up to
12 degrees, perspective) onto a cluttered background (gradients, colour clouds, foliage-like texture,
poles, shapes and arcs in sign colours), then lit (gain, gamma, shade), blurred, noised and converted to
gray like the driving views. Image i of a seed depends only on (seed, i); labels cycle through a fresh
permutation of the 43 classes every 43 images, so any 43 consecutive images hold every class once.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

SIZE = 125
CLASSES = 43
_C = 128  # drawing canvas; sign unit radius = 60 px around (64, 64)
RED, BLUE, WHITE = (40, 30, 200), (170, 90, 20), (235, 235, 235)
BLACK, GRAY, YELLOW = (25, 25, 25), (120, 120, 120), (20, 190, 240)


class Pen:
    """Draw in unit coordinates (sign radius 1, y down) around (cx, cy) with a scale and a mirror flag."""

    def __init__(self, img, color, cx=0.0, cy=0.0, s=1.0, flip=1):
        self.img, self.color, self.cx, self.cy, self.s, self.flip = img, color, cx, cy, s, flip

    def p(self, x, y):
        return (int(round(64 + 60 * (self.cx + self.flip * x * self.s))), int(round(64 + 60 * (self.cy + y * self.s))))

    def w(self, t):
        return max(1, int(round(60 * self.s * t)))

    def line(self, pts, t=0.12):
        pts = np.array([self.p(*q) for q in pts], np.int32)
        cv2.polylines(self.img, [pts], False, self.color, self.w(t), cv2.LINE_AA)

    def poly(self, pts):
        cv2.fillPoly(self.img, [np.array([self.p(*q) for q in pts], np.int32)], self.color, cv2.LINE_AA)

    def dot(self, x, y, r):
        cv2.circle(self.img, self.p(x, y), self.w(r), self.color, -1, cv2.LINE_AA)

    def ring(self, x, y, r, t=0.08):
        cv2.circle(self.img, self.p(x, y), self.w(r), self.color, self.w(t), cv2.LINE_AA)

    def arrow(self, pts, t=0.16, head=0.3):
        """A polyline ending in a filled arrowhead."""
        *body, (x1, y1) = pts
        x0, y0 = body[-1]
        d = math.hypot(x1 - x0, y1 - y0)
        ux, uy = (x1 - x0) / d, (y1 - y0) / d
        bx, by = x1 - ux * head, y1 - uy * head
        self.line(body + [(bx, by)], t)
        h = head * 0.8
        self.poly([(x1, y1), (bx - uy * h, by + ux * h), (bx + uy * h, by - ux * h)])

    def text(self, s, width=1.2, t=0.16):
        font = cv2.FONT_HERSHEY_DUPLEX
        (tw, th), _ = cv2.getTextSize(s, font, 1.0, 1)
        scale = 60 * self.s * width / tw
        x, y = self.p(0, 0)
        cv2.putText(self.img, s, (int(x - tw * scale / 2), int(y + th * scale / 2)), font, scale, self.color,
                    self.w(t), cv2.LINE_AA)


def car(p, x, y, s):
    q = Pen(p.img, p.color, p.cx + p.flip * x * p.s, p.cy + y * p.s, p.s * s, p.flip)
    q.poly([(-0.5, 0.25), (-0.5, -0.05), (-0.3, -0.4), (0.3, -0.4), (0.5, -0.05), (0.5, 0.25)])
    q.poly([(-0.45, 0.2), (-0.25, 0.2), (-0.25, 0.45), (-0.45, 0.45)])
    q.poly([(0.25, 0.2), (0.45, 0.2), (0.45, 0.45), (0.25, 0.45)])


def truck(p, x, y, s):
    q = Pen(p.img, p.color, p.cx + p.flip * x * p.s, p.cy + y * p.s, p.s * s, p.flip)
    q.poly([(-0.7, -0.45), (0.25, -0.45), (0.25, 0.3), (-0.7, 0.3)])
    q.poly([(0.3, -0.2), (0.55, -0.2), (0.7, 0.05), (0.7, 0.3), (0.3, 0.3)])
    for wx in (-0.5, -0.25, 0.5):
        q.dot(wx, 0.38, 0.12)


def person(p, x, y, s, walk=1.0):
    q = Pen(p.img, p.color, p.cx + p.flip * x * p.s, p.cy + y * p.s, p.s * s, p.flip)
    q.dot(0, -0.75, 0.16)
    q.line([(0, -0.5), (0.05, 0.1)], 0.2)
    q.line([(-0.3 * walk, 0.7), (0.05, 0.1), (0.35 * walk, 0.7)], 0.14)
    q.line([(-0.3 * walk, 0.0), (0, -0.4), (0.3 * walk, -0.05)], 0.12)


# Pictograms: fn(pen) drawing in the pictogram's own unit frame.
def _curve(p):
    p.line([(0.15, 0.7), (0.15, 0.05), (0.0, -0.35), (-0.35, -0.65)], 0.2)
    p.poly([(-0.55, -0.8), (-0.15, -0.7), (-0.45, -0.45)])


def _bumps(p):
    p.line([(-0.8, 0.45), (-0.55, 0.45)], 0.14)
    for x0 in (-0.55, 0.05):
        cv2.ellipse(p.img, p.p(x0 + 0.35, 0.45), (p.w(0.35), p.w(0.45)), 0, 180, 360, p.color, p.w(0.14), cv2.LINE_AA)
    p.line([(0.75, 0.45), (0.8, 0.45)], 0.14)


def _slippery(p):
    car(p, 0, -0.35, 0.7)
    for dx in (-0.3, 0.3):
        p.line([(dx - 0.2, 0.75), (dx, 0.55), (dx - 0.15, 0.35), (dx + 0.05, 0.15)], 0.1)


def _narrows(p):
    p.line([(-0.35, 0.75), (-0.35, -0.7)], 0.16)
    p.line([(0.45, 0.75), (0.45, 0.15), (0.1, -0.2), (0.1, -0.7)], 0.16)


def _roadwork(p):
    person(p, -0.1, -0.05, 0.75, 0.8)
    p.line([(0.2, -0.3), (0.55, 0.45)], 0.1)
    p.poly([(0.2, 0.75), (0.55, 0.4), (0.85, 0.75)])


def _signals(p):
    p.line([(-0.3, -0.8), (0.3, -0.8), (0.3, 0.8), (-0.3, 0.8), (-0.3, -0.8)], 0.08)
    for y, c in ((-0.5, RED), (0.0, YELLOW), (0.5, (40, 160, 40))):
        Pen(p.img, c, p.cx, p.cy, p.s).dot(0, y, 0.2)


def _bicycle(p):
    for x in (-0.45, 0.45):
        p.ring(x, 0.35, 0.32, 0.09)
    p.line([(-0.45, 0.35), (-0.1, -0.15), (0.35, -0.15), (0.45, 0.35)], 0.09)
    p.line([(-0.1, -0.15), (0.05, 0.35), (0.35, -0.15)], 0.09)
    p.dot(0.05, -0.65, 0.14)
    p.line([(0.05, -0.5), (-0.1, -0.15)], 0.14)


def _snow(p):
    for a in (0, 60, 120):
        c, s = math.cos(math.radians(a)), math.sin(math.radians(a))
        p.line([(-0.7 * c, -0.7 * s), (0.7 * c, 0.7 * s)], 0.1)
        for e in (-1, 1):
            x, y = 0.45 * e * c, 0.45 * e * s
            p.line([(x + 0.2 * s, y - 0.2 * c), (x, y), (x - 0.2 * s, y + 0.2 * c)], 0.07)


def _deer(p):
    p.poly([(-0.6, 0.0), (-0.2, -0.15), (0.35, -0.3), (0.5, -0.55), (0.7, -0.5), (0.55, -0.2), (0.3, 0.1),
            (-0.3, 0.15)])
    p.line([(0.5, -0.55), (0.4, -0.85), (0.3, -0.95)], 0.06)
    p.line([(0.55, -0.55), (0.7, -0.85)], 0.06)
    p.line([(-0.5, 0.05), (-0.8, 0.6)], 0.1)
    p.line([(0.25, 0.05), (0.55, 0.6)], 0.1)


def _roundabout(p):
    for k in range(3):
        a0 = 90 + 120 * k
        cv2.ellipse(p.img, p.p(0, 0), (p.w(0.5), p.w(0.5)), 0, a0 + 10, a0 + 95, p.color, p.w(0.14), cv2.LINE_AA)
        a = math.radians(a0 + 95)
        x, y, tx, ty = 0.5 * math.cos(a), 0.5 * math.sin(a), -math.sin(a), math.cos(a)
        p.poly([(x + 0.25 * tx, y + 0.25 * ty), (x - 0.2 * math.cos(a), y - 0.2 * math.sin(a)),
                (x + 0.2 * math.cos(a), y + 0.2 * math.sin(a))])


def _turn(p):
    p.line([(-0.25, 0.7), (-0.25, -0.15)], 0.16)
    p.arrow([(-0.25, -0.15), (0.65, -0.15)])


def _straight_or(p):
    p.arrow([(-0.15, 0.7), (-0.15, -0.7)])
    p.arrow([(-0.15, 0.25), (0.1, -0.05), (0.6, -0.05)])


def _strikes(p):
    for d in (-0.2, -0.1, 0.0, 0.1, 0.2):
        p.line([(0.6 + d, -0.6 + d), (-0.6 + d, 0.6 + d)], 0.035)


SPEEDS = {0: "20", 1: "30", 2: "50", 3: "60", 4: "70", 5: "80", 7: "100", 8: "120"}
PROHIB = {9: "no passing", 10: "no passing trucks", 15: "no vehicles", 16: "no trucks"}
END = {6: "end 80", 32: "end of all limits", 41: "end no passing", 42: "end no passing trucks"}
TRIANGLE = {11: ("right of way", lambda p: (p.line([(0, 0.8), (0, -0.8)], 0.26), p.line([(-0.6, 0), (0.6, 0)], 0.12))),
            18: ("caution", lambda p: (p.poly([(-0.12, -0.8), (0.12, -0.8), (0.06, 0.3), (-0.06, 0.3)]),
                                      p.dot(0, 0.6, 0.13))),
            19: ("curve left", _curve), 20: ("curve right", lambda p: _curve(Pen(p.img, p.color, p.cx, p.cy, p.s, -1))),
            21: ("double curve", lambda p: p.line([(-0.15, 0.75), (-0.15, 0.35), (0.25, 0.05), (0.25, -0.1),
                                                   (-0.15, -0.4), (-0.15, -0.8)], 0.18)),
            22: ("bumpy road", _bumps), 23: ("slippery", _slippery), 24: ("road narrows", _narrows),
            25: ("road work", _roadwork), 26: ("signals", _signals),
            27: ("pedestrians", lambda p: person(p, 0, 0, 1.0)),
            28: ("children", lambda p: (person(p, -0.3, -0.1, 0.85), person(p, 0.35, 0.15, 0.65))),
            29: ("bicycles", _bicycle), 30: ("ice", _snow), 31: ("animals", _deer)}
BLUE_SIGNS = {33: ("turn right", _turn), 34: ("turn left", lambda p: _turn(Pen(p.img, p.color, p.cx, p.cy, p.s, -1))),
              35: ("ahead only", lambda p: p.arrow([(0, 0.7), (0, -0.7)])),
              36: ("straight or right", _straight_or),
              37: ("straight or left", lambda p: _straight_or(Pen(p.img, p.color, p.cx, p.cy, p.s, -1))),
              38: ("keep right", lambda p: p.arrow([(-0.45, -0.45), (0.5, 0.5)])),
              39: ("keep left", lambda p: p.arrow([(0.45, -0.45), (-0.5, 0.5)])), 40: ("roundabout", _roundabout)}
NAMES = {**{k: f"speed {v}" for k, v in SPEEDS.items()}, **PROHIB, **END, **{k: v[0] for k, v in TRIANGLE.items()},
         12: "priority road", 13: "yield", 14: "stop", 17: "no entry", **{k: v[0] for k, v in BLUE_SIGNS.items()}}
assert sorted(NAMES) == list(range(CLASSES))


def draw_sign(label: int, rng=None) -> tuple:
    """(BGR uint8 (128,128,3), alpha float32 (128,128)) of one sign on the canvas; colours jittered by rng."""
    rng = rng or np.random.default_rng(0)
    jit = lambda c: tuple(float(np.clip(v * rng.uniform(0.8, 1.1), 0, 255)) for v in c)  # noqa: E731
    red, blue, white, black, yellow = map(jit, (RED, BLUE, WHITE, BLACK, YELLOW))
    img, alpha = np.zeros((_C, _C, 3), np.uint8), np.zeros((_C, _C), np.uint8)
    full = Pen(alpha, 255)
    if label in TRIANGLE:
        outer = [(0, -0.95), (1.0, 0.8), (-1.0, 0.8)]
        Pen(img, red).poly(outer), full.poly(outer)
        Pen(img, white).poly([(0, -0.5), (0.62, 0.57), (-0.62, 0.57)])
        TRIANGLE[label][1](Pen(img, black, 0, 0.23, 0.38))
    elif label == 13:  # yield
        outer = [(-1.0, -0.8), (1.0, -0.8), (0, 0.95)]
        Pen(img, red).poly(outer), full.poly(outer)
        Pen(img, white).poly([(-0.62, -0.57), (0.62, -0.57), (0, 0.5)])
    elif label == 14:  # stop
        octagon = [(math.cos(math.radians(22.5 + 45 * k)), math.sin(math.radians(22.5 + 45 * k))) for k in range(8)]
        Pen(img, white).poly(octagon), full.poly(octagon)
        Pen(img, red).poly([(0.93 * x, 0.93 * y) for x, y in octagon])
        Pen(img, white).text("STOP", 1.45, 0.07)
    elif label == 12:  # priority road
        diamond = [(0, -1), (1, 0), (0, 1), (-1, 0)]
        Pen(img, white).poly(diamond), full.poly(diamond)
        Pen(img, black).line(diamond + [(0, -1)], 0.03)
        Pen(img, yellow).poly([(0, -0.62), (0.62, 0), (0, 0.62), (-0.62, 0)])
    else:  # circles
        full.dot(0, 0, 1.0)
        ink = Pen(img, black)
        if label in BLUE_SIGNS:
            Pen(img, white).dot(0, 0, 1.0), Pen(img, blue).dot(0, 0, 0.94)
            BLUE_SIGNS[label][1](Pen(img, white))
        elif label == 17:  # no entry
            Pen(img, red).dot(0, 0, 1.0)
            Pen(img, white).poly([(-0.68, -0.17), (0.68, -0.17), (0.68, 0.17), (-0.68, 0.17)])
        elif label in END:
            Pen(img, white).dot(0, 0, 1.0), Pen(img, black).ring(0, 0, 0.97, 0.04)
            grey = Pen(img, jit(GRAY))
            if label == 6:
                grey.text("80", 1.0, 0.17)
            elif label == 41:
                car(grey, -0.32, 0, 0.55), car(grey, 0.32, 0, 0.55)
            elif label == 42:
                truck(grey, -0.3, 0, 0.45), car(grey, 0.4, 0, 0.5)
            _strikes(ink)
        else:
            Pen(img, red).dot(0, 0, 1.0), Pen(img, white).dot(0, 0, 0.76)
            if label in SPEEDS:
                ink.text(SPEEDS[label], 0.95 if len(SPEEDS[label]) == 2 else 1.2, 0.13)
            elif label == 9:
                car(Pen(img, red), -0.32, 0, 0.55), car(ink, 0.32, 0, 0.55)
            elif label == 10:
                truck(Pen(img, red), -0.3, 0, 0.45), car(ink, 0.4, 0, 0.5)
            elif label == 16:
                truck(ink, 0, 0, 0.8)
    fade = rng.uniform(0, 0.3)  # weathered paint
    img = (img * (1 - fade) + fade * rng.uniform(120, 230)).astype(np.uint8)
    return img, alpha.astype(np.float32) / 255


def background(rng) -> np.ndarray:
    """A cluttered (125,125,3) float32 BGR scene: gradient, colour clouds, foliage, poles, shapes in sign colours."""
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE
    a = rng.uniform(0, 2 * np.pi)
    t = np.clip(0.5 + (x - 0.5) * np.cos(a) + (y - 0.5) * np.sin(a), 0, 1)[..., None]
    c0, c1 = rng.uniform(20, 235, 3), rng.uniform(20, 235, 3)
    img = c0 + t * (c1 - c0)
    k = int(rng.integers(2, 7))
    img += cv2.resize(rng.uniform(-1, 1, (k, k, 3)).astype(np.float32), (SIZE, SIZE),
                      interpolation=cv2.INTER_CUBIC) * rng.uniform(10, 80)
    if rng.random() < 0.6:  # foliage: high-frequency green/brown texture over part of the frame
        m = int(rng.integers(12, 45))
        tex = cv2.resize(rng.random((m, m)).astype(np.float32), (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)
        cover = cv2.resize(rng.random((3, 3)).astype(np.float32), (SIZE, SIZE), interpolation=cv2.INTER_CUBIC)
        leaf = np.array([rng.uniform(10, 80), rng.uniform(60, 170), rng.uniform(20, 110)], np.float32)
        w = np.clip(cover * 1.5 - 0.3, 0, 1)[..., None] * rng.uniform(0.4, 1.0)
        img = img * (1 - w) + w * leaf * (0.4 + 1.2 * tex[..., None])
    img = np.clip(img, 0, 255).astype(np.uint8)
    palette = [RED, BLUE, WHITE, YELLOW, BLACK, GRAY]
    for _ in range(int(rng.integers(1, 7))):
        c = palette[rng.integers(len(palette))] if rng.random() < 0.5 else tuple(rng.uniform(0, 255, 3).tolist())
        p = rng.uniform(-10, SIZE + 10, 2).astype(int)
        kind = rng.integers(4)
        if kind == 0:
            cv2.ellipse(img, tuple(p), tuple(rng.integers(4, 40, 2).tolist()), rng.uniform(0, 180), 0, 360, c, -1,
                        cv2.LINE_AA)
        elif kind == 1:
            cv2.rectangle(img, tuple(p), tuple((p + rng.integers(-40, 40, 2)).tolist()), c, -1)
        elif kind == 2:  # an arc like the rim of another sign
            r = int(rng.integers(15, 60))
            a0 = rng.uniform(0, 360)
            cv2.ellipse(img, tuple(p), (r, r), 0, a0, a0 + rng.uniform(40, 160), c, int(rng.integers(3, 10)),
                        cv2.LINE_AA)
        else:
            cv2.line(img, tuple(p), tuple(rng.uniform(-10, SIZE + 10, 2).astype(int).tolist()), c,
                     int(rng.integers(1, 8)), cv2.LINE_AA)
    return cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 2.0)).astype(np.float32)


def render(label: int, rng) -> tuple:
    """One (125,125) gray uint8 image of sign `label` and its (125,125) bool sign mask."""
    bg = background(rng)
    sign, alpha = draw_sign(label, rng)
    s = rng.uniform(0.35, 0.9) * SIZE
    cx, cy = (rng.uniform(s / 2 - 0.1 * s, SIZE - s / 2 + 0.1 * s) for _ in range(2))
    if rng.random() < 0.5:  # a pole below the sign
        cv2.rectangle(bg, (int(cx - s * 0.04), int(cy)), (int(cx + s * 0.04), SIZE),
                      rng.uniform(60, 200, 3).tolist(), -1)
    a = np.radians(rng.uniform(-12, 12))
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64) * (_C / 120)  # canvas edge in sign radii
    dst = (corners + rng.uniform(-0.08, 0.08, (4, 2))) @ rot.T * (s / 2) + [cx, cy]
    h = cv2.getPerspectiveTransform(np.float32([[0, 0], [_C, 0], [_C, _C], [0, _C]]), dst.astype(np.float32))
    warped = cv2.warpPerspective(sign, h, (SIZE, SIZE), flags=cv2.INTER_LINEAR)
    a_w = cv2.warpPerspective(alpha, h, (SIZE, SIZE), flags=cv2.INTER_LINEAR)[..., None]
    shade = rng.uniform(0.6, 1.2)  # the sign's own lighting
    img = bg * (1 - a_w) + a_w * warped.astype(np.float32) * shade
    img = 255 * (np.clip(img * rng.uniform(0.55, 1.3), 0, 255) / 255) ** rng.uniform(0.7, 1.4)
    if rng.random() < 0.7:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 1.3))
    img += rng.normal(0, rng.uniform(0, 8), img.shape).astype(np.float32)
    gray = cv2.cvtColor(np.clip(img, 0, 255).astype(np.uint8), cv2.COLOR_BGR2GRAY)
    return gray, a_w[..., 0] > 0.5


def labels_for(seed: int, count: int, start: int = 0) -> np.ndarray:
    """Labels of images start..start+count-1: a fresh permutation of the classes per block of 43."""
    blocks = range(start // CLASSES, (start + count - 1) // CLASSES + 1) if count > 0 else []
    perm = np.concatenate([np.random.default_rng([seed, 0, b]).permutation(CLASSES) for b in blocks] or [[]])
    off = start - (start // CLASSES) * CLASSES
    return perm[off:off + count].astype(np.int64)


def generate(seed: int, count: int, start: int = 0, masks: bool = False):
    """(images uint8 (N,125,125), labels int64 (N,)[, sign masks bool (N,125,125)]) for images
    start..start+count-1 of `seed`; the same (seed, index) always gives the same image."""
    labels = labels_for(seed, count, start)
    images = np.empty((count, SIZE, SIZE), np.uint8)
    sign = np.empty((count, SIZE, SIZE), bool)
    for j, lab in enumerate(labels):
        images[j], sign[j] = render(int(lab), np.random.default_rng([seed, 1, start + j]))
    return (images, labels, sign) if masks else (images, labels)

