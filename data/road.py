"""A procedural road and a car driving along it (geometry, lane layouts, controller, vehicle dynamics).

The road is a centre line of piecewise-linear curvature (straights, clothoid transitions, curves of
40-800 m radius in both directions) sampled every 0.25 m, plus lane-marking layouts per section.
Coordinates: world x/y in metres, heading theta counter-clockwise from x; along the road `s`, across
it `n` (positive to the left). The reference line is the centre of the ego lane.

The car is a kinematic bicycle (Lincoln MKZ-like: 2.85 m wheelbase, steering ratio 14.8) steered by
pure pursuit towards the centre of its lane, with actuator lag and a little jitter, while a smooth random
yaw disturbance (crosswind, road camber, the driver's own wandering) keeps pushing it off the centre: the
steering wheel angle depends on the curvature ahead *and* on the car's offset and heading, all of which
the camera sees (the controller has no target the camera cannot show). The pursuit point is a fixed
distance ahead at every speed: with a look-ahead growing with speed, which one frame does not show, the
same view called for different angles at different speeds.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

DS = 0.25  # road sampling step, m
WHEELBASE = 2.85  # m
STEERING_RATIO = 14.8  # steering wheel angle / road wheel angle
SEGMENT = 25.6  # m: sections start on multiples of this (one rendering segment)
# Section attributes a drive may force on every section (`vbp data synth --section NAME=VALUE`), with their
# allowed ranges: appearance only, so the road's course, the driver and the labels of a seed stay the same.
APPEARANCE = {"lane_width": (2.5, 5.0), "line_width": (0.05, 0.4), "wear": (0.0, 1.0), "paint": (0.0, 1.0),
              "shoulder": (0.0, 3.0), "shadows": (0.0, 4.0), "sun": (0.0, 1.0), "asphalt": (40.0, 170.0)}
VERGES = ("grass", "dry", "gravel", "sidewalk")


@dataclass
class Line:
    """One longitudinal marking at n = offset * lane_width (offset in lane widths from the ego lane centre)."""

    offset: float
    color: str  # "white" | "yellow"
    dashed: bool
    double: bool = False


@dataclass
class Section:
    """A stretch of road with one marking layout, surface and roadside."""

    start: float
    lane_width: float
    lanes_right: int  # same-direction lanes right of the ego lane
    lanes_left: int  # lanes left of the ego lane (same direction, then oncoming)
    oncoming: int  # how many of lanes_left carry oncoming traffic
    lines: list = field(default_factory=list)
    line_width: float = 0.15
    dash: float = 3.0
    gap: float = 9.0
    dash_phase: float = 0.0
    wear: float = 0.2
    paint: float = 1.0  # paint brightness
    asphalt: tuple = (95, 95, 95)  # BGR
    shoulder: float = 0.6
    verge: str = "grass"
    speed: float = 18.0  # target speed, m/s
    wander: float = 1.0  # strength of the yaw disturbance in this section (relative)
    shadows: float = 1.0  # shadow density
    sun: float = 1.0  # 0 overcast .. 1 sunny (shadow contrast)

    @property
    def right_edge(self) -> float:
        return -(self.lanes_right + 0.5) * self.lane_width

    @property
    def left_edge(self) -> float:
        return (self.lanes_left + 0.5) * self.lane_width


@dataclass
class Transverse:
    """A marking across the road at `s`: a stop line (ego direction) or a crosswalk (whole road)."""

    s: float
    kind: str  # "stop" | "crosswalk"
    depth: float  # along the road, m
    bar: float = 0.5  # crosswalk bar width, m
    gap: float = 0.6


def _curvature_knots(rng, length):
    s, knots = 0.0, [(0.0, 0.0)]
    s = float(rng.uniform(40, 120))
    knots.append((s, 0.0))
    while s < length:
        if rng.random() < 0.35:
            s += float(rng.uniform(60, 350))
            knots.append((s, 0.0))
            continue
        radius = float(np.exp(rng.uniform(np.log(40), np.log(800))))
        k = rng.choice([-1.0, 1.0]) / radius
        for _ in range(1 + int(rng.random() < 0.3)):  # sometimes an S-bend
            ramp = float(rng.uniform(15, 60))
            arc = np.radians(rng.uniform(12, 100)) / abs(k)
            knots += [(s + ramp, k), (s + ramp + arc, k)]
            s += ramp + arc
            k = -k * rng.uniform(0.6, 1.5)
            k = np.sign(k) * min(abs(k), 1 / 40)
        s += float(rng.uniform(15, 60))
        knots.append((s, 0.0))
    return np.array(knots)


def check_appearance(forced: dict) -> dict:
    """Validate forced section attributes (APPEARANCE names within their ranges, `verge` one of VERGES); returns
    them with numbers as floats (`asphalt` is a gray level, which Road sets on all three channels)."""
    out = {}
    for name, value in forced.items():
        if name == "verge":
            if value not in VERGES:
                raise ValueError(f"verge must be one of {', '.join(VERGES)}, got {value!r}")
            out[name] = value
            continue
        if name not in APPEARANCE:
            raise ValueError(f"cannot force section attribute {name!r}; one of: {', '.join([*APPEARANCE, 'verge'])}")
        lo, hi = APPEARANCE[name]
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a number in [{lo}, {hi}], got {value!r}") from None
        if not lo <= number <= hi:
            raise ValueError(f"{name} must be in [{lo}, {hi}], got {number}")
        out[name] = number
    return out


def _lines(rng, sec: Section) -> list:
    lines = [Line(-sec.lanes_right - 0.5, "white", False)]
    same = sec.lanes_right + 1 + sec.lanes_left - sec.oncoming
    for i in range(1, same):
        lines.append(Line(-sec.lanes_right - 0.5 + i, "white", True))
    top = sec.lanes_left + 0.5
    if sec.oncoming:
        centre = top - sec.oncoming
        style = rng.choice(["dashed", "double", "single"], p=[0.4, 0.4, 0.2])
        lines.append(Line(centre, "yellow", style == "dashed", style == "double"))
        for i in range(1, sec.oncoming):
            lines.append(Line(centre + i, "white", True))
        lines.append(Line(top, "white", False))
    else:
        lines.append(Line(top, "yellow", False))
    return lines


def _section(rng, start, shadows) -> Section:
    kind = rng.choice(["rural", "highway", "urban"], p=[0.4, 0.4, 0.2])
    if kind == "rural":
        lanes_right, lanes_left, oncoming = 0, 1, 1
    elif kind == "highway":
        lanes_right = int(rng.integers(0, 2))
        lanes_left = int(rng.integers(0, 3 - lanes_right))
        oncoming = 0
    else:
        lanes_right = int(rng.integers(0, 2))
        oncoming = int(rng.integers(1, 3))
        lanes_left = oncoming + int(rng.integers(0, 2))
    gray = float(rng.uniform(65, 140))
    tint = rng.uniform(-6, 6, 3)
    sec = Section(
        start=start, lane_width=float(rng.uniform(3.2, 3.9)), lanes_right=lanes_right, lanes_left=lanes_left,
        oncoming=oncoming, line_width=float(rng.uniform(0.10, 0.22)),
        dash=float(rng.choice([3.0, 3.0, 2.0, 4.5])), gap=float(rng.choice([9.0, 9.0, 6.0, 4.0])),
        dash_phase=float(rng.uniform(0, 12)), wear=float(rng.uniform(0.0, 0.65)), paint=float(rng.uniform(0.75, 1.0)),
        asphalt=tuple(float(c) for c in np.clip(gray + tint, 40, 170)), shoulder=float(rng.uniform(0.2, 1.5)),
        verge=str(rng.choice(list(VERGES), p=[0.4, 0.25, 0.2, 0.15])),
        speed=float(rng.uniform(11, 25) if kind != "urban" else rng.uniform(9, 16)),
        wander=float(rng.uniform(0.4, 1.4)), shadows=shadows * float(rng.choice([0.0, 0.5, 1.0, 2.0])),
        sun=float(rng.uniform(0.3, 1.0)),
    )
    sec.lines = _lines(rng, sec)
    return sec


class Road:
    """Centre line samples (s, kappa, theta, x, y) and the sections/transverse markings along it."""

    def __init__(self, length: float, seed: int, shadows: float = 1.0, crossings_per_km: float = 3.0,
                 appearance: dict | None = None):
        """`appearance`: section attributes forced on every section after it is drawn (check_appearance), so
        the random draws, and with them everything else about the road, stay those of the seed."""
        forced = check_appearance(appearance or {})
        rng = np.random.default_rng([seed, 0])
        self.length = float(length)
        self.s = np.arange(0.0, length + DS, DS)
        knots = _curvature_knots(rng, length + 50)
        self.set_curvature(np.interp(self.s, knots[:, 0], knots[:, 1]))
        self.sections: list[Section] = []
        start = 0.0
        while start < length:
            sec = _section(rng, start, shadows)
            for name, value in forced.items():
                setattr(sec, name, (value,) * 3 if name == "asphalt" else value)
            self.sections.append(sec)
            start += SEGMENT * int(rng.integers(6, 28))
        self._starts = np.array([sec.start for sec in self.sections])
        self.transverse: list[Transverse] = []
        s = 0.0
        while crossings_per_km > 0:
            s += float(rng.exponential(1000.0 / crossings_per_km))
            if s >= length:
                break
            if rng.random() < 0.5:
                self.transverse.append(Transverse(s, "stop", float(rng.uniform(0.3, 0.6))))
            else:
                self.transverse.append(Transverse(s, "crosswalk", float(rng.uniform(2.5, 4.0)),
                                                  float(rng.uniform(0.4, 0.6)), float(rng.uniform(0.4, 0.8))))

    def set_curvature(self, kappa: np.ndarray) -> None:
        """Set the curvature samples (1/m, positive left) and integrate heading and position."""
        self.kappa = np.asarray(kappa, float)
        self.theta = np.concatenate([[0.0], np.cumsum((self.kappa[1:] + self.kappa[:-1]) / 2) * DS])
        self.x = np.concatenate([[0.0], np.cumsum((np.cos(self.theta[1:]) + np.cos(self.theta[:-1])) / 2) * DS])
        self.y = np.concatenate([[0.0], np.cumsum((np.sin(self.theta[1:]) + np.sin(self.theta[:-1])) / 2) * DS])

    def section(self, s: float) -> Section:
        return self.sections[int(np.searchsorted(self._starts, s, side="right")) - 1]

    def sample(self, s):
        """(x, y, theta, kappa) of the centre line at s (arrays or floats; linear interpolation)."""
        return (np.interp(s, self.s, self.x), np.interp(s, self.s, self.y), np.interp(s, self.s, self.theta),
                np.interp(s, self.s, self.kappa))

    def to_world(self, s, n):
        """Road coordinates (s along, n left of the ego-lane centre) -> world x, y."""
        x, y, th, _ = self.sample(s)
        return x - np.sin(th) * n, y + np.cos(th) * n

    def wander(self, s: float) -> float:
        """Strength of the yaw disturbance at s (interpolated between section starts)."""
        return float(np.interp(s, self._starts, [sec.wander for sec in self.sections]))


@dataclass
class CarState:
    s: float  # rear axle, along the road
    d: float  # rear axle offset, m, positive left
    psi: float  # heading relative to the road, rad, positive left
    v: float  # m/s
    delta: float = 0.0  # road wheel angle, rad, positive left


class Driver:
    """Pure pursuit towards the lane centre under a random yaw disturbance, speed limited by the curvature
    ahead. The label (the actual road wheel angle) follows the pursuit command through the actuator lag."""

    LAG = 0.12  # s, actuator time constant
    LOOKAHEAD = 12.0  # m, pursuit distance (inside the svf view's 4.8-29 m of ground), the same at every speed
    WANDER = 0.05  # rad/s, standard deviation of the yaw disturbance at wander strength 1
    WANDER_TIME = 2.0  # s, correlation time of the yaw disturbance

    def __init__(self, road: Road, seed: int, fps: float = 20.0):
        self.road = road
        self.dt = 1.0 / fps
        self.rng = np.random.default_rng([seed, 1])
        sec = road.section(5.0)
        self.state = CarState(s=5.0, d=0.0, psi=0.0, v=min(sec.speed, 15.0))
        self.jitter = 0.0
        self.gust = 0.0  # yaw disturbance, rad/s

    def _target_speed(self, s: float) -> float:
        ahead = np.arange(s, s + 80.0, 2.0)
        kmax = np.abs(np.interp(ahead, self.road.s, self.road.kappa)).max()
        return float(min(self.road.section(s).speed, np.sqrt(2.5 / max(kmax, 1e-6))))

    def _pursuit(self, st: CarState) -> float:
        road = self.road
        lookahead = self.LOOKAHEAD
        x, y, th, _ = road.sample(st.s)
        rx, ry = x - np.sin(th) * st.d, y + np.cos(th) * st.d
        heading = th + st.psi
        ahead = st.s + np.arange(0.0, 3 * lookahead, 0.5)
        tx, ty = road.to_world(ahead, np.zeros_like(ahead))
        dist = np.hypot(tx - rx, ty - ry)
        i = min(int(np.argmax(dist >= lookahead)), len(ahead) - 1)
        dx, dy = tx[i] - rx, ty[i] - ry
        alpha = np.arctan2(-np.sin(heading) * dx + np.cos(heading) * dy, np.cos(heading) * dx + np.sin(heading) * dy)
        return float(np.arctan(2 * WHEELBASE * np.sin(alpha) / dist[i]))

    def step(self) -> CarState:
        """Advance one frame; returns the new state."""
        st = self.state
        command = self._pursuit(st)
        self.jitter = 0.9 * self.jitter + self.rng.normal(0.0, 0.0003)
        keep = np.exp(-self.dt / self.WANDER_TIME)
        self.gust = keep * self.gust + self.rng.normal(0.0, self.WANDER * np.sqrt(1 - keep ** 2))
        gust = self.gust * self.road.wander(st.s)
        target_v = self._target_speed(st.s)
        sub = 4
        h = self.dt / sub
        for _ in range(sub):
            st.delta += (command + self.jitter - st.delta) * min(1.0, h / self.LAG)
            st.v += float(np.clip(target_v - st.v, -1.5 * h, 1.0 * h))
            kappa = float(np.interp(st.s, self.road.s, self.road.kappa))
            ds = st.v * np.cos(st.psi) / (1.0 - kappa * st.d)
            st.d += st.v * np.sin(st.psi) * h
            st.psi += (st.v * np.tan(st.delta) / WHEELBASE - kappa * ds + gust) * h
            st.s += ds * h
        return st

    @property
    def wheel_angle_deg(self) -> float:
        """Steering wheel angle in degrees (positive left)."""
        return float(np.degrees(self.state.delta) * STEERING_RATIO)
