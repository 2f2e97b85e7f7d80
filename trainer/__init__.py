"""Training NetSVF/NetHVF on HDF5 stores: the loop, the SWMR run log, multi-process (torchrun) support."""
