"""Driving data: preprocessing to the networks' views, the HDF5 store, synthetic drives, Udacity ingest."""
