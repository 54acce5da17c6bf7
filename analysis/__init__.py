"""Offline analysis of organism-network run records (HDF5)."""
