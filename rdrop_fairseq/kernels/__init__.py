"""Fused GPU kernels behind :mod:`rdrop_fairseq.rdrop_loss`; imported only when chosen."""
