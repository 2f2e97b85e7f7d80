"""`vbp bench`: latency of forward, VBP, LRP and other libraries across backends; the viewer's frame rate."""
