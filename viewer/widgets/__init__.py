"""Qt widgets of the viewer: image panels, the steering gauge, plots, timing numbers, the transport bar."""
from .gauge import SteeringGauge
from .image_view import ImageView
from .plots import AnglePlot, TimingPlot
from .timing import TimingTable
from .transport import TransportBar

__all__ = ["AnglePlot", "ImageView", "SteeringGauge", "TimingPlot", "TimingTable", "TransportBar"]
