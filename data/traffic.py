"""Other cars: spawned in the lanes of the current section, moving along the road, drawn as shaded boxes."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .road import Road

COLORS = [(235, 235, 235), (190, 192, 195), (40, 40, 42), (30, 30, 170), (150, 80, 30), (110, 110, 115),
          (60, 90, 40), (20, 120, 200), (200, 200, 210)]


@dataclass
class Car:
    s: float  # centre, along the road
    lane: int  # lanes left of the ego lane (negative: right)
    v: float  # signed speed along the road, m/s
    length: float
    width: float
    height: float
    color: tuple
    oncoming: bool
    lead: bool = False  # follows at a varying gap in the ego lane


class Traffic:
    """A few cars around the ego car; deterministic given the seed."""

    def __init__(self, road: Road, seed: int, density: float = 1.0):
        self.road = road
        self.density = density
        self.rng = np.random.default_rng([seed, 4])
        self.cars: list[Car] = []
        self.gap_target = 30.0

    def _spawn(self, ego_s: float, ego_v: float) -> None:
        rng = self.rng
        sec = self.road.section(ego_s + 100)
        lanes = [i for i in range(-sec.lanes_right, sec.lanes_left + 1)]
        lane = int(rng.choice(lanes))
        oncoming = lane > sec.lanes_left - sec.oncoming
        lead = lane == 0 and not any(c.lead for c in self.cars)
        if lane == 0 and not lead:
            return
        s = ego_s + (rng.uniform(25, 60) if lead else rng.uniform(70, 160))
        v = -rng.uniform(10, 22) if oncoming else ego_v * rng.uniform(0.8, 1.1)
        big = rng.random() < 0.15
        self.cars.append(Car(s=s, lane=lane, v=float(v), length=float(rng.uniform(6, 12) if big else rng.uniform(4, 5)),
                             width=float(rng.uniform(2.2, 2.5) if big else rng.uniform(1.7, 1.95)),
                             height=float(rng.uniform(2.5, 3.5) if big else rng.uniform(1.35, 1.75)),
                             color=COLORS[int(rng.integers(len(COLORS)))], oncoming=bool(oncoming), lead=lead))

    def step(self, ego_s: float, ego_v: float, dt: float) -> None:
        if self.rng.random() < 0.02:
            self.gap_target = float(self.rng.uniform(18, 60))
        for car in self.cars:
            if car.lead:  # closes a gap above the target and opens one below it (time constant 3.3 s)
                gap = car.s - ego_s
                car.v = ego_v + float(np.clip(0.3 * (self.gap_target - gap), -3, 3))
            car.s += car.v * dt
        keep = []
        for car in self.cars:
            sec = self.road.section(car.s)
            in_road = -sec.lanes_right <= car.lane <= sec.lanes_left
            if in_road and -10 < car.s - ego_s < 200 and car.s < self.road.length - 5:
                keep.append(car)
        self.cars = keep
        want = 0.8 * self.density * 4
        if len(self.cars) < want and self.rng.random() < 0.08 * self.density:
            self._spawn(ego_s, ego_v)

    def draw(self, camera, pose, horizon, image, masks) -> None:
        """Draw the cars far to near into the image and the (lane, distractor) masks: cars hide lane
        markings and are distractors, like their shadows."""
        items = []
        for car in self.cars:
            w = self.road.section(car.s).lane_width
            n = car.lane * w
            rear = car.s + (car.length / 2 if car.oncoming else -car.length / 2)
            front = car.s - (car.length / 2 if car.oncoming else -car.length / 2)
            pts = [(rear, n - car.width / 2), (rear, n + car.width / 2), (front, n + car.width / 2),
                   (front, n - car.width / 2)]
            s_arr = np.array([p[0] for p in pts])
            n_arr = np.array([p[1] for p in pts])
            wx, wy = self.road.to_world(s_arr, n_arr)
            _, Z = camera.to_camera(pose, wx, wy)
            if Z.min() < 2.5 or Z.min() > 250:
                continue
            items.append((Z.min(), car, wx, wy))
        for _, car, wx, wy in sorted(items, key=lambda t: -t[0]):
            self._draw_car(camera, pose, horizon, car, wx, wy, image, masks)

    @staticmethod
    def _draw_car(camera, pose, horizon, car, wx, wy, image, masks):
        u0, v0, _ = camera.project(pose, wx, wy, 0.0, horizon)  # corners 0,1 facing us; 2,3 far
        u1, v1, _ = camera.project(pose, wx, wy, car.height, horizon)
        base = np.stack([u0, v0], axis=1)
        top = np.stack([u1, v1], axis=1)
        fill = lambda poly, color: _fill(image, masks, poly, color)
        # shadow on the ground (slightly larger footprint)
        centre = base.mean(axis=0)
        shadow = (centre + (base - centre) * 1.05).astype(np.int32)
        x, y, ww, hh = cv2.boundingRect(shadow)
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + ww, image.shape[1]), min(y + hh, image.shape[0])
        if x1 > x0 and y1 > y0:
            roi = np.zeros((y1 - y0, x1 - x0), np.uint8)
            cv2.fillConvexPoly(roi, shadow - [x0, y0], 1)
            sel = roi.astype(bool)
            image[y0:y1, x0:x1][sel] = (image[y0:y1, x0:x1][sel] * 0.5).astype(np.uint8)
            masks[y0:y1, x0:x1, 1][sel] = 255
        body = np.array(car.color, np.float32)
        # the visible side, then the roof if below the camera, then the face towards us
        side = (0, 3) if np.mean(u0[:2]) < camera.cx else (1, 2)
        fill(np.array([base[side[0]], base[side[1]], top[side[1]], top[side[0]]]), body * 0.7)
        if car.height < camera.h:
            fill(np.array([top[0], top[1], top[2], top[3]]), body * 0.95)
        face = np.array([base[0], base[1], top[1], top[0]])
        fill(face, body * 0.85)

        def part(x0, x1, y0, y1):  # sub-rectangle of the face in face-relative coordinates (y from bottom)
            bl, br, tr, tl = face
            p = lambda a, b: bl + (br - bl) * a + (tl - bl) * b
            return np.array([p(x0, y0), p(x1, y0), p(x1, y1), p(x0, y1)])

        fill(part(0.05, 0.95, 0.55, 0.92), np.array([45, 40, 38], np.float32))  # window
        fill(part(0.0, 1.0, 0.0, 0.14), np.array([30, 30, 30], np.float32))  # bumper / tyres
        light = (np.array([200, 220, 235], np.float32) if car.oncoming else np.array([30, 30, 200], np.float32))
        fill(part(0.04, 0.2, 0.3, 0.42), light)
        fill(part(0.8, 0.96, 0.3, 0.42), light)


def _fill(image, masks, poly, color) -> None:
    pts = np.round(poly).astype(np.int32)
    cv2.fillConvexPoly(image, pts, tuple(float(c) for c in np.clip(color, 0, 255)), cv2.LINE_AA)
    cv2.fillConvexPoly(masks, pts, (0, 255))
