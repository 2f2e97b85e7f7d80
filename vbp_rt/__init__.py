"""vbp-rt: real-time VisualBackProp for driving CNNs."""
from .explain import Explanation, explain, normalize01
from .methods import available as available_methods
from .models import build, load_model

__version__ = "0.1.0"
__all__ = ["Explanation", "explain", "normalize01", "available_methods", "build", "load_model", "__version__"]
